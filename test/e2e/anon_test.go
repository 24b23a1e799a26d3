package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/mixvpn/mixvpn/mixnet/client"
	"golang.org/x/net/proxy"

	"github.com/mixvpn/mixvpn/platform/netns"
)

// Anonymous mode end to end: the daemon in the client namespace carries
// HTTP, DNS and UDP through entry, three mixes and exit; its link to the
// entry sends whole frames at the scheduled rate whether or not anything
// is downloading; a mix killed mid-download is routed around; and the
// unprivileged SOCKS5 front does the same without the daemon.

// linkFrameSize is a link frame on the wire (mixnet/link.FrameSize): every
// frame after the handshake is this long, whatever it carries.
const linkFrameSize = 2430

// anonSettings connects with DNS through the tunnel to the internet
// host's server and the kill switch on, so nothing can leave beside it.
func anonSettings(st devnetState) string {
	return fmt.Sprintf(`{"dns_servers": [%q], "kill_switch": true}`, st.addr("inet"))
}

// connectAnon connects the daemon in anonymous mode through entry1 (DE)
// and exit1 (CH) and waits until it is up.
func connectAnon(t *testing.T, cd *clientDaemon) {
	t.Helper()
	cd.must("connect", "--mode", "anonymous", "--entry", "DE", "--exit", "CH")
	deadline := time.Now().Add(45 * time.Second)
	for {
		out, err := cd.cli("status", "--json")
		var s struct{ State, Mode, Error string }
		if err == nil && json.Unmarshal([]byte(out), &s) == nil {
			if s.State == "connected" && s.Mode == "anonymous" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not connected in anonymous mode: %s %v", out, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// anonAddrs are a devnet host's IPv4 and IPv6 addresses.
func (s devnetState) anonAddrs(name string) (v4, v6 netip.Addr) {
	for _, h := range s.Hosts {
		if h.Name == name {
			return h.Addr4, h.Addr6
		}
	}
	return netip.Addr{}, netip.Addr{}
}

// dialInNS dials from inside namespace ns: the socket is made on a thread
// switched into it and stays there, whichever goroutine uses it after.
func dialInNS(ns string, dial func() (net.Conn, error)) (net.Conn, error) {
	var c net.Conn
	err := (&netns.Host{NS: ns}).Do(func() error {
		var err error
		c, err = dial()
		return err
	})
	return c, err
}

// pidsInNS lists the processes in namespace ns.
func pidsInNS(t *testing.T, ns string) []int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		t.Fatalf("ip netns pids %s: %v", ns, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if p, err := strconv.Atoi(f); err == nil {
			pids = append(pids, p)
		}
	}
	return pids
}

// daemonLog reads mixvpnd's log: startDaemon points its standard error at
// a file, which /proc shows as the process's descriptor 2.
func daemonLog(t *testing.T, st devnetState) string {
	t.Helper()
	for _, pid := range pidsInNS(t, st.ns("client")) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "mixvpnd" {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fd/2", pid))
			if err != nil {
				t.Fatalf("mixvpnd's log: %v", err)
			}
			return string(b)
		}
	}
	t.Fatal("no mixvpnd in the client namespace")
	return ""
}

// anonFetchJob is mixnode fetch running in the client namespace.
type anonFetchJob struct {
	cmd    *exec.Cmd
	out    bytes.Buffer
	done   chan struct{}
	err    error
	cancel context.CancelFunc
}

// anonFetch downloads url in the client namespace in the background;
// mixnode fetch resolves the name with the internet host's DNS server
// and checks the hash the server publishes.
func anonFetch(t *testing.T, st devnetState, url string, timeout time.Duration) *anonFetchJob {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	j := &anonFetchJob{done: make(chan struct{}), cancel: cancel}
	j.cmd = exec.CommandContext(ctx, "ip", "netns", "exec", st.ns("client"), bin("mixnode"), "fetch",
		"--timeout", timeout.String(), "--dns", st.addr("inet").String(), url)
	j.cmd.Stdout, j.cmd.Stderr = &j.out, &j.out
	if err := j.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		j.err = j.cmd.Wait()
		close(j.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-j.done
	})
	return j
}

