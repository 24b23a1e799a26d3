//go:build linux

package entryfilter

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/platform/netns"
	"github.com/mixvpn/mixvpn/platform/netns/netnstest"
)

// The test builds its own network: a client joined to the entry by a veth
// pair (standing in for the WireGuard device, which the filter knows only
// by name), and behind the entry an exit and another host, each on its own
// veth. Every packet goes only to addresses in those namespaces.
var (
	clientNet   = []netip.Prefix{netip.MustParsePrefix("10.88.0.2/24"), netip.MustParsePrefix("fd88::2/64")}
	entryClient = []netip.Prefix{netip.MustParsePrefix("10.88.0.1/24"), netip.MustParsePrefix("fd88::1/64")}
	entryExit   = []netip.Prefix{netip.MustParsePrefix("10.89.1.1/24"), netip.MustParsePrefix("fd89:1::1/64")}
	exitNet     = []netip.Prefix{netip.MustParsePrefix("10.89.1.2/24"), netip.MustParsePrefix("fd89:1::2/64")}
	entryOther  = []netip.Prefix{netip.MustParsePrefix("10.89.2.1/24"), netip.MustParsePrefix("fd89:2::1/64")}
	otherNet    = []netip.Prefix{netip.MustParsePrefix("10.89.2.2/24"), netip.MustParsePrefix("fd89:2::2/64")}
)

const wgPort = 51820

type testNet struct {
	client, entry, exit, other *netns.Host
	clientIf                   string // the entry's interface towards the client
}

func buildNet(t *testing.T) *testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and nftables tables")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft from the nftables package (make deps installs it)")
	}
	lab := netnstest.Lab(t, "mvef")
	var err error
	n := &testNet{}
	for _, h := range []struct {
		name string
		p    **netns.Host
	}{{"client", &n.client}, {"entry", &n.entry}, {"exit", &n.exit}, {"other", &n.other}} {
		if *h.p, err = lab.AddHost(h.name); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, n.clientIf, err = lab.Connect(n.client, clientNet, n.entry, entryClient)
	must(err)
	_, _, err = lab.Connect(n.entry, entryExit, n.exit, exitNet)
	must(err)
	_, _, err = lab.Connect(n.entry, entryOther, n.other, otherNet)
	must(err)
	must(n.entry.Forwarding())
	must(n.client.Run("ip", "route", "add", "default", "via", "10.88.0.1"))
	must(n.client.Run("ip", "-6", "route", "add", "default", "via", "fd88::1"))
	for _, h := range []*netns.Host{n.exit, n.other} {
		gw4, gw6 := "10.89.1.1", "fd89:1::1"
		if h == n.other {
			gw4, gw6 = "10.89.2.1", "fd89:2::1"
		}
		must(h.Run("ip", "route", "add", "10.88.0.0/24", "via", gw4))
		must(h.Run("ip", "-6", "route", "add", "fd88::/64", "via", gw6))
	}
	return n
}

