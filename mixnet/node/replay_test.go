package node

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

func randomTag() (t [sphinx.ReplayTagSize]byte) {
	rand.Read(t[:])
	return t
}

func TestBloomReplayNoFalseNegativesAndLowFalsePositives(t *testing.T) {
	const n = 100_000
	b := NewBloomReplay(n, 1e-4)
	tags := make([][sphinx.ReplayTagSize]byte, n)
	for i := range tags {
		tags[i] = randomTag()
		if b.Seen(1, tags[i]) {
			// Possible only as a false positive; count below.
			t.Logf("false positive on insert %d", i)
		}
	}
	for i, tag := range tags {
		if !b.Seen(1, tag) {
			t.Fatalf("tag %d forgotten", i)
		}
	}
	// Probe without inserting, so the filter stays at its design load.
	fp := 0
	const trials = 200_000
	f := b.filter(1)
	for range trials {
		tag := randomTag()
		if b.probe(f, binary.LittleEndian.Uint64(tag[0:8]), binary.LittleEndian.Uint64(tag[8:16])|1, false) {
			fp++
		}
	}
	rate := float64(fp) / trials
	t.Logf("false positives %d of %d (%.2e), target 1e-4 at %d items", fp, trials, rate, n)
	if rate > 3e-4 {
		t.Fatalf("false-positive rate %.2e far above target", rate)
	}
}

func TestBloomReplayEpochs(t *testing.T) {
	b := NewBloomReplay(1000, 1e-6)
	tag := randomTag()
	b.Seen(1, tag)
	if b.Seen(2, tag) {
		t.Fatal("a tag from epoch 1 counted in epoch 2")
	}
	if !b.Seen(1, tag) {
		t.Fatal("epoch 1 forgotten while still the previous epoch")
	}
	b.Seen(3, randomTag())
	if !b.Seen(1, randomTag()) {
		t.Fatal("a packet for an expired epoch was accepted")
	}
	if got, want := b.Bytes(), 2*int(b.bits/8); got != want {
		t.Fatalf("holding %d bytes, want two filters of %d", got, want/2)
	}
}

func TestBloomReplayConcurrent(t *testing.T) {
	b := NewBloomReplay(10000, 1e-6)
	tag := randomTag()
	var wg sync.WaitGroup
	var mu sync.Mutex
	fresh := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !b.Seen(5, tag) {
				mu.Lock()
				fresh++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if fresh != 1 {
		t.Fatalf("%d goroutines saw the same tag as fresh, want exactly 1", fresh)
	}
}

func BenchmarkBloomReplay(b *testing.B) {
	f := NewBloomReplay(1_000_000, 1e-6)
	tags := make([][sphinx.ReplayTagSize]byte, 1024)
	for i := range tags {
		tags[i] = randomTag()
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		f.Seen(1, tags[i%len(tags)])
		i++
	}
}
