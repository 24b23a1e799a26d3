//go:build unix

package fast

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// The throughput benchmarks move 64 KiB writes over TCP between the client's
// network stack and the exit's, each direction in a sub-benchmark, and report
// the connect time (all handshakes) as connect-ms. Run them side by side:
//
//	go test -run '^$' -bench 'Hop' -benchtime 3s ./tunnel/fast
//
// OneHop is a plain wireguard-go client to the exit; TwoHop is this package
// through an entry; TwoHopNetstack is the same with the inner datagrams sent
// through a gVisor stack on the outer device instead of the link, the other
// design considered.
const benchChunk = 64 << 10

func BenchmarkOneHop(b *testing.B) {
	for _, dir := range []string{"up", "down"} {
		b.Run(dir, func(b *testing.B) {
			client, connect := startOneHop(b)
			benchTransfer(b, client, dir, connect)
		})
	}
}

func BenchmarkTwoHop(b *testing.B) {
	for _, dir := range []string{"up", "down"} {
		b.Run(dir, func(b *testing.B) {
			n := startTwoHop(b, netOptions{})
			benchTransfer(b, n.client, dir, n.connect)
			n.relay.check(b)
		})
	}
}

func BenchmarkTwoHopNetstack(b *testing.B) {
	for _, dir := range []string{"up", "down"} {
		b.Run(dir, func(b *testing.B) {
			n := startTwoHop(b, netOptions{join: joinNetstack, exitAlias: benchAlias})
			benchTransfer(b, n.client, dir, n.connect)
			n.relay.check(b)
		})
	}
}

// benchTransfer moves b.N chunks to the exit's sink (up) or from its source
// (down), timing until the last byte has arrived.
func benchTransfer(b *testing.B, client *netstack.Net, dir string, connect time.Duration) {
	port := uint16(sinkPort)
	if dir == "down" {
		port = srcPort
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(exitInner4, port))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Minute))
	buf := make([]byte, benchChunk)
	total := int64(b.N) * benchChunk
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	cpu0 := cpuTime(b)
	b.ResetTimer()
	if dir == "up" {
		for range b.N {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		c.CloseWrite()
		var got int64
		if _, err := fmt.Fscanf(bufio.NewReader(c), "%d\n", &got); err != nil || got != total {
			b.Fatalf("sink got %d of %d bytes: %v", got, total, err)
		}
	} else {
		fmt.Fprintf(c, "%d\n", total)
		if n, err := io.CopyBuffer(io.Discard, io.LimitReader(c, total), buf); err != nil || n != total {
			b.Fatalf("got %d of %d bytes: %v", n, total, err)
		}
	}
	b.StopTimer()
	// Throughput here is bound by latency through many goroutines more
	// than by CPU, so the CPU the whole process spent per byte (both
	// gateways included, the same in every design) tells designs apart
	// better on a busy machine.
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(total), "cpu-ns/B")
	b.ReportMetric(float64(connect.Microseconds())/1000, "connect-ms")
}

// cpuTime is the user and system CPU time the process has used.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchAlias is how the netstack design's client knows the exit: an address
// from the range set aside for benchmarks (RFC 2544), which never leaves the
// process because the test entry translates it to loopback.
var benchAlias = netip.MustParseAddr("198.18.0.1")

// joinNetstack is the design this package did not take: the outer device runs
// a gVisor network stack, and the inner device's bind is a UDP socket on it.
// It is kept here to measure against the link.
func joinNetstack(cfg *Config) (tun.Device, conn.Bind, *link, error) {
	var addrs []netip.Addr
	for _, p := range cfg.EntryAddrs {
		addrs = append(addrs, p.Addr())
	}
	td, tnet, err := netstack.CreateNetTUN(addrs, nil, cfg.OuterMTU())
	if err != nil {
		return nil, nil, nil, err
	}
	return td, &netstackBind{net: tnet, src: sourceFor(cfg.EntryAddrs, cfg.Exit.Endpoint.Addr())}, nil, nil
}

// netstackBind is a conn.Bind on a gVisor UDP socket, one datagram a call
// as gonet allows.
type netstackBind struct {
	net *netstack.Net
	src netip.Addr

	mu     sync.Mutex
	conn   *gonet.UDPConn
	closed chan struct{}
}

func (b *netstackBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	c, err := b.net.ListenUDPAddrPort(netip.AddrPortFrom(b.src, port))
	if err != nil {
		return nil, 0, err
	}
	closed := make(chan struct{})
	b.conn, b.closed = c, closed
	var last *endpoint
	recv := func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, from, err := c.ReadFrom(packets[0])
		if err != nil {
			select {
			case <-closed:
				return 0, net.ErrClosed
			default:
				return 0, err
			}
		}
		ap := from.(*net.UDPAddr).AddrPort()
		if last == nil || last.ap != ap {
			last = newEndpoint(ap)
		}
		sizes[0], eps[0] = n, last
		return 1, nil
	}
	return []conn.ReceiveFunc{recv}, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

