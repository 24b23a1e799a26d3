package fast

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var (
	exit4 = netip.MustParseAddrPort("192.0.2.7:51820")
	exit6 = netip.MustParseAddrPort("[2001:db8::7]:51820")
)

// TestEncapUDP checks the link's packets with gVisor's parsers, including
// both checksums.
func TestEncapUDP(t *testing.T) {
	for _, tc := range []struct {
		src netip.Addr
		dst netip.AddrPort
	}{
		{clientEntry4.Addr(), exit4},
		{clientEntry6.Addr(), exit6},
	} {
		for _, size := range []int{0, 1, 2, 3, 148, 1371, 1452} {
			payload := bytes.Repeat([]byte{0xa5, 0x5a, 0x01}, size/3+1)[:size]
			buf := make([]byte, 2048)
			n := encapUDP(buf, payload, tc.src, 40000, tc.dst)
			pkt := buf[:n]
			var u header.UDP
			var xsumOK bool
			if tc.dst.Addr().Is4() {
				ip := header.IPv4(pkt)
				if !ip.IsValid(n) || !ip.IsChecksumValid() || ip.Flags()&header.IPv4FlagDontFragment == 0 {
					t.Fatalf("bad IPv4 header % x", pkt[:20])
				}
				u = header.UDP(ip.Payload())
				xsumOK = u.Checksum() == 0 // optional over IPv4, and left out
			} else {
				ip := header.IPv6(pkt)
				if !ip.IsValid(n) {
					t.Fatalf("bad IPv6 header % x", pkt[:40])
				}
				u = header.UDP(ip.Payload())
				xsumOK = u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(u.Payload(), 0))
			}
			if !xsumOK {
				t.Errorf("%v, %d bytes: bad UDP checksum %#04x", tc.dst, size, u.Checksum())
			}
			if u.SourcePort() != 40000 || u.DestinationPort() != tc.dst.Port() || !bytes.Equal(u.Payload(), payload) {
				t.Errorf("%v, %d bytes: wrong UDP header or payload", tc.dst, size)
			}
			got, src, dport, ok := decapUDP(pkt)
			if !ok || !bytes.Equal(got, payload) || src != netip.AddrPortFrom(tc.src, 40000) || dport != tc.dst.Port() {
				t.Errorf("%v, %d bytes: decap gave %v %v %d %v", tc.dst, size, len(got), src, dport, ok)
			}
		}
	}
	if n := encapUDP(make([]byte, 100), make([]byte, 80), clientEntry4.Addr(), 1, exit4); n != 0 {
		t.Errorf("encap into too small a buffer wrote %d bytes", n)
	}
}

func TestDecapUDPRejects(t *testing.T) {
	good := buildUDP(exit4, netip.AddrPortFrom(clientEntry4.Addr(), 5000), []byte("hello"))
	good6 := buildUDP(exit6, netip.AddrPortFrom(clientEntry6.Addr(), 5000), []byte("hello"))
	edit := func(p []byte, f func([]byte)) []byte {
		p = bytes.Clone(p)
		f(p)
		return p
	}
	for name, pkt := range map[string][]byte{
		"empty":           nil,
		"version 5":       edit(good, func(p []byte) { p[0] = 0x55 }),
		"short IPv4":      good[:19],
		"IHL too small":   edit(good, func(p []byte) { p[0] = 0x44 }),
		"total too long":  edit(good, func(p []byte) { p[3] += 10 }),
		"more fragments":  edit(good, func(p []byte) { p[6] |= 0x20 }),
		"fragment offset": edit(good, func(p []byte) { p[7] = 1 }),
		"TCP":             edit(good, func(p []byte) { p[9] = 6 }),
		"UDP length 7":    edit(good, func(p []byte) { p[25] = 7 }),
		"UDP length long": edit(good, func(p []byte) { p[25] += 1 }),
		"short IPv6":      good6[:39],
		"IPv6 ext header": edit(good6, func(p []byte) { p[6] = 0 }),
		"IPv6 too long":   edit(good6, func(p []byte) { p[5] += 1 }),
		"no UDP header":   edit(good6[:44], func(p []byte) { p[4], p[5] = 0, 4 }),
	} {
		if _, _, _, ok := decapUDP(pkt); ok {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, _, _, ok := decapUDP(good); !ok {
		t.Error("good IPv4 rejected")
	}
	if _, _, _, ok := decapUDP(good6); !ok {
		t.Error("good IPv6 rejected")
	}
}

// A link with both faces, as the two devices would see it.
func testLink(t *testing.T) (*link, *linkTUN, *linkBind) {
	l := newLink([]netip.Prefix{clientEntry4, clientEntry6}, DefaultOuterMTU)
	lt, lb := l.tunDevice(), l.bind()
	t.Cleanup(func() { lb.Close(); lt.Close() })
	return l, lt, lb
}

func buffers(n, size int) [][]byte {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, size)
	}
	return b
}

