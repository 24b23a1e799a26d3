package replay

import (
	"encoding/binary"
	"sync/atomic"
	"testing"
)

// benchTag makes the i-th benchmark tag by SplitMix64, cheap enough not to
// dominate Seen.
func benchTag(i uint64) (t [TagSize]byte) {
	for j := 0; j < TagSize; j += 8 {
		i += 0x9e3779b97f4a7c15
		z := i
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		binary.LittleEndian.PutUint64(t[j:], z^(z>>31))
	}
	return t
}

// BenchmarkSeenFresh is the common case: a new tag, checked and inserted
// into a default-sized (10⁶ tags at 10⁻⁶, 3.6 MB) filter. Runs longer than
// 10⁶ ops load the filter past its design size, which makes later probes
// find more bits set; the cost per op hardly changes.
func BenchmarkSeenFresh(b *testing.B) {
	f := mustNew(b, Config{})
	f.Rotate(1)
	var i uint64
	b.ReportAllocs()
	for b.Loop() {
		i += 4
		f.Seen(1, benchTag(i))
	}
}

// BenchmarkSeenReplay is a replayed tag: every probe finds its bit set.
func BenchmarkSeenReplay(b *testing.B) {
	f := mustNew(b, Config{})
	f.Rotate(1)
	const n = 1 << 16
	for i := range uint64(n) {
		f.Seen(1, benchTag(i*4))
	}
	var i uint64
	b.ReportAllocs()
	for b.Loop() {
		i++
		f.Seen(1, benchTag((i%n)*4))
	}
}

// BenchmarkSeenFreshParallel is fresh tags from GOMAXPROCS unwrap workers.
// Each Seen touches k = 20 random cache lines of the 3.6 MB filter, so
// this is bound by memory, not by the stripe locks.
func BenchmarkSeenFreshParallel(b *testing.B) {
	f := mustNew(b, Config{})
	f.Rotate(1)
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1) << 40
		for pb.Next() {
			i += 4
			f.Seen(1, benchTag(i))
		}
	})
}

// BenchmarkTag is the cost of making the tags above, to subtract.
func BenchmarkTag(b *testing.B) {
	var i uint64
	var sink byte
	for b.Loop() {
		i += 4
		t := benchTag(i)
		sink ^= t[0]
	}
	_ = sink
}
