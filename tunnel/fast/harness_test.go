package fast

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Addresses of the test network. The client is 10.64.0.2 inside the entry
// tunnel and 10.99.0.2 inside the exit tunnel, where the exit is 10.99.0.1.
var (
	clientEntry4 = netip.MustParsePrefix("10.64.0.2/32")
	clientEntry6 = netip.MustParsePrefix("fc00:64::2/128")
	clientInner4 = netip.MustParseAddr("10.99.0.2")
	clientInner6 = netip.MustParseAddr("fd00:99::2")
	exitInner4   = netip.MustParseAddr("10.99.0.1")
	exitInner6   = netip.MustParseAddr("fd00:99::1")
	loopback4    = netip.MustParseAddr("127.0.0.1")
	loopback6    = netip.MustParseAddr("::1")
)

// Ports of the services on the exit's network stack.
const (
	echoPort = 7
	sinkPort = 9
	srcPort  = 19 // writes what the client asks for, for download benchmarks
	udpPort  = 7
)

func newKey(tb testing.TB) (priv, pub Key) {
	tb.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return Key(k.Bytes()), Key(k.PublicKey().Bytes())
}

func testLogger(tb testing.TB) *slog.Logger {
	if os.Getenv("FAST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", tb.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// loopbackBind is a conn.Bind on one loopback address, so that no test
// listens beyond this machine (wireguard-go's own bind listens on every
// address). It batches with recvmmsg and sendmmsg like the real one.
type loopbackBind struct {
	ip netip.Addr

	mu   sync.Mutex
	conn *net.UDPConn
	pc   *ipv4.PacketConn // ipv4 and ipv6 share the batch calls on Linux

	sendMu sync.Mutex
	msgs   []ipv4.Message
}

func newLoopbackBind(ip netip.Addr) *loopbackBind {
	b := &loopbackBind{ip: ip, msgs: make([]ipv4.Message, conn.IdealBatchSize)}
	for i := range b.msgs {
		b.msgs[i].Buffers = make([][]byte, 1)
	}
	return b
}

func (b *loopbackBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.ip, port)))
	if err != nil {
		return nil, 0, err
	}
	if err := bigBuffers(c); err != nil {
		c.Close()
		return nil, 0, err
	}
	b.conn, b.pc = c, ipv4.NewPacketConn(c)
	pc := b.pc
	msgs := make([]ipv4.Message, conn.IdealBatchSize)
	for i := range msgs {
		msgs[i].Buffers = make([][]byte, 1)
	}
	var last *endpoint
	recv := func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		ms := msgs[:len(packets)]
		for i := range ms {
			ms[i].Buffers[0] = packets[i]
		}
		n, err := pc.ReadBatch(ms, 0)
		if err != nil {
			return 0, err
		}
		for i := range n {
			sizes[i] = ms[i].N
			ap := ms[i].Addr.(*net.UDPAddr).AddrPort()
			if last == nil || last.ap != ap {
				last = newEndpoint(ap)
			}
			eps[i] = last
		}
		return n, nil
	}
	return []conn.ReceiveFunc{recv}, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

func (b *loopbackBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil {
		return nil
	}
	err := b.conn.Close()
	b.conn, b.pc = nil, nil
	return err
}

func (b *loopbackBind) SetMark(uint32) error { return nil }

func (b *loopbackBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	b.mu.Lock()
	pc := b.pc
	b.mu.Unlock()
	if pc == nil {
		return net.ErrClosed
	}
	to := net.UDPAddrFromAddrPort(e.ap)
	b.sendMu.Lock()
	defer b.sendMu.Unlock()
	ms := b.msgs[:len(bufs)]
	for i := range ms {
		ms[i].Buffers[0], ms[i].Addr = bufs[i], to
	}
	for len(ms) > 0 {
		n, err := pc.WriteBatch(ms, 0)
		if err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
}

func (b *loopbackBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return newEndpoint(ap), nil
}

func (b *loopbackBind) BatchSize() int { return conn.IdealBatchSize }

// port returns where the bind listens, or 0 when closed.
func (b *loopbackBind) port() uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil {
		return 0
	}
	return uint16(b.conn.LocalAddr().(*net.UDPAddr).Port)
}

