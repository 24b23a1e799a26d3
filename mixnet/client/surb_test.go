package client

import (
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/session"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// A download spends SURBs faster than stale stock reports show: every
// reply is replaced even while the last report says the stock is full,
// four to a message here, until the replies are made up.
func TestSURBBudgetReplacesEveryReply(t *testing.T) {
	b := surbBudget{target: 200}
	if got := b.take(5); got != 5 {
		t.Fatalf("empty exit: take = %d, want 5 (a full message toward the target)", got)
	}
	// The exit reports a full stock (a return trip ago); since then it
	// spent 50 SURBs on replies that arrive now.
	b.status(200)
	for range 50 {
		b.replied()
	}
	sent := 0
	for range 20 {
		sent += b.take(4)
	}
	if sent != 50 {
		t.Fatalf("replaced %d SURBs for 50 replies", sent)
	}
	if got := b.take(4); got != 0 {
		t.Fatalf("nothing owed and the stock at target: take = %d", got)
	}
}

// Replacement cannot see SURBs lost on the way (a mix died with them):
// the reported stock tops those up, and the same SURBs are not counted
// twice while reports still lag.
func TestSURBBudgetTopsUpLosses(t *testing.T) {
	b := surbBudget{target: 200}
	b.status(120) // 80 lost
	got := 0
	for range 40 {
		got += b.take(4)
	}
	if got != 80 {
		t.Fatalf("topped up %d, want the 80 lost", got)
	}
	// A reply that arrives now is replaced on top of the top-up.
	b.replied()
	if got := b.take(4); got != 1 {
		t.Fatalf("after a reply: take = %d, want 1", got)
	}
}

// What is owed is bounded, and a report of a stock twice the target
// clears it: a client cut off from sending for a while does not then
// flood the exit.
func TestSURBBudgetBounded(t *testing.T) {
	b := surbBudget{target: 100}
	b.status(100)
	for range 1000 {
		b.replied()
	}
	if b.owed != 100 {
		t.Fatalf("owed %d after 1000 replies, want the target 100", b.owed)
	}
	b.status(250)
	if got := b.take(5); got != 0 {
		t.Fatalf("stock at 2.5× target: take = %d, want 0", got)
	}
	b.replied()
	b.flushed()
	if got := b.take(5); got != 5 {
		t.Fatalf("after a flush the stock is gone: take = %d, want 5", got)
	}
}

// composed builds the next message of s as next would, with zero bytes
// for SURBs, and returns how many SURBs and data bytes it carries.
func composed(t *testing.T, s *Session) (surbs, data int) {
	t.Helper()
	var b session.Builder
	n, ok := s.compose(&b, make([]byte, session.MaxMessageSize), time.Now())
	if !ok {
		return 0, 0
	}
	for range n {
		if err := b.SURB(make([]byte, sphinx.SURBSize)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := session.Parse(b.Bytes(), func(r session.Record) error {
		switch r.Type {
		case session.RecordSURB:
			surbs++
		case session.RecordFragment:
			_, _, _, d := r.Fragment()
			data += len(d)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return surbs, data
}

// openTestSession is an open session with the default settings and no
// client: enough for compose, which needs neither pools nor routes.
func openTestSession() *Session {
	var cfg SessionConfig
	cfg.setDefaults()
	return &Session{cfg: cfg, isOpen: true, surbs: surbBudget{target: cfg.SURBTarget}, lastSent: time.Now()}
}

// While the exit is short of SURBs and only ACKs trickle in, every other
// message puts the SURBs first: an ACK would otherwise cost a whole fifth
// SURB in every message of a download (five leave 36 bytes). With one ACK
// a message, messages alternate five and four SURBs instead of four.
func TestComposeSURBsFirstUnderTrickle(t *testing.T) {
	s := openTestSession()
	ack := make([]byte, 52)
	total := [2]int{}
	for i := range 6 {
		if err := s.WritePacket(ack); err != nil {
			t.Fatal(err)
		}
		surbs, data := composed(t, s)
		if want := 5 - i%2; surbs != want {
			t.Errorf("message %d: %d SURBs, want %d", i, surbs, want)
		}
		total[0] += data
	}
	// What went first waits at most one message.
	for s.queued > 0 {
		_, data := composed(t, s)
		total[1] += data
	}
	if total[0]+total[1] != 6*len(ack) || total[1] > len(ack) {
		t.Fatalf("data sent %d in the six messages and %d after, want all %d with at most one packet after", total[0], total[1], 6*len(ack))
	}
}

// Bulk data and SURBs the exit does not need are never held back.
func TestComposeDataFirst(t *testing.T) {
	s := openTestSession()
	s.surbs.status(200) // the exit has its target
	if err := s.WritePacket(make([]byte, 1400)); err != nil {
		t.Fatal(err)
	}
	if surbs, data := composed(t, s); surbs != 0 || data != 1400 {
		t.Fatalf("%d SURBs, %d data bytes; want the packet whole and no SURBs", surbs, data)
	}
	// An upload: data takes the message even while SURBs are short.
	s.surbs.status(0)
	for range 3 {
		if err := s.WritePacket(make([]byte, 1400)); err != nil {
			t.Fatal(err)
		}
	}
	if surbs, data := composed(t, s); data < session.MaxMessageSize-200 || surbs != 0 {
		t.Fatalf("upload: %d SURBs, %d data bytes; want a message of data", surbs, data)
	}
}

// SURBs counted for a message that failed to go out are owed again.
func TestSURBBudgetUnsent(t *testing.T) {
	b := surbBudget{target: 200}
	b.status(200)
	b.replied()
	b.replied()
	if got := b.take(5); got != 2 {
		t.Fatalf("take = %d, want the 2 owed", got)
	}
	b.unsent(2)
	if got := b.take(5); got != 2 {
		t.Fatalf("after a failed send: take = %d, want the same 2 again", got)
	}
}
