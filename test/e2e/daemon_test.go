//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// clientDaemon is mixvpnd running in the local network's client namespace,
// with its settings, state and resolv.conf in a directory of the test's.
// It can be killed and started again on the same files.
type clientDaemon struct {
	t      *testing.T
	st     devnetState
	dir    string
	socket string
	proc   *exec.Cmd
	exited chan struct{}
}

func startDaemon(t *testing.T, st devnetState, settings string) *clientDaemon {
	t.Helper()
	dir := t.TempDir()
	cd := &clientDaemon{t: t, st: st, dir: dir, socket: filepath.Join(dir, "mixvpnd.sock")}
	os.WriteFile(filepath.Join(dir, "settings.json"), []byte(settings), 0o644)
	os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver 192.0.2.53\n"), 0o644)
	cd.start()
	return cd
}

// start runs mixvpnd and waits until its socket answers; cleanup stops it
// with SIGTERM unless it is gone already.
func (cd *clientDaemon) start() {
	t := cd.t
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", cd.st.ns("client"), bin("mixvpnd"), "--tun", "mvpn0",
		"--directory", cd.st.DirectoryURL, "--directory-key", cd.st.DirectoryKey, "--socket", cd.socket,
		"--settings", filepath.Join(cd.dir, "settings.json"), "--system-settings", filepath.Join(cd.dir, "none.json"),
		"--resolv-conf", filepath.Join(cd.dir, "resolv.conf"))
	logf, _ := os.OpenFile(filepath.Join(cd.dir, "mixvpnd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	cd.proc, cd.exited = cmd, exited
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(20 * time.Second):
				t.Error("mixvpnd did not stop on SIGTERM")
				cmd.Process.Kill()
				<-exited
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(cd.dir, "mixvpnd.log"))
			t.Logf("mixvpnd log:\n%s", b)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := cd.cli("status"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("mixvpnd's socket never answered")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill9 kills mixvpnd as a crash would: no cleanup of any kind. `ip
// netns exec` execs the daemon, so the process is mixvpnd itself.
func (cd *clientDaemon) kill9() {
	cd.t.Helper()
	if err := cd.proc.Process.Kill(); err != nil {
		cd.t.Fatal(err)
	}
	select {
	case <-cd.exited:
	case <-time.After(10 * time.Second):
		cd.t.Fatal("mixvpnd did not die on SIGKILL")
	}
}

func (cd *clientDaemon) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin("mixvpn"), append([]string{"--socket", cd.socket}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("mixvpn %v: %w: %s", args, err, out)
	}
	return string(out), nil
}

func (cd *clientDaemon) must(args ...string) string {
	cd.t.Helper()
	out, err := cd.cli(args...)
	if err != nil {
		cd.t.Fatal(err)
	}
	return out
}

// states follows `mixvpn status --watch --json` until the test ends.
type states struct {
	t     *testing.T
	c     chan string
	seen  []string
	ended bool // the watch ended: the daemon went away
}

func (cd *clientDaemon) watchStates() *states {
	cd.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin("mixvpn"), "--socket", cd.socket, "status", "--watch", "--json")
	out, err := cmd.StdoutPipe()
	if err != nil {
		cd.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cd.t.Fatal(err)
	}
	w := &states{t: cd.t, c: make(chan string, 256)}
	go func() {
		defer close(w.c)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var s struct{ State, Error string }
			if json.Unmarshal(sc.Bytes(), &s) == nil {
				w.c <- s.State + ": " + s.Error
			}
		}
	}()
	cd.t.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	return w
}

// until waits for the state want (given as "state" or "state: why") and
// returns its line.
func (w *states) until(want string, timeout time.Duration) string {
	w.t.Helper()
	l, ok := w.wait(want, timeout)
	if !ok {
		if w.ended {
			w.t.Fatalf("status --watch ended before %s; saw %v", want, w.seen)
		}
		w.t.Fatalf("never %s within %v; saw %v", want, timeout, w.seen)
	}
	return l
}