// socketBuffer is what wireguard-go asks for its sockets: enough that a
// burst from a fast sender is not dropped before the reader runs.
const socketBuffer = 7 << 20

// relay is the entry gateway's forwarding as a tun.Device for its
// wireguard-go device. A real entry routes the client's inner datagrams in its
// kernel and translates their source; this one does the same for one client
// over a loopback socket, and watches everything it forwards: what it sees is
// what an entry operator could see.
type relay struct {
	exit  netip.AddrPort // the exit as the client addresses it
	sock  *net.UDPConn   // to the exit, from the address the exit sees
	clear [][]byte       // byte strings that must never be seen in clear

	replies chan []byte
	events  chan tun.Event
	closed  chan struct{}
	once    sync.Once
	wg      sync.WaitGroup

	client atomic.Pointer[netip.AddrPort] // the client's inner socket as the entry tunnel shows it

	forwarded  atomic.Uint64
	types      [5]atomic.Uint64 // forwarded WireGuard messages by type
	violations atomic.Uint64
	mu         sync.Mutex
	firstBad   string
}

// newRelay forwards datagrams for exit to real, which is exit itself unless
// the client knows the exit by an alias.
func newRelay(tb testing.TB, exit, real netip.AddrPort, clear [][]byte) *relay {
	tb.Helper()
	local := loopback4
	if real.Addr().Is6() {
		local = loopback6
	}
	sock, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(local, 0)), net.UDPAddrFromAddrPort(real))
	if err != nil {
		tb.Fatal(err)
	}
	if err := bigBuffers(sock); err != nil {
		tb.Fatal(err)
	}
	r := &relay{exit: exit, sock: sock, clear: clear, replies: make(chan []byte, 1024), events: make(chan tun.Event), closed: make(chan struct{})}
	r.wg.Add(1)
	go r.fromExit()
	return r
}

// source is the address the exit sees the client's traffic come from.
func (r *relay) source() netip.AddrPort { return r.sock.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *relay) violate(format string, args ...any) {
	if r.violations.Add(1) == 1 {
		r.mu.Lock()
		r.firstBad = fmt.Sprintf(format, args...)
		r.mu.Unlock()
	}
}

// fromExit wraps the exit's datagrams into IP packets to the client.
func (r *relay) fromExit() {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := r.sock.Read(buf)
		if err != nil {
			return
		}
		to := r.client.Load()
		if to == nil {
			continue
		}
		select {
		case r.replies <- buildUDP(r.exit, *to, buf[:n]):
		case <-r.closed:
			return
		}
	}
}

// buildUDP builds an IP/UDP packet with gVisor, independently of the code
// under test.
func buildUDP(src, dst netip.AddrPort, payload []byte) []byte {
	udpLen := header.UDPMinimumSize + len(payload)
	saddr, daddr := tcpip.AddrFromSlice(src.Addr().AsSlice()), tcpip.AddrFromSlice(dst.Addr().AsSlice())
	var pkt []byte
	var u header.UDP
	if src.Addr().Is4() {
		pkt = make([]byte, header.IPv4MinimumSize+udpLen)
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: saddr, DstAddr: daddr})
		ip.SetChecksum(^ip.CalculateChecksum())
		u = header.UDP(pkt[header.IPv4MinimumSize:])
	} else {
		pkt = make([]byte, header.IPv6MinimumSize+udpLen)
		header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(udpLen), TransportProtocol: header.UDPProtocolNumber, HopLimit: 64, SrcAddr: saddr, DstAddr: daddr})
		u = header.UDP(pkt[header.IPv6MinimumSize:])
	}
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: uint16(udpLen)})
	copy(u.Payload(), payload)
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, saddr, daddr, uint16(udpLen))
	xsum = checksum.Checksum(payload, xsum)
	u.SetChecksum(^u.CalculateChecksum(xsum))
	return pkt
}

func (r *relay) File() *os.File { return nil }

