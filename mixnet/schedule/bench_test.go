package schedule

import (
	"context"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// packet is the shape of the mix's item: a buffer and a next hop.
type packet struct {
	buf  []byte
	next [32]byte
}

// BenchmarkHeap is the heap alone at a steady depth of 10k: one push and
// one pop per op, as under a constant packet rate.
func BenchmarkHeap(b *testing.B) {
	const depth = 10_000
	r := rand.New(rand.NewPCG(1, 1))
	h := make(entries[packet], 0, depth+1)
	buf := make([]byte, 2048)
	for i := range depth {
		h.push(entry[packet]{due: r.Int64N(1e9), seq: uint64(i), item: packet{buf: buf}})
	}
	seq := uint64(depth)
	b.ReportAllocs()
	for b.Loop() {
		top := h.pop()
		seq++
		h.push(entry[packet]{due: top.due + r.Int64N(1e8), seq: seq, item: top.item})
	}
}

// BenchmarkPushRelease is Push through to Release on a running scheduler
// with the real clock, items due within the next millisecond.
func BenchmarkPushRelease(b *testing.B) {
	benchPushRelease(b, 1)
}

// BenchmarkPushReleaseParallel pushes from GOMAXPROCS goroutines.
func BenchmarkPushReleaseParallel(b *testing.B) {
	benchPushRelease(b, runtime.GOMAXPROCS(0))
}

func benchPushRelease(b *testing.B, producers int) {
	var released atomic.Uint64
	s, err := New(Config[packet]{Capacity: 1 << 16, Release: func(packet) { released.Add(1) }})
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 2048)
	// Warm up: grow the heap to capacity once, as a long-running mix has.
	now := time.Now()
	for range 1 << 16 {
		s.Push(now, packet{buf: buf})
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	for released.Load() < 1<<16 {
		time.Sleep(100 * time.Microsecond)
	}
	released.Store(0)
	var pushed atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(producers)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(rand.Uint64(), 0))
		p := packet{buf: buf, next: [32]byte{1}}
		for pb.Next() {
			due := time.Now().Add(time.Duration(r.IntN(1000)) * time.Microsecond)
			for s.Push(due, p) != nil {
				runtime.Gosched() // full: let the scheduler catch up
			}
			pushed.Add(1)
		}
	})
	deadline := time.Now().Add(time.Minute)
	for released.Load() < pushed.Load() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	if released.Load() != pushed.Load() {
		b.Fatalf("released %d of %d", released.Load(), pushed.Load())
	}
}
