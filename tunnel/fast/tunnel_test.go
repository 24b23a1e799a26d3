package fast

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// transferSize is how much each TCP test moves each way.
func transferSize() int {
	if raceEnabled || testing.Short() {
		return 256 << 10
	}
	return 4 << 20
}

func TestTwoHop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		exitIP netip.Addr
	}{
		{"exit over IPv4", loopback4},
		{"exit over IPv6", loopback6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := startTwoHop(t, netOptions{exitIP: tc.exitIP})
			t.Logf("connect time (both handshakes): %v", n.connect)

			size := transferSize()
			echoTCP(t, n.client, netip.AddrPortFrom(exitInner4, echoPort), size)
			echoTCP(t, n.client, netip.AddrPortFrom(exitInner6, echoPort), size)
			echoUDP(t, n.client, netip.AddrPortFrom(exitInner4, udpPort), DefaultMTU-ipv4HeaderLen-udpHeaderLen)
			echoUDP(t, n.client, netip.AddrPortFrom(exitInner6, udpPort), DefaultMTU-ipv6HeaderLen-udpHeaderLen)

			// The entry forwarded only sealed WireGuard messages, only to
			// the exit, and saw neither inner addresses nor payload.
			n.relay.check(t)
			if n.relay.types[1].Load() == 0 || n.relay.types[4].Load() == 0 {
				t.Errorf("entry forwarded %d initiations and %d transport messages; want both", n.relay.types[1].Load(), n.relay.types[4].Load())
			}
			// The entry knows the client's socket; the exit knows only the
			// entry's.
			outer := netip.AddrPortFrom(loopback4, n.tunnel.cfg.Outer.(*loopbackBind).port()).String()
			if got := n.entry.peerEndpoint(t); got != outer {
				t.Errorf("entry sees the client at %q, want its socket %q", got, outer)
			}
			if got, want := n.exit.peerEndpoint(t), n.relay.source().String(); got != want {
				t.Errorf("exit sees the client at %q, want the entry's relay %q", got, want)
			}

			s := n.tunnel.Stats()
			if min(s.BytesIn, s.BytesOut) < uint64(2*size) {
				t.Errorf("stats count %d bytes in and %d out; moved %d each way", s.BytesIn, s.BytesOut, 2*size)
			}
			if s.Entry.RxBytes <= s.Exit.RxBytes || s.Entry.TxBytes <= s.Exit.TxBytes {
				t.Errorf("entry hop carried less than the exit hop inside it: %+v", s)
			}
			if s.Entry.LastHandshake.IsZero() || s.Exit.LastHandshake.IsZero() {
				t.Errorf("missing handshake time: %+v", s)
			}
			if s.Entry.Endpoint != n.entry.endpoint() || s.Exit.Endpoint != n.exit.endpoint() {
				t.Errorf("endpoints %v, %v; want %v, %v", s.Entry.Endpoint, s.Exit.Endpoint, n.entry.endpoint(), n.exit.endpoint())
			}
			if s.LinkDrops != 0 {
				t.Errorf("link dropped %d packets", s.LinkDrops)
			}

			if err := n.tunnel.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			if err := n.tunnel.Close(); err != nil {
				t.Fatalf("second close: %v", err)
			}
			if s := n.tunnel.Stats(); s != (Stats{}) {
				t.Errorf("stats after close: %+v", s)
			}
			if err := n.tunnel.Up(context.Background()); !errors.Is(err, ErrClosed) {
				t.Errorf("up after close: %v, want ErrClosed", err)
			}
		})
	}
}

// echoTCP sends size random bytes, with a marker the entry must not see,
// through the echo service at to and checks they come back.
func echoTCP(t *testing.T, client *netstack.Net, to netip.AddrPort, size int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := client.DialContextTCPAddrPort(ctx, to)
	if err != nil {
		t.Fatalf("dial %v: %v", to, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	copy(data, secretMarker)
	copy(data[size/2:], secretMarker)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		werr <- err
	}()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo from %v: %v", to, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write to %v: %v", to, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo from %v differs", to)
	}
}

