package session

import (
	"fmt"
	"time"
)

// Reassembler rebuilds IP packets from fragments for one direction of one
// session. Memory is bounded: at most MaxPending packets are in progress,
// and the oldest is abandoned to make room. The mixnet reorders, so
// fragments may arrive in any order; it also loses packets, so Expire drops
// what will never complete.
type Reassembler struct {
	// MaxPending bounds packets in progress; default 64.
	MaxPending int
	pending    map[uint16]*partial
}

type partial struct {
	buf    []byte
	ranges [][2]int // received [start, end) byte ranges
	have   int
	since  time.Time
}

// Add takes one fragment record's parts. When it completes a packet, Add
// returns the packet, which stays valid until the next call. A whole packet
// in one fragment is returned without copying.
func (r *Reassembler) Add(packetID, offset, total uint16, data []byte, now time.Time) ([]byte, error) {
	off, tot := int(offset), int(total)
	if tot == 0 || off+len(data) > tot {
		return nil, fmt.Errorf("%w: offset %d length %d total %d", ErrFragment, off, len(data), tot)
	}
	if off == 0 && len(data) == tot {
		return data, nil
	}
	if r.pending == nil {
		r.pending = make(map[uint16]*partial)
	}
	p := r.pending[packetID]
	if p != nil && len(p.buf) != tot {
		// A packet id reused after its earlier packet was lost.
		delete(r.pending, packetID)
		p = nil
	}
	if p == nil {
		max := r.MaxPending
		if max <= 0 {
			max = 64
		}
		if len(r.pending) >= max {
			r.evictOldest()
		}
		p = &partial{buf: make([]byte, tot), since: now}
		r.pending[packetID] = p
	}
	end := off + len(data)
	for _, rg := range p.ranges {
		if off < rg[1] && rg[0] < end {
			delete(r.pending, packetID)
			return nil, fmt.Errorf("%w: packet %d bytes %d-%d overlap", ErrInconsistent, packetID, off, end)
		}
	}
	copy(p.buf[off:], data)
	p.ranges = append(p.ranges, [2]int{off, end})
	p.have += len(data)
	if p.have < tot {
		return nil, nil
	}
	delete(r.pending, packetID)
	return p.buf, nil
}

// Pending is the number of packets in progress.
func (r *Reassembler) Pending() int { return len(r.pending) }

// Expire abandons packets started before cutoff and returns how many.
func (r *Reassembler) Expire(cutoff time.Time) int {
	n := 0
	for id, p := range r.pending {
		if p.since.Before(cutoff) {
			delete(r.pending, id)
			n++
		}
	}
	return n
}

func (r *Reassembler) evictOldest() {
	var oldest uint16
	var at time.Time
	first := true
	for id, p := range r.pending {
		if first || p.since.Before(at) {
			oldest, at, first = id, p.since, false
		}
	}
	delete(r.pending, oldest)
}