func (b *netstackBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil {
		return nil
	}
	close(b.closed)
	err := b.conn.Close()
	b.conn = nil
	return err
}

func (b *netstackBind) SetMark(uint32) error { return nil }

func (b *netstackBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	b.mu.Lock()
	c := b.conn
	b.mu.Unlock()
	if c == nil {
		return net.ErrClosed
	}
	to := net.UDPAddrFromAddrPort(e.ap)
	for _, buf := range bufs {
		if _, err := c.WriteTo(buf, to); err != nil {
			return err
		}
	}
	return nil
}

func (b *netstackBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return newEndpoint(ap), nil
}

func (b *netstackBind) BatchSize() int { return 1 }

// TestNetstackJoin keeps the measured alternative honest: it must carry
// traffic too, or its benchmark means nothing.
func TestNetstackJoin(t *testing.T) {
	n := startTwoHop(t, netOptions{join: joinNetstack, exitAlias: benchAlias})
	echoTCP(t, n.client, netip.AddrPortFrom(exitInner4, echoPort), 64<<10)
	n.relay.check(t)
}

// BenchmarkLinkSend is the link alone: a batch of full-size inner datagrams
// into the outer device's reads.
func BenchmarkLinkSend(b *testing.B) {
	l := newLink([]netip.Prefix{clientEntry4}, DefaultOuterMTU)
	lt, lb := l.tunDevice(), l.bind()
	defer lt.Close()
	if _, _, err := lb.Open(0); err != nil {
		b.Fatal(err)
	}
	defer lb.Close()
	go func() {
		bufs, sizes := make([][]byte, conn.IdealBatchSize), make([]int, conn.IdealBatchSize)
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		for {
			if _, err := lt.Read(bufs, sizes, 16); err != nil {
				return
			}
		}
	}()
	ep, _ := lb.ParseEndpoint("192.0.2.7:51820")
	batch := make([][]byte, conn.IdealBatchSize)
	for i := range batch {
		batch[i] = make([]byte, DefaultMTU+wireGuardOverhead)
	}
	b.SetBytes(int64(len(batch) * len(batch[0])))
	b.ReportAllocs()
	for b.Loop() {
		if err := lb.Send(batch, ep); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJoin compares the two ways of joining the hops on their own: per
// full-size inner datagram, from the inner device's Send to the outer
// device's tun Read ("send"), and from the outer device's tun Write to the
// inner device's receive ("receive"), each in the batches the design allows.
func BenchmarkJoin(b *testing.B) {
	cfg := Config{EntryAddrs: []netip.Prefix{clientEntry4}, Exit: Hop{Endpoint: exit4}, MTU: DefaultMTU}
	for _, design := range []struct {
		name string
		join func(*Config) (tun.Device, conn.Bind, *link, error)
	}{{"link", joinDirect}, {"netstack", joinNetstack}} {
		for _, dir := range []string{"send", "receive"} {
			b.Run(design.name+"/"+dir, func(b *testing.B) {
				td, bind, _, err := design.join(&cfg)
				if err != nil {
					b.Fatal(err)
				}
				defer td.Close()
				fns, port, err := bind.Open(0)
				if err != nil {
					b.Fatal(err)
				}
				defer bind.Close()
				batch := bind.BatchSize()
				payload := make([]byte, DefaultMTU+wireGuardOverhead)
				b.SetBytes(int64(len(payload)))
				b.ReportAllocs()
				if dir == "send" {
					benchJoinSend(b, td, bind, batch, payload)
				} else {
					benchJoinReceive(b, td, fns[0], batch, port, payload)
				}
			})
		}
	}
}

func benchJoinSend(b *testing.B, td tun.Device, bind conn.Bind, batch int, payload []byte) {
	ep, _ := bind.ParseEndpoint(exit4.String())
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = payload
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for sent := 0; sent < b.N; sent += batch {
			if err := bind.Send(bufs[:min(batch, b.N-sent)], ep); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	rb, sizes := buffers(conn.IdealBatchSize, 2048), make([]int, conn.IdealBatchSize)
	for got := 0; got < b.N; {
		n, err := td.Read(rb, sizes, 16)
		if err != nil {
			b.Fatal(err)
		}
		got += n
	}
	<-done
}

func benchJoinReceive(b *testing.B, td tun.Device, recv conn.ReceiveFunc, batch int, port uint16, payload []byte) {
	pkt := buildUDP(exit4, netip.AddrPortFrom(clientEntry4.Addr(), port), payload)
	// The outer device writes what it decrypted in batches of up to 128.
	in := make([][]byte, conn.IdealBatchSize)
	for i := range in {
		in[i] = append(make([]byte, 16), pkt...)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for sent := 0; sent < b.N; sent += len(in) {
			if _, err := td.Write(in[:min(len(in), b.N-sent)], 16); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	packets, sizes, eps := buffers(batch, 65536), make([]int, batch), make([]conn.Endpoint, batch)
	for got := 0; got < b.N; {
		n, err := recv(packets, sizes, eps)
		if err != nil {
			b.Fatal(err)
		}
		got += n
	}
	<-done
}