// wait is until for a test that has something to do when the state does
// not come: it reports whether it came within timeout.
func (w *states) wait(want string, timeout time.Duration) (string, bool) {
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-w.c:
			if !ok {
				w.ended = true
				return "", false
			}
			w.seen = append(w.seen, l)
			if strings.HasPrefix(l, want) {
				return l, true
			}
		case <-deadline:
			return "", false
		}
	}
}

// fetch downloads a blob by name in the client namespace; mixnode fetch
// checks its hash against the one the internet host publishes.
func (cd *clientDaemon) fetch(size int) string {
	cd.t.Helper()
	return cd.fetchURL(fmt.Sprintf("http://internet.mixvpn.test/blob/%d", size))
}

func (cd *clientDaemon) fetchURL(url string) string {
	cd.t.Helper()
	out, err := cd.tryFetch(url, 90*time.Second)
	if err != nil {
		cd.t.Fatalf("fetch: %v: %s", err, out)
	}
	return strings.TrimSpace(out)
}

func (cd *clientDaemon) tryFetch(url string, timeout time.Duration) (string, error) {
	return cd.tryFetchVia(cd.st.addr("inet"), url, timeout)
}

// tryFetchVia fetches url resolving its name with the DNS server dns.
func (cd *clientDaemon) tryFetchVia(dns netip.Addr, url string, timeout time.Duration) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", cd.st.ns("client"), bin("mixnode"), "fetch", "--timeout", timeout.String(),
		"--dns", dns.String(), url).CombinedOutput()
	return string(out), err
}

// addr6 is a host's IPv6 address on the backbone.
func (s devnetState) addr6(name string) netip.Addr {
	for _, h := range s.Hosts {
		if h.Name == name {
			return h.Addr6
		}
	}
	return netip.Addr{}
}

// outerIface is the client's interface to the backbone.
func outerIface(t *testing.T, st devnetState) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", st.ns("client"), "ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var iface string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 1 && !strings.HasPrefix(f[1], "lo") && !strings.HasPrefix(f[1], "mvpn") {
			iface = strings.TrimSuffix(strings.Split(f[1], "@")[0], ":")
		}
	}
	if iface == "" {
		t.Fatalf("no outer interface in the client namespace:\n%s", out)
	}
	return iface
}

// capture runs tcpdump on the client's outer interface until stop, which
// returns the packets as tcpdump -q prints them.
func capture(t *testing.T, st devnetState) (stop func() []string) {
	t.Helper()
	return captureLines(t, st.ns("client"), outerIface(t, st), "")
}

// captureLines runs tcpdump on iface in namespace ns, keeping what passes
// filter (everything if it is empty), until stop, which returns the
// packets as tcpdump -q prints them. The capture is for finding leaks, so
// it must be whole: it runs in immediate mode, and a packet the kernel
// dropped fails the test.
func captureLines(t *testing.T, ns, iface, filter string) (stop func() []string) {
	t.Helper()
	stopDump := tcpdump(t, ns, iface, filter, true)
	return func() []string {
		t.Helper()
		time.Sleep(300 * time.Millisecond) // the last packets reach the file
		pcap, dropped := stopDump()
		if dropped != 0 {
			t.Errorf("tcpdump on %s lost %d packets in the kernel: the capture is not whole", iface, dropped)
		}
		out, err := exec.Command("tcpdump", "-r", pcap, "-nn", "-q").Output()
		if err != nil {
			t.Fatal(err)
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			return strings.Split(s, "\n")
		}
		return nil
	}
}

