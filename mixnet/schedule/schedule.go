// Package schedule is a mix's delay scheduler: packets are held until the
// due time their Sphinx header gives and then released in due order, ties
// in arrival order.
//
// One goroutine (Run) owns a min-heap over a slice and a single timer armed
// for the earliest due time; Push wakes it only when it adds a new
// earliest item. There is no goroutine or timer per packet, and once the
// heap has grown to its working size neither Push nor a release
// allocates. Memory is bounded by Config.Capacity: a full scheduler drops
// rather than block the packet pipeline, which a mix treats as loss.
//
// The delays themselves are chosen by the sender (see ExpDelay); a mix only
// honours them. A released packet that is far past due (Config.MaxLateness)
// is dropped instead, since sending it late would let an observer link it
// to its arrival by timing.
package schedule

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

var (
	// ErrFull is returned by Push when Capacity items are already held.
	ErrFull = errors.New("schedule: scheduler full")
	// ErrStopped is returned by Push once Run has returned.
	ErrStopped = errors.New("schedule: scheduler stopped")
	// ErrRunning is returned by Run when the scheduler already ran.
	ErrRunning = errors.New("schedule: Run called twice")
)

// DefaultCapacity is the Capacity used when Config leaves it zero.
const DefaultCapacity = 1 << 16

// releaseBatch bounds how many items are taken from the heap per lock
// hold, so that Push never waits long behind a burst of releases.
const releaseBatch = 64

// Timer is the single timer the scheduler re-arms for the earliest due
// time. It has the semantics of a *time.Timer since Go 1.23: after Reset
// or Stop returns, no value from the previous arming is received.
// ManualClock provides one for tests.
type Timer interface {
	C() <-chan time.Time
	Reset(d time.Duration)
	Stop()
}

// Config configures a Scheduler holding items of type T.
type Config[T any] struct {
	// Capacity bounds the items held; Push drops beyond it. Zero means
	// DefaultCapacity.
	Capacity int
	// MaxLateness drops an item, instead of releasing it, when it is taken
	// from the heap more than this after its due time. Zero disables the
	// check. Go's timers fire up to about 1 ms late on an idle Linux
	// machine, and later under load, so it should be well above that.
	MaxLateness time.Duration
	// Release receives each item at its due time, in due order, on Run's
	// goroutine. It must not block long: it delays every later item.
	// Required.
	Release func(item T)
	// Discard, if set, receives the items that are not released: those
	// dropped as late and those still held when Run returns, so that their
	// buffers can be reused. Items refused by Push stay with the caller.
	Discard func(item T)
	// Now is the clock; default time.Now.
	Now func() time.Time
	// NewTimer makes the scheduler's timer; default a *time.Timer. Inject it
	// together with Now to drive the scheduler by a fake clock.
	NewTimer func(d time.Duration) Timer
}

// Stats are the scheduler's counters. Items being handed to Release or
// Discard right now may be counted in none of Depth, Released, DroppedLate
// and Discarded.
type Stats struct {
	Pushed      uint64 // accepted by Push
	Released    uint64 // passed to Release
	DroppedFull uint64 // refused by Push because the scheduler was full
	DroppedLate uint64 // dropped for being more than MaxLateness past due
	Discarded   uint64 // still held when Run returned
	Depth       int    // held now
}

// Scheduler holds items until their due time. Push is safe from any
// goroutine; Run must be called once, by the scheduler's owner.
type Scheduler[T any] struct {
	capacity    int
	maxLateness int64
	release     func(T)
	discard     func(T)
	now         func() time.Time
	newTimer    func(time.Duration) Timer
	// base turns due times into int64 offsets, which compare cheaply and
	// keep the monotonic clock reading when Now is time.Now.
	base time.Time

	started atomic.Bool
	wake    chan struct{}

	released  atomic.Uint64
	late      atomic.Uint64
	discarded atomic.Uint64

	mu      sync.Mutex
	heap    entries[T]
	seq     uint64
	stopped bool
	pushed  uint64
	full    uint64
}

// New returns a scheduler; start it with Run.
func New[T any](cfg Config[T]) (*Scheduler[T], error) {
	if cfg.Release == nil {
		return nil, errors.New("schedule: Config.Release is required")
	}
	if cfg.Capacity < 0 {
		return nil, fmt.Errorf("schedule: negative Capacity %d", cfg.Capacity)
	}
	if cfg.MaxLateness < 0 {
		return nil, fmt.Errorf("schedule: negative MaxLateness %v", cfg.MaxLateness)
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NewTimer == nil {
		cfg.NewTimer = newRealTimer
	}
	return &Scheduler[T]{
		capacity:    cfg.Capacity,
		maxLateness: int64(cfg.MaxLateness),
		release:     cfg.Release,
		discard:     cfg.Discard,
		now:         cfg.Now,
		newTimer:    cfg.NewTimer,
		base:        cfg.Now(),
		wake:        make(chan struct{}, 1),
		heap:        make(entries[T], 0, min(cfg.Capacity, 1024)),
	}, nil
}

// Push schedules item for release at due. It never blocks: it returns
// ErrFull when the scheduler is at capacity and ErrStopped after Run has
// returned; in both cases the item stays with the caller. A due time in the
// past releases the item as soon as possible.
func (s *Scheduler[T]) Push(due time.Time, item T) error {
	at := s.offset(due)
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return ErrStopped
	}
	if len(s.heap) >= s.capacity {
		s.full++
		s.mu.Unlock()
		return ErrFull
	}
	s.seq++
	s.pushed++
	first := s.heap.push(entry[T]{due: at, seq: s.seq, item: item}) == 0
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
	return nil
}

