package session

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// seqRecorder collects delivered packets, each a 2-byte id.
type seqRecorder struct{ got []uint16 }

func (r *seqRecorder) deliver(p []byte) { r.got = append(r.got, uint16(p[0])<<8|uint16(p[1])) }

func idPacket(id uint16) []byte { return []byte{byte(id >> 8), byte(id)} }

func TestSequencerRestoresOrder(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var q Sequencer
	q.Hold = 100 * time.Millisecond
	var r seqRecorder
	for _, id := range []uint16{0, 2, 3, 1, 5, 4, 6} {
		q.Add(id, idPacket(id), t0, r.deliver)
	}
	if want := []uint16{0, 1, 2, 3, 4, 5, 6}; !slices.Equal(r.got, want) {
		t.Fatalf("delivered %v, want %v", r.got, want)
	}
	if q.Held() != 0 {
		t.Fatalf("%d still held", q.Held())
	}
}

func TestSequencerGivesUpOnAGapAfterHold(t *testing.T) {
	t0 := time.Unix(1000, 0)
	q := Sequencer{Hold: 100 * time.Millisecond}
	var r seqRecorder
	q.Add(0, idPacket(0), t0, r.deliver)
	q.Add(2, idPacket(2), t0.Add(10*time.Millisecond), r.deliver) // 1 is lost
	q.Add(3, idPacket(3), t0.Add(20*time.Millisecond), r.deliver)
	due, ok := q.Due()
	if !ok || !due.Equal(t0.Add(110*time.Millisecond)) {
		t.Fatalf("due %v %v, want 110 ms after start", due, ok)
	}
	q.Release(t0.Add(109*time.Millisecond), r.deliver)
	if !slices.Equal(r.got, []uint16{0}) {
		t.Fatalf("released early: %v", r.got)
	}
	q.Release(due, r.deliver)
	if want := []uint16{0, 2, 3}; !slices.Equal(r.got, want) {
		t.Fatalf("delivered %v, want %v", r.got, want)
	}
	// The lost packet turning up late is still delivered.
	q.Add(1, idPacket(1), due, r.deliver)
	q.Add(4, idPacket(4), due, r.deliver)
	if want := []uint16{0, 2, 3, 1, 4}; !slices.Equal(r.got, want) {
		t.Fatalf("delivered %v, want %v", r.got, want)
	}
	if _, ok := q.Due(); ok {
		t.Fatal("nothing should be held")
	}
}

func TestSequencerSkipsSeveralGaps(t *testing.T) {
	t0 := time.Unix(1000, 0)
	q := Sequencer{Hold: 50 * time.Millisecond}
	var r seqRecorder
	// 0 and 3 are lost; 1, 2 arrive early, 4 arrives later.
	q.Add(2, idPacket(2), t0, r.deliver)
	q.Add(1, idPacket(1), t0, r.deliver)
	q.Add(4, idPacket(4), t0.Add(40*time.Millisecond), r.deliver)
	q.Release(t0.Add(60*time.Millisecond), r.deliver)
	if want := []uint16{1, 2}; !slices.Equal(r.got, want) {
		t.Fatalf("after the first gap: %v, want %v", r.got, want)
	}
	q.Release(t0.Add(90*time.Millisecond), r.deliver)
	if want := []uint16{1, 2, 4}; !slices.Equal(r.got, want) {
		t.Fatalf("after the second gap: %v, want %v", r.got, want)
	}
}

func TestSequencerFarAheadFlushes(t *testing.T) {
	t0 := time.Unix(1000, 0)
	q := Sequencer{Hold: time.Second, Window: 8}
	var r seqRecorder
	q.Add(3, idPacket(3), t0, r.deliver)
	q.Add(5, idPacket(5), t0, r.deliver)
	// 20 is beyond the window of 8 after next (0): everything before
	// 13 is given up on.
	q.Add(20, idPacket(20), t0, r.deliver)
	if want := []uint16{3, 5}; !slices.Equal(r.got, want) {
		t.Fatalf("delivered %v, want %v", r.got, want)
	}
	for id := uint16(13); id < 20; id++ {
		q.Add(id, idPacket(id), t0, r.deliver)
	}
	if want := []uint16{3, 5, 13, 14, 15, 16, 17, 18, 19, 20}; !slices.Equal(r.got, want) {
		t.Fatalf("delivered %v, want %v", r.got, want)
	}
}

func TestSequencerWrapsAround(t *testing.T) {
	t0 := time.Unix(1000, 0)
	q := Sequencer{Hold: time.Second, Window: 100} // rounds up to 128
	var r seqRecorder
	q.next = 65530 // as if 65530 packets had gone before
	order := []uint16{65531, 65530, 0, 65535, 65533, 65532, 1, 65534}
	for _, id := range order {
		q.Add(id, idPacket(id), t0, r.deliver)
	}
	if want := []uint16{65530, 65531, 65532, 65533, 65534, 65535, 0, 1}; !slices.Equal(r.got, want) {
		t.Fatalf("delivered %v, want %v", r.got, want)
	}
}

func TestSequencerDuplicateHeldOnce(t *testing.T) {
	t0 := time.Unix(1000, 0)
	q := Sequencer{Hold: time.Second}
	var r seqRecorder
	q.Add(1, idPacket(1), t0, r.deliver)
	q.Add(1, idPacket(1), t0, r.deliver)
	q.Add(0, idPacket(0), t0, r.deliver)
	if want := []uint16{0, 1}; !slices.Equal(r.got, want) {
		t.Fatalf("delivered %v, want %v", r.got, want)
	}
}

// TestSequencerRandomDisplacement shuffles a long stream the way the
// mixnet does (each packet late by a random amount) and checks that what
// comes out is the stream in order, with nothing lost or repeated.
func TestSequencerRandomDisplacement(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 70000 // wraps the 16-bit id
	type arrival struct {
		id uint16
		at time.Duration
	}
	arr := make([]arrival, n)
	for i := range arr {
		// Sent every 1 ms, delayed by three exponential delays of 15 ms,
		// cut below Hold so that no gap is given up on (one packet in
		// about 10^5 is later than that, and then rightly out of order).
		d := min(time.Duration(rng.ExpFloat64()*15e6+rng.ExpFloat64()*15e6+rng.ExpFloat64()*15e6), 190*time.Millisecond)
		arr[i] = arrival{uint16(i), time.Duration(i)*time.Millisecond + d}
	}
	slices.SortFunc(arr, func(a, b arrival) int { return int(a.at - b.at) })
	t0 := time.Unix(1000, 0)
	q := Sequencer{Hold: 200 * time.Millisecond}
	var r seqRecorder
	for _, a := range arr {
		q.Release(t0.Add(a.at), r.deliver)
		q.Add(a.id, idPacket(a.id), t0.Add(a.at), r.deliver)
	}
	q.Release(t0.Add(time.Hour), r.deliver)
	if len(r.got) != n {
		t.Fatalf("delivered %d packets, want %d", len(r.got), n)
	}
	for i, id := range r.got {
		if id != uint16(i) {
			t.Fatalf("packet %d is id %d", i, id)
		}
	}
}

func BenchmarkSequencer(b *testing.B) {
	t0 := time.Unix(1000, 0)
	q := Sequencer{Hold: 100 * time.Millisecond}
	pkt := make([]byte, 1400)
	deliver := func([]byte) {}
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for i := 0; b.Loop(); i++ {
		// Pairs swapped: every other packet is held once.
		id := uint16(i ^ 1)
		q.Add(id, pkt, t0, deliver)
	}
}