// running reports whether the download is still going.
func (j *anonFetchJob) running() bool {
	select {
	case <-j.done:
		return false
	default:
		return true
	}
}

// wait returns the fetch's output and error once it ends.
func (j *anonFetchJob) wait() (string, error) {
	<-j.done
	return strings.TrimSpace(j.out.String()), j.err
}

// stop ends the download.
func (j *anonFetchJob) stop() {
	j.cancel()
	<-j.done
}

// TestAnonDownload: with the daemon in anonymous mode, a 10 MiB download
// by name (resolved through the tunnel), DNS, a UDP exchange and the
// exit's address as the internet host sees it; then the same network
// through `mixvpn proxy` run by an unprivileged user.
func TestAnonDownload(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	cd := startDaemon(t, st, anonSettings(st))
	connectAnon(t, cd)
	clientNS := st.ns("client")
	inet4, inet6 := st.anonAddrs("inet")
	exit4, _ := st.anonAddrs("exit1")

	t.Run("HTTP10MiB", func(t *testing.T) {
		// mixnode fetch resolves internet.mixvpn.test with the internet
		// host's DNS server, through the tunnel, and checks the hash the
		// server publishes.
		out, err := anonFetch(t, st, "http://internet.mixvpn.test/blob/10485760", 120*time.Second).wait()
		if err != nil {
			t.Fatalf("fetch: %v: %s", err, out)
		}
		if !strings.Contains(out, "10485760 bytes") {
			t.Fatalf("fetch: %s", out)
		}
		t.Log(out)
	})

	t.Run("DNS", func(t *testing.T) {
		c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
		for _, q := range []struct {
			qtype uint16
			want  netip.Addr
		}{{dns.TypeA, inet4}, {dns.TypeAAAA, inet6}} {
			m := new(dns.Msg)
			m.SetQuestion("internet.mixvpn.test.", q.qtype)
			var got []string
			var lastErr error
			// UDP through the mixnet may lose a query: three tries.
			for try := 0; try < 3 && got == nil; try++ {
				conn, err := dialInNS(clientNS, func() (net.Conn, error) {
					return net.DialTimeout("udp", net.JoinHostPort(inet4.String(), "53"), 3*time.Second)
				})
				if err != nil {
					t.Fatal(err)
				}
				r, _, err := c.ExchangeWithConn(m, &dns.Conn{Conn: conn})
				conn.Close()
				if err != nil {
					lastErr = err
					continue
				}
				got = []string{}
				for _, rr := range r.Answer {
					switch a := rr.(type) {
					case *dns.A:
						got = append(got, a.A.String())
					case *dns.AAAA:
						got = append(got, a.AAAA.String())
					}
				}
			}
			if got == nil {
				t.Fatalf("%s query through the tunnel: %v", dns.TypeToString[q.qtype], lastErr)
			}
			if len(got) != 1 || got[0] != q.want.String() {
				t.Fatalf("%s internet.mixvpn.test: %v, want %v", dns.TypeToString[q.qtype], got, q.want)
			}
		}
	})

	t.Run("UDPEcho", func(t *testing.T) {
		conn, err := dialInNS(clientNS, func() (net.Conn, error) {
			return net.Dial("udp", net.JoinHostPort(inet4.String(), "7"))
		})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		const count = 10
		sent := map[string]bool{}
		for range count {
			b := make([]byte, 200)
			rand.Read(b)
			sent[string(b)] = false
		}
		// Resend what has not come back, a bounded number of rounds: a
		// datagram can be lost in the mixnet as on any network.
		for round := 0; round < 5; round++ {
			for msg, back := range sent {
				if !back {
					conn.Write([]byte(msg))
				}
			}
			conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 1500)
			for {
				n, err := conn.Read(buf)
				if err != nil {
					break
				}
				if _, ok := sent[string(buf[:n])]; !ok {
					t.Fatalf("echo of %d bytes that were never sent", n)
				}
				sent[string(buf[:n])] = true
				if unechoed(sent) == 0 {
					return
				}
			}
			t.Logf("round %d: %d of %d datagrams not echoed yet", round, unechoed(sent), count)
		}
		t.Fatal("datagrams never echoed through the tunnel")
	})

	t.Run("ExitAddress", func(t *testing.T) {
		// The internet host sees the exit's address, not the client's.
		conn, err := dialInNS(clientNS, func() (net.Conn, error) {
			return net.DialTimeout("tcp", net.JoinHostPort(inet4.String(), "80"), 30*time.Second)
		})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(conn, "GET / HTTP/1.0\r\nHost: internet.mixvpn.test\r\n\r\n")
		b, err := io.ReadAll(conn)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "you came from "+exit4.String()+":") {
			t.Fatalf("the internet host did not see exit1 (%s):\n%s", exit4, b)
		}
	})

	t.Run("SOCKS5ProxyWithoutRoot", func(t *testing.T) {
		cd.must("disconnect")
		testAnonProxy(t, st)
	})
}