func TestLinkSend(t *testing.T) {
	_, lt, lb := testLink(t)
	_, port, err := lb.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := lb.ParseEndpoint(exit4.String())
	if err != nil {
		t.Fatal(err)
	}
	// Three datagrams into reads of two: the batch is split, not lost.
	sent := [][]byte{[]byte("one"), []byte("two"), []byte("three")}
	errc := make(chan error, 1)
	go func() { errc <- lb.Send(sent, ep) }()
	const offset = 16
	var got [][]byte
	for len(got) < len(sent) {
		bufs, sizes := buffers(2, 2048), make([]int, 2)
		n, err := lt.Read(bufs, sizes, offset)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			payload, src, dport, ok := decapUDP(bufs[i][offset : offset+sizes[i]])
			if !ok || src != netip.AddrPortFrom(clientEntry4.Addr(), port) || dport != exit4.Port() {
				t.Fatalf("read packet %d: %v %v %d", i, ok, src, dport)
			}
			got = append(got, payload)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for i := range sent {
		if !bytes.Equal(got[i], sent[i]) {
			t.Errorf("datagram %d = %q, want %q", i, got[i], sent[i])
		}
	}
	// An IPv6 exit endpoint is reached from the IPv6 entry address.
	ep6, _ := lb.ParseEndpoint(exit6.String())
	go func() { errc <- lb.Send(sent[:1], ep6) }()
	bufs, sizes := buffers(1, 2048), make([]int, 1)
	if _, err := lt.Read(bufs, sizes, 0); err != nil {
		t.Fatal(err)
	}
	if _, src, _, ok := decapUDP(bufs[0][:sizes[0]]); !ok || src.Addr() != clientEntry6.Addr() {
		t.Errorf("IPv6 datagram from %v", src)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := lb.Send(sent, &conn.StdNetEndpoint{}); !errors.Is(err, conn.ErrWrongEndpointType) {
		t.Errorf("foreign endpoint: %v", err)
	}
}

func TestLinkWrite(t *testing.T) {
	l, lt, lb := testLink(t)
	fns, port, err := lb.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	us := netip.AddrPortFrom(clientEntry4.Addr(), port)
	const offset = 16
	pad := func(p []byte) []byte { return append(make([]byte, offset), p...) }
	in := [][]byte{
		pad(buildUDP(exit4, us, []byte("first"))),
		pad(buildUDP(exit4, netip.AddrPortFrom(us.Addr(), port+1), []byte("other port"))),
		pad([]byte{0x45, 0, 0}),
		pad(buildUDP(exit4, us, []byte("second"))),
		pad(buildUDP(exit6, netip.AddrPortFrom(clientEntry6.Addr(), port), []byte("third"))),
	}
	done := make(chan error, 1)
	go func() {
		_, err := lt.Write(in, offset)
		done <- err
	}()
	var got []string
	var from []netip.AddrPort
	for len(got) < 3 {
		// Receives of two: the writer carries on into the next one.
		packets, sizes, eps := buffers(2, 2048), make([]int, 2), make([]conn.Endpoint, 2)
		n, err := fns[0](packets, sizes, eps)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			got = append(got, string(packets[i][:sizes[i]]))
			from = append(from, eps[i].(*endpoint).ap)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if want := []string{"first", "second", "third"}; !equal(got, want) {
		t.Errorf("received %q, want %q", got, want)
	}
	if from[0] != exit4 || from[2] != exit6 {
		t.Errorf("sources %v", from)
	}
	if d := l.drops.Load(); d != 2 {
		t.Errorf("dropped %d, want 2", d)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestLinkClose checks that nothing blocks once either face is closed.
func TestLinkClose(t *testing.T) {
	_, lt, lb := testLink(t)
	pkt := [][]byte{buildUDP(exit4, netip.AddrPortFrom(clientEntry4.Addr(), 1), []byte("x"))}
	// Before Open, writes are dropped as at a closed port.
	if n, err := lt.Write(pkt, 0); n != 1 || err != nil {
		t.Fatalf("write to closed bind: %d, %v", n, err)
	}
	fns, port, err := lb.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := lb.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Errorf("second open: %v", err)
	}
	recvErr := make(chan error, 1)
	go func() {
		_, err := fns[0](buffers(1, 2048), make([]int, 1), make([]conn.Endpoint, 1))
		recvErr <- err
	}()
	lb.Close()
	if err := waitErr(t, recvErr); !errors.Is(err, net.ErrClosed) {
		t.Errorf("receive after bind close: %v", err)
	}
	ep, _ := lb.ParseEndpoint(exit4.String())
	if err := lb.Send([][]byte{[]byte("x")}, ep); !errors.Is(err, net.ErrClosed) {
		t.Errorf("send on closed bind: %v", err)
	}
	// Reopening keeps the port, as wireguard-go asks for it.
	if _, p, err := lb.Open(port); err != nil || p != port {
		t.Fatalf("reopen: %d, %v", p, err)
	}

	readErr := make(chan error, 1)
	go func() {
		_, err := lt.Read(buffers(1, 2048), make([]int, 1), 0)
		readErr <- err
	}()
	lt.Close()
	lt.Close()
	if err := waitErr(t, readErr); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after tun close: %v", err)
	}
	if err := lb.Send([][]byte{[]byte("x")}, ep); !errors.Is(err, net.ErrClosed) {
		t.Errorf("send after tun close: %v", err)
	}
	toUs := [][]byte{buildUDP(exit4, netip.AddrPortFrom(clientEntry4.Addr(), port), []byte("x"))}
	if _, err := lt.Write(toUs, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("write after tun close: %v", err)
	}
	if _, ok := <-lt.Events(); ok {
		t.Error("events still open after close")
	}
}

func waitErr(t *testing.T, c chan error) error {
	t.Helper()
	select {
	case err := <-c:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("blocked after close")
		return nil
	}
}

// TestLinkNoAlloc holds the link to the hot-path rule: a batch through either
// direction allocates nothing.
func TestLinkNoAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	_, lt, lb := testLink(t)
	fns, port, err := lb.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	ep, _ := lb.ParseEndpoint(exit4.String())
	const batch = 16
	payloads := buffers(batch, 1372)

	stop := make(chan struct{})
	defer close(stop)
	go func() {
		bufs, sizes := buffers(conn.IdealBatchSize, 2048), make([]int, conn.IdealBatchSize)
		for {
			if _, err := lt.Read(bufs, sizes, 16); err != nil {
				return
			}
		}
	}()
	if a := testing.AllocsPerRun(200, func() {
		if err := lb.Send(payloads, ep); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Send allocates %v times per batch", a)
	}

	us := netip.AddrPortFrom(clientEntry4.Addr(), port)
	in := make([][]byte, batch)
	for i := range in {
		in[i] = buildUDP(exit4, us, payloads[i])
	}
	go func() {
		packets, sizes, eps := buffers(conn.IdealBatchSize, 2048), make([]int, conn.IdealBatchSize), make([]conn.Endpoint, conn.IdealBatchSize)
		for {
			if _, err := fns[0](packets, sizes, eps); err != nil {
				return
			}
		}
	}()
	lt.Write(in[:1], 0) // the first packet caches the exit's endpoint
	if a := testing.AllocsPerRun(200, func() {
		if _, err := lt.Write(in, 0); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("Write allocates %v times per batch", a)
	}
	lb.Close()
}

func FuzzDecapUDP(f *testing.F) {
	f.Add(buildUDP(exit4, netip.AddrPortFrom(clientEntry4.Addr(), 5000), []byte("hello")))
	f.Add(buildUDP(exit6, netip.AddrPortFrom(clientEntry6.Addr(), 5000), []byte("hello")))
	f.Add([]byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 17, 64})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		payload, src, dport, ok := decapUDP(pkt)
		if !ok {
			return
		}
		// Whatever was accepted re-encodes to the same datagram.
		dst := netip.AddrPortFrom(netip.IPv4Unspecified(), dport)
		from := netip.IPv4Unspecified()
		if src.Addr().Is6() {
			dst = netip.AddrPortFrom(netip.IPv6Unspecified(), dport)
			from = netip.IPv6Unspecified()
		}
		buf := make([]byte, len(payload)+ipv6HeaderLen+udpHeaderLen)
		n := encapUDP(buf, payload, from, src.Port(), dst)
		if n == 0 {
			t.Fatalf("accepted %d-byte payload does not re-encode", len(payload))
		}
		again, src2, dport2, ok := decapUDP(buf[:n])
		if !ok || !bytes.Equal(again, payload) || src2.Port() != src.Port() || dport2 != dport {
			t.Fatalf("re-encoded datagram differs")
		}
	})
}
