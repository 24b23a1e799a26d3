//go:build linux

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
	sack     bool // carries SACK blocks
}

var (
	segFlagsRE = regexp.MustCompile(`Flags \[([^\]]*)\]`)
	segSeqRE   = regexp.MustCompile(`seq (\d+):(\d+)`)
	segLenRE   = regexp.MustCompile(`length (\d+)`)
	segSackRE  = regexp.MustCompile(`\bsack \d+ \{`)
)

// captureLinkSegments runs tcpdump on the client's outer interface until the
// returned function is called, and returns the TCP segments it saw with
// absolute sequence numbers and epoch timestamps.
func captureLinkSegments(t *testing.T, st devnetState) (stop func() []linkSegment) {
	t.Helper()
	stopDump := tcpdump(t, st.ns("client"), outerIface(t, st), "tcp", false)
	return func() []linkSegment {
		pcap, _ := stopDump()
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
			s.sack = segSackRE.MatchString(l)
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
// window, counted as packets on the wire.
type linkWindow struct {
	seconds float64
	// upFrames are frames to the entry: new bytes (retransmissions left
	// out) over the frame size; downFrames frames from the entry.
	upFrames, downFrames float64
	// upData and downData count segments with data each way, upAcks
	// and downAcks those without (pure ACKs).
	upData, downData, upAcks, downAcks int
}

// per is n per second of the window.
func (w linkWindow) per(n int) float64 { return float64(n) / w.seconds }

// linkAnalysis follows the link both ways: per window counts, the
// payload lengths of data segments each way (those carrying SACK blocks
// apart: TCP shortens a segment by the blocks' length while it recovers
// from a loss), and the client's writes that did not end on a frame
// boundary.
type linkAnalysis struct {
	windows            []linkWindow
	upSizes, downSizes map[int]int
	sackSizes          map[int]int
	misaligned         []linkSegment
	pushes             int
}

// analyseLink reads the segments between client and entry (address.port
// of the entry's link) over the windows [from, to).
func analyseLink(segs []linkSegment, client, entry string, windows [][2]float64) linkAnalysis {
	a := linkAnalysis{windows: make([]linkWindow, len(windows)), upSizes: map[int]int{}, downSizes: map[int]int{}, sackSizes: map[int]int{}}
	for i, w := range windows {
		a.windows[i].seconds = w[1] - w[0]
	}
	in := func(at float64) *linkWindow {
		for i, w := range windows {
			if at >= w[0] && at < w[1] {
				return &a.windows[i]
			}
		}
		return nil
	}
	var next, ref uint32
	started, aligned := false, false
	for _, s := range segs {
		up := strings.HasPrefix(s.src, client+".") && s.dst == entry
		down := s.src == entry && strings.HasPrefix(s.dst, client+".")
		w := in(s.at)
		if w == nil {
			w = &linkWindow{} // counted nowhere
		}
		switch {
		case up && s.length == 0:
			w.upAcks++
		case down && s.length == 0:
			w.downAcks++
		case down:
			w.downData++
			if s.sack {
				a.sackSizes[s.length]++
			} else {
				a.downSizes[s.length]++
			}
			w.downFrames += float64(s.length) / linkFrameSize
		case up:
			w.upData++
			if s.sack {
				a.sackSizes[s.length]++
			} else {
				a.upSizes[s.length]++
			}
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
			w.upFrames += float64(fresh) / linkFrameSize
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
		}
	}
	return a
}

// histogram is sizes as "count×size", smallest size first.
func histogram(sizes map[int]int) string {
	keys := make([]int, 0, len(sizes))
	for k := range sizes {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var out []string
	for _, k := range keys {
		out = append(out, fmt.Sprintf("%d×%d", sizes[k], k))
	}
	return strings.Join(out, " ")
}

var linkPeerRE = regexp.MustCompile(`@if(\d+):.* link-netns (\S+)`)

// wireSegments makes both ends of the client's outer veth carry one TCP
// segment per packet (gso_max_segs 1), so that a capture on it sees the
// packets a wire would carry. A veth otherwise passes on GSO
// super-packets of up to 64 KiB, several segments that a real network
// card would send one by one, and the capture would show one long packet
// per write instead. It must run before the daemon connects: a socket
// takes the limit from its route when it connects.
func wireSegments(t *testing.T, st devnetState) {
	t.Helper()
	iface := outerIface(t, st)
	out, err := exec.Command("ip", "-n", st.ns("client"), "-o", "link", "show", "dev", iface).Output()
	m := linkPeerRE.FindStringSubmatch(string(out))
	if err != nil || m == nil {
		t.Fatalf("the client's %s has no veth peer: %v: %s", iface, err, out)
	}
	peers, err := exec.Command("ip", "-n", m[2], "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var peer string
	for _, l := range strings.Split(string(peers), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == m[1]+":" {
			peer = strings.TrimSuffix(strings.Split(f[1], "@")[0], ":")
		}
	}
	if peer == "" {
		t.Fatalf("no interface %s in %s:\n%s", m[1], m[2], peers)
	}
	for _, end := range [][2]string{{st.ns("client"), iface}, {m[2], peer}} {
		if out, err := exec.Command("ip", "-n", end[0], "link", "set", "dev", end[1], "gso_max_segs", "1").CombinedOutput(); err != nil {
			t.Fatalf("ip link set %s gso_max_segs 1 in %s: %v: %s", end[1], end[0], err, out)
		}
	}
}

// TestLeakAnonConstantRate captures the client's outer interface with the
// daemon in anonymous mode, for a window with nothing to send and a window
// with a download running, and checks what an observer of the link to
// the entry learns:
//
//   - Length: every data segment, either way, has one payload length
//     (half a frame on a 1500-byte MTU), and every write to the entry is
//     whole frames. The client's link socket (platform/linksock) sets the
//     segment size to divide a frame, for both directions. Before, frames
//     went out as 1448 + 982 bytes, or several coalesced.
//   - Rate: frames flow at the scheduled Poisson rates (λ_P+λ_L to the
//     entry, the paced rate asked from it) in both windows, and the
//     client's packets, pure ACKs included, and the entry's data
//     segments differ between the windows by no more than the Poisson
//     noise of those frames. The client's ACKs follow the entry's frames,
//     one per frame, because linksock makes its kernel acknowledge
//     segments as they arrive whether or not the daemon has read them;
//     before, the kernel delayed its ACKs while the daemon was busy
//     (seen: 731/s idle against 282/s downloading).
//
// The capture shows wire packets: both ends of the client's veth are set
// to carry one segment per packet (wireSegments).
//
// Not closed, and logged rather than asserted: the entry's own pure ACKs
// follow its reader's lag (see the end of the test); they need the entry
// to ACK every segment (quickack on its route to clients), which the
// devnet does not set up, or the same socket shaping on its side. And by
// nature of TCP, pure ACKs have no payload, so the packets carry two
// lengths, not one, and segments are shorter while TCP recovers from a
// loss; only a link over UDP would give every packet one length.
func TestLeakAnonConstantRate(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	wireSegments(t, st)
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
	down := client.DownRatePerRate*set.MixRate + set.LoopRate
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
	t.Logf("scheduled: %.0f frames/s to the entry (λ_P+λ_L), %.0f from it (paced)", lambda, down)
	for _, w := range []struct {
		name string
		w    linkWindow
	}{{"idle", iw}, {"download", bw}} {
		t.Logf("%-8s %.1f s: to the entry %.1f frames/s in %.1f segments/s + %.1f pure ACKs/s; from it %.1f frames/s in %.1f segments/s + %.1f pure ACKs/s",
			w.name, w.w.seconds, w.w.upFrames/w.w.seconds, w.w.per(w.w.upData), w.w.per(w.w.upAcks),
			w.w.downFrames/w.w.seconds, w.w.per(w.w.downData), w.w.per(w.w.downAcks))
	}
	t.Logf("data segments by payload length: to the entry %s; from it %s; carrying SACK blocks, either way, %s",
		histogram(a.upSizes), histogram(a.downSizes), histogram(a.sackSizes))

	// The capture must have seen the traffic, and the download must have
	// been running, or the comparison says nothing.
	if iw.upFrames < lambda*iw.seconds/2 {
		t.Fatalf("only %.0f frames in the idle window: the capture is not seeing the link", iw.upFrames)
	}

	// Same length: every write on the link is a whole number of frames,
	// and every data segment either way carries the same share of one.
	// While TCP recovers from a loss its segments carry SACK blocks and
	// are shorter by their length (and a frame's last piece is then a
	// few bytes): that is TCP's, rare, and only bounded here.
	if a.pushes < 100 || len(a.misaligned) > 0 {
		t.Fatalf("%d of %d writes to the entry end inside a frame, first %+v", len(a.misaligned), a.pushes, a.misaligned[:min(len(a.misaligned), 3)])
	}
	lengths, plain, sacked := map[int]bool{}, 0, 0
	for _, sizes := range []map[int]int{a.upSizes, a.downSizes} {
		for k, n := range sizes {
			lengths[k] = true
			plain += n
		}
	}
	for _, n := range a.sackSizes {
		sacked += n
	}
	seg := 0
	for k := range lengths {
		seg = max(seg, k)
	}
	if len(lengths) != 1 {
		t.Errorf("data segments of %d lengths: to the entry %s; from it %s", len(lengths), histogram(a.upSizes), histogram(a.downSizes))
	}
	if seg == 0 || linkFrameSize%seg != 0 {
		t.Fatalf("data segments of up to %d bytes do not divide a frame", seg)
	}
	if sacked*100 > plain+sacked {
		t.Errorf("%d of %d data segments carry SACK blocks (lengths %s): the link is losing packets", sacked, plain+sacked, histogram(a.sackSizes))
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
	for _, w := range []linkWindow{iw, bw} {
		mean := down * w.seconds
		if d := math.Abs(w.downFrames - mean); d > 4*math.Sqrt(mean)+0.05*mean {
			t.Errorf("%.0f frames from the entry in %.1f s, expected %.0f ± %.0f (4σ + 5%%)", w.downFrames, w.seconds, mean, 4*math.Sqrt(mean)+0.05*mean)
		}
	}
	// Packets, each way, and pure ACKs on their own. A frame is k
	// segments, and each side's pure ACKs come a (about) per frame it
	// receives, so the packets to the entry are k per frame of λ and a
	// per frame of the paced rate: scaled Poisson counts, of variance
	// k²λ + max(a, a²)·down per second (a thinned Poisson count, a < 1,
	// has variance a·rate). The other way likewise.
	k := float64(linkFrameSize / seg)
	spread := func(acks, frames float64) float64 {
		a := acks / max(frames, 1)
		return max(a, a*a)
	}
	upA := spread(float64(iw.upAcks+bw.upAcks), iw.downFrames+bw.downFrames)
	downA := spread(float64(iw.downAcks+bw.downAcks), iw.upFrames+bw.upFrames)
	type count struct {
		what       string
		idle, busy int
		variance   float64 // per second
	}
	counts := []count{
		{"data segments to the entry", iw.upData, bw.upData, k * k * lambda},
		{"pure ACKs to the entry", iw.upAcks, bw.upAcks, upA * down},
		{"packets to the entry", iw.upData + iw.upAcks, bw.upData + bw.upAcks, k*k*lambda + upA*down},
		{"data segments from the entry", iw.downData, bw.downData, k * k * down},
	}
	// The entry's own ACKs are the entry's kernel's: by default it ACKs
	// at once while its reader keeps up, and late when it is behind, so
	// on this network, where every node shares two cores with the
	// download, they follow the download (seen: 125-145/s idle, 61-76/s
	// downloading). An entry whose route to its clients has quickack on
	// ACKs every segment as it arrives (seen: 421/s and 405/s, two per
	// frame from the client) and is checked like the client; the devnet
	// does not set it up yet.
	entryCounts := []count{
		{"pure ACKs from the entry", iw.downAcks, bw.downAcks, downA * lambda},
		{"packets from the entry", iw.downData + iw.downAcks, bw.downData + bw.downAcks, k*k*down + downA*lambda},
	}
	if entryQuickAcks(t, st, "entry1", clientAddr) {
		counts = append(counts, entryCounts...)
	} else {
		for _, c := range entryCounts {
			t.Logf("not asserted (the entry does not ACK every segment): %s at %.1f/s idle and %.1f/s downloading", c.what, iw.per(c.idle), bw.per(c.busy))
		}
	}
	for _, c := range counts {
		ri, rb := iw.per(c.idle), bw.per(c.busy)
		if sigma := math.Sqrt(c.variance/iw.seconds + c.variance/bw.seconds); math.Abs(rb-ri) > 4*sigma {
			t.Errorf("%s at %.1f/s idle and %.1f/s downloading: more than 4σ (%.1f/s) apart", c.what, ri, rb, 4*sigma)
		}
	}
}

// entryQuickAcks reports whether the entry's route to the client has
// quickack on, so that its kernel acknowledges every segment as it
// arrives.
func entryQuickAcks(t *testing.T, st devnetState, entry, client string) bool {
	t.Helper()
	out, err := exec.Command("ip", "-n", st.ns(entry), "route", "get", client).Output()
	if err != nil {
		t.Fatalf("%s's route to %s: %v", entry, client, err)
	}
	return strings.Contains(string(out), "quickack 1")
}

// TestAnonMixKilledDuringDownload kills a mix's process while a download
// runs: the client's loops through it stop returning, it routes around
// the mix within seconds, and the download goes on without stalling, well
// past the point (30 s after noticing) where the client used to try the
// dead mix again with real traffic; it completes with the right hash. The
// mix, still in the directory all along, is then started again, and the
// client's probe loops bring it back into routes.
//
// The download runs in the test, through the tunnel from the client
// namespace, so that its progress can be timed; its size is what a
// warm-up download says the network carries in 45 s, and smaller ones
// follow until the mix is seen back in routes.
func TestAnonMixKilledDuringDownload(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	cd := startDaemon(t, st, anonSettings(st))
	connectAnon(t, cd)
	const victim = "mix2a"
	inet4, _ := st.anonAddrs("inet")
	base := "http://" + inet4.String()
	hc := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNS(st.ns("client"), func() (net.Conn, error) {
				return (&net.Dialer{Timeout: 30 * time.Second}).DialContext(ctx, network, addr)
			})
		},
	}}
	type mark struct {
		at time.Time
		n  int64
	}
	// download fetches /blob/size, checks its hash against the server's
	// and returns when each read ended and how much had arrived by then.
	download := func(ctx context.Context, size int64) ([]mark, error) {
		t.Helper()
		get := func(path string) (*http.Response, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
			if err != nil {
				return nil, err
			}
			req.Host = "internet.mixvpn.test"
			resp, err := hc.Do(req)
			if err == nil && resp.StatusCode != http.StatusOK {
				resp.Body.Close()
				err = fmt.Errorf("GET %s: %s", path, resp.Status)
			}
			return resp, err
		}
		resp, err := get(fmt.Sprintf("/blob/%d", size))
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		h := sha256.New()
		marks := []mark{{time.Now(), 0}}
		buf := make([]byte, 64<<10)
		var n int64
		for {
			k, err := resp.Body.Read(buf)
			h.Write(buf[:k])
			if n += int64(k); k > 0 {
				marks = append(marks, mark{time.Now(), n})
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return marks, fmt.Errorf("after %d of %d bytes: %w", n, size, err)
			}
		}
		if n != size {
			return marks, fmt.Errorf("%d bytes, want %d", n, size)
		}
		resp, err = get(fmt.Sprintf("/blob/%d.sha256", size))
		if err != nil {
			return marks, fmt.Errorf("hash: %w", err)
		}
		want, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := hex.EncodeToString(h.Sum(nil)); err != nil || got != strings.TrimSpace(string(want)) {
			return marks, fmt.Errorf("sha256 %s, the server says %q (%v)", got, want, err)
		}
		return marks, nil
	}
	// forwarded reads how many packets a mix has forwarded from its
	// metrics address, from inside its own namespace.
	forwarded := func(name string) float64 {
		a, _ := st.anonAddrs(name)
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return dialInNS(st.ns(name), func() (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, addr)
				})
			},
		}}
		resp, err := c.Get("http://" + net.JoinHostPort(a.String(), "9100") + "/metrics")
		if err != nil {
			t.Fatalf("%s's metrics: %v", name, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		const key = `mixnode_packets_out_total{kind="forward"} `
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, key); ok {
				if f, err := strconv.ParseFloat(v, 64); err == nil {
					return f
				}
			}
		}
		t.Fatalf("%s's metrics have no %s", name, key)
		return 0
	}
	// logTime finds the first daemon log line re matches and returns its
	// time, waiting at most wait for it.
	logTime := func(re *regexp.Regexp, wait time.Duration) (time.Time, string, bool) {
		for deadline := time.Now().Add(wait); ; time.Sleep(100 * time.Millisecond) {
			if m := re.FindStringSubmatch(daemonLog(t, st)); m != nil {
				at, err := time.Parse(time.RFC3339Nano, m[1])
				if err != nil {
					t.Fatalf("log time %q: %v", m[1], err)
				}
				return at, m[0], true
			}
			if time.Now().After(deadline) {
				return time.Time{}, "", false
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The warm-up's rate leaves out its first MiB, TCP's slow start.
	const warm = 5 << 20
	wm, err := download(ctx, warm)
	if err != nil {
		t.Fatalf("warm-up download: %v", err)
	}
	i := sort.Search(len(wm), func(i int) bool { return wm[i].n >= 1<<20 })
	rate := float64(warm-wm[i].n) / wm[len(wm)-1].at.Sub(wm[i].at).Seconds()
	size := min(max(int64(rate*45)>>20, 16), 48) << 20
	t.Logf("warm-up: %.1f Mbit/s after its first MiB; downloading %d MiB", rate*8/1e6, size>>20)

	// Smaller downloads follow (a few, each checked) until the test has
	// seen the mix back in routes, should the network be faster than the
	// warm-up said.
	const into = 2 * time.Second
	started := time.Now()
	enough := make(chan struct{})
	var marks []mark
	var sizes []int64
	var dlErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		var total int64
		for size := size; len(sizes) < 8; size = 8 << 20 {
			m, err := download(ctx, size)
			for _, k := range m {
				marks = append(marks, mark{k.at, total + k.n})
			}
			if dlErr = err; err != nil {
				return
			}
			total += size
			sizes = append(sizes, size>>20)
			select {
			case <-enough:
				return
			default:
			}
		}
	}()
	time.Sleep(into)
	select {
	case <-done:
		t.Fatalf("the download ended before the mix was killed: %v", dlErr)
	default:
	}

	// Kill the mix as a crash would, keeping its command line to start it
	// again with the same data directory and keys.
	pids := pidsInNS(t, st.ns(victim))
	if len(pids) != 1 {
		t.Fatalf("%s's namespace has processes %v; want the node alone", victim, pids)
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pids[0]))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	killed := time.Now()
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatalf("kill %d: %v", pids[0], err)
	}
	for deadline := time.Now().Add(5 * time.Second); len(pidsInNS(t, st.ns(victim))) > 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still has processes after SIGKILL", victim)
		}
	}
	t.Logf("killed %s (pid %d) %v into the download", victim, pids[0], into)

	// The client notices through its loops and routes around the mix.
	avoidRE := regexp.MustCompile(`(?m)^time=(\S+) .*avoided=\[[^\]]*\b` + victim + `\b.*$`)
	detected, line, ok := logTime(avoidRE, 30*time.Second)
	if !ok {
		t.Fatalf("the client never routed around %s; daemon log:\n%s", victim, daemonLog(t, st))
	}
	detection := detected.Sub(killed)
	t.Logf("the client routed around %s %.1f s after the kill: %s", victim, detection.Seconds(), line)
	if detection > 8*time.Second {
		t.Errorf("detection took %.1f s", detection.Seconds())
	}

	// The old client tried the mix again 30 s after avoiding it, with
	// real traffic, and stalled for another detection time. Past that
	// point the mix is still dead and still avoided; then it comes back.
	oldRetry := detected.Add(30 * time.Second)
	select {
	case <-done:
	case <-time.After(time.Until(oldRetry.Add(5 * time.Second))):
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), victim+".log"))
	if err != nil {
		t.Fatal(err)
	}
	node := exec.Command("ip", append([]string{"netns", "exec", st.ns(victim)}, args...)...)
	node.Stdout, node.Stderr = logf, logf
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	t.Cleanup(func() {
		stopProcess(t, node, 10*time.Second)
		logf.Close()
		b, _ := os.ReadFile(logf.Name())
		t.Logf("restarted %s's log:\n%s", victim, b)
	})
	t.Logf("restarted %s %.1f s after the kill", victim, restarted.Sub(killed).Seconds())
	readmitRE := regexp.MustCompile(`(?m)^time=(\S+) .*readmitted=\[[^\]]*\b` + victim + `\b.*$`)
	// Its neighbours redial it with backoff of up to 10 s, then probes
	// need a couple of seconds.
	if at, _, ok := logTime(readmitRE, 30*time.Second); !ok {
		t.Errorf("the client never took %s back after its restart", victim)
	} else {
		t.Logf("the client took %s back %.1f s after its restart", victim, at.Sub(restarted).Seconds())
		// Back in routes, it carries real traffic again: about as much as
		// the other mix of its layer, where probes alone would be a few a
		// second.
		a0, b0 := forwarded(victim), forwarded("mix2b")
		time.Sleep(5 * time.Second)
		a1, b1 := forwarded(victim), forwarded("mix2b")
		t.Logf("in the 5 s after: %s forwarded %.0f packets, mix2b %.0f", victim, a1-a0, b1-b0)
		if a1-a0 < (b1-b0)/4 {
			t.Errorf("%s forwarded %.0f packets in 5 s after it was taken back, mix2b %.0f", victim, a1-a0, b1-b0)
		}
	}
	close(enough)

	<-done
	if dlErr != nil {
		t.Fatalf("download across the kill: %v", dlErr)
	}
	end := marks[len(marks)-1].at
	total := marks[len(marks)-1].n
	t.Logf("downloaded %v MiB in %.1f s (%.1f Mbit/s), ending %.1f s after the kill; every sha256 matches",
		sizes, end.Sub(started).Seconds(), float64(total)*8/end.Sub(started).Seconds()/1e6, end.Sub(killed).Seconds())
	if end.Before(oldRetry.Add(5 * time.Second)) {
		t.Errorf("the download ended %.1f s after the old retry point; too soon to show the dead mix staying out", end.Sub(oldRetry).Seconds())
	}
	// Progress: the longest wait for data from the kill on, and from
	// detection on; a per-5-s throughput line for the log.
	gap := func(from time.Time) (time.Duration, time.Time) {
		var worst time.Duration
		var at time.Time
		for i := 1; i < len(marks); i++ {
			if marks[i].at.Before(from) {
				continue
			}
			prev := marks[i-1].at
			if prev.Before(from) {
				prev = from
			}
			if d := marks[i].at.Sub(prev); d > worst {
				worst, at = d, prev
			}
		}
		return worst, at
	}
	var buckets []string
	for from := started; from.Before(end); from = from.Add(5 * time.Second) {
		var a, b int64
		for _, m := range marks {
			if !m.at.After(from) {
				a = m.n
			}
			if !m.at.After(from.Add(5 * time.Second)) {
				b = m.n
			}
		}
		buckets = append(buckets, fmt.Sprintf("%.1f", float64(b-a)*8/5/1e6))
	}
	t.Logf("Mbit/s per 5 s from the start: %s", strings.Join(buckets, " "))
	afterKill, atK := gap(killed)
	afterDetection, atD := gap(detected)
	t.Logf("longest wait for data: %.1f s from the kill on (at +%.1f s), %.1f s after detection (at +%.1f s after the kill)",
		afterKill.Seconds(), atK.Sub(killed).Seconds(), afterDetection.Seconds(), atD.Sub(killed).Seconds())
	// Right after detection TCP may still be recovering from what was
	// lost before it, its retransmission timer doubled by each lost
	// retry; a stall past that is a route through the dead mix.
	if afterDetection > 5*time.Second {
		t.Errorf("the download stalled %.1f s after the client had routed around the dead mix", afterDetection.Seconds())
	}
	if out, err := cd.cli("stats"); err == nil {
		t.Logf("tunnel stats:\n%s", out)
	}
	health := regexp.MustCompile(`(?m)^.*(routing around|back in routes|network trouble|loops return again).*$`)
	t.Logf("the client's health log:\n%s", strings.Join(health.FindAllString(daemonLog(t, st), -1), "\n"))
}
