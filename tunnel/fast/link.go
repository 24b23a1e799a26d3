package fast

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// The link joins the two WireGuard devices with no network stack between
// them. To the inner (exit) device it is a conn.Bind; to the outer (entry)
// device it is a tun.Device. A datagram the inner device sends becomes an
// IP/UDP packet the outer device reads, written straight into the outer
// device's buffer; an IP/UDP packet the outer device decrypts is stripped and
// its payload written straight into the inner device's receive buffer. Each
// direction is a rendezvous: the reader lends its buffers through a channel and
// the writer fills as many as it has, so a batch costs two channel operations
// and one copy per packet, and nothing is allocated.
type link struct {
	mtu  int
	src4 netip.Addr // our address in the entry tunnel, for IPv4 exit endpoints
	src6 netip.Addr // and for IPv6 ones

	reads chan *readReq // the outer device's tun reads, waiting for Send
	recvs chan *recvReq // the inner device's receives, waiting for Write

	tunClosed chan struct{}
	events    chan tun.Event
	closeTUN  sync.Once

	mu         sync.Mutex
	bindOpen   bool
	bindClosed chan struct{} // closed once the current Open is closed; closed while not open
	port       uint16

	lastEp atomic.Pointer[endpoint] // the exit's endpoint, reused so receiving does not allocate
	drops  atomic.Uint64            // packets from the entry that were not for us
}

type readReq struct {
	bufs   [][]byte
	sizes  []int
	offset int
	done   chan int
}

type recvReq struct {
	packets [][]byte
	sizes   []int
	eps     []conn.Endpoint
	done    chan int
}

// newLink returns the two faces of a link whose datagrams leave from
// addresses in entryAddrs and whose tun face has MTU mtu.
func newLink(entryAddrs []netip.Prefix, mtu int) *link {
	closed := make(chan struct{})
	close(closed)
	return &link{
		mtu:        mtu,
		src4:       sourceFor(entryAddrs, netip.IPv4Unspecified()),
		src6:       sourceFor(entryAddrs, netip.IPv6Unspecified()),
		reads:      make(chan *readReq),
		recvs:      make(chan *recvReq),
		tunClosed:  make(chan struct{}),
		events:     make(chan tun.Event, 1),
		bindClosed: closed,
	}
}

// tunDevice is the link as the outer device sees it.
func (l *link) tunDevice() *linkTUN { return &linkTUN{l: l, req: readReq{done: make(chan int, 1)}} }

// bind is the link as the inner device sees it.
func (l *link) bind() *linkBind { return &linkBind{l: l} }

// bindState returns what Send and Write need to know about the bind.
func (l *link) bindState() (closed chan struct{}, port uint16) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bindClosed, l.port
}

// endpointFor returns an endpoint for ap, reusing the last one: every packet
// comes from the exit, so this almost never allocates.
func (l *link) endpointFor(ap netip.AddrPort) *endpoint {
	if e := l.lastEp.Load(); e != nil && e.ap == ap {
		return e
	}
	e := newEndpoint(ap)
	l.lastEp.Store(e)
	return e
}

// linkTUN is the outer device's tun.Device: it yields the inner device's
// datagrams as IP packets and takes back decrypted IP packets from the entry.
type linkTUN struct {
	l      *link
	readMu sync.Mutex
	req    readReq
}

var _ tun.Device = (*linkTUN)(nil)

// File returns nil: there is no kernel device behind the link.
func (t *linkTUN) File() *os.File { return nil }

// Read lends bufs to the next Send and returns what it wrote.
func (t *linkTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.readMu.Lock()
	defer t.readMu.Unlock()
	r := &t.req
	r.bufs, r.sizes, r.offset = bufs, sizes, offset
	select {
	case t.l.reads <- r:
	case <-t.l.tunClosed:
		return 0, os.ErrClosed
	}
	// A Send that took the request always answers at once.
	return <-r.done, nil
}

// Write hands the UDP payloads in bufs to the inner device's receive. Packets
// that are not UDP to our port are dropped, as a host would; while the bind is
// closed everything is, as at a closed port. Checksums are not verified: the
// packet arrived authenticated by the entry hop and the payload is itself
// authenticated by the exit hop.
func (t *linkTUN) Write(bufs [][]byte, offset int) (int, error) {
	l := t.l
	closed, port := l.bindState()
	var r *recvReq
	n := 0
	for _, buf := range bufs {
		payload, src, dport, ok := decapUDP(buf[offset:])
		if !ok || dport != port {
			l.drops.Add(1)
			continue
		}
		if r == nil {
			select {
			case r = <-l.recvs:
			case <-closed:
				l.drops.Add(1)
				continue
			case <-l.tunClosed:
				return 0, os.ErrClosed
			}
		}
		if len(payload) > len(r.packets[n]) {
			l.drops.Add(1)
			continue
		}
		r.sizes[n] = copy(r.packets[n], payload)
		r.eps[n] = l.endpointFor(src)
		n++
		if n == len(r.packets) {
			r.done <- n
			r, n = nil, 0
		}
	}
	if r != nil {
		r.done <- n
	}
	return len(bufs), nil
}