// echoUDP sends datagrams up to maxSize through the UDP echo at to. Each is
// tried a few times, since UDP may drop.
func echoUDP(t *testing.T, client *netstack.Net, to netip.AddrPort, maxSize int) {
	t.Helper()
	c, err := client.DialUDPAddrPort(netip.AddrPort{}, to)
	if err != nil {
		t.Fatalf("dial udp %v: %v", to, err)
	}
	defer c.Close()
	buf := make([]byte, 65536)
	for _, size := range []int{1, 100, 1000, maxSize} {
		msg := make([]byte, size)
		rand.Read(msg)
		ok := false
		for try := 0; try < 5 && !ok; try++ {
			if _, err := c.Write(msg); err != nil {
				t.Fatalf("udp write %d bytes: %v", size, err)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(buf)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if err != nil {
				t.Fatalf("udp read: %v", err)
			}
			if !bytes.Equal(buf[:n], msg) {
				t.Fatalf("udp echo of %d bytes differs", size)
			}
			ok = true
		}
		if !ok {
			t.Fatalf("no UDP echo of %d bytes from %v", size, to)
		}
	}
}

// TestUpWaitsForHandshake points the entry at a socket that never answers:
// Up must give up when its context does, and the client must have tried.
func TestUpWaitsForHandshake(t *testing.T) {
	silent, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(loopback4, 0)))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	cfg := testConfig(t)
	cfg.Entry.Endpoint = silent.LocalAddr().(*net.UDPAddr).AddrPort()
	cfg.Outer = newLoopbackBind(loopback4)
	userTUN, _, err := netstack.CreateNetTUN([]netip.Addr{clientInner4}, nil, DefaultMTU)
	if err != nil {
		t.Fatal(err)
	}
	tn, err := New(cfg, userTUN)
	if err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := tn.Up(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("up against a silent entry: %v, want deadline exceeded", err)
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := silent.Read(buf)
	if err != nil {
		t.Fatalf("no handshake reached the entry: %v", err)
	}
	if n != 148 || buf[0] != 1 {
		t.Errorf("entry got %d bytes of type %d, want a 148-byte initiation", n, buf[0])
	}
	if s := tn.Stats(); !s.Entry.LastHandshake.IsZero() || !s.Exit.LastHandshake.IsZero() {
		t.Errorf("handshake recorded without an answer: %+v", s)
	}
	if err := tn.Up(context.Background()); err == nil {
		t.Error("second Up succeeded")
	}
	if err := tn.Close(); err != nil {
		t.Fatal(err)
	}
}

// testConfig is a valid config whose gateways do not exist.
func testConfig(t testing.TB) Config {
	entryPriv, _ := newKey(t)
	exitPriv, _ := newKey(t)
	_, entryPub := newKey(t)
	_, exitPub := newKey(t)
	return Config{
		PrivateKeyEntry: entryPriv,
		PrivateKeyExit:  exitPriv,
		Entry:           Hop{PublicKey: entryPub, Endpoint: netip.MustParseAddrPort("127.0.0.1:1")},
		Exit:            Hop{PublicKey: exitPub, Endpoint: netip.MustParseAddrPort("127.0.0.1:2")},
		EntryAddrs:      []netip.Prefix{clientEntry4},
		InnerAddrs:      []netip.Prefix{netip.PrefixFrom(clientInner4, 32)},
		Logger:          testLogger(t),
	}
}

// fakeTUN is a user-facing device for tests that never start the tunnel.
type fakeTUN struct {
	mtu    int
	closed bool
}

func (f *fakeTUN) File() *os.File                         { return nil }
func (f *fakeTUN) Read([][]byte, []int, int) (int, error) { return 0, os.ErrClosed }
func (f *fakeTUN) Write(b [][]byte, _ int) (int, error)   { return len(b), nil }
func (f *fakeTUN) Name() (string, error)                  { return "fake", nil }
func (f *fakeTUN) Events() <-chan tun.Event               { return nil }
func (f *fakeTUN) BatchSize() int                         { return 1 }

