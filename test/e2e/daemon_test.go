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
	t    *testing.T
	c    chan string
	seen []string
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
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-w.c:
			if !ok {
				w.t.Fatalf("status --watch ended; saw %v", w.seen)
			}
			w.seen = append(w.seen, l)
			if strings.HasPrefix(l, want) {
				return l
			}
		case <-deadline:
			w.t.Fatalf("never %s within %v; saw %v", want, timeout, w.seen)
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
	out, err := exec.Command("ip", "netns", "exec", cd.st.ns("client"), bin("mixnode"), "fetch", "--timeout", timeout.String(),
		"--dns", cd.st.addr("inet").String(), url).CombinedOutput()
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

// capture runs tcpdump on the client's outer interface until stop.
func capture(t *testing.T, st devnetState) (stop func() []string) {
	t.Helper()
	iface := outerIface(t, st)
	pcap := filepath.Join(t.TempDir(), "client.pcap")
	cmd := exec.Command("ip", "netns", "exec", st.ns("client"), "tcpdump", "-i", iface, "-nn", "-U", "-w", pcap)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // tcpdump attaches
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return func() []string {
		time.Sleep(300 * time.Millisecond)
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		stopped = true
		out, err := exec.Command("tcpdump", "-r", pcap, "-nn", "-q").Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(string(out)), "\n")
	}
}

// leaks returns the captured packets that are not tunnel traffic between
// the client and the directory or an entry gateway's link or WireGuard
// port. Link-layer housekeeping (ARP, IPv6 neighbour discovery) is no leak.
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
		default:
			bad = append(bad, l)
		}
	}
	return bad, tunnel
}

// hostOf strips the port tcpdump appends to an address with a dot; an
// endpoint without one (ICMP, or an IPv6 address alone) is all host.
func hostOf(ep string) string {
	if n := strings.Count(ep, "."); n == 4 || n == 1 && strings.Contains(ep, ":") {
		return ep[:strings.LastIndex(ep, ".")]
	}
	return ep
}

// TestLeakConnectSwitchDisconnect drives the daemon as a user would, Fast
// mode, Anonymous mode and back, downloading in each (once over IPv6, to
// the internet host's IPv6 address through the tunnel's IPv6 default
// route), while a capture on the client's outer interface checks that
// nothing but tunnel traffic to the directory and the entry gateway's
// ports ever leaves, DNS included. connect and mode return once the
// tunnel is up, so nothing here polls.
func TestLeakConnectSwitchDisconnect(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	stop := capture(t, st)
	cd := startDaemon(t, st, fmt.Sprintf(`{"dns_servers": [%q], "kill_switch": true, "ipv6": true}`, st.addr("inet")))

	out := cd.must("connect", "--mode", "fast", "--entry", "DE", "--exit", "CH")
	if !strings.Contains(out, "entry1") || !strings.Contains(out, "exit1") {
		t.Fatalf("connect does not show the chosen gateways:\n%s", out)
	}
	t.Log("fast: " + cd.fetch(4<<20))
	t.Log("fast, IPv6: " + cd.fetchURL(fmt.Sprintf("http://[%s]/blob/%d", st.addr6("inet"), 1<<20)))

	out = cd.must("mode", "anonymous")
	if !strings.HasPrefix(out, "Switched to anonymous mode") {
		t.Fatalf("mode anonymous said %q", out)
	}
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

	cd.must("mode", "fast")
	t.Log("fast again: " + cd.fetch(1<<20))
	cd.must("disconnect")

	bad, tunnel := leaks(st, stop())
	if tunnel < 100 {
		t.Fatalf("only %d tunnel packets captured: the capture is not seeing the traffic", tunnel)
	}
	if len(bad) > 0 {
		t.Fatalf("%d packets left outside the tunnel, first: %v", len(bad), bad[:min(len(bad), 10)])
	}
	t.Logf("%d packets captured on the outer interface, all tunnel traffic", tunnel)
}

// TestReconnectAfterLinkLoss cuts the client's link while connected, as
// a cable pulled or a wifi lost would: the daemon notices (the default
// route's link went down), reports reconnecting and keeps trying while
// the kill switch blocks; when the link is back (with its routes, as
// DHCP would restore them) it connects again and traffic flows. The
// capture sees nothing but tunnel traffic throughout.
func TestReconnectAfterLinkLoss(t *testing.T) {
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
	}
	bad, tunnel := leaks(st, lines)
	if tunnel != 3 || len(bad) != 3 {
		t.Fatalf("tunnel %d, leaks %d: %v", tunnel, len(bad), bad)
	}
}
