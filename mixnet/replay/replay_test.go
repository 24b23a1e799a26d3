package replay

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// tags yields uniformly random tags from a fixed seed.
type tags struct{ r *rand.Rand }

func newTags(seed uint64) tags { return tags{rand.New(rand.NewPCG(seed, 0x7a65))} }

func (g tags) next() (t [TagSize]byte) {
	for i := 0; i < TagSize; i += 8 {
		binary.LittleEndian.PutUint64(t[i:], g.r.Uint64())
	}
	return t
}

func mustNew(t testing.TB, cfg Config) *Filter {
	t.Helper()
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestNoFalseNegatives(t *testing.T) {
	const n = 100_000
	f := mustNew(t, Config{Items: n, FalsePositive: 1e-6})
	g := newTags(1)
	all := make([][TagSize]byte, n)
	fresh := 0
	for i := range all {
		all[i] = g.next()
		if !f.Seen(1, all[i]) {
			fresh++
		}
	}
	for i, tag := range all {
		if !f.Seen(1, tag) {
			t.Fatalf("tag %d forgotten", i)
		}
	}
	// At 10⁻⁶ a false positive among the first inserts is possible but
	// expected 0.05 times; more than a few means the filter is broken.
	if n-fresh > 3 {
		t.Fatalf("%d of %d fresh tags reported as seen", n-fresh, n)
	}
}

// TestFalsePositiveRate loads a filter to its design size and probes it
// with fresh tags, without inserting them so the load stays put.
func TestFalsePositiveRate(t *testing.T) {
	for _, tc := range []struct {
		items  int
		target float64
		probes int
	}{
		{100_000, 1e-2, 100_000},
		{100_000, 1e-3, 500_000},
		{20_000, 1e-4, 2_000_000},
	} {
		f := mustNew(t, Config{Items: tc.items, FalsePositive: tc.target})
		g := newTags(uint64(tc.items) + uint64(1/tc.target))
		for range tc.items {
			f.Seen(1, g.next())
		}
		hits := 0
		for range tc.probes {
			if f.contains(1, g.next()) {
				hits++
			}
		}
		rate := float64(hits) / float64(tc.probes)
		m, k := f.Params()
		t.Logf("%d items at target %.0e (m = %d bits, k = %d): %d of %d probes hit, rate %.2e",
			tc.items, tc.target, m, k, hits, tc.probes, rate)
		// The target times probes is at least 200 expected hits, so 3×
		// either way is far outside chance.
		if rate > 3*tc.target || rate < tc.target/3 {
			t.Errorf("rate %.2e not within 3× of target %.0e", rate, tc.target)
		}
	}
}

// TestSizing checks the formula's filters meet the target by the textbook
// estimate (1 − e^(−kn/m))^k at the design load.
func TestSizing(t *testing.T) {
	for _, n := range []int{1, 10, 1000, 1_000_000} {
		for _, p := range []float64{0.5, 1e-2, 1e-6, 1e-9} {
			m, k := size(n, p)
			est := math.Pow(1-math.Exp(-float64(k)*float64(n)/float64(m)), float64(k))
			if est > p*1.05 {
				t.Errorf("n %d p %.0e: m %d k %d estimate %.3e above target", n, p, m, k, est)
			}
			if m%64 != 0 {
				t.Errorf("m %d not whole words", m)
			}
		}
	}
	f := mustNew(t, Config{})
	if m, k := f.Params(); k != 20 || m/8 > 3_700_000 {
		t.Errorf("default sizing m %d bits k %d; want about 3.6 MB and 20 probes", m, k)
	}
}

func TestEpochRotation(t *testing.T) {
	f := mustNew(t, Config{Items: 1000, FalsePositive: 1e-9})
	m, _ := f.Params()
	epochBytes := int(m / 8)
	g := newTags(2)
	a, b, c := g.next(), g.next(), g.next()

	f.Rotate(1)
	if f.Seen(1, a) {
		t.Fatal("fresh tag reported as seen")
	}
	if f.Seen(2, a) {
		t.Fatal("epoch 1's tag counted in epoch 2")
	}
	// Seen(2, …) made epoch 2 current; epoch 1 is the previous one.
	if !f.Seen(1, a) {
		t.Fatal("previous epoch forgotten")
	}
	if f.Seen(1, b) || !f.Seen(1, b) {
		t.Fatal("previous epoch does not record new tags")
	}
	f.Rotate(3)
	if !f.Seen(1, c) {
		t.Fatal("a tag from an epoch older than the previous one was accepted")
	}
	if !f.Seen(2, a) {
		t.Fatal("epoch 2, now the previous one, forgotten")
	}
	if f.Seen(3, a) {
		t.Fatal("epoch 3 starts with epoch 2's tags")
	}
	// Going back is ignored.
	f.Rotate(1)
	if !f.Seen(3, a) {
		t.Fatal("Rotate backwards changed the current epoch")
	}
	if got := f.Bytes(); got != 2*epochBytes {
		t.Fatalf("holding %d bytes, want two epochs of %d", got, epochBytes)
	}
	// Jumping ahead keeps nothing: the old current is not the previous.
	f.Rotate(10)
	if got := f.Bytes(); got != epochBytes {
		t.Fatalf("after a jump, holding %d bytes, want one epoch of %d", got, epochBytes)
	}
	if f.Seen(9, a) {
		t.Fatal("epoch 9 remembered epoch 3's tag")
	}
	for e := uint64(11); e < 100; e++ {
		f.Seen(e, g.next())
		if got := f.Bytes(); got > 2*epochBytes {
			t.Fatalf("epoch %d: holding %d bytes, over two epochs", e, got)
		}
	}
}

func TestEpochZeroAndMax(t *testing.T) {
	f := mustNew(t, Config{Items: 100})
	tag := newTags(3).next()
	if f.Seen(0, tag) || !f.Seen(0, tag) {
		t.Fatal("epoch 0 does not work")
	}
	if f.Seen(math.MaxUint64, tag) {
		t.Fatal("epoch max starts with epoch 0's tags")
	}
	if !f.Seen(0, tag) {
		t.Fatal("epoch 0, long gone, accepted a tag")
	}
}

// TestConcurrentDuplicates has workers race on the same tags in the same
// epoch: each tag must pass exactly once however the calls interleave.
func TestConcurrentDuplicates(t *testing.T) {
	const workers, n = 4, 20_000
	f := mustNew(t, Config{Items: n, FalsePositive: 1e-9})
	g := newTags(4)
	all := make([][TagSize]byte, n)
	for i := range all {
		all[i] = g.next()
	}
	passed := make([]atomic.Int32, n)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range n {
				// Walk in different orders so workers collide.
				j := i
				if w%2 == 1 {
					j = n - 1 - i
				}
				if !f.Seen(7, all[j]) {
					passed[j].Add(1)
				}
			}
		})
	}
	// Rotation and size queries from another goroutine meanwhile.
	wg.Go(func() {
		for range 100 {
			f.Rotate(7)
			_ = f.Bytes()
		}
	})
	wg.Wait()
	for i := range passed {
		if p := passed[i].Load(); p != 1 {
			t.Fatalf("tag %d passed %d times", i, p)
		}
	}
}

// TestConcurrentRotation checks Seen under rotation does not lose tags of
// the epochs still kept.
func TestConcurrentRotation(t *testing.T) {
	f := mustNew(t, Config{Items: 10_000, FalsePositive: 1e-9})
	var wg sync.WaitGroup
	var current atomic.Uint64
	current.Store(1)
	f.Rotate(1)
	for w := range 3 {
		wg.Go(func() {
			g := newTags(uint64(10 + w))
			for range 5000 {
				e := current.Load()
				tag := g.next()
				if f.Seen(e, tag) {
					continue // rare false positive
				}
				// e is at worst the previous epoch now: still remembered.
				if !f.Seen(e, tag) {
					t.Errorf("epoch %d forgot a tag while rotating", e)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for e := uint64(2); e < 50; e++ {
			f.Rotate(e)
			current.Store(e)
		}
	})
	wg.Wait()
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Items: -1},
		{FalsePositive: 1},
		{FalsePositive: -0.1},
		{FalsePositive: math.NaN()},
		{Items: math.MaxInt, FalsePositive: 1e-300},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted a bad config", cfg)
		}
	}
}