func (f *fakeTUN) MTU() (int, error) { return f.mtu, nil }
func (f *fakeTUN) Close() error      { f.closed = true; return nil }

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Config)
	}{
		{"no entry key", func(c *Config) { c.PrivateKeyEntry = Key{} }},
		{"shared private key", func(c *Config) { c.PrivateKeyExit = c.PrivateKeyEntry }},
		{"shared public key", func(c *Config) { c.Exit.PublicKey = c.Entry.PublicKey }},
		{"no exit public key", func(c *Config) { c.Exit.PublicKey = Key{} }},
		{"no endpoint", func(c *Config) { c.Entry.Endpoint = netip.AddrPort{} }},
		{"port zero", func(c *Config) { c.Exit.Endpoint = netip.MustParseAddrPort("127.0.0.1:0") }},
		{"shared endpoint", func(c *Config) { c.Exit.Endpoint = c.Entry.Endpoint }},
		{"no v6 entry address for a v6 exit", func(c *Config) { c.Exit.Endpoint = netip.MustParseAddrPort("[::1]:2") }},
		{"entry does not route to exit", func(c *Config) { c.Entry.AllowedIPs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")} }},
		{"tiny MTU", func(c *Config) { c.MTU = 100 }},
		{"negative keepalive", func(c *Config) { c.Exit.PersistentKeepalive = -time.Second }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.change(&cfg)
			if _, err := New(cfg, &fakeTUN{mtu: DefaultMTU}); err == nil {
				t.Fatal("accepted")
			} else {
				t.Log(err)
			}
		})
	}
	t.Run("device MTU too large", func(t *testing.T) {
		_, err := New(testConfig(t), &fakeTUN{mtu: 1500})
		if err == nil {
			t.Fatal("accepted a 1500-byte device inside a 1340-byte tunnel")
		}
		t.Log(err)
	})
	t.Run("close before up closes the device", func(t *testing.T) {
		dev := &fakeTUN{mtu: DefaultMTU}
		tn, err := New(testConfig(t), dev)
		if err != nil {
			t.Fatal(err)
		}
		if err := tn.Close(); err != nil || !dev.closed {
			t.Fatalf("close: %v, device closed: %v", err, dev.closed)
		}
	})
}

func TestKeyPublic(t *testing.T) {
	priv, pub := newKey(t)
	got, err := priv.Public()
	if err != nil || got != pub {
		t.Fatalf("Public() = %x, %v; want %x", got, err, pub)
	}
	s := "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	k, err := ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseKey(s[:40]); err == nil {
		t.Error("short key accepted")
	}
	if _, err := ParseKey("not base64!"); err == nil {
		t.Error("junk accepted")
	}
	if k.IsZero() {
		t.Error("parsed key is zero")
	}
}

func ExampleConfigFromWgQuick() {
	entry := `[Interface]
PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
Address = 10.64.0.2/32
MTU = 1420
[Peer]
PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
Endpoint = 198.51.100.1:51820
AllowedIPs = 0.0.0.0/0
`
	exit := `[Interface]
PrivateKey = TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0=
Address = 10.99.0.2/32
DNS = 10.99.0.1
[Peer]
PublicKey = gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA=
Endpoint = 203.0.113.9:51820
AllowedIPs = 0.0.0.0/0, ::/0
`
	cfg, err := ConfigFromWgQuick(strings.NewReader(entry), strings.NewReader(exit))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("entry", cfg.Entry.Endpoint, "exit", cfg.Exit.Endpoint, "inner MTU", cfg.MTU, "DNS", cfg.DNS)
	// Output: entry 198.51.100.1:51820 exit 203.0.113.9:51820 inner MTU 1340 DNS [10.99.0.1]
}