// udpEcho answers every datagram on addr inside h until the test ends.
func udpEcho(t *testing.T, h *netns.Host, addr netip.AddrPort) {
	t.Helper()
	var c *net.UDPConn
	if err := h.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// tcpListen accepts connections on addr inside h until the test ends.
func tcpListen(t *testing.T, h *netns.Host, addr netip.AddrPort) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// udpRoundTrip reports whether a datagram from the client to dst comes
// back from dst's echo. An answer is waited for up to tries times wait:
// the first packets on a fresh veth may wait for neighbour discovery.
func udpRoundTrip(t *testing.T, client *netns.Host, dst netip.AddrPort, tries int, wait time.Duration) bool {
	t.Helper()
	var c *net.UDPConn
	if err := client.Do(func() (err error) {
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 64)
	for range tries {
		if _, err := c.Write([]byte("sealed datagram")); err != nil {
			continue // ICMP unreachable from an earlier try
		}
		c.SetReadDeadline(time.Now().Add(wait))
		if n, err := c.Read(buf); err == nil && string(buf[:n]) == "sealed datagram" {
			return true
		}
	}
	return false
}

func tcpConnects(t *testing.T, client *netns.Host, dst netip.AddrPort) bool {
	t.Helper()
	var err error
	if derr := client.Do(func() error {
		var c net.Conn
		c, err = net.DialTimeout("tcp", dst.String(), 700*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return nil
	}); derr != nil {
		t.Fatal(derr)
	}
	return err == nil
}

func pings(h *netns.Host, dst netip.Addr) bool {
	for range 3 {
		if h.Run("ping", "-n", "-c", "1", "-W", "1", dst.String()) == nil {
			return true
		}
	}
	return false
}

func TestFilterForwardsOnlyToExits(t *testing.T) {
	n := buildNet(t)
	exit4 := netip.AddrPortFrom(exitNet[0].Addr(), wgPort)
	exit6 := netip.AddrPortFrom(exitNet[1].Addr(), wgPort)
	other4 := netip.AddrPortFrom(otherNet[0].Addr(), wgPort)
	static := netip.AddrPortFrom(otherNet[0].Addr(), 51999)
	for _, ep := range []netip.AddrPort{exit4, exit6, other4, static, netip.AddrPortFrom(exitNet[0].Addr(), wgPort+1)} {
		h := n.exit
		if ep.Addr() == otherNet[0].Addr() {
			h = n.other
		}
		udpEcho(t, h, ep)
	}
	tcpListen(t, n.exit, netip.AddrPortFrom(exitNet[0].Addr(), wgPort))
	tcpListen(t, n.entry, netip.AddrPortFrom(entryClient[0].Addr(), 9100))

	// Without the filter this network forwards everything: the checks
	// below then fail for the filter's sake, not the network's.
	if !udpRoundTrip(t, n.client, other4, 5, time.Second) || !tcpConnects(t, n.client, netip.AddrPortFrom(exitNet[0].Addr(), wgPort)) {
		t.Fatal("the test network does not forward without the filter")
	}

	var f *Filter
	if err := n.entry.Do(func() (err error) {
		f, err = Install(Config{Interface: n.clientIf, Static: []netip.AddrPort{static}})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := n.entry.Output("nft", "list", "table", "inet", TableName)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("installed:\n%s", out)

	// Before any document only the operator's static exit is reachable.
	if udpRoundTrip(t, n.client, exit4, 2, 300*time.Millisecond) {
		t.Error("forwarded to an exit before the directory listed it")
	}
	if !udpRoundTrip(t, n.client, static, 5, time.Second) {
		t.Error("the operator's static exit is not reachable")
	}

	if err := f.SetExits([]netip.AddrPort{exit4, exit6, exit4}); err != nil {
		t.Fatal(err)
	}
	if got := f.Exits(); len(got) != 3 {
		t.Errorf("exits %v, want the two listed and the static one", got)
	}
	if !udpRoundTrip(t, n.client, exit4, 5, time.Second) {
		t.Error("UDP to the exit's WireGuard endpoint over IPv4 was not forwarded, or its answer not returned")
	}
	if !udpRoundTrip(t, n.client, exit6, 5, time.Second) {
		t.Error("UDP to the exit's WireGuard endpoint over IPv6 was not forwarded, or its answer not returned")
	}
	for _, dst := range []netip.AddrPort{other4, netip.AddrPortFrom(exitNet[0].Addr(), wgPort+1)} {
		if udpRoundTrip(t, n.client, dst, 2, 300*time.Millisecond) {
			t.Errorf("UDP to %v, not an exit endpoint, was forwarded", dst)
		}
	}
	if tcpConnects(t, n.client, netip.AddrPortFrom(exitNet[0].Addr(), wgPort)) {
		t.Error("TCP to the exit's address and WireGuard port was forwarded")
	}
	if pings(n.client, otherNet[0].Addr()) {
		t.Error("ICMP to another host was forwarded")
	}
	// The gateway's own services are closed to clients; a ping is not.
	if tcpConnects(t, n.client, netip.AddrPortFrom(entryClient[0].Addr(), 9100)) {
		t.Error("a client reached a service on the gateway itself")
	}
	if !pings(n.client, entryClient[0].Addr()) {
		t.Error("a client cannot ping the gateway")
	}
	// Towards clients only replies pass: an exit cannot open a flow.
	if unsolicited(t, n) {
		t.Error("a datagram the client never asked for was forwarded to it")
	}

	// A new document moves the allowed set; the static exit stays.
	if err := f.SetExits([]netip.AddrPort{other4}); err != nil {
		t.Fatal(err)
	}
	if !udpRoundTrip(t, n.client, other4, 5, time.Second) {
		t.Error("the newly listed exit is not reachable")
	}
	if udpRoundTrip(t, n.client, exit6, 2, 300*time.Millisecond) {
		t.Error("an exit the directory no longer lists is still reachable")
	}
	if !udpRoundTrip(t, n.client, static, 5, time.Second) {
		t.Error("the static exit went with the directory's change")
	}

	// A crashed gateway leaves its table; the next Install replaces it.
	var again *Filter
	if err := n.entry.Do(func() (err error) {
		again, err = Install(Config{Interface: n.clientIf})
		return err
	}); err != nil {
		t.Fatalf("install over a leftover table: %v", err)
	}
	if udpRoundTrip(t, n.client, other4, 2, 300*time.Millisecond) {
		t.Error("the fresh filter allows what the old one did")
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
	if out, _ := n.entry.Output("nft", "list", "tables"); strings.Contains(out, TableName) {
		t.Errorf("table still there after Close:\n%s", out)
	}
	if err := f.Close(); err != nil {
		t.Errorf("closing a filter whose table is gone: %v", err)
	}
	if err := f.SetExits(nil); err == nil {
		t.Error("SetExits after Close succeeded")
	}
}

// unsolicited sends a datagram from the exit to a client socket that never
// wrote to the exit and reports whether it arrived.
func unsolicited(t *testing.T, n *testNet) bool {
	t.Helper()
	var c, s *net.UDPConn
	err := errors.Join(
		n.client.Do(func() (err error) {
			c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(clientNet[0].Addr(), 40000)))
			return err
		}),
		n.exit.Do(func() (err error) {
			s, err = net.ListenUDP("udp", &net.UDPAddr{IP: exitNet[0].Addr().AsSlice(), Port: 40001})
			return err
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	defer s.Close()
	buf := make([]byte, 64)
	for range 2 {
		s.WriteToUDPAddrPort([]byte("hello"), netip.AddrPortFrom(clientNet[0].Addr(), 40000))
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(buf); err == nil {
			return true
		}
	}
	return false
}

func TestInstallRejectsBadInterface(t *testing.T) {
	for _, name := range []string{"", "a-name-that-is-too-long"} {
		if _, err := Install(Config{Interface: name}); err == nil {
			t.Errorf("Install accepted interface %q", name)
		}
	}
}