// tcpdump runs tcpdump on iface in namespace ns, writing what passes
// filter (everything if it is empty) to a file, until stop, which ends it
// and returns the file and how many packets the kernel dropped (-1 if
// tcpdump did not say). Cleanup kills it if the test ends first.
//
// Immediate mode hands every packet over as it comes. Without it packets
// wait in the kernel's ring for up to a second, and those still there
// when tcpdump stops never reach the file (its "received by filter" then
// exceeds its "captured"); with it, tcpdump wakes for every packet and
// drops some at the tens of thousands per second of a link at full rate,
// unless, as here, it keeps only their headers in a large ring.
func tcpdump(t *testing.T, ns, iface, filter string, immediate bool) (stop func() (pcap string, dropped int)) {
	t.Helper()
	pcap := filepath.Join(t.TempDir(), iface+".pcap")
	args := []string{"netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-U", "-w", pcap}
	if immediate {
		// Headers are all it keeps, and a large ring, so as not to drop
		// any at the speed of a download in Fast mode.
		args = append(args, "--immediate-mode", "-s", "256", "-B", "16384")
	}
	if filter != "" {
		args = append(args, filter)
	}
	cmd := exec.Command("ip", args...)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill() // nothing if it is done
		<-done
	})
	time.Sleep(500 * time.Millisecond) // tcpdump attaches
	return func() (string, int) {
		t.Helper()
		select {
		case <-done:
			t.Fatalf("tcpdump on %s in %s ended before it was stopped: %v\n%s", iface, ns, cmd.ProcessState, stderr)
		default:
		}
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("tcpdump on %s in %s did not stop on SIGINT", iface, ns)
		}
		stats := strings.Join(strings.Fields(lastLines(stderr.String(), 3)), " ")
		t.Logf("tcpdump on %s: %s", iface, stats)
		dropped := -1
		if m := tcpdumpDropped.FindStringSubmatch(stats); m != nil {
			dropped, _ = strconv.Atoi(m[1])
		}
		return pcap, dropped
	}
}

// tcpdumpDropped finds the count in tcpdump's closing statistics.
var tcpdumpDropped = regexp.MustCompile(`(\d+) packets? dropped by kernel`)

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// leaks returns the captured packets that are not tunnel traffic between
// the client and the directory or an entry gateway's link or WireGuard
// port. Link-layer housekeeping (ARP, IPv6 neighbour discovery) is no leak;
// an entry's ICMP port unreachable for its tunnel port (its node is down)
// coming in counts as tunnel traffic.
func leaks(st devnetState, lines []string) (bad []string, tunnel int) {
	client := st.addr("client").String()
	allowed := map[string]bool{}
	if u := strings.TrimPrefix(st.DirectoryURL, "http://"); u != "" {
		allowed[strings.Replace(u, ":", ".", 1)] = true
	}
	for _, h := range st.Hosts {
		if h.Role == "entry" {
			allowed[h.Addr4.String()+".1789"] = true
			allowed[h.Addr4.String()+".51820"] = true
		}
	}
	for _, l := range lines {
		if l == "" || strings.Contains(l, "ARP,") || strings.Contains(l, "ICMP6, neighbor") || strings.Contains(l, "ICMP6, router solicitation") {
			continue
		}
		f := strings.Fields(l)
		// "12:00:00.000000 IP 198.51.100.100.40000 > 198.51.100.12.1789: tcp 0"
		if len(f) < 5 || (f[1] != "IP" && f[1] != "IP6") {
			bad = append(bad, l)
			continue
		}
		src, dst := f[2], strings.TrimSuffix(f[4], ":")
		// The kernel's multicast listener reports go to link-scope
		// multicast (ff02::) and never leave the link, like ND.
		if f[1] == "IP6" && strings.HasPrefix(dst, "ff02::") && strings.Contains(l, "ICMP6, multicast listener report") {
			continue
		}
		switch {
		case hostOf(src) == client && allowed[dst], hostOf(dst) == client && allowed[src]:
			tunnel++
		case hostOf(dst) == client && entryUnreachable(l, src, allowed):
			// An entry whose node is down answers the tunnel's packets
			// to it: inbound, and about the tunnel's own port.
			tunnel++
		default:
			bad = append(bad, l)
		}
	}
	return bad, tunnel
}

// icmpUnreachable is how tcpdump -q prints an ICMP port unreachable:
//
//	IP 198.51.100.12 > 198.51.100.100: ICMP 198.51.100.12 udp port 51820 unreachable, length 228
var icmpUnreachable = regexp.MustCompile(`: ICMP (\S+) (?:udp|tcp) port (\d+) unreachable`)

