package node

import (
	"context"
	"crypto/ecdh"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// staticKeys is a KeySource with fixed keys.
type staticKeys []EpochKey

func (k staticKeys) UnwrapKeys() []EpochKey { return k }

// mapReplay is a ReplayFilter test double with exact memory.
type mapReplay struct {
	mu   sync.Mutex
	seen map[[sphinx.ReplayTagSize]byte]bool
}

func (m *mapReplay) Seen(_ uint64, tag [sphinx.ReplayTagSize]byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.seen == nil {
		m.seen = make(map[[sphinx.ReplayTagSize]byte]bool)
	}
	if m.seen[tag] {
		return true
	}
	m.seen[tag] = true
	return false
}

// meshRouter hands packets to in-process nodes by address.
type meshRouter struct {
	nodes map[sphinx.Address]*Node
}

func (r *meshRouter) Route(next sphinx.Address, pkt []byte) error {
	n, ok := r.nodes[next]
	if !ok {
		return errUnknown
	}
	n.Receive(pkt)
	return nil
}

var errUnknown = &unknownHop{}

type unknownHop struct{}

func (*unknownHop) Error() string { return "unknown hop" }

// finalSink is a Handler that records what reached the last hop.
type finalSink struct {
	final   chan []byte
	deliver chan sphinx.MessageID
}

func (f *finalSink) Final(_ sphinx.Address, _ sphinx.MessageID, msg []byte) error {
	f.final <- slices.Clone(msg)
	return nil
}

func (f *finalSink) Deliver(_ sphinx.Address, id sphinx.MessageID, _ []byte) error {
	f.deliver <- id
	return nil
}

type testNet struct {
	nodes []*Node
	hops  []sphinx.Hop
	sink  *finalSink
}

// newTestNet runs n nodes in a chain; the last has the sink as handler.
func newTestNet(t *testing.T, n int, mutate func(i int, c *Config)) *testNet {
	t.Helper()
	router := &meshRouter{nodes: map[sphinx.Address]*Node{}}
	tn := &testNet{sink: &finalSink{final: make(chan []byte, 100), deliver: make(chan sphinx.MessageID, 100)}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range n {
		key, err := ecdh.X25519().GenerateKey(nil)
		if err != nil {
			t.Fatal(err)
		}
		addr := sphinx.Address{byte(i + 1)}
		cfg := Config{Keys: staticKeys{{Epoch: 1, Key: key}}, Replay: &mapReplay{}, Router: router}
		if i == n-1 {
			cfg.Handler = tn.sink
		}
		if mutate != nil {
			mutate(i, &cfg)
		}
		node, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		router.nodes[addr] = node
		tn.nodes = append(tn.nodes, node)
		tn.hops = append(tn.hops, sphinx.Hop{Address: addr, Key: key.PublicKey(), Delay: time.Millisecond})
		wg.Add(1)
		go func() { defer wg.Done(); node.Run(ctx) }()
	}
	return tn
}

func waitMsg[T any](t *testing.T, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("timed out")
	}
	var zero T
	return zero
}

func TestPacketsCrossThreeNodesAndReplaysDrop(t *testing.T) {
	tn := newTestNet(t, 3, nil)
	msgs := [][]byte{[]byte("one"), []byte("two"), []byte("three")}
	var first []byte
	for _, m := range msgs {
		pkt, err := sphinx.NewPacket(nil, tn.hops, sphinx.Address{}, sphinx.MessageID{}, m)
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = slices.Clone(pkt)
		}
		tn.nodes[0].Receive(pkt)
	}
	got := map[string]bool{}
	for range msgs {
		got[string(waitMsg(t, tn.sink.final))] = true
	}
	for _, m := range msgs {
		if !got[string(m)] {
			t.Fatalf("%q never arrived", m)
		}
	}
	// The same packet again is a replay at the first node.
	tn.nodes[0].Receive(first)
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(tn.nodes[0].Metrics().Drops.WithLabelValues(DropReplay)) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("replay not dropped")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case m := <-tn.sink.final:
		t.Fatalf("replayed packet arrived: %q", m)
	case <-time.After(50 * time.Millisecond):
	}
	if v := testutil.ToFloat64(tn.nodes[1].Metrics().PacketsOut.WithLabelValues("forward")); v != 3 {
		t.Fatalf("middle node forwarded %v packets", v)
	}
}

func TestKeyRotationOverlap(t *testing.T) {
	old, _ := ecdh.X25519().GenerateKey(nil)
	cur, _ := ecdh.X25519().GenerateKey(nil)
	sink := &finalSink{final: make(chan []byte, 4)}
	n, err := New(Config{
		Keys:    staticKeys{{Epoch: 2, Key: cur}, {Epoch: 1, Key: old}},
		Replay:  &mapReplay{},
		Router:  &meshRouter{},
		Handler: sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go n.Run(ctx)
	for _, k := range []*ecdh.PrivateKey{old, cur} {
		pkt, _ := sphinx.NewPacket(nil, []sphinx.Hop{{Key: k.PublicKey()}}, sphinx.Address{}, sphinx.MessageID{}, []byte("in flight"))
		n.Receive(pkt)
		if got := waitMsg(t, sink.final); string(got) != "in flight" {
			t.Fatalf("got %q", got)
		}
	}
}

func TestOverloadDropsWithoutBlocking(t *testing.T) {
	key, _ := ecdh.X25519().GenerateKey(nil)
	n, err := New(Config{Keys: staticKeys{{Key: key}}, Replay: &mapReplay{}, Router: &meshRouter{}, QueueSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, sphinx.PacketSize)
	done := make(chan struct{})
	go func() {
		for range 100 { // no workers run: the queue fills
			n.Receive(pkt)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Receive blocked under overload")
	}
	if got := testutil.ToFloat64(n.Metrics().Drops.WithLabelValues(DropOverload)); got != 92 {
		t.Fatalf("overload drops %v, want 92", got)
	}
	n.Receive(pkt[:10])
	if got := testutil.ToFloat64(n.Metrics().Drops.WithLabelValues(DropInvalid)); got != 1 {
		t.Fatalf("short packet drops %v", got)
	}
}
