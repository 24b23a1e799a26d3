package link

import (
	"bytes"
	"context"
	"errors"
	"math"
	"testing"
	"time"
)

// TestPacedSideSendsAtTheAskedRate checks that a side asked to pace sends
// frames at the asked rate whether or not it has packets, that its packets
// still all arrive in order, and that the rate is capped at MaxPace.
func TestPacedSideSendsAtTheAskedRate(t *testing.T) {
	srvKey, cliKey := mustKey(t), mustKey(t)
	addr, conns := server(t, ListenerConfig{Config: Config{Static: srvKey, MaxPace: 300}})
	got := make(chan received, 4096)
	cli, err := Dial(context.Background(), addr, srvKey.Public, Config{Static: cliKey, Handler: collect(got)})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv := within(t, conns)
	if err := cli.RequestPace(1000); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for srv.Pace() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if p := srv.Pace(); p != 300 {
		t.Fatalf("pace %v, want the server's cap of 300", p)
	}

	// Frames in a window: idle, then with a burst of packets queued. The
	// count is Poisson with mean 300 × window; six standard deviations
	// leave room for a loaded machine without passing an unpaced link
	// (which sends nothing when idle and the burst at once).
	count := func(window time.Duration) float64 {
		before := cli.Stats().FramesIn
		time.Sleep(window)
		return float64(cli.Stats().FramesIn - before)
	}
	window := 2 * time.Second
	mean := 300 * window.Seconds()
	tol := 6 * math.Sqrt(mean)
	if n := count(window); math.Abs(n-mean) > tol+0.1*mean {
		t.Errorf("idle: %v frames in %v, want %v ± %v", n, window, mean, tol)
	}
	for i := range 200 {
		if err := srv.Send(packet(byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(window); math.Abs(n-mean) > tol+0.1*mean {
		t.Errorf("busy: %v frames in %v, want %v ± %v", n, window, mean, tol)
	}
	for i := range 200 {
		r := within(t, got)
		if r.t != FramePacket || !bytes.Equal(r.body, packet(byte(i))) {
			t.Fatalf("packet %d: type %d, wrong body or order", i, r.t)
		}
	}
}

func TestPaceRefusedWithoutMaxPace(t *testing.T) {
	srvKey, cliKey := mustKey(t), mustKey(t)
	addr, conns := server(t, ListenerConfig{Config: Config{Static: srvKey}})
	cli, err := Dial(context.Background(), addr, srvKey.Public, Config{Static: cliKey})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv := within(t, conns)
	if err := cli.RequestPace(100); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if p := srv.Pace(); p != 0 {
		t.Fatalf("a side without MaxPace paced at %v", p)
	}
	for _, bad := range []float64{0, -1, math.NaN(), 5e6} {
		if err := cli.RequestPace(bad); !errors.Is(err, ErrPace) {
			t.Errorf("RequestPace(%v): %v, want ErrPace", bad, err)
		}
	}
}
