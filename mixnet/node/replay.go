package node

import (
	"encoding/binary"
	"math"
	"sync"
	"sync/atomic"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// BloomReplay is a ReplayFilter with bounded memory: one Bloom filter per
// key epoch, and only the current and the previous epoch are kept, since a
// packet made for an older key cannot be unwrapped any more.
//
// With m bits, k probes and n tags, the false-positive rate is about
// (1 − e^(−kn/m))^k; a false positive drops a fresh packet, which the
// mixnet already tolerates as loss. Replay tags are uniformly random, so
// the probe positions come straight from the tag's bytes (double hashing
// h1 + i·h2), with no hash function to run.
type BloomReplay struct {
	bits uint64 // m, a power of two
	k    int

	// stripes serialise check-and-insert for equal tags, so that two copies
	// of one packet arriving at once cannot both pass.
	stripes [64]sync.Mutex

	mu      sync.RWMutex
	filters map[uint64][]atomic.Uint64
	newest  uint64
}

// NewBloomReplay sizes each epoch's filter for items tags at the given
// false-positive rate.
func NewBloomReplay(items int, falsePositive float64) *BloomReplay {
	if items < 1 {
		items = 1
	}
	if falsePositive <= 0 || falsePositive >= 1 {
		falsePositive = 1e-6
	}
	m := -float64(items) * math.Log(falsePositive) / (math.Ln2 * math.Ln2)
	bits := uint64(64)
	for float64(bits) < m {
		bits <<= 1
	}
	k := int(math.Round(float64(bits) / float64(items) * math.Ln2))
	k = max(1, min(k, 24))
	return &BloomReplay{bits: bits, k: k, filters: make(map[uint64][]atomic.Uint64)}
}

// Seen reports whether tag was seen before in epoch and records it.
func (b *BloomReplay) Seen(epoch uint64, tag [sphinx.ReplayTagSize]byte) bool {
	f := b.filter(epoch)
	if f == nil {
		return true // an epoch too old to hold keys for: treat as replay
	}
	h1 := binary.LittleEndian.Uint64(tag[0:8])
	h2 := binary.LittleEndian.Uint64(tag[8:16]) | 1
	stripe := &b.stripes[h1%uint64(len(b.stripes))]
	stripe.Lock()
	defer stripe.Unlock()
	return b.probe(f, h1, h2, true)
}

// probe reports whether all k bits are set, setting them if insert.
func (b *BloomReplay) probe(f []atomic.Uint64, h1, h2 uint64, insert bool) bool {
	mask := b.bits - 1
	seen := true
	for i := range b.k {
		bit := (h1 + uint64(i)*h2) & mask
		word, m := &f[bit/64], uint64(1)<<(bit%64)
		if word.Load()&m != 0 {
			continue
		}
		seen = false
		if insert {
			word.Or(m)
		}
	}
	return seen
}

// filter returns epoch's filter, creating it if epoch is the newest or the
// one before, and forgetting anything older.
func (b *BloomReplay) filter(epoch uint64) []atomic.Uint64 {
	b.mu.RLock()
	f, newest := b.filters[epoch], b.newest
	b.mu.RUnlock()
	if f != nil {
		return f
	}
	if epoch+1 < newest {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if f = b.filters[epoch]; f != nil {
		return f
	}
	f = make([]atomic.Uint64, b.bits/64)
	b.filters[epoch] = f
	if epoch > b.newest {
		b.newest = epoch
	}
	for e := range b.filters {
		if e+1 < b.newest {
			delete(b.filters, e)
		}
	}
	return f
}

// Bytes is the memory the filters hold.
func (b *BloomReplay) Bytes() int {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return len(b.filters) * int(b.bits/8)
}
