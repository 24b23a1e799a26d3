package gateway

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/mixvpn/mixvpn/mixnet/session"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// captureRouter records the packets an exit sends into the mixnet.
type captureRouter struct {
	sent chan routed
}

type routed struct {
	next sphinx.Address
	pkt  []byte
}

func newCaptureRouter() *captureRouter { return &captureRouter{sent: make(chan routed, 64)} }

func (r *captureRouter) Route(next sphinx.Address, pkt []byte) error {
	select {
	case r.sent <- routed{next, bytes.Clone(pkt)}:
		return nil
	default:
		return errors.New("capture full")
	}
}

// replyHop is a one-hop reply path standing in for mixes and the entry.
type replyHop struct {
	addr sphinx.Address
	key  *ecdh.PrivateKey
}

func newReplyHop(t *testing.T) replyHop {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return replyHop{addr: sphinx.Address{0xee}, key: k}
}

type testClient struct {
	t     *testing.T
	id    session.ID
	hop   replyHop
	keys  map[sphinx.MessageID]*sphinx.SURBKeys
	nextN byte
}

func (c *testClient) surb() []byte {
	c.nextN++
	id := sphinx.MessageID{c.nextN}
	s, k, err := sphinx.NewSURB(nil, []sphinx.Hop{{Address: c.hop.addr, Key: c.hop.key.PublicKey()}}, sphinx.Address{1}, id)
	if err != nil {
		c.t.Fatal(err)
	}
	c.keys[id] = k
	return s
}