// MTU returns the entry tunnel's MTU.
func (t *linkTUN) MTU() (int, error) { return t.l.mtu, nil }

// Name names the link in the outer device's logs.
func (t *linkTUN) Name() (string, error) { return "fast-link", nil }

// Events never reports anything: the tunnel brings the device up itself.
func (t *linkTUN) Events() <-chan tun.Event { return t.l.events }

// Close ends the tun face; reads, writes and sends then fail with ErrClosed.
func (t *linkTUN) Close() error {
	t.l.closeTUN.Do(func() {
		close(t.l.tunClosed)
		close(t.l.events)
	})
	return nil
}

// BatchSize lets the outer device read as many packets at once as the inner
// device sends.
func (t *linkTUN) BatchSize() int { return conn.IdealBatchSize }

// linkBind is the inner device's conn.Bind: its datagrams travel in the entry
// tunnel instead of a socket.
type linkBind struct {
	l *link
}

var _ conn.Bind = (*linkBind)(nil)

// Open starts a receive generation on port, or on a random ephemeral port if
// port is 0. The port is only seen by the entry gateway, which translates it
// anyway.
func (b *linkBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	l := b.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bindOpen {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	if port == 0 {
		port = uint16(49152 + rand.N(16384))
	}
	l.bindOpen, l.port = true, port
	l.bindClosed = make(chan struct{})
	return []conn.ReceiveFunc{l.receiveFunc(l.bindClosed)}, port, nil
}

// receiveFunc returns the ReceiveFunc of one Open, which fails with
// net.ErrClosed once closed is. It must not be called concurrently with itself,
// as wireguard-go never does.
func (l *link) receiveFunc(closed chan struct{}) conn.ReceiveFunc {
	r := &recvReq{done: make(chan int, 1)}
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		r.packets, r.sizes, r.eps = packets, sizes, eps
		for {
			select {
			case l.recvs <- r:
			case <-closed:
				return 0, net.ErrClosed
			}
			// A Write that took the request always answers at once.
			if n := <-r.done; n > 0 {
				return n, nil
			}
		}
	}
}

// Close ends the current receive generation.
func (b *linkBind) Close() error {
	l := b.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.bindOpen {
		close(l.bindClosed)
		l.bindOpen = false
	}
	return nil
}

// SetMark does nothing: inner datagrams never reach a socket. The outer
// socket carries the mark.
func (b *linkBind) SetMark(uint32) error { return nil }

// Send writes bufs as IP/UDP packets to ep into the outer device's reads,
// waiting for them so that a busy entry hop slows the exit hop down instead of
// dropping.
func (b *linkBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	l := b.l
	closed, port := l.bindState()
	src := l.src4
	if e.ap.Addr().Is6() {
		src = l.src6
	}
	if !src.IsValid() {
		return errNoSource
	}
	for len(bufs) > 0 {
		var r *readReq
		select {
		case r = <-l.reads:
		case <-closed:
			return net.ErrClosed
		case <-l.tunClosed:
			return net.ErrClosed
		}
		n := min(len(bufs), len(r.bufs))
		for i := range n {
			r.sizes[i] = encapUDP(r.bufs[i][r.offset:], bufs[i], src, port, e.ap)
		}
		r.done <- n
		bufs = bufs[n:]
	}
	return nil
}

// errNoSource means the exit endpoint moved to an address family the client
// has no entry tunnel address in; Config validation rules it out at start.
var errNoSource = errors.New("fast: no entry tunnel address of the exit endpoint's family")

// ParseEndpoint parses an ip:port endpoint.
func (b *linkBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return newEndpoint(ap), nil
}

// BatchSize is the most datagrams one Send or receive carries.
func (b *linkBind) BatchSize() int { return conn.IdealBatchSize }

// endpoint is an exit endpoint as the link's bind knows it. It is immutable,
// so one value can be shared by every packet from the same address.
type endpoint struct {
	ap  netip.AddrPort
	raw []byte
}

func newEndpoint(ap netip.AddrPort) *endpoint {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	raw, _ := ap.MarshalBinary()
	return &endpoint{ap: ap, raw: raw}
}

