// Package replay remembers the replay tags a mix has seen, so that a packet
// sent through it twice is dropped the second time: otherwise an observer
// could replay a packet and watch which output repeats.
//
// Tags are kept per key epoch in a Bloom filter, and only for the current
// and the previous epoch: a packet made for an older key can no longer be
// unwrapped, so its tag need not be remembered, and memory stays bounded.
//
// # False positives
//
// A filter of m bits with k probes per tag, holding n tags, answers "seen"
// for a fresh tag with probability about
//
//	p = (1 − e^(−kn/m))^k
//
// which is smallest at k = (m/n)·ln 2, where p = 2^(−k), so
//
//	m = −n·ln p / (ln 2)²   bits   (≈ 28.8 bits a tag at p = 10⁻⁶)
//	k = −log₂ p             probes (20 at p = 10⁻⁶)
//
// New sizes each epoch's filter so from Config.Items and
// Config.FalsePositive: 10⁶ tags at 10⁻⁶ take 3.6 MB an epoch. Past n tags
// the rate climbs (at 2n it is about 3·10⁻³ for that sizing); a false
// positive drops a fresh packet, which the mixnet already treats as loss.
// There are no false negatives: a replay within the two epochs is always
// caught.
//
// Replay tags are hashes of the Sphinx shared secret, already uniformly
// random, so the k probe positions come straight from the tag's bytes by
// double hashing (h1 + i·h2) with no hash function to run. A sender can
// steer its own tags only by grinding ephemeral keys, and a tag, however
// chosen, sets at most k bits: it buys nothing a flood of packets would
// not, and never causes a false negative.
package replay

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
)

// TagSize is the length of a replay tag.
const TagSize = 32

// maxProbes caps k, which only a false-positive target below about 10⁻¹⁹
// would exceed.
const maxProbes = 64

// maxBits bounds a filter at 1 TiB an epoch, so sizes cannot overflow.
const maxBits = 1 << 43

// stripes is the number of locks Seen serialises equal tags with.
const stripes = 256

// Config sizes the filters.
type Config struct {
	// Items is how many tags an epoch's filter is sized for; default 10⁶.
	Items int
	// FalsePositive is the target false-positive rate at Items tags, in
	// (0, 1); default 10⁻⁶.
	FalsePositive float64
}

// Filter is a replay filter with one Bloom filter for each of the current
// and the previous key epoch. It is safe for concurrent use.
type Filter struct {
	bits uint64 // m
	k    int

	// locks serialise check-and-insert of equal tags (by tag bytes
	// unrelated to the probe positions), so that two copies of one packet
	// unwrapped at once cannot both pass. Different tags proceed in
	// parallel, setting bits with atomic ORs.
	locks [stripes]paddedMutex

	// win is read without a lock on every Seen; mu serialises the rare
	// writers that replace it.
	win atomic.Pointer[window]
	mu  sync.Mutex
}

// paddedMutex keeps each stripe's lock on its own cache line.
type paddedMutex struct {
	sync.Mutex
	_ [64 - 8]byte
}

// window is the epochs remembered. It is never changed once published;
// filters are made lazily, so cur and prev may be nil.
type window struct {
	current    uint64
	cur, prev  bloom
	hasCurrent bool // false until the first Seen or Rotate
}

// bloom is one epoch's bit array.
type bloom []atomic.Uint64

// New returns a Filter with no epochs yet.
func New(cfg Config) (*Filter, error) {
	if cfg.Items == 0 {
		cfg.Items = 1_000_000
	}
	if cfg.FalsePositive == 0 {
		cfg.FalsePositive = 1e-6
	}
	if cfg.Items < 0 {
		return nil, fmt.Errorf("replay: negative Items %d", cfg.Items)
	}
	if !(cfg.FalsePositive > 0 && cfg.FalsePositive < 1) {
		return nil, fmt.Errorf("replay: FalsePositive %g not in (0, 1)", cfg.FalsePositive)
	}
	if bitsFor(cfg.Items, cfg.FalsePositive) > maxBits {
		return nil, fmt.Errorf("replay: %d items at %g need too large a filter", cfg.Items, cfg.FalsePositive)
	}
	m, k := size(cfg.Items, cfg.FalsePositive)
	f := &Filter{bits: m, k: k}
	f.win.Store(&window{})
	return f, nil
}

// size returns the bits m, a whole number of 64-bit words, and the probes
// k for n items at false-positive rate p.
func size(n int, p float64) (m uint64, k int) {
	words := uint64(math.Ceil(bitsFor(n, p) / 64))
	m = max(words, 1) * 64
	k = int(math.Round(float64(m) / float64(n) * math.Ln2))
	return m, max(1, min(k, maxProbes))
}

