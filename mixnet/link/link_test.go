package link

import (
	"bytes"
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

func mustKey(t testing.TB) KeyPair {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// server runs Serve on a loopback listener and returns its address and a
// channel of established links.
func server(t *testing.T, cfg ListenerConfig) (string, chan *Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan *Conn, 16)
	if cfg.OnConn == nil {
		cfg.OnConn = func(c *Conn) { conns <- c }
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Serve(ctx, ln, cfg) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String(), conns
}

func packet(b byte) []byte { return bytes.Repeat([]byte{b}, BodySize) }

func within[T any](t *testing.T, c <-chan T) T {
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

type received struct {
	t    FrameType
	body []byte
}

func collect(ch chan received) func(*Conn, FrameType, []byte) {
	return func(_ *Conn, t FrameType, body []byte) { ch <- received{t, bytes.Clone(body)} }
}

func TestRoundTripBothWaysInOrder(t *testing.T) {
	srvKey, cliKey := mustKey(t), mustKey(t)
	atServer := make(chan received, 1000)
	addr, conns := server(t, ListenerConfig{Config: Config{Static: srvKey, Handler: collect(atServer)}})
	atClient := make(chan received, 1000)
	c, err := Dial(context.Background(), addr, srvKey.Public, Config{Static: cliKey, Handler: collect(atClient)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := within(t, conns)
	if s.PeerKey() != cliKey.Public {
		t.Fatal("server sees the wrong client key")
	}
	const n = 500
	for i := range n {
		for c.Send(packet(byte(i))) == ErrQueueFull {
			time.Sleep(time.Millisecond)
		}
	}
	c.SendControl([]byte("register me"))
	for i := range n {
		r := within(t, atServer)
		if r.t != FramePacket || !bytes.Equal(r.body, packet(byte(i))) {
			t.Fatalf("packet %d out of order or damaged", i)
		}
	}
	if r := within(t, atServer); r.t != FrameControl || string(r.body) != "register me" {
		t.Fatalf("control %v %q", r.t, r.body)
	}
	s.Send(packet(0xee))
	if r := within(t, atClient); !bytes.Equal(r.body, packet(0xee)) {
		t.Fatal("server to client packet damaged")
	}
}

// recordingConn notes the size of every write after the handshake.
type recordingConn struct {
	net.Conn
	mu     sync.Mutex
	writes []int
}

func (r *recordingConn) Write(b []byte) (int, error) {
	r.mu.Lock()
	r.writes = append(r.writes, len(b))
	r.mu.Unlock()
	return r.Conn.Write(b)
}

func TestEveryFrameHasTheSameSize(t *testing.T) {
	srvKey := mustKey(t)
	atServer := make(chan received, 100)
	addr, _ := server(t, ListenerConfig{Config: Config{Static: srvKey, Handler: collect(atServer)}})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingConn{Conn: nc}
	c, err := Client(context.Background(), rec, srvKey.Public, Config{Static: mustKey(t), KeepAlive: 20 * time.Millisecond, IdleTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Send(packet(1))
	within(t, atServer)
	c.SendControl([]byte("x"))
	within(t, atServer)
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().DummiesOut < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	// Total bytes after the handshake message must be a whole number of
	// frames, however the writer batched them.
	rec.mu.Lock()
	writes := rec.writes[1:]
	rec.mu.Unlock()
	total := 0
	for _, w := range writes {
		total += w
		if w%FrameSize != 0 {
			t.Fatalf("a write of %d bytes is not whole frames of %d", w, FrameSize)
		}
	}
	if st := c.Stats(); total != int(st.FramesOut)*FrameSize || st.DummiesOut < 2 {
		t.Fatalf("wrote %d bytes for %d frames (%d dummies)", total, st.FramesOut, st.DummiesOut)
	}
}

func TestWrongKeyGarbageAndRefusalCostNothingElse(t *testing.T) {
	srvKey := mustKey(t)
	banned := mustKey(t)
	addr, conns := server(t, ListenerConfig{
		Config: Config{Static: srvKey},
		Authorize: func(peer [32]byte) error {
			if peer == banned.Public {
				return errors.New("banned")
			}
			return nil
		},
	})
	ctx := context.Background()
	// The wrong responder key fails at the initiator.
	if _, err := Dial(ctx, addr, mustKey(t).Public, Config{Static: mustKey(t)}); !errors.Is(err, ErrHandshake) {
		t.Fatalf("wrong key: %v", err)
	}
	// A refused initiator gets no link.
	if _, err := Dial(ctx, addr, srvKey.Public, Config{Static: banned}); err == nil {
		t.Fatal("refused client got a link")
	}
	// Garbage is dropped.
	g, _ := net.Dial("tcp", addr)
	g.Write(bytes.Repeat([]byte{0xff}, 300))
	g.Close()
	// And a good client still gets through.
	c, err := Dial(ctx, addr, srvKey.Public, Config{Static: mustKey(t)})
	if err != nil {
		t.Fatalf("good client after bad ones: %v", err)
	}
	defer c.Close()
	within(t, conns)
}

func TestStalledHandshakeDoesNotBlockOthers(t *testing.T) {
	srvKey := mustKey(t)
	addr, conns := server(t, ListenerConfig{Config: Config{Static: srvKey, HandshakeTimeout: 300 * time.Millisecond}})
	staller, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer staller.Close()
	staller.Write([]byte{0, 96, 1, 2}) // promises 96 bytes, sends 2
	c, err := Dial(context.Background(), addr, srvKey.Public, Config{Static: mustKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	within(t, conns)
	staller.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := staller.Read(make([]byte, 1)); err == nil || errors.Is(err, errTimeout) {
		t.Fatalf("stalled peer not dropped: %v", err)
	}
}

var errTimeout = errors.New("i/o timeout")

func TestIdlePeerIsClosed(t *testing.T) {
	srvKey := mustKey(t)
	addr, conns := server(t, ListenerConfig{Config: Config{Static: srvKey, KeepAlive: time.Hour, IdleTimeout: 200 * time.Millisecond}})
	// The client never sends (its keepalive is an hour away).
	c, err := Dial(context.Background(), addr, srvKey.Public, Config{Static: mustKey(t), KeepAlive: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := within(t, conns)
	within(t, s.Done())
	// With keepalives faster than the idle timeout, a quiet link stays up.
	c2, err := Dial(context.Background(), addr, srvKey.Public, Config{Static: mustKey(t), KeepAlive: 50 * time.Millisecond, IdleTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	s2 := within(t, conns)
	select {
	case <-s2.Done():
		t.Fatalf("link with keepalives closed: %v", s2.Err())
	case <-time.After(600 * time.Millisecond):
	}
}

func TestQueueFullNeverBlocks(t *testing.T) {
	srvKey := mustKey(t)
	block := make(chan struct{})
	defer close(block)
	addr, _ := server(t, ListenerConfig{Config: Config{Static: srvKey, Handler: func(*Conn, FrameType, []byte) { <-block }}})
	c, err := Dial(context.Background(), addr, srvKey.Public, Config{Static: mustKey(t), QueueSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	full := 0
	start := time.Now()
	for range 20000 {
		if c.Send(packet(1)) == ErrQueueFull {
			full++
		}
	}
	if full == 0 || c.Stats().DroppedFull != uint64(full) {
		t.Fatalf("queue full %d times, counted %d", full, c.Stats().DroppedFull)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("Send blocked")
	}
}

func TestPeerReconnectsAndDeliversQueued(t *testing.T) {
	srvKey := mustKey(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	got := make(chan received, 100)
	serve := func(ln net.Listener) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		var mu sync.Mutex
		var live []*Conn
		go func() {
			defer close(done)
			Serve(ctx, ln, ListenerConfig{Config: Config{Static: srvKey, Handler: collect(got)}, OnConn: func(c *Conn) {
				mu.Lock()
				live = append(live, c)
				mu.Unlock()
			}})
		}()
		return func() {
			cancel()
			<-done
			mu.Lock()
			for _, c := range live {
				c.Close()
			}
			mu.Unlock()
		}
	}
	stop := serve(ln)
	p := NewPeer(PeerConfig{Config: Config{Static: mustKey(t)}, Addr: addr, Key: srvKey.Public, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	p.Send(packet(1))
	if r := within(t, got); r.body[0] != 1 {
		t.Fatal("first packet damaged")
	}
	stop() // the server goes away
	deadline := time.Now().Add(5 * time.Second)
	for p.Conn() != nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	p.Send(packet(2)) // queued while down
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	stop = serve(ln2)
	defer stop()
	if r := within(t, got); r.body[0] != 2 {
		t.Fatal("queued packet not delivered after reconnect")
	}
	if p.Reconnects() < 1 {
		t.Fatal("no reconnect counted")
	}
}

func listenLoopback(t testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}
