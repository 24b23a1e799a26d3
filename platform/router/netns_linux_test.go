//go:build linux

package router

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/platform/netns"
	"github.com/mixvpn/mixvpn/platform/netns/netnstest"
	"golang.zx2c4.com/wireguard/tun"
)

// These tests route inside namespaces they make, never in the host's. The
// client namespace has a TUN and a veth to a peer namespace; the peer is
// the client's default gateway and also holds the "entry gateway"
// (192.0.2.1, 2001:db8::1) and a LAN host beyond the subnet (198.18.0.1)
// on its loopback. All traffic goes to those addresses or into the TUN.

const tunName = "mvtun0"

var (
	entry4   = netip.MustParseAddr("192.0.2.1")
	entry6   = netip.MustParseAddr("2001:db8::1")
	lanHost  = netip.MustParseAddr("198.18.0.1")
	peerAddr = netip.MustParseAddr("10.78.0.2")
	// Addresses no namespace has: packets to them can only go into the TUN.
	elsewhere4 = netip.MustParseAddr("203.0.113.9")
	elsewhere6 = netip.MustParseAddr("2001:db8:ffff::9")
)

func testConfig() Config {
	return Config{
		Interface: tunName,
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.66.0.2/32"), netip.MustParsePrefix("fd66::2/128")},
		RouteIPv4: true,
		RouteIPv6: true,
		Bypass:    []netip.AddrPort{netip.AddrPortFrom(entry4, 51820), netip.AddrPortFrom(entry6, 51820)},
		AllowLAN:  []netip.Prefix{netip.MustParsePrefix("198.18.0.0/15")},
	}
}

type fixture struct {
	client, peer *netns.Host
	dev          tun.Device
}

