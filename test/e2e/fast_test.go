//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/mixvpn/mixvpn/platform/netns"
	"github.com/mixvpn/mixvpn/tunnel/fast"
)

// TestFast runs Fast mode end to end on one local network: a download and
// iperf3 through both hops, what an observer between the entry and the
// exit sees, an entry gateway that crashes mid-transfer, and an exit hop
// that is a stock WireGuard peer set up with Debian's tools alone.
func TestFast(t *testing.T) {
	needRoot(t)
	for _, tool := range []string{"iperf3", "tcpdump", "wg", "wireguard-go", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (make deps installs it): %v", tool, err)
		}
	}
	st := startDevnet(t)
	cd := startDaemon(t, st, fmt.Sprintf(`{"dns_servers": [%q], "kill_switch": true}`, st.addr("inet")))
	cd.must("connect", "--mode", "fast", "--entry", "DE", "--exit", "CH")
	waitFastConnected(t, cd)

	t.Run("DownloadAndIperf3", func(t *testing.T) { fastDownloadAndIperf(t, st, cd) })
	t.Run("CaptureBetweenEntryAndExit", func(t *testing.T) { fastCapture(t, st, cd) })
	t.Run("EntryRestartMidTransfer", func(t *testing.T) { fastEntryRestart(t, st, cd) })
	t.Run("StockExit", func(t *testing.T) { fastStockExit(t, st) })
}