// bitsFor is the optimal filter size in bits for n items at rate p.
func bitsFor(n int, p float64) float64 {
	return math.Ceil(-float64(n) * math.Log(p) / (math.Ln2 * math.Ln2))
}

// Seen reports whether tag was already seen in epoch, and records it: true
// means drop the packet. The check and the insert are one atomic step, so
// of several concurrent calls with one tag at most one returns false.
//
// An epoch newer than the current one becomes current, as Rotate would. A
// tag from an epoch older than the previous one is reported as seen: its
// filter is gone, and such a packet should not have been unwrapped.
func (f *Filter) Seen(epoch uint64, tag [TagSize]byte) bool {
	b := f.bloomFor(epoch)
	if b == nil {
		return true
	}
	h1 := binary.LittleEndian.Uint64(tag[0:8])
	h2 := binary.LittleEndian.Uint64(tag[8:16])
	l := &f.locks[binary.LittleEndian.Uint64(tag[24:32])%stripes]
	l.Lock()
	seen := f.testAndSet(b, h1, h2)
	l.Unlock()
	return seen
}

// testAndSet reports whether all of the tag's bits are set in b, setting
// them if not. It reads every probed word before writing any, so that the
// cache misses overlap rather than queue behind locked instructions.
func (f *Filter) testAndSet(b bloom, h1, h2 uint64) bool {
	var idx [maxProbes]uint64
	seen := true
	x := h1
	for i := range f.k {
		// Map x onto [0, m) by its high bits (Lemire's multiply-shift),
		// which needs no power-of-two m.
		bit, _ := bits.Mul64(x, f.bits)
		idx[i] = bit
		if b[bit/64].Load()&(1<<(bit%64)) == 0 {
			seen = false
		}
		x += h2
	}
	if seen {
		return true
	}
	for _, bit := range idx[:f.k] {
		w := &b[bit/64]
		if w.Load()&(1<<(bit%64)) == 0 {
			w.Or(1 << (bit % 64))
		}
	}
	return false
}

// contains reports whether all of the tag's bits are set in epoch's filter,
// without inserting it.
func (f *Filter) contains(epoch uint64, tag [TagSize]byte) bool {
	b := f.bloomFor(epoch)
	if b == nil {
		return true
	}
	x, h2 := binary.LittleEndian.Uint64(tag[0:8]), binary.LittleEndian.Uint64(tag[8:16])
	for range f.k {
		bit, _ := bits.Mul64(x, f.bits)
		if b[bit/64].Load()&(1<<(bit%64)) == 0 {
			return false
		}
		x += h2
	}
	return true
}

// bloomFor returns epoch's filter, or nil if epoch is too old.
func (f *Filter) bloomFor(epoch uint64) bloom {
	w := f.win.Load()
	switch {
	case !w.hasCurrent || epoch > w.current:
	case epoch == w.current:
		if w.cur != nil {
			return w.cur
		}
	case epoch == w.current-1:
		if w.prev != nil {
			return w.prev
		}
	default:
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	w = f.advance(epoch)
	switch {
	case epoch == w.current:
		return f.ensure(w, false)
	case epoch == w.current-1:
		return f.ensure(w, true)
	default:
		return nil // another goroutine moved past epoch meanwhile
	}
}

// Rotate makes current the current epoch, keeping the filter of the one
// before it and forgetting older ones. Epochs only move forward: a current
// older than the present one is ignored. Rotate also makes the new epoch's
// filter, so that the first packets of the epoch do not wait for it.
func (f *Filter) Rotate(current uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.advance(current)
	if w.current == current {
		f.ensure(w, false)
	}
}

// advance moves the window forward to epoch if it is newer, and returns the
// window. f.mu must be held.
func (f *Filter) advance(epoch uint64) *window {
	w := f.win.Load()
	if w.hasCurrent && epoch <= w.current {
		return w
	}
	next := &window{current: epoch, hasCurrent: true}
	if w.hasCurrent && epoch == w.current+1 {
		next.prev = w.cur
	}
	f.win.Store(next)
	return next
}

// ensure returns w's current (or, if prev, previous) filter, making it if
// needed. w must be the published window and f.mu held.
func (f *Filter) ensure(w *window, prev bool) bloom {
	next := *w
	slot := &next.cur
	if prev {
		slot = &next.prev
	}
	if *slot == nil {
		*slot = make(bloom, f.bits/64)
		f.win.Store(&next)
	}
	return *slot
}

// Bytes is the memory the filters hold now: at most two epochs' worth.
func (f *Filter) Bytes() int {
	w := f.win.Load()
	return (len(w.cur) + len(w.prev)) * 8
}

// Params returns each epoch's filter size m in bits and its probes per tag
// k.
func (f *Filter) Params() (m uint64, k int) { return f.bits, f.k }
