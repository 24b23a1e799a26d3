package node

import (
	"container/heap"
	"context"
	"errors"
	"sync"
	"time"
)

// errHolderFull is returned by push when the holder is at capacity.
var errHolderFull = errors.New("node: delay scheduler full")

// holder keeps forward packets until they are due: one goroutine, one
// timer, and a min-heap ordered by due time (ties in arrival order), as
// opposed to a goroutine or timer per packet.
type holder struct {
	capacity    int
	maxLateness time.Duration
	release     func(held)
	late        func(held)
	now         func() time.Time

	mu   sync.Mutex
	heap holdHeap
	seq  uint64
	wake chan struct{}
}

type holdEntry struct {
	due time.Time
	seq uint64
	pkt held
}

type holdHeap []holdEntry

func (h holdHeap) Len() int { return len(h) }
func (h holdHeap) Less(i, j int) bool {
	if h[i].due.Equal(h[j].due) {
		return h[i].seq < h[j].seq
	}
	return h[i].due.Before(h[j].due)
}
func (h holdHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *holdHeap) Push(x any)   { *h = append(*h, x.(holdEntry)) }
func (h *holdHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = holdEntry{}
	*h = old[:len(old)-1]
	return e
}

func newHolder(capacity int, maxLateness time.Duration, now func() time.Time, release, late func(held)) *holder {
	return &holder{
		capacity:    capacity,
		maxLateness: maxLateness,
		release:     release,
		late:        late,
		now:         now,
		heap:        make(holdHeap, 0, min(capacity, 4096)),
		wake:        make(chan struct{}, 1),
	}
}

// push schedules p for due. Safe from any goroutine; never blocks.
func (h *holder) push(due time.Time, p held) error {
	h.mu.Lock()
	if len(h.heap) >= h.capacity {
		h.mu.Unlock()
		return errHolderFull
	}
	h.seq++
	heap.Push(&h.heap, holdEntry{due: due, seq: h.seq, pkt: p})
	first := h.heap[0].seq == h.seq
	h.mu.Unlock()
	if first {
		select {
		case h.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// len is the number of packets held.
func (h *holder) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.heap)
}

// run releases packets in due order until ctx ends; packets still held
// then are dropped through late.
func (h *holder) run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var batch []held
	for {
		now := h.now()
		batch = batch[:0]
		var lateOnes []held
		h.mu.Lock()
		for len(h.heap) > 0 && !h.heap[0].due.After(now) {
			e := heap.Pop(&h.heap).(holdEntry)
			if now.Sub(e.due) > h.maxLateness {
				lateOnes = append(lateOnes, e.pkt)
				continue
			}
			batch = append(batch, e.pkt)
		}
		wait := time.Hour
		if len(h.heap) > 0 {
			wait = h.heap[0].due.Sub(now)
		}
		h.mu.Unlock()
		for _, p := range lateOnes {
			h.late(p)
		}
		for _, p := range batch {
			h.release(p)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			h.mu.Lock()
			rest := h.heap
			h.heap = nil
			h.mu.Unlock()
			for _, e := range rest {
				h.late(e.pkt)
			}
			return ctx.Err()
		case <-h.wake:
		case <-timer.C:
		}
	}
}
