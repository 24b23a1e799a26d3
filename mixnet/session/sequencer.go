package session

import (
	"math/bits"
	"time"
)

// DefaultSequencerWindow is how many packets a Sequencer holds at most.
const DefaultSequencerWindow = 512

// Sequencer puts one direction's IP packets back into the order they were
// sent, by their packet ids. Every Sphinx packet takes its own route and
// waits an exponential time at each mix, so a stream arrives heavily
// reordered; TCP reads that as loss, retransmits and halves its window
// again and again. Holding an early packet until the ones before it
// arrive turns reordering into delay jitter, which TCP handles well. A
// packet that never comes (lost with a dead mix) holds the stream up for
// at most Hold.
//
// Ids are 16-bit and compared in serial-number arithmetic, starting at 0
// as both ends of a session count from 0. A Sequencer is not safe for
// concurrent use; it keeps no clock: callers pass the time in.
type Sequencer struct {
	// Hold is the longest a packet waits for earlier ones.
	Hold time.Duration
	// Window bounds held packets (and how far ahead of the next expected
	// id a packet may be); default DefaultSequencerWindow.
	Window int

	next  uint16
	held  []heldPacket // ring indexed by id % len(held)
	count int
}

type heldPacket struct {
	pkt   []byte
	since time.Time
	id    uint16
	ok    bool
}

// Add takes the packet with the given id and passes every packet now in
// order to deliver. Neither Add nor deliver may keep the slices they are
// given: Add copies what it holds, and reuses those buffers afterwards.
func (q *Sequencer) Add(id uint16, pkt []byte, now time.Time, deliver func([]byte)) {
	if q.held == nil {
		// A power of two, so that consecutive ids keep distinct slots
		// when they wrap past 65535.
		w := min(max(q.Window, 1), 1<<15)
		if q.Window <= 0 {
			w = DefaultSequencerWindow
		}
		q.held = make([]heldPacket, 1<<bits.Len(uint(w-1)))
	}
	d := int(id - q.next)
	switch {
	case d == 0:
		deliver(pkt)
		q.next++
		q.drain(deliver)
	case d >= 1<<15:
		// Behind: a packet whose gap was already given up on. Late is
		// better than never; TCP sorts it out.
		deliver(pkt)
	case d >= len(q.held):
		// Far ahead: more was lost than the window covers. Give up on
		// everything before it.
		q.skipTo(id-uint16(len(q.held))+1, deliver)
		q.hold(id, pkt, now)
		q.drain(deliver)
	default:
		q.hold(id, pkt, now)
	}
}

// Release gives up on gaps that a held packet has waited Hold for, and
// passes the packets that are then in order to deliver.
func (q *Sequencer) Release(now time.Time, deliver func([]byte)) {
	for q.count > 0 {
		due, ok := q.Due()
		if !ok || now.Before(due) {
			return
		}
		// Skip to the first held packet after the gap; the one that has
		// waited longest lies at or beyond it, so the loop continues
		// until no held packet is overdue.
		for i := range len(q.held) {
			if h := &q.held[int(q.next+uint16(i))%len(q.held)]; h.ok && h.id == q.next+uint16(i) {
				q.next += uint16(i)
				break
			}
		}
		q.drain(deliver)
	}
}

// Due reports when the longest-held packet's wait ends, if any is held.
func (q *Sequencer) Due() (time.Time, bool) {
	if q.count == 0 {
		return time.Time{}, false
	}
	var oldest time.Time
	for i := range q.held {
		if h := &q.held[i]; h.ok && (oldest.IsZero() || h.since.Before(oldest)) {
			oldest = h.since
		}
	}
	return oldest.Add(q.Hold), true
}

// Held is the number of packets waiting for earlier ones.
func (q *Sequencer) Held() int { return q.count }

func (q *Sequencer) hold(id uint16, pkt []byte, now time.Time) {
	h := &q.held[int(id)%len(q.held)]
	if h.ok {
		return // a duplicate id within the window: keep the first
	}
	*h = heldPacket{pkt: append(h.pkt[:0], pkt...), since: now, id: id, ok: true}
	q.count++
}

// drain delivers held packets from next on while they are consecutive.
func (q *Sequencer) drain(deliver func([]byte)) {
	for q.count > 0 {
		h := &q.held[int(q.next)%len(q.held)]
		if !h.ok || h.id != q.next {
			return
		}
		q.take(h, deliver)
		q.next++
	}
}

// skipTo delivers, in order, everything held before id and makes id the
// next expected.
func (q *Sequencer) skipTo(id uint16, deliver func([]byte)) {
	for q.count > 0 && q.next != id {
		if h := &q.held[int(q.next)%len(q.held)]; h.ok && h.id == q.next {
			q.take(h, deliver)
		}
		q.next++
	}
	q.next = id
}

func (q *Sequencer) take(h *heldPacket, deliver func([]byte)) {
	deliver(h.pkt)
	h.ok = false
	q.count--
}