// Len is the number of items held.
func (s *Scheduler[T]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.heap)
}

// Stats returns the counters.
func (s *Scheduler[T]) Stats() Stats {
	s.mu.Lock()
	st := Stats{Pushed: s.pushed, DroppedFull: s.full, Depth: len(s.heap)}
	s.mu.Unlock()
	st.Released = s.released.Load()
	st.DroppedLate = s.late.Load()
	st.Discarded = s.discarded.Load()
	return st
}

// Run releases items as they fall due until ctx is done, then discards
// what is still held, makes later Pushes fail and returns ctx.Err().
func (s *Scheduler[T]) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return ErrRunning
	}
	timer := s.newTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	batch := make([]taken[T], 0, releaseBatch)
	done := ctx.Done()
	for {
		wait, pending, stop := s.releaseDue(done, &batch)
		if stop {
			s.stop()
			return ctx.Err()
		}
		if pending {
			timer.Reset(wait)
		} else {
			timer.Stop()
		}
		select {
		case <-done:
			s.stop()
			return ctx.Err()
		case <-s.wake:
		case <-timer.C():
		}
	}
}

// taken is an item off the heap, to be released or, if late, discarded.
type taken[T any] struct {
	item T
	late bool
}

// releaseDue hands every item due by now to Release, a batch per lock
// hold, until none is due. It returns how long until the next item is due,
// whether there is one, and whether done closed meanwhile.
func (s *Scheduler[T]) releaseDue(done <-chan struct{}, batch *[]taken[T]) (wait time.Duration, pending, stop bool) {
	for {
		now := s.offset(s.now())
		b := (*batch)[:0]
		s.mu.Lock()
		for len(s.heap) > 0 && s.heap[0].due <= now && len(b) < cap(b) {
			e := s.heap.pop()
			// Written so that a due time saturated far in the past cannot
			// overflow the subtraction.
			late := s.maxLateness > 0 && e.due < now-s.maxLateness
			b = append(b, taken[T]{item: e.item, late: late})
		}
		if len(s.heap) > 0 {
			pending = true
			wait = time.Duration(s.heap[0].due - now)
		}
		s.mu.Unlock()
		if len(b) == 0 {
			return wait, pending, false
		}
		var released, late uint64
		for i := range b {
			if b[i].late {
				if s.discard != nil {
					s.discard(b[i].item)
				}
				late++
			} else {
				s.release(b[i].item)
				released++
			}
		}
		s.released.Add(released)
		s.late.Add(late)
		clear(b) // let the items' buffers go
		*batch = b
		select {
		case <-done:
			return 0, false, true
		default:
		}
		// Releasing took time: read the clock again before arming the
		// timer, and take whatever fell due meanwhile.
		pending, wait = false, 0
	}
}

// stop refuses further Pushes and discards what is held.
func (s *Scheduler[T]) stop() {
	s.mu.Lock()
	s.stopped = true
	rest := s.heap
	s.heap = nil
	s.mu.Unlock()
	for i := range rest {
		if s.discard != nil {
			s.discard(rest[i].item)
		}
	}
	s.discarded.Add(uint64(len(rest)))
}

// offset is t as nanoseconds since base, saturating far from it.
func (s *Scheduler[T]) offset(t time.Time) int64 {
	return int64(t.Sub(s.base))
}

// ExpDelay draws a delay from the exponential distribution with the given
// mean, the memoryless delay a Loopix sender picks for each hop so that the
// order packets leave a mix in says nothing about the order they came in.
// In production r must be seeded from crypto/rand and kept private: anyone
// who can predict the delays can undo the mixing. A mean ≤ 0 gives 0, and a
// draw too long for a time.Duration is cut to the longest one.
func ExpDelay(r *rand.Rand, mean time.Duration) time.Duration {
	if mean <= 0 {
		return 0
	}
	d := r.ExpFloat64() * float64(mean)
	if d >= math.MaxInt64 {
		return math.MaxInt64
	}
	return time.Duration(d)
}

// realTimer is a *time.Timer as a Timer.
type realTimer struct{ t *time.Timer }

func newRealTimer(d time.Duration) Timer  { return realTimer{time.NewTimer(d)} }
func (r realTimer) C() <-chan time.Time   { return r.t.C }
func (r realTimer) Reset(d time.Duration) { r.t.Reset(d) }
func (r realTimer) Stop()                 { r.t.Stop() }