func (r *relay) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var p []byte
	select {
	case p = <-r.replies:
	case <-r.closed:
		return 0, os.ErrClosed
	}
	n := 0
	for {
		sizes[n] = copy(bufs[n][offset:], p)
		n++
		if n == len(bufs) {
			return n, nil
		}
		select {
		case p = <-r.replies:
		default:
			return n, nil
		}
	}
}

// Write forwards the client's inner datagrams to the exit after checking
// them with gVisor's parsers: valid UDP to the exit endpoint only, carrying
// WireGuard messages, with none of the watched byte strings in clear.
func (r *relay) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		pkt := b[offset:]
		var src, dst netip.Addr
		var u header.UDP
		switch header.IPVersion(pkt) {
		case header.IPv4Version:
			ip := header.IPv4(pkt)
			if !ip.IsValid(len(pkt)) || !ip.IsChecksumValid() || ip.TransportProtocol() != header.UDPProtocolNumber {
				r.violate("bad IPv4 packet % x", pkt[:min(len(pkt), 28)])
				continue
			}
			src, dst = netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4())
			u = header.UDP(ip.Payload())
		case header.IPv6Version:
			ip := header.IPv6(pkt)
			if !ip.IsValid(len(pkt)) || ip.TransportProtocol() != header.UDPProtocolNumber {
				r.violate("bad IPv6 packet % x", pkt[:min(len(pkt), 48)])
				continue
			}
			src, dst = netip.AddrFrom16(ip.SourceAddress().As16()), netip.AddrFrom16(ip.DestinationAddress().As16())
			u = header.UDP(ip.Payload())
			xsum := checksum.Checksum(u.Payload(), 0)
			if !u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), xsum) {
				r.violate("bad UDP checksum over IPv6")
				continue
			}
		default:
			r.violate("not IP: % x", pkt[:min(len(pkt), 8)])
			continue
		}
		if len(u) < header.UDPMinimumSize || int(u.Length()) != len(u) {
			r.violate("bad UDP length")
			continue
		}
		if to := netip.AddrPortFrom(dst, u.DestinationPort()); to != r.exit {
			r.violate("datagram to %v, not the exit %v", to, r.exit)
			continue
		}
		payload := u.Payload()
		if len(payload) < 4 || payload[0] < 1 || payload[0] > 4 || payload[1] != 0 || payload[2] != 0 || payload[3] != 0 {
			r.violate("not a WireGuard message: % x", payload[:min(len(payload), 8)])
			continue
		}
		for _, c := range r.clear {
			if bytes.Contains(payload, c) {
				r.violate("%x in clear", c)
			}
		}
		r.types[payload[0]].Add(1)
		r.forwarded.Add(1)
		from := netip.AddrPortFrom(src, u.SourcePort())
		r.client.Store(&from)
		if _, err := r.sock.Write(payload); err != nil {
			r.violate("forward: %v", err)
		}
	}
	return len(bufs), nil
}

func (r *relay) MTU() (int, error)        { return DefaultOuterMTU, nil }
func (r *relay) Name() (string, error)    { return "relay", nil }
func (r *relay) Events() <-chan tun.Event { return r.events }
func (r *relay) BatchSize() int           { return conn.IdealBatchSize }

func (r *relay) Close() error {
	r.once.Do(func() {
		close(r.closed)
		close(r.events)
		r.sock.Close()
		r.wg.Wait()
	})
	return nil
}

func (r *relay) check(tb testing.TB) {
	tb.Helper()
	if n := r.violations.Load(); n != 0 {
		r.mu.Lock()
		defer r.mu.Unlock()
		tb.Errorf("entry saw %d bad datagrams; first: %s", n, r.firstBad)
	}
}

// gateway is a wireguard-go peer on loopback with one client.
type gateway struct {
	priv, pub Key
	dev       *device.Device
	bind      *loopbackBind
	net       *netstack.Net // the exit's network stack; nil for the entry
}

func (g *gateway) endpoint() netip.AddrPort { return netip.AddrPortFrom(g.bind.ip, g.bind.port()) }

// peerEndpoint is where the gateway sees its client's traffic come from.
func (g *gateway) peerEndpoint(tb testing.TB) string {
	tb.Helper()
	get, err := g.dev.IpcGet()
	if err != nil {
		tb.Fatal(err)
	}
	for l := range strings.Lines(get) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "endpoint="); ok {
			return v
		}
	}
	return ""
}

