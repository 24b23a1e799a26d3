//go:build linux

package link

import (
	"bufio"
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/platform/sysmon"
)

var paceSysmonSlack = flag.Duration("pace.sysmon-slack", 0, "BenchmarkPacedLink: timer slack for the runtime's sysmon thread, as `mixnode run` sets it")

// Environment of BenchmarkPacedLink's child, the client that asks for pace.
const (
	paceEnvChild = "MIXVPN_PACE_BENCH_CHILD"
	paceEnvAddr  = "MIXVPN_PACE_ADDR"
	paceEnvKey   = "MIXVPN_PACE_KEY"
	paceEnvRate  = "MIXVPN_PACE_RATE"
)

// BenchmarkPacedLink is what an entry pays for one client's paced link
// when the client is idle: a dummy frame at every tick of a Poisson
// process at 810 frames/s (4 λ_P + λ_L at the default rates). The client
// runs in a child process (this test binary again), so the process's CPU
// time is the sending side's alone. It reports CPU and context switches
// per frame.
//
//	go test -run '^$' -bench PacedLink -benchtime 4000x -cpu 1 ./mixnet/link
//
// With -pace.sysmon-slack=10ms the sending process gets the runtime tuning
// `mixnode run` applies by default (see runtimeTuning in cmd/mixnode).
func BenchmarkPacedLink(b *testing.B) {
	const rate = 810
	srvKey, _ := GenerateKey()
	ln := listenLoopback(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conns := make(chan *Conn, 1)
	go Serve(ctx, ln, ListenerConfig{Config: Config{Static: srvKey, MaxPace: 2000}, OnConn: func(c *Conn) { conns <- c }})

	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestPacedLinkClient$", "-test.count=1")
	child.Env = append(os.Environ(), paceEnvChild+"=1", paceEnvAddr+"="+ln.Addr().String(),
		paceEnvKey+"="+hex.EncodeToString(srvKey.Public[:]), fmt.Sprintf("%s=%d", paceEnvRate, rate), "GOMAXPROCS=1")
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close()
		child.Wait()
	}()
	var c *Conn
	select {
	case c = <-conns:
	case <-time.After(10 * time.Second):
		b.Fatal("the client did not connect")
	}
	for deadline := time.Now().Add(10 * time.Second); c.Pace() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("no pace request")
		}
	}
	time.Sleep(200 * time.Millisecond) // past the start
	if *paceSysmonSlack > 0 {
		if err := sysmon.SetSlack(*paceSysmonSlack); err != nil {
			b.Fatal(err)
		}
	}

	b.ResetTimer()
	start := c.Stats().FramesOut
	var before, after syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	for c.Stats().FramesOut-start < uint64(b.N) {
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &after)
	b.StopTimer()
	frames := float64(c.Stats().FramesOut - start)
	cpu := (after.Utime.Nano() + after.Stime.Nano()) - (before.Utime.Nano() + before.Stime.Nano())
	csw := (after.Nvcsw + after.Nivcsw) - (before.Nvcsw + before.Nivcsw)
	b.ReportMetric(float64(cpu)/1e3/frames, "cpu-µs/frame")
	b.ReportMetric(float64(csw)/frames, "ctxsw/frame")
}

// TestPacedLinkClient is BenchmarkPacedLink's child; it does nothing when
// run as a test. It asks for pace and reads until its stdin closes.
func TestPacedLinkClient(t *testing.T) {
	if os.Getenv(paceEnvChild) == "" {
		t.Skip("the client of BenchmarkPacedLink")
	}
	var key [32]byte
	k, err := hex.DecodeString(os.Getenv(paceEnvKey))
	if err != nil || len(k) != 32 {
		t.Fatalf("key: %v", err)
	}
	copy(key[:], k)
	cliKey, _ := GenerateKey()
	c, err := Dial(context.Background(), os.Getenv(paceEnvAddr), key, Config{Static: cliKey})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var rate float64
	fmt.Sscan(strings.TrimSpace(os.Getenv(paceEnvRate)), &rate)
	if err := c.RequestPace(rate); err != nil {
		t.Fatal(err)
	}
	bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes it
}
