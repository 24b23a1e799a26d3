package node

import (
	"context"
	"crypto/ecdh"
	"math/rand/v2"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/mixnet/replay"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// countRouter counts released packets and signals when want arrived.
type countRouter struct {
	n    atomic.Int64
	want int64
	done chan struct{}
}

func (r *countRouter) Route(sphinx.Address, []byte) error {
	if r.n.Add(1) == r.want {
		close(r.done)
	}
	return nil
}

// BenchmarkMixNode feeds a mix over its real link protocol on loopback, with
// exponential delays on (mean 1 ms), and reports the sustained rate. The
// packets are made before the timed part. Run with -cpu 1 and -cpu 2:
//
//	go test -run '^$' -bench MixNode -benchtime 20000x -cpu 1,2 ./mixnet/node
func BenchmarkMixNode(b *testing.B) {
	mixKey, _ := ecdh.X25519().GenerateKey(nil)
	nextKey, _ := ecdh.X25519().GenerateKey(nil)
	rnd := rand.New(rand.NewPCG(1, 2))
	pkts := make([][]byte, b.N)
	for i := range pkts {
		path := []sphinx.Hop{
			{Address: sphinx.Address{1}, Key: mixKey.PublicKey(), Delay: time.Duration(rnd.ExpFloat64() * float64(time.Millisecond))},
			{Address: sphinx.Address{2}, Key: nextKey.PublicKey()},
		}
		p, err := sphinx.NewPacket(nil, path, sphinx.Address{}, sphinx.MessageID{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		pkts[i] = p
	}
	router := &countRouter{want: int64(b.N), done: make(chan struct{})}
	n, err := New(Config{Keys: staticKeys{{Epoch: 1, Key: mixKey}}, Replay: mustReplay(b), Router: router, QueueSize: 8192})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.Run(ctx)

	srvKey, _ := link.GenerateKey()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go link.Serve(ctx, ln, link.ListenerConfig{Config: link.Config{Static: srvKey, Handler: func(_ *link.Conn, t link.FrameType, body []byte) {
		if t == link.FramePacket {
			n.Receive(body)
		}
	}}})
	cliKey, _ := link.GenerateKey()
	c, err := link.Dial(ctx, ln.Addr().String(), srvKey.Public, link.Config{Static: cliKey, QueueSize: 8192})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	b.ResetTimer()
	start := time.Now()
	for i, p := range pkts {
		// Offer load no faster than the mix drains it: keep a bounded window
		// in flight, so the rate measured is what the mix sustains rather
		// than how fast loopback TCP fills its queues.
		for int64(i)-router.n.Load() > 2048 {
			time.Sleep(50 * time.Microsecond)
		}
		for c.Send(p) == link.ErrQueueFull {
			time.Sleep(50 * time.Microsecond)
		}
	}
	select {
	case <-router.done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("only %d of %d packets forwarded (drops: %v)", router.n.Load(), b.N, n.Metrics().Drops)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pkts/s")
}

func mustReplay(b *testing.B) *replay.Filter {
	f, err := replay.New(replay.Config{Items: 1 << 20, FalsePositive: 1e-6})
	if err != nil {
		b.Fatal(err)
	}
	return f
}
