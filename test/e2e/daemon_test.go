package e2e

import (
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

// clientDaemon is mixvpnd running in the local network's client namespace.
type clientDaemon struct {
	t      *testing.T
	st     devnetState
	socket string
}

func startDaemon(t *testing.T, st devnetState, settings string) *clientDaemon {
	t.Helper()
	dir := t.TempDir()
	cd := &clientDaemon{t: t, st: st, socket: filepath.Join(dir, "mixvpnd.sock")}
	sp := filepath.Join(dir, "settings.json")
	os.WriteFile(sp, []byte(settings), 0o644)
	os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver 192.0.2.53\n"), 0o644)
	cmd := exec.Command("ip", "netns", "exec", st.ns("client"), bin("mixvpnd"), "--tun", "mvpn0",
		"--directory", st.DirectoryURL, "--directory-key", st.DirectoryKey, "--socket", cd.socket,
		"--settings", sp, "--system-settings", filepath.Join(dir, "none.json"), "--resolv-conf", filepath.Join(dir, "resolv.conf"))
	logf, _ := os.Create(filepath.Join(dir, "mixvpnd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("mixvpnd did not stop on SIGTERM")
			cmd.Process.Kill()
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("mixvpnd log:\n%s", b)
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := cd.cli("status"); err == nil {
			return cd
		}
		if time.Now().After(deadline) {
			t.Fatal("mixvpnd's socket never answered")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (cd *clientDaemon) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin("mixvpn"), append([]string{"--socket", cd.socket}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("mixvpn %v: %w: %s", args, err, out)
	}
	return string(out), nil
}

func (cd *clientDaemon) must(args ...string) {
	cd.t.Helper()
	if _, err := cd.cli(args...); err != nil {
		cd.t.Fatal(err)
	}
}

func (cd *clientDaemon) waitMode(mode string) {
	cd.t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		out, err := cd.cli("status", "--json")
		var s struct{ State, Mode, Error string }
		if err == nil && json.Unmarshal([]byte(out), &s) == nil {
			if s.State == "error" {
				cd.t.Fatalf("daemon error: %s", s.Error)
			}
			if s.State == "connected" && s.Mode == mode {
				return
			}
		}
		if time.Now().After(deadline) {
			cd.t.Fatalf("not connected in %s mode: %s %v", mode, out, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fetch downloads a blob in the client namespace; mixnode fetch checks its
// hash against the one the internet host publishes.
func (cd *clientDaemon) fetch(size int) string {
	cd.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", cd.st.ns("client"), bin("mixnode"), "fetch", "--timeout", "90s",
		"--dns", cd.st.addr("inet").String(), fmt.Sprintf("http://internet.mixvpn.test/blob/%d", size)).CombinedOutput()
	if err != nil {
		cd.t.Fatalf("fetch: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

// capture runs tcpdump on the client's outer interface until stop.
func capture(t *testing.T, st devnetState) (stop func() []string) {
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
// mode, Anonymous mode and back, downloading in each, while a capture on
// the client's outer interface checks that nothing but tunnel traffic to
// the directory and the entry gateway's ports ever leaves, DNS included.
func TestLeakConnectSwitchDisconnect(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	stop := capture(t, st)
	cd := startDaemon(t, st, fmt.Sprintf(`{"dns_servers": [%q], "kill_switch": true}`, st.addr("inet")))

	cd.must("connect", "--mode", "fast", "--entry", "DE", "--exit", "CH")
	cd.waitMode("fast")
	out, _ := cd.cli("status")
	if !strings.Contains(out, "entry1") || !strings.Contains(out, "exit1") {
		t.Fatalf("status does not show the chosen gateways:\n%s", out)
	}
	t.Log("fast: " + cd.fetch(4<<20))

	cd.must("mode", "anonymous")
	cd.waitMode("anonymous")
	t.Log("anonymous: " + cd.fetch(256<<10))

	cd.must("mode", "fast")
	cd.waitMode("fast")
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