// waitFastConnected polls the daemon until it is connected in Fast mode.
func waitFastConnected(t *testing.T, cd *clientDaemon) {
	t.Helper()
	deadline := time.Now().Add(45 * time.Second)
	for {
		out, err := cd.cli("status", "--json")
		var s struct{ State, Mode, Error string }
		if err == nil && json.Unmarshal([]byte(out), &s) == nil && s.State == "connected" && s.Mode == "fast" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not connected in Fast mode within 45 s: %s %v", out, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fastDownloadAndIperf: a hash-checked download and iperf3 both ways, and
// the gateways' WireGuard counters show that the bytes crossed both.
func fastDownloadAndIperf(t *testing.T, st devnetState, cd *clientDaemon) {
	entryDev, exitDev := wgDevice(t, st.ns("entry1")), wgDevice(t, st.ns("exit1"))
	entryBefore, exitBefore := wgTransfer(t, st.ns("entry1"), entryDev), wgTransfer(t, st.ns("exit1"), exitDev)
	t.Log(cd.fetch(16 << 20))
	var moved uint64
	for _, reverse := range []bool{false, true} {
		args := []string{"netns", "exec", st.ns("client"), "iperf3", "-c", st.addr("inet").String(), "-t", "2", "-J"}
		if reverse {
			args = append(args, "-R")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, "ip", args...).Output()
		cancel()
		var res struct {
			End struct {
				SumReceived struct {
					Bytes         uint64  `json:"bytes"`
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
			Error string `json:"error"`
		}
		if jerr := json.Unmarshal(out, &res); err != nil || jerr != nil || res.Error != "" || res.End.SumReceived.Bytes == 0 {
			t.Fatalf("iperf3 (reverse %v): %v %v %s\n%s", reverse, err, jerr, res.Error, out)
		}
		moved += res.End.SumReceived.Bytes
		t.Logf("iperf3 reverse=%v: %d bytes, %.0f Mbit/s", reverse, res.End.SumReceived.Bytes, res.End.SumReceived.BitsPerSecond/1e6)
	}
	moved += 16 << 20
	entryGrew := wgTransfer(t, st.ns("entry1"), entryDev) - entryBefore
	exitGrew := wgTransfer(t, st.ns("exit1"), exitDev) - exitBefore
	if entryGrew < moved || exitGrew < moved {
		t.Fatalf("moved %d bytes, but the entry's WireGuard carried %d and the exit's %d", moved, entryGrew, exitGrew)
	}
	if entryGrew <= exitGrew {
		t.Errorf("the entry carried %d bytes, no more than the exit's %d inside it", entryGrew, exitGrew)
	}
}

// fastCapture watches a download from two places: on the entry's backbone
// interface, filtered to entry↔exit, and everything on the exit's. Between
// them there is nothing but WireGuard to the exit's port (and the mixnet
// link the two gateways share); nothing anywhere carries the client's
// address or a tunnel address; and the exit's client traffic comes from
// the entry alone.
func fastCapture(t *testing.T, st devnetState, cd *clientDaemon) {
	entry, exit := st.addr("entry1"), st.addr("exit1")
	between := startCapture(t, st.ns("entry1"), ifaceWith(t, st.ns("entry1"), entry), fmt.Sprintf("host %s and host %s", entry, exit))
	outside := startCapture(t, st.ns("exit1"), ifaceWith(t, st.ns("exit1"), exit), "")
	t.Log(cd.fetch(4 << 20))
	betweenPkts, outsidePkts := between(), outside()

	// Both gateways' sockets and TUNs use UDP segmentation offload, so one
	// captured packet may be many WireGuard messages of one size: the
	// bytes, not the packets, tell that the capture saw the download.
	exitWG := netip.AddrPortFrom(exit, 51820)
	secret := secretAddrs(st)
	// Besides WireGuard, the two gateways share a mixnet link: a client's
	// exit registration crosses it as a Sphinx packet the entry forwards,
	// and keepalives keep it up. It is no client's IP traffic.
	var wgCount, wgBytes, linkCount, largest int
	for _, p := range betweenPkts {
		switch {
		case p.housekeeping():
			continue
		case secret(p):
			t.Fatalf("entry↔exit packet shows the client: %v", p)
		case p.isLink():
			linkCount++
			continue
		case !p.isWireGuard(entry, exitWG):
			t.Fatalf("entry↔exit packet that is neither WireGuard to the exit's port nor the mixnet link: %v", p)
		}
		wgCount++
		wgBytes += p.length
		largest = max(largest, p.length)
	}
	if wgBytes < 4<<20 {
		t.Fatalf("only %d bytes of WireGuard between entry and exit in %d packets: the capture did not see the 4 MiB download", wgBytes, len(betweenPkts))
	}

	kinds := map[string]int{}
	sources := map[netip.Addr]bool{}
	fromEntry := 0
	for _, p := range outsidePkts {
		if secret(p) {
			t.Fatalf("packet at the exit shows the client: %v", p)
		}
		kind := classifyAtExit(st, p, exitWG)
		if kind == "" {
			t.Fatalf("unexpected packet at the exit's outer side: %v", p)
		}
		if kind == "client traffic (WireGuard)" {
			fromEntry += p.length
			if p.dst == exit {
				sources[p.src] = true
			}
		}
		kinds[kind]++
	}
	if len(sources) != 1 || !sources[entry] || fromEntry < 4<<20 {
		t.Fatalf("client traffic (%d bytes) reached the exit from %v; want the entry %v alone", fromEntry, sources, entry)
	}
	t.Logf("entry↔exit: %d WireGuard packets (%d bytes, the largest %d: more than one message when segmentation offload is on) and %d of the mixnet link; at the exit, packets by kind: %v",
		wgCount, wgBytes, largest, linkCount, kinds)
}

// classifyAtExit names what a packet on the exit's outer interface is, or
// returns "" for what has no business there.
func classifyAtExit(st devnetState, p wireFrame, exitWG netip.AddrPort) string {
	if p.housekeeping() {
		return "link housekeeping (ARP, ND, MLD)"
	}
	peer := p.src
	if peer == exitWG.Addr() {
		peer = p.dst
	} else if p.dst != exitWG.Addr() {
		return ""
	}
	role := ""
	for _, h := range st.Hosts {
		if h.Addr4 == peer || h.Addr6 == peer {
			role = h.Role
		}
	}
	switch {
	case role == "entry" && p.isWireGuard(peer, exitWG):
		return "client traffic (WireGuard)"
	case (role == "mix" || role == "entry") && p.isLink():
		return "mixnet links"
	case role == "directory" && p.proto == protoTCP && (p.sport == 8080 || p.dport == 8080):
		return "directory"
	case role == "internet":
		return "internet, from the exit's own address (NAT)"
	}
	return ""
}

// secretAddrs reports whether a packet's header carries the client's
// backbone address or any gateway's tunnel pool address.
func secretAddrs(st devnetState) func(wireFrame) bool {
	pools := []netip.Prefix{netip.MustParsePrefix("10.101.0.0/16"), netip.MustParsePrefix("10.102.0.0/16"),
		netip.MustParsePrefix("10.151.0.0/16"), netip.MustParsePrefix("10.152.0.0/16"), netip.MustParsePrefix("fd00:6d77::/32")}
	client := st.addr("client")
	return func(p wireFrame) bool {
		for _, a := range []netip.Addr{p.src, p.dst} {
			if a == client || slices.ContainsFunc(pools, func(pf netip.Prefix) bool { return pf.Contains(a) }) {
				return true
			}
		}
		return false
	}
}

// fastEntryRestart kills the entry gateway's node in the middle of a
// download and starts it again on the same data directory. The restarted
// entry restores its registrations, the client's next handshake works, and
// the download completes with the right hash.
func fastEntryRestart(t *testing.T, st devnetState, cd *clientDaemon) {
	ns := st.ns("entry1")
	dev := wgDevice(t, ns)
	before := wgTransfer(t, ns, dev)
	const size = 256 << 20
	fetchOut := &lockedBuffer{}
	fetch := exec.Command("ip", "netns", "exec", st.ns("client"), bin("mixnode"), "fetch", "--timeout", "100s",
		"--dns", st.addr("inet").String(), fmt.Sprintf("http://internet.mixvpn.test/blob/%d", size))
	fetch.Stdout, fetch.Stderr = fetchOut, fetchOut
	if err := fetch.Start(); err != nil {
		t.Fatal(err)
	}
	var fetchErr error
	done := make(chan struct{})
	go func() { fetchErr = fetch.Wait(); close(done) }()
	t.Cleanup(func() {
		fetch.Process.Kill() // nothing if it is done
		<-done
	})

	// Crash the entry once a few MiB have crossed it.
	deadline := time.Now().Add(30 * time.Second)
	for wgTransfer(t, ns, dev)-before < 8<<20 {
		select {
		case <-done:
			t.Fatalf("the download ended before the entry could be stopped: %v %s", fetchErr, fetchOut)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the download did not start within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	crashed := time.Now()
	node := restartNode(t, ns, "")
	select {
	case <-done:
		t.Fatalf("the download ended while the entry was down: %v %s", fetchErr, fetchOut)
	default:
	}

	select {
	case <-done:
		if fetchErr != nil {
			t.Fatalf("download after the entry's restart: %v\n%s\nentry log:\n%s", fetchErr, fetchOut, node.log())
		}
	case <-time.After(110 * time.Second):
		t.Fatal("the download did not finish within 110 s of the restart")
	}
	t.Logf("%s (entry crashed %v before the end)", strings.TrimSpace(fetchOut.String()), time.Since(crashed).Round(time.Millisecond))
	if !strings.Contains(node.log(), "registrations restored") {
		t.Errorf("the restarted entry did not restore its registrations:\n%s", node.log())
	}
	out, err := cd.cli("status", "--json")
	var s struct{ State, Mode, Entry string }
	if err != nil || json.Unmarshal([]byte(out), &s) != nil || s.State != "connected" || s.Entry != "entry1" {
		t.Errorf("daemon after the restart: %s %v", out, err)
	}
}

// fastStockExit chains our entry to an exit that is nothing of ours: a
// Debian wireguard-go device configured with wg(8), ip(8) and nft(8), on a
// host the test adds to the network. The client is Fast mode's tunnel with
// the user's own wg-quick configurations, and the entry's registration is
// made the stock way too: its operator adds the peer with wg(8).
//
// The entry forwards only to exits it knows, so its operator lists the
// stock exit's endpoint (wireguard.extra_exits) and restarts it, as one
// would for an exit of one's own. The same exit on an address the operator
// did not list stays unreachable: its handshake never arrives.
func fastStockExit(t *testing.T, st devnetState) {
	lab, err := netns.NewLab("mvst")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
	})
	stock, byo := addToBackbone(t, lab, st, "stock", "198.51.100.60/24", "198.51.100.61/24"), addToBackbone(t, lab, st, "byo", "198.51.100.62/32")
	cmdOK(t, "ip", "-n", byo.NS, "route", "add", "default", "dev", "eth0")
	listed, unlisted := netip.MustParseAddrPort("198.51.100.60:51820"), netip.MustParseAddrPort("198.51.100.61:51820")
	inet := st.addr("inet")
	dir := t.TempDir()

	// The stock exit: wireguard-go makes a bare device, the rest is wg,
	// ip and nft.
	stockDev := "wgs" + lab.ID()[len(lab.ID())-6:]
	startStockWireGuard(t, stock, stockDev)
	stockPriv, stockPub := wgKeys(t, dir, "stock")
	clientExitPriv, clientExitPub := wgKeys(t, dir, "client-exit")
	clientEntryPriv, clientEntryPub := wgKeys(t, dir, "client-entry")
	cmdOK(t, "ip", "netns", "exec", stock.NS, "wg", "set", stockDev, "listen-port", "51820", "private-key", stockPriv,
		"peer", clientExitPub, "allowed-ips", "10.210.0.2/32")
	cmdOK(t, "ip", "-n", stock.NS, "addr", "add", "10.210.0.1/24", "dev", stockDev)
	cmdOK(t, "ip", "-n", stock.NS, "link", "set", stockDev, "up")
	cmdOK(t, "ip", "netns", "exec", stock.NS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	cmdOK(t, "ip", "netns", "exec", stock.NS, "nft", "add table ip stock; add chain ip stock post { type nat hook postrouting priority srcnat; }; add rule ip stock post oifname eth0 ip saddr 10.210.0.0/24 masquerade")

	// The entry's operator lists the exit and restarts, then adds the
	// client's peer with wg(8).
	ns := st.ns("entry2")
	restartNode(t, ns, `"198.51.100.60:51820"`)
	entryDev := wgDevice(t, ns)
	cmdOK(t, "ip", "netns", "exec", ns, "wg", "set", entryDev, "peer", clientEntryPub, "allowed-ips", "10.102.250.2/32")
	entryPub := strings.TrimSpace(cmdOutput(t, "ip", "netns", "exec", ns, "wg", "show", entryDev, "public-key"))

	// The client may reach the internet host only through the tunnel.
	cmdOK(t, "ip", "netns", "exec", byo.NS, "nft", "add table inet byo; add chain inet byo out { type filter hook output priority filter; }; add rule inet byo out oifname eth0 ip daddr "+inet.String()+" drop")

	entryConf := fmt.Sprintf("[Interface]\nPrivateKey = %s\nAddress = 10.102.250.2/32\n\n[Peer]\nPublicKey = %s\nEndpoint = %s:51820\nAllowedIPs = 198.51.100.60/32, 198.51.100.61/32\n",
		fileText(t, clientEntryPriv), entryPub, st.addr("entry2"))
	exitConf := func(ep netip.AddrPort) string {
		return fmt.Sprintf("[Interface]\nPrivateKey = %s\nAddress = 10.210.0.2/32\nDNS = %s\n\n[Peer]\nPublicKey = %s\nEndpoint = %s\nAllowedIPs = %s/32\n",
			fileText(t, clientExitPriv), inet, stockPub, ep, inet)
	}

	// Unlisted: the entry hop comes up, the exit's never does, and the
	// entry's filter counts the handshakes it dropped.
	dropsBefore := filterDrops(t, ns)
	tn, err := byoTunnel(t, byo, dir, "mvbyo0", entryConf, exitConf(unlisted), 6*time.Second)
	if err == nil {
		t.Fatal("the tunnel came up through an exit endpoint the entry does not list")
	}
	s := tn.Stats()
	tn.Close()
	if s.Entry.LastHandshake.IsZero() || !s.Exit.LastHandshake.IsZero() {
		t.Fatalf("to an unlisted exit endpoint: entry handshake %v, exit handshake %v; want only the entry's", s.Entry.LastHandshake, s.Exit.LastHandshake)
	}
	if filterDrops(t, ns) <= dropsBefore {
		t.Error("the entry's filter counted no drop for the unlisted exit")
	}
	if hs := cmdOutput(t, "ip", "netns", "exec", stock.NS, "wg", "show", stockDev, "latest-handshakes"); !strings.HasSuffix(strings.TrimSpace(hs), "\t0") {
		t.Fatalf("the stock exit had a handshake through an unlisted endpoint: %q", hs)
	}

	// Listed: both hops, a hash-checked download, and the stock exit sees
	// the entry, not the client.
	if _, err = byoTunnel(t, byo, dir, "mvbyo1", entryConf, exitConf(listed), 20*time.Second); err != nil {
		t.Fatalf("through the listed stock exit: %v", err)
	}
	cmdOK(t, "ip", "-n", byo.NS, "route", "add", inet.String()+"/32", "dev", "mvbyo1")
	out, err := exec.Command("ip", "netns", "exec", byo.NS, bin("mixnode"), "fetch", "--timeout", "60s", "--dns", inet.String(),
		"http://internet.mixvpn.test/blob/1048576").CombinedOutput()
	if err != nil {
		t.Fatalf("fetch through the stock exit: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(string(out)))
	if rx := wgTransfer(t, stock.NS, stockDev); rx < 1<<20 {
		t.Fatalf("the stock exit's WireGuard carried %d bytes for a 1 MiB download", rx)
	}
	ep := cmdOutput(t, "ip", "netns", "exec", stock.NS, "wg", "show", stockDev, "endpoints")
	if !strings.Contains(ep, st.addr("entry2").String()+":") || strings.Contains(ep, "198.51.100.62") {
		t.Fatalf("the stock exit sees its peer at %q; want the entry's address", ep)
	}
}

// byoTunnel brings up Fast mode from two wg-quick files in h, on a TUN
// named name, and waits up to wait for both handshakes. It returns the
// tunnel, which the test closes when it ends, and Up's error.
func byoTunnel(t *testing.T, h *netns.Host, dir, name, entryConf, exitConf string, wait time.Duration) (*fast.Tunnel, error) {
	t.Helper()
	paths := [2]string{filepath.Join(dir, name+"-entry.conf"), filepath.Join(dir, name+"-exit.conf")}
	for i, c := range []string{entryConf, exitConf} {
		if err := os.WriteFile(paths[i], []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := fast.ConfigFromWgQuickFiles(paths[0], paths[1])
	if err != nil {
		t.Fatal(err)
	}
	var tn *fast.Tunnel
	var upErr error
	// The TUN and the outer socket must be made inside the namespace; the
	// tunnel's devices keep them whichever thread runs them.
	if err := h.Do(func() error {
		dev, err := tun.CreateTUN(name, cfg.MTU)
		if err != nil {
			return err
		}
		if tn, err = fast.New(cfg, &quietTUN{Device: dev, events: make(chan tun.Event)}); err != nil {
			dev.Close()
			return err
		}
		for _, p := range cfg.InnerAddrs {
			if err := exec.Command("ip", "-n", h.NS, "addr", "add", p.String(), "dev", name).Run(); err != nil {
				return fmt.Errorf("address %v: %w", p, err)
			}
		}
		if err := exec.Command("ip", "-n", h.NS, "link", "set", name, "up").Run(); err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		upErr = tn.Up(ctx)
		return nil
	}); err != nil {
		if tn != nil {
			tn.Close()
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { tn.Close() })
	return tn, upErr
}

// quietTUN keeps a TUN's up and down events from the device on it, as the
// daemon's shared device does: the tunnel brings its devices up itself,
// from inside the namespace, and an event would make the device reopen its
// sockets from whichever thread saw it.
type quietTUN struct {
	tun.Device
	events chan tun.Event
	once   sync.Once
}

func (q *quietTUN) Events() <-chan tun.Event { return q.events }

func (q *quietTUN) Close() error {
	err := q.Device.Close()
	q.once.Do(func() { close(q.events) })
	return err
}

// addToBackbone makes a host of lab and plugs it into the local network's
// bridge with the given addresses. Deleting the host's namespace removes
// the link again.
func addToBackbone(t *testing.T, lab *netns.Lab, st devnetState, name string, addrs ...string) *netns.Host {
	t.Helper()
	h, err := lab.AddHost(name)
	if err != nil {
		t.Fatal(err)
	}
	hub := st.ID + "-hub"
	a, b := lab.ID()+name[:1]+"a", lab.ID()+name[:1]+"b"
	cmdOK(t, "ip", "link", "add", a, "netns", h.NS, "type", "veth", "peer", "name", b, "netns", hub)
	cmdOK(t, "ip", "-n", hub, "link", "set", b, "master", "br0", "up")
	cmdOK(t, "ip", "-n", h.NS, "link", "set", a, "name", "eth0")
	for _, p := range addrs {
		cmdOK(t, "ip", "-n", h.NS, "addr", "add", p, "dev", "eth0")
	}
	cmdOK(t, "ip", "-n", h.NS, "link", "set", "eth0", "up")
	return h
}

// startStockWireGuard runs Debian's wireguard-go for a bare device in h
// until the test ends.
func startStockWireGuard(t *testing.T, h *netns.Host, name string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "wireguard-go.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", h.NS, "wireguard-go", "-f", name)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopProcess(t, cmd, 10*time.Second)
		logf.Close()
		os.Remove("/var/run/wireguard/" + name + ".sock")
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("wireguard-go log:\n%s", b)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for exec.Command("ip", "netns", "exec", h.NS, "wg", "show", name).Run() != nil {
		if time.Now().After(deadline) {
			t.Fatal("wireguard-go's device did not appear within 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wgKeys makes a key pair with wg(8) and returns the files holding them.
func wgKeys(t *testing.T, dir, name string) (priv, pub string) {
	t.Helper()
	priv, pub = filepath.Join(dir, name+".key"), filepath.Join(dir, name+".pub")
	key, err := exec.Command("wg", "genkey").Output()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("wg", "pubkey")
	cmd.Stdin = bytes.NewReader(key)
	p, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(os.WriteFile(priv, key, 0o600), os.WriteFile(pub, p, 0o600)); err != nil {
		t.Fatal(err)
	}
	return priv, strings.TrimSpace(string(p))
}

// restartedNode is a gateway node the test started again.
type restartedNode struct {
	logPath string
}

func (n *restartedNode) log() string {
	b, _ := os.ReadFile(n.logPath)
	return string(b)
}

// restartNode kills the one node process in namespace ns, as a crash
// would, and starts it again with the same command line, so with the same
// data directory and keys. A non-empty extraExits is added to the node's
// configuration as wireguard.extra_exits (a JSON list's items), as its
// operator would before a restart. The test stops the new process when it
// ends; the local network's own stop would only kill it.
func restartNode(t *testing.T, ns, extraExits string) *restartedNode {
	t.Helper()
	pid, args := nodeProcess(t, ns)
	if extraExits != "" {
		i := slices.Index(args, "--config")
		cfg := fileText(t, args[i+1])
		cfg = strings.Replace(cfg, `"wireguard": {`, `"wireguard": {"extra_exits": [`+extraExits+`],`, 1)
		if !strings.Contains(cfg, "extra_exits") {
			t.Fatalf("config %s has no wireguard section", args[i+1])
		}
		args[i+1] = filepath.Join(t.TempDir(), filepath.Base(args[i+1]))
		if err := os.WriteFile(args[i+1], []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	killNode(t, pid)
	return startNode(t, ns, args)
}

// nodeProcess finds the one process in namespace ns, a node, and its
// command line.
func nodeProcess(t *testing.T, ns string) (int, []string) {
	t.Helper()
	pids := strings.Fields(cmdOutput(t, "ip", "netns", "pids", ns))
	if len(pids) != 1 {
		t.Fatalf("namespace %s has processes %v; want the node alone", ns, pids)
	}
	pid, _ := strconv.Atoi(pids[0])
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	i := slices.Index(args, "--config")
	if len(args) < 4 || args[1] != "run" || i < 0 || i+1 >= len(args) {
		t.Fatalf("process %d in %s is not a node: %q", pid, ns, args)
	}
	return pid, args
}

// killNode kills a node with SIGKILL, as a crash would, and waits until
// it is gone.
func killNode(t *testing.T, pid int) {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("node %d did not die", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startNode starts a node in namespace ns with the command line args (a
// killed node's, from nodeProcess) and waits until it runs. The test stops
// it when it ends.
func startNode(t *testing.T, ns string, args []string) *restartedNode {
	t.Helper()
	n := &restartedNode{logPath: filepath.Join(t.TempDir(), "node.log")}
	logf, err := os.Create(n.logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopProcess(t, cmd, 10*time.Second)
		logf.Close()
		if t.Failed() {
			t.Logf("restarted node's log:\n%s", n.log())
		}
	})
	// Up when its WireGuard device is back.
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(n.log(), "node running") {
		if time.Now().After(deadline) {
			t.Fatalf("the restarted node did not come up within 15 s:\n%s", n.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return n
}

// stopProcess ends cmd gently, then firmly.
func stopProcess(t *testing.T, cmd *exec.Cmd, grace time.Duration) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		t.Errorf("%s did not stop on SIGTERM", cmd.Args)
		cmd.Process.Kill()
		<-done
	}
}

// wgDevice is the WireGuard device of the gateway in ns.
func wgDevice(t *testing.T, ns string) string {
	t.Helper()
	for _, l := range strings.Split(cmdOutput(t, "ip", "-n", ns, "-o", "link", "show"), "\n") {
		if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "wg") {
			return strings.TrimSuffix(f[1], ":")
		}
	}
	t.Fatalf("no WireGuard device in %s", ns)
	return ""
}

// wgTransfer sums what every peer of dev received and sent, as wg(8)
// reports it.
func wgTransfer(t *testing.T, ns, dev string) uint64 {
	t.Helper()
	var sum uint64
	for _, l := range strings.Split(cmdOutput(t, "ip", "netns", "exec", ns, "wg", "show", dev, "transfer"), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 {
			continue
		}
		rx, _ := strconv.ParseUint(f[1], 10, 64)
		tx, _ := strconv.ParseUint(f[2], 10, 64)
		sum += rx + tx
	}
	return sum
}

// filterDrops counts what the entry's forward filter dropped from clients.
func filterDrops(t *testing.T, ns string) uint64 {
	t.Helper()
	out := cmdOutput(t, "ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "mixvpn_entry_filter", "forward")
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[0] == "iifname" && f[2] == "counter" && f[3] == "packets" {
			n, _ := strconv.ParseUint(f[4], 10, 64)
			return n
		}
	}
	t.Fatalf("no drop counter in the entry's filter:\n%s", out)
	return 0
}

// ifaceWith is the interface in ns that holds addr.
func ifaceWith(t *testing.T, ns string, addr netip.Addr) string {
	t.Helper()
	for _, l := range strings.Split(cmdOutput(t, "ip", "-n", ns, "-o", "addr", "show"), "\n") {
		if f := strings.Fields(l); len(f) > 3 && strings.HasPrefix(f[3], addr.String()+"/") {
			return f[1]
		}
	}
	t.Fatalf("no interface with %v in %s", addr, ns)
	return ""
}

// startCapture runs tcpdump on iface in ns with a BPF filter until the
// returned function, which stops it and returns the packets.
func startCapture(t *testing.T, ns, iface, filter string) func() []wireFrame {
	t.Helper()
	pcap := filepath.Join(t.TempDir(), ns+".pcap")
	// Immediate mode hands every packet over as it comes, so that
	// stopping loses nothing still in the kernel's ring.
	args := []string{"netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-U", "--immediate-mode", "-s", "128", "-w", pcap}
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
		cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "listening on") {
		if time.Now().After(deadline) {
			t.Fatalf("tcpdump did not start: %s", stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return func() []wireFrame {
		t.Helper()
		// The last packets of the traffic may still be on their way to
		// the file: stop once it stops growing.
		last := int64(-1)
		for range 30 {
			st, err := os.Stat(pcap)
			if err == nil && st.Size() == last {
				break
			}
			if err == nil {
				last = st.Size()
			}
			time.Sleep(100 * time.Millisecond)
		}
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("tcpdump did not stop")
		}
		pkts, err := readPcap(pcap)
		if err != nil {
			t.Fatal(err)
		}
		return pkts
	}
}

// lockedBuffer is a bytes.Buffer a process writes while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// wireFrame is what the tests need of one captured Ethernet frame.
type wireFrame struct {
	length       int // on the wire, or before segmentation
	etherType    uint16
	src, dst     netip.Addr
	proto        uint8 // transport protocol; for IPv6 the first next header
	sport, dport uint16
	udpLen       int    // the UDP header's length field
	head         []byte // the first captured bytes of the transport payload
	icmp6        uint8  // ICMPv6 type
}

func (p wireFrame) String() string {
	return fmt.Sprintf("ethertype %#04x proto %d %v:%d > %v:%d udplen %d", p.etherType, p.proto, p.src, p.sport, p.dst, p.dport, p.udpLen)
}

// housekeeping is ARP, IPv6 neighbour discovery and multicast listener
// reports: link-local chatter that is no one's traffic.
func (p wireFrame) housekeeping() bool {
	if p.etherType == 0x0806 {
		return true
	}
	if p.etherType != 0x86dd {
		return false
	}
	linkScope := netip.MustParsePrefix("ff02::/16")
	return p.proto == protoICMPv6 && p.icmp6 >= 133 && p.icmp6 <= 137 ||
		linkScope.Contains(p.dst) && (p.proto == 0 || p.proto == protoICMPv6)
}

// isLink reports whether p is TCP to or from the nodes' link port.
func (p wireFrame) isLink() bool {
	return p.proto == protoTCP && (p.sport == 1789 || p.dport == 1789)
}

// isWireGuard reports whether p is a well-formed WireGuard message over UDP
// between peer and the WireGuard endpoint ep, in either direction: the
// message types and lengths of the protocol, reserved bytes zero. Whatever
// else travels, the payload is sealed.
func (p wireFrame) isWireGuard(peer netip.Addr, ep netip.AddrPort) bool {
	if p.proto != protoUDP {
		return false
	}
	toEp := p.src == peer && p.dst == ep.Addr() && p.dport == ep.Port()
	fromEp := p.dst == peer && p.src == ep.Addr() && p.sport == ep.Port()
	if !toEp && !fromEp || len(p.head) < 4 || p.head[1] != 0 || p.head[2] != 0 || p.head[3] != 0 {
		return false
	}
	n := p.udpLen - 8
	switch p.head[0] {
	case 1:
		return n == 148
	case 2:
		return n == 92
	case 3:
		return n == 64
	case 4:
		return n >= 32 && (n-32)%16 == 0
	}
	return false
}

// readPcap reads a classic pcap file of Ethernet frames, as tcpdump -w
// writes on a veth.
func readPcap(path string) ([]wireFrame, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(raw) < 24 {
		return nil, errors.New("pcap: short file")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(raw) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, errors.New("pcap: not a pcap file")
	}
	if lt := bo.Uint32(raw[20:]); lt != 1 {
		return nil, fmt.Errorf("pcap: link type %d, want Ethernet", lt)
	}
	var out []wireFrame
	for rest := raw[24:]; len(rest) > 0; {
		if len(rest) < 16 {
			return nil, io.ErrUnexpectedEOF
		}
		n := int(bo.Uint32(rest[8:]))
		if len(rest) < 16+n {
			return nil, io.ErrUnexpectedEOF
		}
		f := parseFrame(rest[16 : 16+n])
		f.length = int(bo.Uint32(rest[12:]))
		out = append(out, f)
		rest = rest[16+n:]
	}
	return out, nil
}

func parseFrame(f []byte) wireFrame {
	var p wireFrame
	if len(f) < 14 {
		return p
	}
	p.etherType = binary.BigEndian.Uint16(f[12:])
	ip := f[14:]
	var l4 []byte
	switch {
	case p.etherType == 0x0800 && len(ip) >= 20:
		ihl := int(ip[0]&0x0f) * 4
		p.proto = ip[9]
		p.src, p.dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		if ihl >= 20 && len(ip) >= ihl {
			l4 = ip[ihl:]
		}
	case p.etherType == 0x86dd && len(ip) >= 40:
		p.proto = ip[6]
		p.src, p.dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		l4 = ip[40:]
	}
	switch {
	case (p.proto == protoTCP || p.proto == protoUDP) && len(l4) >= 8:
		p.sport, p.dport = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:])
		if p.proto == protoUDP {
			p.udpLen = int(binary.BigEndian.Uint16(l4[4:]))
			p.head = l4[8:]
		}
	case p.proto == protoICMPv6 && len(l4) > 0:
		p.icmp6 = l4[0]
	}
	return p
}

func cmdOK(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

func cmdOutput(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

func fileText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