func startGateway(tb testing.TB, name string, td tun.Device, ip netip.Addr, client Key, allowed ...netip.Prefix) *gateway {
	tb.Helper()
	g := &gateway{bind: newLoopbackBind(ip)}
	g.priv, g.pub = newKey(tb)
	g.dev = device.NewDevice(td, g.bind, wgLogger(testLogger(tb), name))
	tb.Cleanup(g.dev.Close)
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\npublic_key=%s\n", hex.EncodeToString(g.priv[:]), hex.EncodeToString(client[:]))
	for _, p := range allowed {
		fmt.Fprintf(&b, "allowed_ip=%s\n", p)
	}
	if err := g.dev.IpcSet(b.String()); err != nil {
		tb.Fatalf("configure %s: %v", name, err)
	}
	if err := g.dev.Up(); err != nil {
		tb.Fatalf("up %s: %v", name, err)
	}
	return g
}

// startExit starts an exit gateway on ip with echo, sink and source services
// on its network stack.
func startExit(tb testing.TB, ip netip.Addr, client Key) *gateway {
	tb.Helper()
	td, tnet, err := netstack.CreateNetTUN([]netip.Addr{exitInner4, exitInner6}, nil, DefaultMTU)
	if err != nil {
		tb.Fatal(err)
	}
	g := startGateway(tb, "exit-gw", td, ip, client,
		netip.PrefixFrom(clientInner4, 32), netip.PrefixFrom(clientInner6, 128))
	g.net = tnet
	for _, a := range []netip.Addr{exitInner4, exitInner6} {
		serveTCP(tb, tnet, netip.AddrPortFrom(a, echoPort), func(c net.Conn) { io.Copy(c, c) })
		serveTCP(tb, tnet, netip.AddrPortFrom(a, sinkPort), sink)
		serveTCP(tb, tnet, netip.AddrPortFrom(a, srcPort), source)
		serveUDPEcho(tb, tnet, netip.AddrPortFrom(a, udpPort))
	}
	return g
}

// sink reads to EOF and answers with the count.
func sink(c net.Conn) {
	n, _ := io.Copy(io.Discard, c)
	fmt.Fprintf(c, "%d\n", n)
}

// source reads a count and writes that many bytes.
func source(c net.Conn) {
	var n int64
	if _, err := fmt.Fscanf(c, "%d\n", &n); err != nil {
		return
	}
	buf := make([]byte, 64<<10)
	for n > 0 {
		k, err := c.Write(buf[:min(int64(len(buf)), n)])
		if err != nil {
			return
		}
		n -= int64(k)
	}
}

