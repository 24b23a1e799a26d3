package link

import (
	"context"
	"testing"
	"time"
)

// FuzzDecodeFrame: any plaintext a peer could make us decrypt must decode
// or fail with an error, never panic, and a decoded body must lie inside
// the frame.
func FuzzDecodeFrame(f *testing.F) {
	buf := make([]byte, PlainSize)
	EncodeFrame(buf, FrameControl, []byte("hello"))
	f.Add(append([]byte(nil), buf...))
	pace, _ := EncodePace(200)
	EncodeFrame(buf, FramePace, pace)
	f.Add(append([]byte(nil), buf...))
	f.Fuzz(func(t *testing.T, plain []byte) {
		typ, body, err := DecodeFrame(plain)
		if err != nil {
			return
		}
		if len(body) > BodySize {
			t.Fatalf("body of %d bytes", len(body))
		}
		re := make([]byte, PlainSize)
		if err := EncodeFrame(re, typ, body); err != nil {
			t.Fatalf("decoded frame does not re-encode: %v", err)
		}
	})
}

// BenchmarkLinkThroughput sends packets over one loopback link.
func BenchmarkLinkThroughput(b *testing.B) {
	srvKey, _ := GenerateKey()
	cliKey, _ := GenerateKey()
	got := make(chan struct{}, 1)
	var n int
	target := 0
	ln := listenLoopback(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Serve(ctx, ln, ListenerConfig{Config: Config{Static: srvKey, Handler: func(*Conn, FrameType, []byte) {
		n++
		if n == target {
			got <- struct{}{}
		}
	}}})
	c, err := Dial(ctx, ln.Addr().String(), srvKey.Public, Config{Static: cliKey, QueueSize: 4096})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	pkt := make([]byte, BodySize)
	target = b.N
	b.SetBytes(BodySize)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		for c.Send(pkt) == ErrQueueFull {
			time.Sleep(10 * time.Microsecond)
		}
	}
	<-got
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pkts/s")
}