// entryUnreachable reports whether l is an ICMP port unreachable from
// src about an allowed endpoint of src's own.
func entryUnreachable(l, src string, allowed map[string]bool) bool {
	m := icmpUnreachable.FindStringSubmatch(l)
	return m != nil && m[1] == src && allowed[m[1]+"."+m[2]]
}

// hostOf strips the port tcpdump appends to an address with a dot; an
// endpoint without one (ICMP, or an IPv6 address alone) is all host.
func hostOf(ep string) string {
	if n := strings.Count(ep, "."); n == 4 || n == 1 && strings.Contains(ep, ":") {
		return ep[:strings.LastIndex(ep, ".")]
	}
	return ep
}

// TestLeakConnectSwitchDisconnect drives the daemon as a user would:
// connect in Fast mode and check the status, then switch to Anonymous
// mode and back while a ping and a long, rate-limited download run, with
// a download in each mode besides (once over IPv6, to the internet host's
// IPv6 address through the tunnel's IPv6 default route). A capture on the
// client's outer interface checks that nothing but tunnel traffic to the
// directory and the entry gateway's ports ever leaves, DNS included.
//
// The modes give the tunnel different inner addresses and by design no
// connection carries over from one to the other (it would link the
// anonymous session to the Fast-mode one), so the download resumes: it
// reconnects when its connection is reset or stalls and asks for the rest
// with a Range request, as a download manager would. The ping goes on,
// from the new address. connect and mode return once the tunnel is up;
// the test waits only for the stream to resume.
func TestLeakConnectSwitchDisconnect(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	stop := capture(t, st)
	cd := startDaemon(t, st, fmt.Sprintf(`{"dns_servers": [%q], "kill_switch": true, "ipv6": true}`, st.addr("inet")))

	out := cd.must("connect", "--mode", "fast", "--entry", "DE", "--exit", "CH")
	if !strings.Contains(out, "entry1") || !strings.Contains(out, "exit1") {
		t.Fatalf("connect does not show the chosen gateways:\n%s", out)
	}
	var status struct{ State, Mode, Entry, Exit string }
	if out := cd.must("status", "--json"); json.Unmarshal([]byte(out), &status) != nil ||
		status != (struct{ State, Mode, Entry, Exit string }{"connected", "fast", "entry1", "exit1"}) {
		t.Fatalf("status after connect: %s", out)
	}
	t.Log("fast, IPv6: " + cd.fetchURL(fmt.Sprintf("http://[%s]/blob/%d", st.addr6("inet"), 1<<20)))

	// The stream: 3 MiB at 160 kB/s is about 20 s of data (Anonymous mode
	// carries that at a quarter of its goodput): 5 s in Fast mode, some
	// in Anonymous mode and the rest, 8 s or more, in Fast mode again.
	const streamSize, streamRate, stall = 3 << 20, 160000, 5 * time.Second
	pingStart := time.Now()
	ping := cd.spawn("ping", "-D", "-n", "-i", "0.2", "-w", "240", st.addr("inet").String())
	stream := cd.spawn(bin("mixnode"), "fetch", "--resume", "--stall", stall.String(), "--rate", fmt.Sprint(streamRate),
		"--timeout", "200s", "--kv", "stream", "--dns", st.addr("inet").String(),
		fmt.Sprintf("http://internet.mixvpn.test/blob/%d", streamSize))
	time.Sleep(5 * time.Second)

	var switches [2]modeSwitch
	switches[0] = cd.switchMode("anonymous")
	t.Log("anonymous: " + cd.fetch(256<<10))
	out = cd.must("stats", "--json")
	var stats struct {
		Mode         string
		BytesIn      uint64 `json:"bytes_in"`
		CoverPackets uint64 `json:"cover_packets"`
		SURBsUsed    uint64 `json:"surbs_used"`
	}
	if err := json.Unmarshal([]byte(out), &stats); err != nil || stats.Mode != "anonymous" || stats.BytesIn < 256<<10 || stats.CoverPackets == 0 || stats.SURBsUsed == 0 {
		t.Fatalf("anonymous stats %v: %s", err, out)
	}
	// Stay until the stream has resumed in Anonymous mode (after a reset
	// or a stall, and a first request may stall too) and gone on for a
	// few seconds.
	deadline := switches[0].done.Add(2*stall + 15*time.Second)
	var resumedAt time.Time
	for resumedAt.IsZero() {
		for _, e := range logEvents(stream.out.String()) {
			if e.msg == "fetch resumed" && e.at.After(switches[0].start) {
				resumedAt = e.at
				break
			}
		}
		if resumedAt.IsZero() {
			if stream.exited() || time.Now().After(deadline) {
				t.Fatalf("the stream did not resume in Anonymous mode within %v of the switch (its connection carried over, or it could not reconnect): %v\n%s",
					time.Since(switches[0].done).Round(time.Second), stream.err, stream.out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	time.Sleep(time.Until(resumedAt.Add(5 * time.Second)))
	if stream.exited() {
		t.Fatalf("the stream ended in Anonymous mode, before the switch back: %v\n%s", stream.err, stream.out)
	}

	switches[1] = cd.switchMode("fast")
	if !stream.wait(150 * time.Second) {
		t.Fatalf("the stream did not end within 150 s of the switch back:\n%s", stream.out)
	}
	if stream.err != nil {
		t.Fatalf("the stream failed: %v\n%s", stream.err, stream.out)
	}
	streamEnd := time.Now()
	// The ping's last phase needs some seconds of Fast mode too.
	time.Sleep(time.Until(switches[1].done.Add(3 * time.Second)))
	pingEnd := time.Now()
	ping.interrupt()
	cd.must("disconnect")

	// The stream: whole and right (fetch checked the hash), resumed a few
	// times per switch at most, and after each switch.
	kv := keyValues(stream.out.String())
	t.Logf("stream: %d bytes, %s resumes, longest gap %s ms, %s ms in all", streamSize, kv["stream_resumes"], kv["stream_max_gap_ms"], kv["stream_fetch_ms"])
	if n, err := strconv.Atoi(kv["stream_resumes"]); err != nil || n > 4*len(switches) {
		t.Errorf("the stream resumed %q times over %d switches:\n%s", kv["stream_resumes"], len(switches), stream.out)
	}
	events := logEvents(stream.out.String())
	pings := pingReplies(ping.out.String())
	var lastOffset int64
	for i, sw := range switches {
		next := streamEnd
		if i+1 < len(switches) {
			next = switches[i+1].start
		}
		var what []string
		resumed := false
		for _, e := range events {
			if e.at.Before(sw.start) || !e.at.Before(next) {
				continue
			}
			switch e.msg {
			case "fetch failed, resuming":
				what = append(what, fmt.Sprintf("failed at byte %s (%s)", e.attrs["offset"], e.attrs["err"]))
			case "fetch resumed":
				what = append(what, fmt.Sprintf("resumed at byte %s after %s without data", e.attrs["offset"], e.attrs["gap"]))
				off, _ := strconv.ParseInt(e.attrs["offset"], 10, 64)
				if !resumed && off <= lastOffset {
					t.Errorf("the stream resumed at byte %d after the switch to %s, no further than before it", off, sw.mode)
				}
				resumed, lastOffset = true, off
			}
		}
		t.Logf("switch to %s took %v; stream: %s; ping: longest gap %v", sw.mode, sw.done.Sub(sw.start).Round(time.Millisecond),
			strings.Join(what, ", "), pingGap(pings, sw).Round(time.Millisecond))
		// A connection of one mode must not live on in the other: the
		// exit or the server would see both identities on it.
		if !resumed {
			t.Errorf("the stream's connection carried over the switch to %s mode:\n%s", sw.mode, stream.out)
		}
	}

	// The ping: answered in each phase, before, between and after.
	phases := []struct {
		name     string
		from, to time.Time
	}{{"fast", pingStart, switches[0].start}, {"anonymous", switches[0].done, switches[1].start}, {"fast again", switches[1].done, pingEnd}}
	for _, ph := range phases {
		n := 0
		for _, p := range pings {
			if !p.Before(ph.from) && p.Before(ph.to) {
				n++
			}
		}
		// One every 0.2 s, and a phase lasts 3 s or more; a quarter of
		// them answered leaves room for a loaded machine.
		if want := int(ph.to.Sub(ph.from).Seconds() * 5 / 4); n < want {
			t.Errorf("ping: %d replies in %s mode (%v), want %d or more", n, ph.name, ph.to.Sub(ph.from).Round(time.Millisecond), want)
		} else {
			t.Logf("ping: %d replies in %s mode (%v)", n, ph.name, ph.to.Sub(ph.from).Round(time.Millisecond))
		}
	}
	if t.Failed() {
		t.Logf("ping output:\n%s", ping.out)
	}

	bad, tunnel := leaks(st, stop())
	if tunnel < 100 {
		t.Fatalf("only %d tunnel packets captured: the capture is not seeing the traffic", tunnel)
	}
	if len(bad) > 0 {
		t.Fatalf("%d packets left outside the tunnel, first: %v", len(bad), bad[:min(len(bad), 10)])
	}
	t.Logf("%d packets captured on the outer interface, all tunnel traffic", tunnel)
}

// modeSwitch is when `mixvpn mode` was asked and when it returned, the
// tunnel up in the new mode.
type modeSwitch struct {
	mode        string
	start, done time.Time
}

func (cd *clientDaemon) switchMode(mode string) modeSwitch {
	cd.t.Helper()
	sw := modeSwitch{mode: mode, start: time.Now()}
	out := cd.must("mode", mode)
	sw.done = time.Now()
	if !strings.HasPrefix(out, "Switched to "+mode+" mode") {
		cd.t.Fatalf("mode %s said %q", mode, out)
	}
	return sw
}

// process is a command running in the client namespace while the test
// goes on; cleanup kills it if it is still running.
type process struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	err  error // once done is closed
}

func (cd *clientDaemon) spawn(name string, args ...string) *process {
	cd.t.Helper()
	p := &process{out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", cd.st.ns("client"), name}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		cd.t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	cd.t.Cleanup(func() {
		p.cmd.Process.Kill() // nothing if it is done
		<-p.done
	})
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait reports whether the process ended within timeout.
func (p *process) wait(timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// interrupt stops the process as ^C would, so that it prints its summary,
// and kills it if that takes more than a few seconds.
func (p *process) interrupt() {
	p.cmd.Process.Signal(syscall.SIGINT)
	if !p.wait(5 * time.Second) {
		p.cmd.Process.Kill()
		<-p.done
	}
}

// keyValues reads the key=value lines of a tool's output; log lines,
// with several pairs, are not among them.
func keyValues(out string) map[string]string {
	kv := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok && !strings.ContainsAny(l, " \t") {
			kv[k] = v
		}
	}
	return kv
}

// logEvent is a line of a log in slog's text format.
type logEvent struct {
	at    time.Time
	msg   string
	attrs map[string]string
}

// logEvents reads the lines of out that are slog text records, such as
// those mixnode fetch writes when it resumes:
//
//	time=2026-11-25T10:44:28.283Z level=INFO msg="fetch resumed" offset=50000 gap=302ms failed_requests=1 cause="..."
func logEvents(out string) []logEvent {
	var evs []logEvent
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "time=") {
			continue
		}
		e := logEvent{attrs: map[string]string{}}
		for rest := l; rest != ""; {
			k, v, ok := strings.Cut(rest, "=")
			if !ok {
				break
			}
			if q, err := strconv.QuotedPrefix(v); err == nil {
				rest = v[len(q):]
				v, _ = strconv.Unquote(q)
			} else {
				v, rest, _ = strings.Cut(v, " ")
			}
			e.attrs[k] = v
			rest = strings.TrimLeft(rest, " ")
		}
		e.at, _ = time.Parse(time.RFC3339Nano, e.attrs["time"])
		e.msg = e.attrs["msg"]
		evs = append(evs, e)
	}
	return evs
}

// pingReplies reads the times of the replies `ping -D` printed:
//
//	[1764067536.123456] 64 bytes from 198.51.100.80: icmp_seq=12 ttl=62 time=1.23 ms
func pingReplies(out string) []time.Time {
	var at []time.Time
	for _, l := range strings.Split(out, "\n") {
		ts, rest, ok := strings.Cut(strings.TrimPrefix(l, "["), "] ")
		if !ok || !strings.Contains(rest, "bytes from") {
			continue
		}
		sec, frac, _ := strings.Cut(ts, ".")
		s, err1 := strconv.ParseInt(sec, 10, 64)
		us, err2 := strconv.ParseInt(frac, 10, 64)
		if err1 == nil && err2 == nil {
			at = append(at, time.Unix(s, us*1000))
		}
	}
	return at
}

// pingGap is the longest time between two replies around a switch: from
// the last one before it to the first after it, or between any two
// while it lasted.
func pingGap(replies []time.Time, sw modeSwitch) time.Duration {
	var gap time.Duration
	for i := 1; i < len(replies); i++ {
		if !replies[i].Before(sw.start) && !replies[i-1].After(sw.done) {
			gap = max(gap, replies[i].Sub(replies[i-1]))
		}
	}
	return gap
}

// TestLeakReconnectAfterLinkLoss cuts the client's link while connected, as
// a cable pulled or a wifi lost would: the daemon notices (the default
// route's link went down), reports reconnecting and keeps trying while
// the kill switch blocks; when the link is back (with its routes, as
// DHCP would restore them) it connects again and traffic flows. The
// capture sees nothing but tunnel traffic throughout.
func TestLeakReconnectAfterLinkLoss(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	stop := capture(t, st)
	cd := startDaemon(t, st, fmt.Sprintf(`{"dns_servers": [%q], "kill_switch": true}`, st.addr("inet")))
	cd.must("connect", "--mode", "fast")
	t.Log("before: " + cd.fetch(256<<10))

	w := cd.watchStates()
	w.until("connected", 10*time.Second)
	iface := outerIface(t, st)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", st.ns("client"), "ip"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ip("link", "set", iface, "down")
	t.Log(w.until("reconnecting", 30*time.Second))
	if _, err := cd.tryFetch("http://198.51.100.80/blob/1024", 5*time.Second); err == nil {
		t.Fatal("a fetch worked with the link down")
	}
	// Back up, with what DHCP would restore: IPv6 drops a downed link's
	// addresses, and neither family keeps its routes.
	ip("link", "set", iface, "up")
	ip("-6", "addr", "replace", st.addr6("client").String()+"/128", "dev", iface, "nodad")
	ip("route", "replace", "default", "dev", iface)
	ip("-6", "route", "replace", "default", "dev", iface)
	t.Log(w.until("connected", 60*time.Second))
	t.Log("after: " + cd.fetch(256<<10))
	cd.must("disconnect")

	bad, tunnel := leaks(st, stop())
	if len(bad) > 0 {
		t.Fatalf("%d packets left outside the tunnel, first: %v", len(bad), bad[:min(len(bad), 10)])
	}
	t.Logf("%d packets captured on the outer interface, all tunnel traffic; states %v", tunnel, w.seen)
}

// TestLeaksParser needs no root: it checks the capture reading on lines
// tcpdump prints, including ones with no port, which must not crash it.
func TestLeaksParser(t *testing.T) {
	var st devnetState
	st.DirectoryURL = "http://198.51.100.2:8080"
	st.Hosts = append(st.Hosts, struct {
		Name, Role, NS string
		Addr4, Addr6   netip.Addr
	}{Name: "client", Role: "client", Addr4: netip.MustParseAddr("198.51.100.100")}, struct {
		Name, Role, NS string
		Addr4, Addr6   netip.Addr
	}{Name: "entry1", Role: "entry", Addr4: netip.MustParseAddr("198.51.100.11")})
	lines := []string{
		"06:00:00.000001 IP 198.51.100.100.40000 > 198.51.100.11.51820: UDP, length 148",
		"06:00:00.000002 IP 198.51.100.11.1789 > 198.51.100.100.40001: tcp 2430",
		"06:00:00.000003 IP 198.51.100.100.40002 > 198.51.100.2.8080: tcp 0",
		"06:00:00.000004 IP6 :: > ff02::16: HBH ICMP6, multicast listener report v2, 1 group record(s), length 28",
		"06:00:00.000005 ARP, Request who-has 198.51.100.11 tell 198.51.100.100, length 28",
		"06:00:00.000006 IP 198.51.100.100.5353 > 198.51.100.80.53: UDP, length 40",
		"06:00:00.000007 IP 198.51.100.100 > 198.51.100.80: ICMP echo request, id 1, seq 1, length 64",
		"06:00:00.000008 IP 198.51.100.100.40003 > 198.51.100.11.22: tcp 0",
		"06:00:00.000009 IP 198.51.100.11 > 198.51.100.100: ICMP 198.51.100.11 udp port 51820 unreachable, length 228",
		"06:00:00.000010 IP 198.51.100.11 > 198.51.100.100: ICMP 198.51.100.11 udp port 53 unreachable, length 68",
		"06:00:00.000011 IP 198.51.100.100 > 198.51.100.11: ICMP 198.51.100.100 udp port 40000 unreachable, length 228",
	}
	bad, tunnel := leaks(st, lines)
	if tunnel != 4 || len(bad) != 5 {
		t.Fatalf("tunnel %d, leaks %d: %v", tunnel, len(bad), bad)
	}
}

// TestSwitchOutputParsers needs no root: it checks the reading of what
// the stream and the ping print while the modes switch.
func TestSwitchOutputParsers(t *testing.T) {
	out := "time=2026-11-25T10:49:46.066Z level=INFO msg=\"fetch failed, resuming\" offset=821600 err=\"read tcp 10.151.0.2:58660->198.51.100.80:80: read: connection reset by peer\" waited=47ms\n" +
		"time=2026-11-25T10:49:51.655+01:00 level=INFO msg=\"fetch resumed\" offset=821600 gap=5.636s failed_requests=2 cause=\"a \\\"quoted\\\" cause\"\n" +
		"stream_goodput_mbps=0.81\nstream_resumes=2\n"
	evs := logEvents(out)
	if len(evs) != 2 || evs[0].msg != "fetch failed, resuming" || evs[0].attrs["err"] != "read tcp 10.151.0.2:58660->198.51.100.80:80: read: connection reset by peer" ||
		evs[0].attrs["waited"] != "47ms" || !evs[0].at.Equal(time.Date(2026, 11, 25, 10, 49, 46, 66e6, time.UTC)) ||
		evs[1].attrs["cause"] != `a "quoted" cause` || evs[1].attrs["gap"] != "5.636s" || !evs[1].at.Equal(time.Date(2026, 11, 25, 9, 49, 51, 655e6, time.UTC)) {
		t.Fatalf("log events %+v", evs)
	}
	if kv := keyValues(out); len(kv) != 2 || kv["stream_resumes"] != "2" {
		t.Fatalf("key=value lines %v", kv)
	}
	pings := pingReplies("PING 198.51.100.80 (198.51.100.80) 56(84) bytes of data.\n" +
		"[1764067536.100000] 64 bytes from 198.51.100.80: icmp_seq=1 ttl=62 time=1.23 ms\n" +
		"ping: sendmsg: Operation not permitted\n" +
		"[1764067536.300000] From 10.151.0.2 icmp_seq=2 Destination Host Unreachable\n" +
		"[1764067538.100000] 64 bytes from 198.51.100.80: icmp_seq=11 ttl=62 time=104 ms\n" +
		"[1764067538.300000] 64 bytes from 198.51.100.80: icmp_seq=12 ttl=62 time=98.1 ms\n")
	if len(pings) != 3 || !pings[0].Equal(time.Unix(1764067536, 100e6)) {
		t.Fatalf("ping replies %v", pings)
	}
	sw := modeSwitch{start: time.Unix(1764067537, 0), done: time.Unix(1764067537, 500e6)}
	if g := pingGap(pings, sw); g != 2*time.Second {
		t.Fatalf("ping gap %v across the switch", g)
	}
}