func setup(t *testing.T) *fixture {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces and a TUN device")
	}
	lab := netnstest.Lab(t, "mvrt")
	var err error
	f := &fixture{}
	if f.client, err = lab.AddHost("c"); err != nil {
		t.Fatal(err)
	}
	if f.peer, err = lab.AddHost("p"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := lab.Connect(f.client,
		[]netip.Prefix{netip.MustParsePrefix("10.78.0.1/24"), netip.MustParsePrefix("fd78::1/64")},
		f.peer,
		[]netip.Prefix{netip.PrefixFrom(peerAddr, 24), netip.MustParsePrefix("fd78::2/64")}); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"route", "add", "default", "via", peerAddr.String()},
		{"-6", "route", "add", "default", "via", "fd78::2"},
	} {
		if err := f.client.Run("ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []string{entry4.String() + "/32", lanHost.String() + "/32", entry6.String() + "/128"} {
		if err := f.peer.Run("ip", "addr", "add", a, "dev", "lo"); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.client.Do(func() (err error) {
		f.dev, err = tun.CreateTUN(tunName, 1420)
		return err
	}); err != nil {
		t.Fatalf("create TUN: %v", err)
	}
	// Registered after the lab's, so it runs first: an open TUN would
	// keep the namespace alive.
	t.Cleanup(func() { f.dev.Close() })
	return f
}

func (f *fixture) newRouter(t *testing.T) Router {
	t.Helper()
	var r Router
	if err := f.client.Do(func() (err error) {
		r, err = New(Options{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// state is everything the router may touch, as iproute2 prints it.
func (f *fixture) state(t *testing.T) string {
	t.Helper()
	qdisc := regexp.MustCompile(`qdisc \S+ `)
	// A veth's IPv6 link-local address enters the local table once its
	// duplicate address detection ends, whenever that is: the kernel's
	// doing, not the router's.
	linkLocal := regexp.MustCompile(`(?m)^local fe80::\S* dev .*\n`)
	var b strings.Builder
	for _, args := range [][]string{
		{"-4", "rule"}, {"-6", "rule"},
		{"-4", "route", "show", "table", "all"}, {"-6", "route", "show", "table", "all"},
		{"addr", "show", "dev", tunName},
	} {
		out, err := f.client.Output("ip", args...)
		if err != nil {
			t.Fatal(err)
		}
		// The kernel gives a device a real qdisc when it first comes up
		// and keeps it; that is not ours to restore.
		out = qdisc.ReplaceAllString(out, "")
		out = linkLocal.ReplaceAllString(out, "")
		fmt.Fprintf(&b, "## ip %s\n%s", strings.Join(args, " "), out)
	}
	return b.String()
}

// routeGet asks the kernel which way a packet would go.
func (f *fixture) routeGet(t *testing.T, args ...string) string {
	t.Helper()
	out, err := f.client.Output("ip", append([]string{"route", "get"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// tunDestinations reads packets from the TUN until it is closed and sends
// each one's destination on the returned channel, dropping them when
// nobody is listening.
func tunDestinations(dev tun.Device) <-chan netip.Addr {
	out := make(chan netip.Addr, 64)
	go func() {
		const offset = 16 // room for the virtio header the device reads in front
		n := dev.BatchSize()
		bufs, sizes := make([][]byte, n), make([]int, n)
		for i := range bufs {
			bufs[i] = make([]byte, offset+65535)
		}
		for {
			got, err := dev.Read(bufs, sizes, offset)
			if err != nil {
				if errors.Is(err, tun.ErrTooManySegments) {
					continue
				}
				return // closed
			}
			for i := range got {
				p := bufs[i][offset : offset+sizes[i]]
				var dst netip.Addr
				switch {
				case len(p) >= 20 && p[0]>>4 == 4:
					dst = netip.AddrFrom4([4]byte(p[16:20]))
				case len(p) >= 40 && p[0]>>4 == 6:
					dst = netip.AddrFrom16([16]byte(p[24:40]))
				default:
					continue
				}
				select {
				case out <- dst:
				default:
				}
			}
		}
	}()
	return out
}

// intoTUN sends with send until a packet to dst comes out of the TUN, up
// to five tries a second apart.
func intoTUN(t *testing.T, seen <-chan netip.Addr, dst netip.Addr, send func()) bool {
	t.Helper()
	for range 5 {
		send()
		deadline := time.After(time.Second)
		for {
			select {
			case got := <-seen:
				if got == dst {
					return true
				}
				continue
			case <-deadline:
			}
			break
		}
	}
	return false
}

// answers reports whether dst answers a ping from the client, sent with
// FwMark if marked; a few tries, a second each.
func (f *fixture) answers(dst netip.Addr, marked bool) bool {
	args := []string{"-n", "-c", "1", "-W", "1"}
	if marked {
		args = append(args, "-m", fmt.Sprint(FwMark)) // ping takes decimal only
	}
	for range 3 {
		if f.client.Run("ping", append(args, dst.String())...) == nil {
			return true
		}
	}
	return false
}

func TestRouterSetIsIdempotentAndCloseRestores(t *testing.T) {
	f := setup(t)
	before := f.state(t)
	r := f.newRouter(t)
	if err := r.Set(t.Context(), testConfig()); err == nil {
		t.Fatal("Set before Up accepted")
	}
	if err := r.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Tunnel = []netip.Prefix{netip.MustParsePrefix("10.78.0.53/32"), netip.MustParsePrefix("fd78::53/128")}
	if err := r.Set(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	once := f.state(t)
	for _, want := range []string{
		"5280:\tfrom all fwmark 0x6d78 goto 5282",
		"5281:\tfrom all to 10.78.0.53 lookup 51888",
		"5282:\tfrom all to 192.0.2.1 dport 51820 lookup main",
		"5282:\tfrom all to 198.18.0.0/15 lookup main",
		"5283:\tfrom all lookup main suppress_prefixlength 0",
		"5284:\tnot from all fwmark 0x6d78 lookup 51888",
		"5281:\tfrom all to fd78::53 lookup 51888",
		"5282:\tfrom all to 2001:db8::1 dport 51820 lookup main",
		"default dev mvtun0 table 51888 scope link",
		"default dev mvtun0 table 51888 metric 1024",
		"inet 10.66.0.2/32",
		"inet6 fd66::2/128",
	} {
		if !strings.Contains(once, want) {
			t.Errorf("missing %q in\n%s", want, once)
		}
	}
	if !strings.Contains(once, "<POINTOPOINT,MULTICAST,NOARP,UP,LOWER_UP>") {
		t.Errorf("TUN not up:\n%s", once)
	}
	if err := r.Set(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	if twice := f.state(t); twice != once {
		t.Fatalf("second Set changed the system:\nonce:\n%s\ntwice:\n%s", once, twice)
	}

	// Narrowing the config removes exactly what is no longer wanted.
	narrow := testConfig()
	narrow.RouteIPv6 = false
	narrow.AllowLAN = nil
	narrow.Addresses = narrow.Addresses[:1]
	if err := r.Set(t.Context(), narrow); err != nil {
		t.Fatal(err)
	}
	s := f.state(t)
	for _, gone := range []string{"198.18.0.0/15", "2001:db8::1 dport", "fd66::2", "default dev mvtun0 table 51888 metric", "goto", "10.78.0.53", "fd78::53"} {
		if strings.Contains(s, gone) {
			t.Errorf("%q left after narrowing:\n%s", gone, s)
		}
	}
	if !strings.Contains(s, "fwmark 0x6d78 lookup 51888") {
		t.Errorf("IPv4 rule lost when narrowing:\n%s", s)
	}

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if after := f.state(t); after != before {
		t.Fatalf("Close did not restore:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestRouterSendsTrafficThroughTUN(t *testing.T) {
	f := setup(t)
	seen := tunDestinations(f.dev)
	r := f.newRouter(t)
	if err := r.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := r.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}

	// What the kernel would do.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{elsewhere4.String()}, "dev " + tunName},
		{[]string{elsewhere4.String(), "mark", "0x6d78"}, "via 10.78.0.2 dev eth0"},
		{[]string{entry4.String(), "ipproto", "udp", "dport", "51820"}, "via 10.78.0.2 dev eth0"},
		{[]string{entry4.String(), "ipproto", "udp", "dport", "53"}, "dev " + tunName},
		{[]string{lanHost.String()}, "via 10.78.0.2 dev eth0"},
		{[]string{peerAddr.String()}, "dev eth0"},
		{[]string{elsewhere6.String()}, "dev " + tunName},
		{[]string{elsewhere6.String(), "mark", "0x6d78"}, "via fd78::2 dev eth0"},
	} {
		if got := f.routeGet(t, c.args...); !strings.Contains(got, c.want) {
			t.Errorf("ip route get %s: %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}

	// What real packets do: unmarked ones to the world come out of the
	// TUN, marked ones, the LAN and the connected subnet reach the peer.
	for _, dst := range []netip.Addr{elsewhere4, elsewhere6, entry4} {
		if !intoTUN(t, seen, dst, func() { f.client.Run("ping", "-n", "-c", "1", "-W", "1", dst.String()) }) {
			t.Errorf("ping %v did not come out of the TUN", dst)
		}
	}
	if !f.answers(entry4, true) || !f.answers(entry6, true) {
		t.Error("marked ping does not reach the entry gateway by the main table")
	}
	if !f.answers(lanHost, false) || !f.answers(peerAddr, false) {
		t.Error("LAN unreachable")
	}

	// An unmarked socket reaches the entry gateway's port by the bypass
	// rule, while another port of the same address goes into the tunnel.
	var gw *net.UDPConn
	if err := f.peer.Do(func() (err error) {
		gw, err = net.ListenUDP("udp", &net.UDPAddr{IP: entry4.AsSlice(), Port: 51820})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	var c1, c2 *net.UDPConn
	if err := f.client.Do(func() (err error) {
		if c1, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(entry4, 51820))); err != nil {
			return err
		}
		c2, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(entry4, 51821)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	defer c2.Close()
	if _, err := c1.Write([]byte("handshake")); err != nil {
		t.Fatal(err)
	}
	gw.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 32)
	if n, _, err := gw.ReadFromUDP(buf); err != nil || string(buf[:n]) != "handshake" {
		t.Errorf("bypass port: %q %v", buf[:n], err)
	}
	if !intoTUN(t, seen, entry4, func() { c2.Write([]byte("x")) }) {
		t.Error("another port of the entry address did not go into the TUN")
	}
}

// A router that died without Close leaves rules behind; the next one's Up
// removes them, and the dead one's Close later does no harm.
func TestRouterUpRemovesLeftovers(t *testing.T) {
	f := setup(t)
	before := f.state(t)
	dead := f.newRouter(t)
	if err := dead.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Tunnel = []netip.Prefix{netip.MustParsePrefix("10.78.0.53/32"), netip.MustParsePrefix("fd78::53/128")}
	if err := dead.Set(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	next := f.newRouter(t)
	if err := next.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	s := f.state(t)
	if strings.Contains(s, "51888") || strings.Contains(s, "suppress_prefixlength") || strings.Contains(s, "goto") {
		t.Fatalf("leftovers after Up:\n%s", s)
	}
	if err := next.Close(); err != nil {
		t.Fatal(err)
	}
	if err := dead.Close(); err != nil {
		t.Fatalf("Close after another router cleaned up: %v", err)
	}
	if after := f.state(t); after != before {
		t.Fatalf("not restored:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestRouterAbortsConnectionsOfRemovedAddresses: a Set that takes an
// address away aborts the TCP connections on it, which would otherwise
// hang (nothing is routed from a deleted address), and leaves the others
// alone.
func TestRouterAbortsConnectionsOfRemovedAddresses(t *testing.T) {
	f := setup(t)
	r := f.newRouter(t)
	if err := r.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	if err := r.Set(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	// pair connects a client to a listener on addr in the client
	// namespace and returns the client's end.
	pair := func(addr netip.Addr) net.Conn {
		t.Helper()
		var c net.Conn
		if err := f.client.Do(func() error {
			ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
			if err != nil {
				return err
			}
			defer ln.Close()
			c, err = net.DialTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)), ln.Addr().(*net.TCPAddr))
			if err != nil {
				return err
			}
			s, err := ln.Accept()
			if err != nil {
				return err
			}
			t.Cleanup(func() { s.Close() })
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	old4, old6 := pair(cfg.Addresses[0].Addr()), pair(cfg.Addresses[1].Addr())
	kept := pair(netip.MustParseAddr("10.78.0.1"))

	cfg.Addresses = []netip.Prefix{netip.MustParsePrefix("10.66.0.3/32"), netip.MustParsePrefix("fd66::3/128")}
	if err := r.Set(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]net.Conn{"IPv4": old4, "IPv6": old6} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNABORTED) {
			t.Errorf("%s connection on the removed address: read %v, want ECONNABORTED", name, err)
		}
	}
	kept.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := kept.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("connection on an address that stays: read %v, want it still open", err)
	}
}

// TestRouterBlocksIPv6: with BlockIPv6, IPv6 that would leave by the
// physical interface fails at once with "no route to host" and never
// reaches the wire, while the tunnel's own (marked) traffic, the bypass,
// the LAN allowed and the connected subnet (and with it neighbour
// discovery) still go by the main table. Switching between blocking and
// routing IPv6 into the TUN leaves one default route, and Up (after a
// crash) and Close remove everything.
func TestRouterBlocksIPv6(t *testing.T) {
	f := setup(t)
	// Two addresses on the peer, the client's IPv6 gateway, that only
	// reach the peer by the client's default route: one elsewhere on the
	// internet, one on a LAN beyond the connected subnet.
	outside6, lan6 := netip.MustParseAddr("2001:db8:eeee::9"), netip.MustParseAddr("fd79::1")
	for _, a := range []netip.Addr{outside6, lan6} {
		if err := f.peer.Run("ip", "-6", "addr", "add", a.String()+"/128", "dev", "lo"); err != nil {
			t.Fatal(err)
		}
	}
	var sink *net.UDPConn
	if err := f.peer.Do(func() (err error) {
		sink, err = net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6unspecified, Port: 9999})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	// Each datagram says which send it is, so that one that arrives late
	// never counts for a later send.
	sends := 0
	reachedOnce := func(dst netip.Addr) (bool, error) {
		t.Helper()
		sends++
		msg := fmt.Sprintf("%v #%d", dst, sends)
		var sendErr error
		if err := f.client.Do(func() error {
			c, err := net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9999)))
			if err != nil {
				sendErr = err
				return nil
			}
			defer c.Close()
			_, sendErr = c.Write([]byte(msg))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		for {
			sink.SetReadDeadline(time.Now().Add(time.Second))
			n, _, err := sink.ReadFromUDP(buf)
			if err != nil {
				return false, sendErr
			}
			if string(buf[:n]) == msg {
				return true, sendErr
			}
		}
	}
	// reached sends an unmarked UDP datagram from the client to dst and
	// reports whether the peer got it, and the send's error; a few tries,
	// a second each, since the veth's addresses may still be tentative,
	// unless the send itself failed.
	reached := func(dst netip.Addr) (ok bool, err error) {
		t.Helper()
		for range 3 {
			if ok, err = reachedOnce(dst); ok || err != nil {
				break
			}
		}
		return ok, err
	}
	before := f.state(t)
	r := f.newRouter(t)
	if err := r.Up(t.Context()); err != nil {
		t.Fatal(err)
	}

	// Routing IPv4 alone leaves IPv6 to the main table: this is the leak.
	leaky := testConfig()
	leaky.RouteIPv6 = false
	leaky.Addresses = leaky.Addresses[:1]
	if err := r.Set(t.Context(), leaky); err != nil {
		t.Fatal(err)
	}
	if ok, err := reached(outside6); !ok {
		t.Fatalf("without blocking, IPv6 did not leave by the main table (%v): the test proves nothing", err)
	}

	if err := r.Set(t.Context(), Config{Interface: tunName, RouteIPv6: true, BlockIPv6: true}); err == nil {
		t.Fatal("IPv6 both routed and blocked accepted")
	}
	blocked := leaky
	blocked.BlockIPv6 = true
	blocked.AllowLAN = append(blocked.AllowLAN, netip.MustParsePrefix("fd79::/64"))
	if err := r.Set(t.Context(), blocked); err != nil {
		t.Fatal(err)
	}
	// The kernel answers an IPv6 unreachable route with EHOSTUNREACH.
	if out, err := f.client.Output("ip", "-6", "route", "get", outside6.String()); err == nil || !strings.Contains(err.Error(), "No route to host") {
		t.Errorf("ip route get %v: %q, %v; want no route", outside6, out, err)
	}
	for _, dst := range []netip.Addr{outside6, elsewhere6} {
		ok, err := reached(dst)
		if ok {
			t.Errorf("IPv6 to %v left the machine while blocked", dst)
		}
		if !errors.Is(err, syscall.EHOSTUNREACH) {
			t.Errorf("sending to %v: %v, want EHOSTUNREACH at once", dst, err)
		}
	}
	if err := f.client.Do(func() error {
		c, err := net.DialTimeout("tcp6", netip.AddrPortFrom(outside6, 80).String(), 5*time.Second)
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, syscall.EHOSTUNREACH) {
			t.Errorf("TCP to %v: %v, want EHOSTUNREACH at once", outside6, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{outside6.String(), "mark", "0x6d78"}, "via fd78::2 dev eth0"},
		{[]string{entry6.String(), "ipproto", "udp", "dport", "51820"}, "via fd78::2 dev eth0"},
		{[]string{lan6.String()}, "via fd78::2 dev eth0"},
		{[]string{"fd78::2"}, "dev eth0"},
		{[]string{elsewhere4.String()}, "dev " + tunName},
	} {
		if got := f.routeGet(t, c.args...); !strings.Contains(got, c.want) {
			t.Errorf("ip route get %s: %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}
	if ok, err := reached(lan6); !ok {
		t.Errorf("the LAN allowed is unreachable while IPv6 is blocked: %v", err)
	}
	if !f.answers(netip.MustParseAddr("fd78::2"), false) {
		t.Error("the connected subnet is unreachable while IPv6 is blocked")
	}
	if !f.answers(outside6, true) {
		t.Error("marked IPv6 does not leave by the main table while IPv6 is blocked")
	}

	// From blocking to routing into the TUN and back: one default route
	// at a time, and each works.
	routed := testConfig()
	if err := r.Set(t.Context(), routed); err != nil {
		t.Fatal(err)
	}
	if got := f.routeGet(t, outside6.String()); !strings.Contains(got, "dev "+tunName) {
		t.Errorf("routed: ip route get %v: %q", outside6, got)
	}
	if s := f.state(t); strings.Contains(s, "unreachable") {
		t.Errorf("the unreachable route stayed once IPv6 was routed:\n%s", s)
	}
	if err := r.Set(t.Context(), blocked); err != nil {
		t.Fatal(err)
	}
	s := f.state(t)
	if strings.Contains(s, "default dev "+tunName+" table 51888 metric") || !strings.Contains(s, "unreachable default dev lo table 51888 metric 4278198272") {
		t.Errorf("blocked again:\n%s", s)
	}
	if ok, err := reached(outside6); ok || !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Errorf("blocked again, IPv6 left: %v %v", ok, err)
	}

	// A router that died blocking leaves the unreachable route; the
	// next one's Up removes it with the rest.
	next := f.newRouter(t)
	if err := next.Up(t.Context()); err != nil {
		t.Fatal(err)
	}
	if s := f.state(t); strings.Contains(s, "51888") {
		t.Errorf("leftovers after Up:\n%s", s)
	}
	if err := next.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if after := f.state(t); after != before {
		t.Fatalf("Close did not restore:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if ok, err := reached(outside6); !ok {
		t.Errorf("IPv6 still blocked after Close: %v", err)
	}
}

// TestRouterTunnelsResolvers: the tunnel's resolvers may have private
// addresses that the main table reaches in the clear, by a connected
// subnet or the LAN allowed; once among Config.Tunnel, their lookups come
// out of the TUN and never reach the network, while FwMark's packets to
// the same addresses still go by the main table, and a blocked family
// fails them.
func TestRouterTunnelsResolvers(t *testing.T) {
	f := setup(t)
	// On the peer, so that a lookup that left by eth0 arrives: one on the
	// connected subnet of each family, one on the LAN beyond it.
	onLink4, onLAN4, onLink6 := netip.MustParseAddr("10.78.0.53"), netip.MustParseAddr("198.18.0.53"), netip.MustParseAddr("fd78::53")
	resolvers := []netip.Addr{onLink4, onLAN4, onLink6}
	for _, args := range [][]string{
		{"addr", "add", onLink4.String() + "/32", "dev", "lo"},
		{"addr", "add", onLAN4.String() + "/32", "dev", "lo"},
		// Neighbour discovery answers only for the link's own addresses.
		{"-6", "addr", "add", onLink6.String() + "/128", "dev", "eth0", "nodad"},
	} {
		if err := f.peer.Run("ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	arrived := make(chan string, 64)
	for _, network := range []string{"udp4", "udp6"} {
		var ln *net.UDPConn
		if err := f.peer.Do(func() (err error) {
			ln, err = net.ListenUDP(network, &net.UDPAddr{Port: 53})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			buf := make([]byte, 64)
			for {
				n, _, err := ln.ReadFromUDP(buf)
				if err != nil {
					return
				}
				arrived <- string(buf[:n])
			}
		}()
	}
	// lookup sends a datagram from an unmarked socket to port 53 of dst
	// and returns what it said, or the error of sending it.
	sends := 0
	lookup := func(dst netip.Addr) (string, error) {
		sends++
		msg := fmt.Sprintf("%v #%d", dst, sends)
		err := f.client.Do(func() error {
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 53)))
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte(msg))
			return err
		})
		return msg, err
	}
	// reaches reports whether a lookup to dst arrives at the peer: a few
	// tries, a second each, since the veth's IPv6 addresses may still be
	// tentative.
	reaches := func(dst netip.Addr) bool {
		for range 3 {
			msg, err := lookup(dst)
			if err != nil {
				return false
			}
			deadline := time.After(time.Second)
		wait:
			for {
				select {
				case got := <-arrived:
					if got == msg {
						return true
					}
				case <-deadline:
					break wait
				}
			}
		}
		return false
	}
	seen := tunDestinations(f.dev)
	r := f.newRouter(t)
	if err := r.Up(t.Context()); err != nil {
		t.Fatal(err)
	}

	// Without Tunnel, the main table takes them to the network: this is
	// the leak.
	if err := r.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	for _, dst := range resolvers {
		if !reaches(dst) {
			t.Fatalf("without Tunnel, a lookup to %v did not leave by the main table: the test proves nothing", dst)
		}
	}

	cfg := testConfig()
	for _, a := range resolvers {
		cfg.Tunnel = append(cfg.Tunnel, netip.PrefixFrom(a, a.BitLen()))
	}
	if err := r.Set(t.Context(), cfg); err != nil {
		t.Fatal(err)
	}
	for _, dst := range resolvers {
		if got := f.routeGet(t, dst.String()); !strings.Contains(got, "dev "+tunName) {
			t.Errorf("ip route get %v: %q, want the TUN", dst, got)
		}
		if got := f.routeGet(t, dst.String(), "mark", "0x6d78"); !strings.Contains(got, "dev eth0") {
			t.Errorf("ip route get %v mark 0x6d78: %q, want eth0", dst, got)
		}
		var sent []string
		if !intoTUN(t, seen, dst, func() {
			msg, err := lookup(dst)
			if err != nil {
				t.Errorf("lookup to %v: %v", dst, err)
			}
			sent = append(sent, msg)
		}) {
			t.Errorf("a lookup to %v did not come out of the TUN", dst)
		}
		if !f.answers(dst, true) {
			t.Errorf("marked ping to %v does not reach it by the main table", dst)
		}
		// Whatever the TUN got must not have reached the network too.
		deadline := time.After(500 * time.Millisecond)
	drain:
		for {
			select {
			case got := <-arrived:
				if slices.Contains(sent, got) {
					t.Errorf("a lookup to %v reached the network: %q", dst, got)
				}
			case <-deadline:
				break drain
			}
		}
	}
	// The rest of the connected subnet and the LAN stay outside the
	// tunnel.
	if !f.answers(peerAddr, false) || !f.answers(lanHost, false) {
		t.Error("the LAN is unreachable beside the tunneled resolvers")
	}

	// With IPv6 blocked, the IPv6 resolver fails at once, as the rest of
	// IPv6 does.
	blocked := cfg
	blocked.RouteIPv6, blocked.BlockIPv6 = false, true
	blocked.Addresses = blocked.Addresses[:1]
	if err := r.Set(t.Context(), blocked); err != nil {
		t.Fatal(err)
	}
	if _, err := lookup(onLink6); !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Errorf("lookup to %v with IPv6 blocked: %v, want EHOSTUNREACH", onLink6, err)
	}
	if !f.answers(netip.MustParseAddr("fd78::2"), false) {
		t.Error("the connected subnet is unreachable while IPv6 is blocked")
	}

	// A family that is neither routed nor blocked cannot promise them.
	none := cfg
	none.RouteIPv6 = false
	if err := r.Set(t.Context(), none); err == nil {
		t.Error("an IPv6 tunnel prefix accepted with IPv6 neither routed nor blocked")
	}

	// Without them again, their rules go.
	if err := r.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if s := f.state(t); strings.Contains(s, "goto") || strings.Contains(s, "10.78.0.53") || strings.Contains(s, "fd78::53") {
		t.Errorf("tunnel rules left:\n%s", s)
	}
	if !reaches(onLink4) {
		t.Error("the resolver's address did not go back to the main table")
	}
}