func (e *endpoint) ClearSrc()           {}
func (e *endpoint) SrcToString() string { return "" }
func (e *endpoint) DstToString() string { return e.ap.String() }
func (e *endpoint) DstToBytes() []byte  { return e.raw }
func (e *endpoint) DstIP() netip.Addr   { return e.ap.Addr() }
func (e *endpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// encapUDP writes an IP/UDP packet carrying payload from src:sport to dst
// into buf and returns its length, or 0 if it does not fit. IPv4 packets set
// DF and leave the UDP checksum zero, which IPv4 allows and the payload's own
// authentication makes redundant; IPv6 requires the checksum, so it is
// computed.
func encapUDP(buf, payload []byte, src netip.Addr, sport uint16, dst netip.AddrPort) int {
	hl := ipv4HeaderLen
	if dst.Addr().Is6() {
		hl = ipv6HeaderLen
	}
	udpLen := udpHeaderLen + len(payload)
	total := hl + udpLen
	if total > len(buf) || udpLen > 0xffff || (hl == ipv4HeaderLen && total > 0xffff) {
		return 0
	}
	udp := buf[hl : hl+udpHeaderLen]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	binary.BigEndian.PutUint16(udp[6:], 0)
	copy(buf[hl+udpHeaderLen:], payload)

	h := buf[:hl]
	if hl == ipv4HeaderLen {
		h[0] = 0x45
		h[1] = 0
		binary.BigEndian.PutUint16(h[2:], uint16(total))
		binary.BigEndian.PutUint16(h[4:], 0)      // ID: unused with DF (RFC 6864)
		binary.BigEndian.PutUint16(h[6:], 0x4000) // DF, no offset
		h[8] = 64
		h[9] = 17
		binary.BigEndian.PutUint16(h[10:], 0)
		s4, d4 := src.As4(), dst.Addr().As4()
		copy(h[12:16], s4[:])
		copy(h[16:20], d4[:])
		binary.BigEndian.PutUint16(h[10:], ^fold(sum16(h, 0)))
		return total
	}
	h[0], h[1], h[2], h[3] = 0x60, 0, 0, 0
	binary.BigEndian.PutUint16(h[4:], uint16(udpLen))
	h[6] = 17
	h[7] = 64
	s16, d16 := src.As16(), dst.Addr().As16()
	copy(h[8:24], s16[:])
	copy(h[24:40], d16[:])
	// The pseudo-header is the addresses, the length and the next header.
	acc := sum16(h[8:40], uint64(udpLen)+17)
	csum := ^fold(sum16(buf[hl:total], acc))
	if csum == 0 {
		csum = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], csum)
	return total
}

// decapUDP returns the payload, source and destination port of pkt if it is
// a whole UDP datagram in IPv4 or IPv6 without extension headers; the link
// only ever receives those, so anything else is dropped.
func decapUDP(pkt []byte) (payload []byte, src netip.AddrPort, dport uint16, ok bool) {
	if len(pkt) == 0 {
		return nil, src, 0, false
	}
	var udp []byte
	var from netip.Addr
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < ipv4HeaderLen {
			return nil, src, 0, false
		}
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:]))
		if ihl < ipv4HeaderLen || total < ihl || total > len(pkt) {
			return nil, src, 0, false
		}
		if binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0 || pkt[9] != 17 { // a fragment, or not UDP
			return nil, src, 0, false
		}
		from = netip.AddrFrom4([4]byte(pkt[12:16]))
		udp = pkt[ihl:total]
	case 6:
		if len(pkt) < ipv6HeaderLen {
			return nil, src, 0, false
		}
		total := ipv6HeaderLen + int(binary.BigEndian.Uint16(pkt[4:]))
		if total > len(pkt) || pkt[6] != 17 {
			return nil, src, 0, false
		}
		from = netip.AddrFrom16([16]byte(pkt[8:24]))
		udp = pkt[ipv6HeaderLen:total]
	default:
		return nil, src, 0, false
	}
	if len(udp) < udpHeaderLen {
		return nil, src, 0, false
	}
	ulen := int(binary.BigEndian.Uint16(udp[4:]))
	if ulen < udpHeaderLen || ulen > len(udp) {
		return nil, src, 0, false
	}
	sport := binary.BigEndian.Uint16(udp[0:])
	return udp[udpHeaderLen:ulen], netip.AddrPortFrom(from, sport), binary.BigEndian.Uint16(udp[2:]), true
}

// sum16 adds b as big-endian 16-bit words onto acc, four bytes at a time;
// the 64-bit accumulator cannot overflow for any packet.
func sum16(b []byte, acc uint64) uint64 {
	for len(b) >= 8 {
		acc += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// fold reduces a one's-complement sum to 16 bits.
func fold(acc uint64) uint16 {
	for acc > 0xffff {
		acc = (acc >> 16) + (acc & 0xffff)
	}
	return uint16(acc)
}
