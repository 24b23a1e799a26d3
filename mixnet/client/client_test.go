package client

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"math"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// udp4 builds an IPv4/UDP packet; checksums are left zero, which the
// reflecting test internet does not check.
func udp4(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, 17
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[20:], sport)
	binary.BigEndian.PutUint16(p[22:], dport)
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}

func connect(t *testing.T, n *servertest.Network, c Config) *Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := Connect(ctx, ConnectConfig{Client: c, DirectoryURL: n.DirURL, DirectoryKey: n.AuthKey})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// exchange sends count UDP packets of size bytes of payload and checks
// that each comes back reflected, byte for byte.
func exchange(t *testing.T, s *Session, count, size int, timeout time.Duration) {
	t.Helper()
	v4, _ := s.Addrs()
	remote := netip.MustParseAddr("192.0.2.7")
	want := map[string]bool{}
	for i := range count {
		payload := make([]byte, size)
		rand.Read(payload)
		binary.BigEndian.PutUint32(payload, uint32(i))
		p := udp4(v4, remote, 4000, 53, payload)
		want[string(udp4(remote, v4, 53, 4000, payload))] = true
		if err := s.WritePacket(p); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for len(want) > 0 {
		p, err := s.ReadPacket(ctx)
		if err != nil {
			t.Fatalf("%d of %d packets did not come back: %v", len(want), count, err)
		}
		if !want[string(p)] {
			t.Fatalf("unexpected packet of %d bytes", len(p))
		}
		delete(want, string(p))
	}
}

func TestSessionCarriesPacketsBothWays(t *testing.T) {
	n := servertest.Start(t, servertest.Options{Echo: true})
	conn := connect(t, n, Config{Rate: 300, LoopRate: 20, MeanDelay: 2 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := conn.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v4, v6 := s.Addrs()
	if !netip.MustParsePrefix("100.64.0.0/16").Contains(v4) || !v6.Is6() {
		t.Fatalf("addresses %v %v", v4, v6)
	}
	// Small packets bundle several to a message; 1400-byte ones are
	// fragmented across messages and reassembled on both sides.
	exchange(t, s, 50, 40, 15*time.Second)
	exchange(t, s, 20, 1400, 15*time.Second)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	st := conn.Stats()
	if st.RealSent == 0 || st.CoverSent == 0 || st.LoopsSent == 0 || st.LoopsReturned == 0 || st.RepliesReceived == 0 {
		t.Fatalf("stats %+v", st)
	}
	if st.LoopRTTMean <= 0 || st.LoopRTTP90 < st.LoopRTTP50 {
		t.Fatalf("loop RTTs %+v", st)
	}
	if st.BytesSent%sphinx.PacketSize != 0 {
		t.Fatalf("%d bytes sent: packets are not all one size", st.BytesSent)
	}
}

// countUplink records when packets were sent and their sizes.
type countUplink struct {
	mu    sync.Mutex
	sizes map[int]int
	n     int
}

func (u *countUplink) Send(p []byte) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.sizes == nil {
		u.sizes = map[int]int{}
	}
	u.sizes[len(p)]++
	u.n++
	return nil
}

func (u *countUplink) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n
}

func testTopology(t *testing.T) Topology {
	node := func(id string) Node {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		var a sphinx.Address
		copy(a[:], id)
		return Node{ID: id, Address: a, Key: k.PublicKey()}
	}
	var topo Topology
	topo.Entry = node("entry")
	for l := range topo.Layers {
		topo.Layers[l] = []Node{node(string(rune('a'+l)) + "1"), node(string(rune('a'+l)) + "2")}
	}
	topo.Exits = []Node{node("exit")}
	return topo
}

// The packet rate is λ_P+λ_L whether or not real traffic is queued: a
// Poisson count over the window stays within five standard deviations of
// its mean, idle and busy alike.
func TestRateDoesNotDependOnTraffic(t *testing.T) {
	const rate, loops, window = 150.0, 10.0, 2 * time.Second
	for _, busy := range []bool{false, true} {
		u := &countUplink{}
		c, err := New(Config{Uplink: u, Topology: testTopology(t), Rate: rate, LoopRate: loops})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { c.Run(ctx); close(done) }()
		<-c.started
		if busy {
			// Keep real messages waiting all the time.
			go func() {
				pkt := make([]byte, sphinx.PacketSize)
				for ctx.Err() == nil {
					select {
					case c.real <- pkt:
					case <-ctx.Done():
					}
				}
			}()
		}
		time.Sleep(200 * time.Millisecond) // pools warm up
		before := u.count()
		time.Sleep(window)
		got := float64(u.count() - before)
		cancel()
		<-done
		mean := (rate + loops) * window.Seconds()
		if math.Abs(got-mean) > 5*math.Sqrt(mean) {
			t.Errorf("busy=%v: %v packets in %v, expected %v ± %v", busy, got, window, mean, 5*math.Sqrt(mean))
		}
		u.mu.Lock()
		if len(u.sizes) != 1 || u.sizes[sphinx.PacketSize] == 0 {
			t.Errorf("busy=%v: packet sizes %v", busy, u.sizes)
		}
		u.mu.Unlock()
		st := c.Stats()
		if busy && st.RealSent == 0 || !busy && st.RealSent != 0 {
			t.Errorf("busy=%v: %d real packets", busy, st.RealSent)
		}
	}
}

// A dead mix stops loops through it; the client notices and routes around
// it, and sessions work again without any help from the directory.
func TestRoutesAroundDeadMix(t *testing.T) {
	n := servertest.Start(t, servertest.Options{Echo: true, MixesPerLayer: 2})
	conn := connect(t, n, Config{Rate: 200, LoopRate: 60, MeanDelay: 2 * time.Millisecond, LoopTimeout: 1500 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := conn.OpenSession(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exchange(t, s, 10, 100, 15*time.Second)
	n.Stop("mix2a")
	deadline := time.Now().Add(20 * time.Second)
	for !slices.Contains(conn.Health().Avoided, "mix2a") {
		if time.Now().After(deadline) {
			t.Fatalf("dead mix not avoided: %+v", conn.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if h := conn.Health(); len(h.Avoided) != 1 {
		t.Fatalf("healthy mixes blamed too: %+v", h)
	}
	// Reply blocks that crossed the dead mix are lost; the exit's stock is
	// topped up with good ones as the session goes on.
	time.Sleep(time.Second)
	exchange(t, s, 30, 100, 15*time.Second)
	if st := conn.Stats(); st.LoopsLost == 0 {
		t.Fatalf("no loop counted lost: %+v", st)
	}
}

func TestKeyStoreBounds(t *testing.T) {
	s := keyStore{max: 3, ttl: time.Second}
	now := time.Now()
	var ids []sphinx.MessageID
	for i := range 5 {
		k := &sphinx.SURBKeys{ID: sphinx.MessageID{byte(i)}}
		ids = append(ids, k.ID)
		s.put(keyEntry{keys: k, at: now}, now)
	}
	if len(s.byID) != 3 {
		t.Fatalf("%d keys kept, max 3", len(s.byID))
	}
	if _, ok := s.take(ids[0], now); ok {
		t.Fatal("oldest key not evicted")
	}
	if _, ok := s.take(ids[4], now); !ok {
		t.Fatal("newest key missing")
	}
	if _, ok := s.take(ids[4], now); ok {
		t.Fatal("a key opened twice")
	}
	gone := s.prune(now.Add(2 * time.Second))
	if len(gone) != 2 || len(s.byID) != 0 {
		t.Fatalf("prune returned %d, kept %d", len(gone), len(s.byID))
	}
}