// open turns a routed reply into session records, as the client would.
func (c *testClient) open(r routed) []session.Record {
	c.t.Helper()
	if r.next != c.hop.addr {
		c.t.Fatalf("reply sent to %x, not the SURB's first hop", r.next[:4])
	}
	var out sphinx.Processed
	if err := sphinx.Unwrap(c.hop.key, r.pkt, &out); err != nil {
		c.t.Fatal(err)
	}
	if out.Flag != sphinx.FlagDeliver {
		c.t.Fatalf("reply flag %d", out.Flag)
	}
	msg, err := c.keys[out.ID].OpenReply(out.Payload)
	if err != nil {
		c.t.Fatal(err)
	}
	var recs []session.Record
	id, err := session.Parse(msg, func(r session.Record) error {
		r.Body = bytes.Clone(r.Body)
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		c.t.Fatal(err)
	}
	if id != c.id {
		c.t.Fatalf("reply for session %x", id[:4])
	}
	return recs
}

// newTestExit runs an exit on a channel device. Packets the exit writes
// to the device arrive on the returned channel, drained concurrently as a
// real TUN would accept them.
func newTestExit(t *testing.T) (*Exit, *tuntest.ChannelTUN, <-chan []byte, *captureRouter) {
	dev := tuntest.NewChannelTUN()
	router := newCaptureRouter()
	e, err := NewExit(ExitConfig{
		Device:     dev.TUN(),
		Router:     router,
		Prefix4:    netip.MustParsePrefix("10.99.0.0/16"),
		Prefix6:    netip.MustParsePrefix("fd00:99::/64"),
		FlushDelay: time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	written := make(chan []byte, 64)
	go func() {
		for p := range dev.Inbound {
			written <- p
		}
	}()
	t.Cleanup(func() {
		cancel()
		dev.TUN().Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return e, dev, written, router
}

func recv[T any](t *testing.T, c <-chan T) T {
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

func TestExitSessionRoundTrip(t *testing.T) {
	e, dev, written, router := newTestExit(t)
	c := &testClient{t: t, id: session.ID{0x5e}, hop: newReplyHop(t), keys: map[sphinx.MessageID]*sphinx.SURBKeys{}}

	// Open with three SURBs.
	var b session.Builder
	b.Reset(make([]byte, session.MaxMessageSize), c.id)
	b.Control(session.RecordOpen, 1)
	for range 3 {
		if err := b.SURB(c.surb()); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Final(sphinx.Address{}, sphinx.MessageID{}, b.Bytes()); err != nil {
		t.Fatal(err)
	}
	recs := c.open(recv(t, router.sent))
	var v4, v6 netip.Addr
	var stock uint16
	for _, r := range recs {
		switch r.Type {
		case session.RecordOpened:
			var seq uint32
			seq, v4, v6 = r.Opened()
			if seq != 1 {
				t.Fatalf("opened answers seq %d", seq)
			}
		case session.RecordStatus:
			stock = r.Stock()
		}
	}
	if !netip.MustParsePrefix("10.99.0.0/16").Contains(v4) || !netip.MustParsePrefix("fd00:99::/64").Contains(v6) {
		t.Fatalf("addresses %v %v outside the pools", v4, v6)
	}
	if stock != 2 {
		t.Fatalf("stock %d after one reply, want 2", stock)
	}

	// A large packet from the session's address, split over two messages.
	internet := netip.MustParseAddr("192.0.2.80")
	ping := tuntest.Ping(internet, v4)
	big := append(bytes.Clone(ping), make([]byte, 2500)...)
	big[2], big[3] = byte(len(big)>>8), byte(len(big))
	off := 0
	for off < len(big) {
		b.Reset(make([]byte, session.MaxMessageSize), c.id)
		n := b.Fragment(7, big, off)
		off += n
		if err := e.Final(sphinx.Address{}, sphinx.MessageID{}, b.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	if got := recv(t, written); !bytes.Equal(got, big) {
		t.Fatalf("device got %d bytes, want the %d-byte packet", len(got), len(big))
	}

	// A spoofed source is refused.
	b.Reset(make([]byte, session.MaxMessageSize), c.id)
	spoof := tuntest.Ping(internet, netip.MustParseAddr("10.99.9.9"))
	b.Fragment(8, spoof, 0)
	e.Final(sphinx.Address{}, sphinx.MessageID{}, b.Bytes())
	if e.Stats().Spoofed != 1 {
		t.Fatalf("spoofed count %d", e.Stats().Spoofed)
	}

	// The internet answers; the answer comes back in a SURB.
	answer := tuntest.Ping(v4, internet)
	dev.Outbound <- answer
	recs = c.open(recv(t, router.sent))
	found := false
	for _, r := range recs {
		if r.Type == session.RecordFragment {
			_, _, _, data := r.Fragment()
			found = bytes.Equal(data, answer)
		}
	}
	if !found {
		t.Fatal("answer not in the reply")
	}

	// Close: the exit answers and forgets the session.
	b.Reset(make([]byte, session.MaxMessageSize), c.id)
	b.Control(session.RecordClose, 2)
	e.Final(sphinx.Address{}, sphinx.MessageID{}, b.Bytes())
	recs = c.open(recv(t, router.sent))
	closed := false
	for _, r := range recs {
		closed = closed || (r.Type == session.RecordClosed && r.Seq() == 2)
	}
	if !closed {
		t.Fatal("no Closed record")
	}
	deadline := time.Now().Add(5 * time.Second)
	for e.Stats().Sessions != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if e.Stats().Sessions != 0 {
		t.Fatal("session not removed after close")
	}
}

func TestExitRefusesUnknownSessionAndDropsCover(t *testing.T) {
	e, _, _, _ := newTestExit(t)
	var b session.Builder
	b.Reset(make([]byte, 64), session.ID{1})
	b.Status(1)
	if err := e.Final(sphinx.Address{}, sphinx.MessageID{}, b.Bytes()); err == nil {
		t.Fatal("records for an unknown session accepted")
	}
	// Drop cover is not a session message: silently ignored.
	if err := e.Final(sphinx.Address{}, sphinx.MessageID{}, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if e.Stats().Sessions != 0 {
		t.Fatal("a session appeared")
	}
}

func TestExitSessionLimitAndIdleExpiry(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e, err := NewExit(ExitConfig{
		Device: tuntest.NewChannelTUN().TUN(), Router: newCaptureRouter(),
		Prefix4: netip.MustParsePrefix("10.99.0.0/16"), Prefix6: netip.MustParsePrefix("fd00:99::/64"),
		MaxSessions: 2, IdleTimeout: time.Minute, Now: clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	open := func(id byte) error {
		var b session.Builder
		b.Reset(make([]byte, 64), session.ID{id})
		b.Control(session.RecordOpen, 1)
		return e.Final(sphinx.Address{}, sphinx.MessageID{}, b.Bytes())
	}
	if open(1) != nil || open(2) != nil {
		t.Fatal("first two sessions refused")
	}
	if err := open(3); err == nil {
		t.Fatal("third session accepted over the limit")
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	e.expire()
	if e.Stats().Sessions != 0 {
		t.Fatalf("%d sessions after idle timeout", e.Stats().Sessions)
	}
	if err := open(3); err != nil {
		t.Fatalf("session refused after expiry: %v", err)
	}
}