func serveTCP(tb testing.TB, tnet *netstack.Net, at netip.AddrPort, handle func(net.Conn)) {
	tb.Helper()
	ln, err := tnet.ListenTCPAddrPort(at)
	if err != nil {
		tb.Fatalf("listen %v: %v", at, err)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		conns   = map[net.Conn]bool{}
		closing bool
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closing {
				mu.Unlock()
				c.Close()
				return
			}
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	// A client that went away without closing leaves its handler reading:
	// closing every connection ends them all.
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closing = true
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

func serveUDPEcho(tb testing.TB, tnet *netstack.Net, at netip.AddrPort) {
	tb.Helper()
	pc, err := tnet.ListenUDPAddrPort(at)
	if err != nil {
		tb.Fatalf("listen %v: %v", at, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	tb.Cleanup(func() { pc.Close(); <-done })
}

// testNet is a client with both gateways.
type testNet struct {
	entry, exit *gateway
	relay       *relay
	tunnel      *Tunnel
	client      *netstack.Net
	connect     time.Duration
}

// netOptions vary the test network.
type netOptions struct {
	exitIP netip.Addr // where the exit listens: loopback4 or loopback6
	// join, if set, replaces the link design.
	join func(cfg *Config) (tun.Device, conn.Bind, *link, error)
	// exitAlias, if set, is the exit's address as the client knows it; the
	// entry translates it to the loopback address. gVisor drops packets
	// from loopback addresses arriving on its NIC as martians, so a netstack
	// on the outer device needs it; real exits have public addresses.
	exitAlias netip.Addr
}

// startTwoHop builds entry and exit gateways and a client Tunnel through
// them, and brings it up.
func startTwoHop(tb testing.TB, o netOptions) *testNet {
	tb.Helper()
	if !o.exitIP.IsValid() {
		o.exitIP = loopback4
	}
	entryPriv, entryPub := newKey(tb)
	exitPriv, exitPub := newKey(tb)

	exit := startExit(tb, o.exitIP, exitPub)
	// What the entry must never see in clear: the inner IPv4 header's
	// addresses side by side, and the client's inner IPv6 address.
	c4, e4 := clientInner4.As4(), exitInner4.As4()
	c6 := clientInner6.As16()
	watch := [][]byte{append(c4[:], e4[:]...), append(e4[:], c4[:]...), c6[:], []byte(secretMarker)}
	exitEP := exit.endpoint()
	if o.exitAlias.IsValid() {
		exitEP = netip.AddrPortFrom(o.exitAlias, exitEP.Port())
	}
	r := newRelay(tb, exitEP, exit.endpoint(), watch)
	tb.Cleanup(func() { r.Close() })
	entry := startGateway(tb, "entry-gw", r, loopback4, entryPub, clientEntry4, clientEntry6)

	userTUN, client, err := netstack.CreateNetTUN([]netip.Addr{clientInner4, clientInner6}, nil, DefaultMTU)
	if err != nil {
		tb.Fatal(err)
	}
	cfg := Config{
		PrivateKeyEntry: entryPriv,
		PrivateKeyExit:  exitPriv,
		Entry:           Hop{PublicKey: entry.pub, Endpoint: entry.endpoint(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}},
		Exit:            Hop{PublicKey: exit.pub, Endpoint: exitEP},
		EntryAddrs:      []netip.Prefix{clientEntry4, clientEntry6},
		InnerAddrs:      []netip.Prefix{netip.PrefixFrom(clientInner4, 32), netip.PrefixFrom(clientInner6, 128)},
		Logger:          testLogger(tb),
		Outer:           newLoopbackBind(loopback4),
	}
	tn, err := New(cfg, userTUN)
	if err != nil {
		tb.Fatal(err)
	}
	if o.join != nil {
		tn.join = o.join
	}
	tb.Cleanup(func() { tn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := tn.Up(ctx); err != nil {
		tb.Fatalf("up: %v", err)
	}
	return &testNet{entry: entry, exit: exit, relay: r, tunnel: tn, client: client, connect: time.Since(start)}
}

// startOneHop connects a plain wireguard-go client straight to an exit: the
// baseline the two hops are measured against.
func startOneHop(tb testing.TB) (*netstack.Net, time.Duration) {
	tb.Helper()
	priv, pub := newKey(tb)
	exit := startExit(tb, loopback4, pub)
	userTUN, client, err := netstack.CreateNetTUN([]netip.Addr{clientInner4, clientInner6}, nil, DefaultMTU)
	if err != nil {
		tb.Fatal(err)
	}
	dev := device.NewDevice(userTUN, newLoopbackBind(loopback4), wgLogger(testLogger(tb), "one-hop"))
	tb.Cleanup(dev.Close)
	hop := Hop{PublicKey: exit.pub, Endpoint: exit.endpoint(), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}
	if err := dev.IpcSet(uapi(priv, 0, &hop)); err != nil {
		tb.Fatal(err)
	}
	start := time.Now()
	if err := dev.Up(); err != nil {
		tb.Fatal(err)
	}
	dev.LookupPeer(device.NoisePublicKey(exit.pub)).SendKeepalive()
	deadline := time.Now().Add(20 * time.Second)
	for hopStats(dev).LastHandshake.IsZero() {
		if time.Now().After(deadline) {
			tb.Fatal("one-hop handshake timed out")
		}
		time.Sleep(handshakePoll)
	}
	return client, time.Since(start)
}

const secretMarker = "mixvpn-fast-secret-marker"