// unechoed counts the datagrams not echoed yet.
func unechoed(sent map[string]bool) int {
	n := 0
	for _, back := range sent {
		if !back {
			n++
		}
	}
	return n
}

// testAnonProxy runs `mixvpn proxy` in the client namespace as nobody, with
// no capabilities, and downloads through it by name.
func testAnonProxy(t *testing.T, st devnetState) {
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is needed to drop privileges")
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	outPath := filepath.Join(dir, "proxy.out")
	outF, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer outF.Close()
	cmd := exec.Command("ip", "netns", "exec", st.ns("client"), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all", bin("mixvpn"), "proxy", "--socks5", "127.0.0.1:1080",
		"--directory", st.DirectoryURL, "--directory-key", st.DirectoryKey,
		"--entry", "NL", "--exit", "IS", "--dns", st.addr("inet").String())
	var logBuf bytes.Buffer
	cmd.Stdout, cmd.Stderr = outF, &logBuf
	cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + dir}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			return fmt.Errorf("mixvpn proxy did not stop on SIGINT")
		}
	}
	defer func() {
		stop()
		if t.Failed() {
			t.Logf("mixvpn proxy log:\n%s", logBuf.String())
		}
	}()
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(outPath)
		if strings.Contains(string(b), "SOCKS5 proxy on") {
			t.Log(strings.TrimSpace(string(b)))
			break
		}
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("mixvpn proxy exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("mixvpn proxy not serving after 60 s")
		}
	}
	// It really runs without privileges (ip netns exec and setpriv exec
	// in turn, so the pid is the proxy's).
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^Uid:\s+65534\s+65534`).Match(status) || !regexp.MustCompile(`(?m)^CapEff:\s+0+$`).Match(status) {
		t.Fatalf("the proxy is not unprivileged:\n%s", status)
	}

	socks, err := proxy.SOCKS5("tcp", "127.0.0.1:1080", nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		// Names go to the proxy as names: it resolves them through the
		// tunnel (the local network's name exists nowhere else).
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNS(st.ns("client"), func() (net.Conn, error) {
				return socks.(proxy.ContextDialer).DialContext(ctx, network, addr)
			})
		},
	}}
	get := func(url string) ([]byte, string) {
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatalf("GET %s through the proxy: %v", url, err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		var head bytes.Buffer
		if _, err := io.Copy(io.MultiWriter(h, &headWriter{&head, 512}), resp.Body); err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", url, resp.Status)
		}
		return head.Bytes(), hex.EncodeToString(h.Sum(nil))
	}
	start := time.Now()
	_, sum := get("http://internet.mixvpn.test/blob/2097152")
	el := time.Since(start)
	want, _ := get("http://internet.mixvpn.test/blob/2097152.sha256")
	if strings.TrimSpace(string(want)) != sum {
		t.Fatalf("blob hash %s, the server publishes %s", sum, want)
	}
	t.Logf("2 MiB through the SOCKS5 proxy in %v (%.2f Mbit/s), hash checked", el.Round(time.Millisecond), 2*8*1.048576/el.Seconds())
	hello, _ := get("http://internet.mixvpn.test/")
	exit4, exit6 := st.anonAddrs("exit2")
	if !strings.Contains(string(hello), exit4.String()) && !strings.Contains(string(hello), exit6.String()) {
		t.Fatalf("the internet host did not see exit2 (%s, %s): %s", exit4, exit6, hello)
	}
	proxyUDPEcho(t, st.ns("client"), "127.0.0.1:1080", "internet.mixvpn.test", 7)
	if err := stop(); err != nil {
		t.Fatalf("mixvpn proxy: %v", err)
	}
	if !strings.Contains(logBuf.String(), "proxy stopped") {
		t.Fatalf("no clean stop in the log:\n%s", logBuf.String())
	}
}

// proxyUDPEcho asks the SOCKS5 proxy at proxyAddr (in namespace ns) for a
// UDP association and exchanges datagrams with the echo service at
// name:port through it; the proxy resolves the name through the tunnel.
func proxyUDPEcho(t *testing.T, ns, proxyAddr, name string, port uint16) {
	t.Helper()
	ctrl, err := dialInNS(ns, func() (net.Conn, error) { return net.DialTimeout("tcp", proxyAddr, 5*time.Second) })
	if err != nil {
		t.Fatal(err)
	}
	defer ctrl.Close()
	ctrl.SetDeadline(time.Now().Add(10 * time.Second))
	// No authentication; UDP ASSOCIATE from an address not known yet.
	ctrl.Write([]byte{5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0})
	reply := make([]byte, 2+10)
	if _, err := io.ReadFull(ctrl, reply); err != nil {
		t.Fatalf("UDP ASSOCIATE: %v", err)
	}
	if reply[1] != 0 || reply[3] != 0 || reply[5] != 1 {
		t.Fatalf("UDP ASSOCIATE answered % x", reply)
	}
	relay := netip.AddrPortFrom(netip.AddrFrom4([4]byte(reply[6:10])), uint16(reply[10])<<8|uint16(reply[11]))
	uc, err := dialInNS(ns, func() (net.Conn, error) { return net.Dial("udp", relay.String()) })
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	hdr := append([]byte{0, 0, 0, 3, byte(len(name))}, name...)
	hdr = append(hdr, byte(port>>8), byte(port))
	for i := range 3 {
		msg := fmt.Sprintf("datagram %d through the mixnet", i)
		var got []byte
		// A datagram may be lost like on any network: a few tries.
		for try := 0; try < 5 && got == nil; try++ {
			uc.Write(append(hdr[:len(hdr):len(hdr)], msg...))
			uc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 2048)
			if n, err := uc.Read(buf); err == nil {
				got = buf[:n]
			}
		}
		// The answer's header names the echo's address (IPv4 or IPv6,
		// as the tunnel's resolver chose) and port.
		if len(got) < 10 || got[3] != 1 && got[3] != 4 || !bytes.HasSuffix(got, []byte(msg)) {
			t.Fatalf("UDP through the proxy: % x", got)
		}
		if p := got[len(got)-len(msg)-2:]; uint16(p[0])<<8|uint16(p[1]) != port {
			t.Fatalf("answer from port %d", uint16(p[0])<<8|uint16(p[1]))
		}
	}
}

// headWriter keeps the first n bytes written to it.
type headWriter struct {
	b *bytes.Buffer
	n int
}

func (w *headWriter) Write(p []byte) (int, error) {
	if room := w.n - w.b.Len(); room > 0 {
		w.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// linkSegment is one TCP segment tcpdump saw.
type linkSegment struct {
	at       float64 // seconds since the epoch
	src, dst string  // address.port
	flags    string
	seq, end uint32 // sequence range; end == seq for no data
	length   int
}

var (
	segFlagsRE = regexp.MustCompile(`Flags \[([^\]]*)\]`)
	segSeqRE   = regexp.MustCompile(`seq (\d+):(\d+)`)
	segLenRE   = regexp.MustCompile(`length (\d+)`)
)

// captureLinkSegments runs tcpdump on the client's outer interface until the
// returned function is called, and returns the TCP segments it saw with
// absolute sequence numbers and epoch timestamps.
func captureLinkSegments(t *testing.T, st devnetState) (stop func() []linkSegment) {
	t.Helper()
	iface := outerIface(t, st)
	pcap := filepath.Join(t.TempDir(), "link.pcap")
	cmd := exec.Command("ip", "netns", "exec", st.ns("client"), "tcpdump", "-i", iface, "-nn", "-U", "-w", pcap, "tcp")
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
	return func() []linkSegment {
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		stopped = true
		r := exec.Command("tcpdump", "-r", pcap, "-nn", "-tt", "-S")
		stdout, err := r.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Start(); err != nil {
			t.Fatal(err)
		}
		var segs []linkSegment
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			// 1795596571.641722 IP 198.51.100.100.50368 > 198.51.100.11.1789: Flags [P.], seq 1:2431, ack 1, ..., length 2430
			l := sc.Text()
			f := strings.Fields(l)
			fl := segFlagsRE.FindStringSubmatch(l)
			ln := segLenRE.FindStringSubmatch(l)
			if len(f) < 5 || (f[1] != "IP" && f[1] != "IP6") || fl == nil || ln == nil {
				continue
			}
			s := linkSegment{src: f[2], dst: strings.TrimSuffix(f[4], ":"), flags: fl[1]}
			s.at, _ = strconv.ParseFloat(f[0], 64)
			s.length, _ = strconv.Atoi(ln[1])
			if m := segSeqRE.FindStringSubmatch(l); m != nil {
				a, _ := strconv.ParseUint(m[1], 10, 32)
				b, _ := strconv.ParseUint(m[2], 10, 32)
				s.seq, s.end = uint32(a), uint32(b)
			}
			segs = append(segs, s)
		}
		r.Wait()
		return segs
	}
}

// linkWindow is what crossed the client's link to its entry in a time
// window.
type linkWindow struct {
	seconds float64
	// upFrames are frames to the entry: new bytes (retransmissions left
	// out) over the frame size; upAcks segments to the entry without
	// data; downFrames frames from the entry.
	upFrames, downFrames float64
	upAcks               int
}

// upstreamAnalysis follows the client's byte stream to the entry: per
// window counts, the sizes of its data segments, and the writes that
// did not end on a frame boundary.
type upstreamAnalysis struct {
	windows    []linkWindow
	sizes      map[int]int
	misaligned []linkSegment
	pushes     int
}

// analyseLink reads the segments between client and entry (address.port
// of the entry's link) over the windows [from, to).
func analyseLink(segs []linkSegment, client, entry string, windows [][2]float64) upstreamAnalysis {
	a := upstreamAnalysis{windows: make([]linkWindow, len(windows)), sizes: map[int]int{}}
	for i, w := range windows {
		a.windows[i].seconds = w[1] - w[0]
	}
	in := func(at float64) int {
		for i, w := range windows {
			if at >= w[0] && at < w[1] {
				return i
			}
		}
		return -1
	}
	var next, ref uint32
	started, aligned := false, false
	for _, s := range segs {
		up := strings.HasPrefix(s.src, client+".") && s.dst == entry
		down := s.src == entry && strings.HasPrefix(s.dst, client+".")
		w := in(s.at)
		switch {
		case up && s.length == 0:
			if w >= 0 {
				a.windows[w].upAcks++
			}
		case up:
			// New bytes only: a retransmission repeats what was counted.
			fresh := s.length
			if started {
				if d := int32(s.end - next); d <= 0 {
					fresh = 0
				} else if d < int32(s.length) {
					fresh = int(d)
				}
			}
			if !started || int32(s.end-next) > 0 {
				next = s.end
			}
			started = true
			if fresh == 0 {
				continue
			}
			a.sizes[s.length]++
			if w >= 0 {
				a.windows[w].upFrames += float64(fresh) / linkFrameSize
			}
			// A write ends with a push. The first one fixes where frames
			// start; every later one must end a whole number of frames on.
			if strings.Contains(s.flags, "P") {
				a.pushes++
				if !aligned {
					ref, aligned = s.end, true
				} else if (s.end-ref)%linkFrameSize != 0 {
					a.misaligned = append(a.misaligned, s)
				}
			}
		case down && s.length > 0:
			if w >= 0 {
				a.windows[w].downFrames += float64(s.length) / linkFrameSize
			}
		}
	}
	return a
}

// TestLeakAnonConstantRate captures the client's outer interface with the
// daemon in anonymous mode, for a window with nothing to send and a window
// with a download running, and checks what an observer of the link to
// the entry learns: the byte stream is whole 2430-byte frames, and the
// frames flow at the scheduled Poisson rate λ_P+λ_L in both windows, the
// difference within Poisson noise.
//
// The entry paces its frames to the client at the rate the client asked
// for (client.DownRatePerRate λ_P + λ_L), dummies filling the gaps, so
// the frames from the entry, and the client's ACKs of them, flow at one
// rate in both windows too; the client's pure ACKs of them do not yet
// (see the end of the test).
//
// What the wire shows beyond that is logged, not asserted: TCP segments
// are not all one size (a write of several frames goes out as one
// segment, and TCP sometimes cuts a write at the MSS), though every write
// is whole frames.
func TestLeakAnonConstantRate(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	cd := startDaemon(t, st, anonSettings(st))
	connectAnon(t, cd)
	out, err := cd.cli("settings", "get", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		MixRate  float64 `json:"mix_rate"`
		LoopRate float64 `json:"loop_rate"`
	}
	if err := json.Unmarshal([]byte(out), &set); err != nil || set.MixRate <= 0 {
		t.Fatalf("settings: %v: %s", err, out)
	}
	lambda := set.MixRate + set.LoopRate
	clientAddr := st.addr("client").String()
	entry4, _ := st.anonAddrs("entry1")
	entry := entry4.String() + ".1789"

	time.Sleep(2 * time.Second) // the client's pools fill
	stop := captureLinkSegments(t, st)
	const window = 8 * time.Second
	now := func() float64 { return float64(time.Now().UnixNano()) / 1e9 }
	idle := [2]float64{now(), 0}
	time.Sleep(window)
	idle[1] = now()

	// A download far longer than the window, stopped after it.
	fetch := anonFetch(t, st, "http://internet.mixvpn.test/blob/1073741824", 60*time.Second)
	time.Sleep(3 * time.Second) // name lookup, TCP ramping up
	busy := [2]float64{now(), 0}
	time.Sleep(window)
	busy[1] = now()
	if !fetch.running() {
		out, err := fetch.wait()
		t.Fatalf("the download ended before the window closed: %v: %s", err, out)
	}
	fetch.stop()
	segs := stop()

	a := analyseLink(segs, clientAddr, entry, [][2]float64{idle, busy})
	iw, bw := a.windows[0], a.windows[1]
	t.Logf("scheduled rate λ_P+λ_L = %.0f/s", lambda)
	for _, w := range []struct {
		name string
		w    linkWindow
	}{{"idle", iw}, {"download", bw}} {
		t.Logf("%-8s %.1f s: to the entry %.1f frames/s (pure ACKs %.1f/s); from the entry %.1f frames/s",
			w.name, w.w.seconds, w.w.upFrames/w.w.seconds, float64(w.w.upAcks)/w.w.seconds, w.w.downFrames/w.w.seconds)
	}
	var sizes []string
	keys := make([]int, 0, len(a.sizes))
	for k := range a.sizes {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	for _, k := range keys {
		sizes = append(sizes, fmt.Sprintf("%d×%d", a.sizes[k], k))
	}
	t.Logf("data segments to the entry by payload length: %s", strings.Join(sizes, " "))

	// The capture must have seen the traffic, and the download must have
	// been running, or the comparison says nothing.
	if iw.upFrames < lambda*iw.seconds/2 {
		t.Fatalf("only %.0f frames in the idle window: the capture is not seeing the link", iw.upFrames)
	}

	// Same length: every write on the link is a whole number of frames,
	// so an observer can count frames and nothing else.
	if a.pushes < 100 || len(a.misaligned) > 0 {
		t.Fatalf("%d of %d writes to the entry end inside a frame, first %+v", len(a.misaligned), a.pushes, a.misaligned[:min(len(a.misaligned), 3)])
	}
	// Same rate: each window's frame count is a Poisson count of mean
	// λT, and the two rates differ by no more than that noise.
	for _, w := range []linkWindow{iw, bw} {
		mean := lambda * w.seconds
		if d := math.Abs(w.upFrames - mean); d > 4*math.Sqrt(mean) {
			t.Errorf("%.0f frames in %.1f s, expected %.0f ± %.0f (4σ)", w.upFrames, w.seconds, mean, 4*math.Sqrt(mean))
		}
	}
	ri, rb := iw.upFrames/iw.seconds, bw.upFrames/bw.seconds
	if sigma := math.Sqrt(lambda/iw.seconds + lambda/bw.seconds); math.Abs(rb-ri) > 4*sigma {
		t.Errorf("frames to the entry at %.1f/s idle and %.1f/s downloading: more than 4σ (%.1f/s) apart", ri, rb, 4*sigma)
	}
	// The other way: the entry's paced frames. A download fills frames
	// that would otherwise be dummies; it does not add any.
	down := client.DownRatePerRate*set.MixRate + set.LoopRate
	for _, w := range []linkWindow{iw, bw} {
		mean := down * w.seconds
		if d := math.Abs(w.downFrames - mean); d > 4*math.Sqrt(mean)+0.05*mean {
			t.Errorf("%.0f frames from the entry in %.1f s, expected %.0f ± %.0f (4σ + 5%%)", w.downFrames, w.seconds, mean, 4*math.Sqrt(mean)+0.05*mean)
		}
	}
	// Known and not yet closed: the client's kernel acknowledges the
	// entry's segments at once while the daemon idles and with delayed
	// ACKs while it is busy, so the pure-ACK rate still tells a busy
	// client from an idle one (seen: 731/s idle, 282/s downloading).
	// Logged above; a link over UDP, or quick ACKs forced on the client's
	// socket, would close it.
}

// TestAnonMixKilledDuringDownload kills a mix's process while a download
// runs: the client's loops through it stop returning, it routes around
// the mix, and the download completes with the right hash.
//
// The download is 6 MiB, killed 2 s in, so that it normally ends before
// the client tries the dead mix again (DefaultAvoidFor, 30 s): each retry
// of a mix still listed in the directory costs another detection time
// of lost packets.
func TestAnonMixKilledDuringDownload(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	cd := startDaemon(t, st, anonSettings(st))
	connectAnon(t, cd)

	const size = 6 << 20
	fetch := anonFetch(t, st, fmt.Sprintf("http://internet.mixvpn.test/blob/%d", size), 150*time.Second)
	const into = 2 * time.Second
	time.Sleep(into)
	if !fetch.running() {
		out, err := fetch.wait()
		t.Fatalf("the download ended before the mix was killed: %v: %s", err, out)
	}
	const victim = "mix2a"
	pids := pidsInNS(t, st.ns(victim))
	if len(pids) == 0 {
		t.Fatalf("no process in %s's namespace", victim)
	}
	killed := time.Now()
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill %d: %v", pid, err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); len(pidsInNS(t, st.ns(victim))) > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%s still has processes after SIGKILL", victim)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("killed %s (pids %v) %v into the download", victim, pids, into)

	out, err := fetch.wait()
	if err != nil || !strings.Contains(out, fmt.Sprintf("%d bytes", size)) {
		t.Fatalf("download after the kill: %v: %s", err, out)
	}
	t.Logf("%s; done %.1f s after the kill", out, time.Since(killed).Seconds())

	// The client noticed through its loops and routes around the mix.
	avoid := regexp.MustCompile(`(?m)^time=(\S+) .*avoided=\[[^\]]*\b` + victim + `\b`)
	for deadline := time.Now().Add(20 * time.Second); ; {
		log := daemonLog(t, st)
		if m := avoid.FindStringSubmatch(log); m != nil {
			if at, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
				t.Logf("the client routed around %s %.1f s after the kill", victim, at.Sub(killed).Seconds())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client never routed around %s; daemon log:\n%s", victim, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// And traffic keeps flowing with the mix gone.
	if out, err := anonFetch(t, st, "http://internet.mixvpn.test/blob/1048576", 60*time.Second).wait(); err != nil {
		t.Fatalf("download with the mix avoided: %v: %s", err, out)
	}
}
