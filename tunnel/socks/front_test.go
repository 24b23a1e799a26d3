package socks

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
)

// startFront joins an in-process mixnet and serves SOCKS5 through it on
// loopback.
func startFront(t *testing.T, o servertest.Options, dns []netip.Addr) (*Front, *Server, string, *servertest.Network) {
	t.Helper()
	n := servertest.Start(t, o)
	f, err := NewFront(Config{DNS: dns, Connect: client.ConnectConfig{
		DirectoryURL: n.DirURL, DirectoryKey: n.AuthKey,
		Client: client.Config{Rate: 300, MeanDelay: 2 * time.Millisecond},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.Up(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s, addr := startServer(t, ServerConfig{Dialer: f, Packets: f})
	return f, s, addr, n
}

// TestFrontConnectThroughMixnet: a SOCKS5 CONNECT crosses the whole
// mixnet, entry, three mixes and exit, and back on reply blocks. The
// test network's internet answers every packet with itself, addresses
// and ports swapped, so a TCP connection to any address is met by its own
// mirror image (a simultaneous open) and echoes what it is sent: the
// bytes come back only if every segment made the round trip intact.
func TestFrontConnectThroughMixnet(t *testing.T) {
	f, s, addr, _ := startFront(t, servertest.Options{Echo: true}, nil)
	v4, v6 := f.Addrs()
	if !v4.Is4() || !v6.Is6() {
		t.Fatalf("inner addresses %v %v", v4, v6)
	}
	pd, err := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := pd.(proxy.ContextDialer).DialContext(ctx, "tcp", "192.0.2.1:7")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 64<<10)
	rand.Read(msg)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("after %d bytes: %v (front %+v)", len(got), err, f.Stats())
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("the bytes that came back differ")
	}
	st := f.Stats()
	if st.PacketsOut == 0 || st.PacketsIn == 0 || st.V4 != v4 || st.LoopsSent == 0 {
		t.Fatalf("front stats %+v", st)
	}
	if ss := s.Stats(); ss.Connected != 1 {
		t.Fatalf("server stats %+v", ss)
	}
}

// TestFrontUDPThroughMixnet: UDP ASSOCIATE datagrams, IPv4 and IPv6,
// cross the mixnet and the reflecting internet answers each from where
// it was sent.
func TestFrontUDPThroughMixnet(t *testing.T) {
	_, s, addr, _ := startFront(t, servertest.Options{Echo: true}, nil)
	_, relay := udpAssociate(t, addr)
	uc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(relay))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	for _, dest := range []Addr{
		{IP: netip.MustParseAddr("192.0.2.1"), Port: 9},
		{IP: netip.MustParseAddr("2001:db8::9"), Port: 9},
	} {
		msg := make([]byte, 1000)
		rand.Read(msg)
		ok := false
		// A datagram may be lost like on any network: a few tries.
		for try := 0; try < 5 && !ok; try++ {
			uc.Write(appendDatagram(nil, dest, msg))
			uc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 2048)
			n, err := uc.Read(buf)
			if err != nil {
				continue
			}
			from, got, err := parseDatagram(buf[:n])
			if err != nil || from != dest || !bytes.Equal(got, msg) {
				t.Fatalf("answer to %v from %+v (%d bytes): %v", dest, from, len(got), err)
			}
			ok = true
		}
		if !ok {
			t.Fatalf("no answer from %v through the mixnet", dest)
		}
	}
	if st := s.Stats(); st.Associations != 1 || st.DatagramsUp < 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestFrontNoDNS: without a DNS server a name is refused (host
// unreachable), not looked up locally.
func TestFrontNoDNS(t *testing.T) {
	f, _, addr, _ := startFront(t, servertest.Options{Echo: true}, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write(appendRequest([]byte{5, 1, 0}, Request{CmdConnect, Addr{Name: "localhost", Port: 80}}))
	got, _ := io.ReadAll(c)
	if !bytes.HasPrefix(got, []byte{5, 0, 5, byte(ReplyHostUnreachable)}) {
		t.Fatalf("answer % x", got)
	}
	if _, err := f.DialContext(context.Background(), "tcp", "localhost:80"); !errors.Is(err, ErrNoDNS) {
		t.Fatalf("dial by name without DNS: %v", err)
	}
	if _, err := f.DialContext(context.Background(), "udp", "192.0.2.1:53"); !errors.Is(err, ErrNetwork) {
		t.Fatalf("dial udp: %v", err)
	}
	if _, err := f.LookupNetIP(context.Background(), "localhost"); !errors.Is(err, ErrNoDNS) {
		t.Fatalf("lookup without DNS: %v", err)
	}
	if _, err := f.ListenPacket(context.Background(), "tcp"); !errors.Is(err, ErrNetwork) {
		t.Fatalf("listen tcp: %v", err)
	}
}

// TestFrontResolvesThroughTunnel: a CONNECT by name makes a DNS query
// that leaves the mixnet at the exit, from the session's inner address,
// to the configured server: the name is resolved on the far side.
func TestFrontResolvesThroughTunnel(t *testing.T) {
	resolver := netip.MustParseAddr("192.0.2.53")
	f, _, addr, n := startFront(t, servertest.Options{}, []netip.Addr{resolver})
	v4, _ := f.Addrs()
	pd, _ := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go pd.(proxy.ContextDialer).DialContext(ctx, "tcp", "internet.mixvpn.test:80")
	qname := []byte("\x08internet\x06mixvpn\x04test\x00")
	for {
		select {
		case p := <-n.Outbound:
			// An IPv4 UDP packet from our inner address to the resolver's
			// port 53, asking for the name.
			if len(p) < 28 || p[0]>>4 != 4 || p[9] != 17 {
				continue
			}
			src, _ := netip.AddrFromSlice(p[12:16])
			dst, _ := netip.AddrFromSlice(p[16:20])
			ihl := int(p[0]&0xf) * 4
			if src == v4 && dst == resolver && p[ihl+2] == 0 && p[ihl+3] == 53 && bytes.Contains(p[ihl+8:], qname) {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no DNS query for the name left the exit (front %+v)", f.Stats())
		}
	}
}

func TestFrontLifecycle(t *testing.T) {
	if _, err := NewFront(Config{}); err == nil {
		t.Fatal("a front without a directory")
	}
	if _, err := NewFront(Config{DNS: []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}, Connect: client.ConnectConfig{DirectoryURL: "http://x", DirectoryKey: make([]byte, 32)}}); err == nil {
		t.Fatal("a link-local resolver")
	}
	f, err := NewFront(Config{Connect: client.ConnectConfig{DirectoryURL: "http://127.0.0.1:1", DirectoryKey: make([]byte, 32)}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.DialContext(context.Background(), "tcp", "192.0.2.1:80"); !errors.Is(err, ErrNotUp) {
		t.Fatalf("dial before Up: %v", err)
	}
	if _, err := f.ListenPacket(context.Background(), "udp4"); !errors.Is(err, ErrNotUp) {
		t.Fatalf("listen before Up: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := f.Up(ctx); err == nil {
		t.Fatal("Up with no directory")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
