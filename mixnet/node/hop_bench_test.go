//go:build linux

package node

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"encoding/hex"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/mixnet/replay"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
	"github.com/mixvpn/mixvpn/platform/sysmon"
)

// The hop benchmark measures what one mix costs per packet in CPU time,
// the way it runs in production: packets arrive over a Noise link at a
// Poisson rate, each is held for an exponential delay of mean 15 ms and
// then leaves over another link. At such rates a node is idle between
// most events, so what it pays per wake-up (timers, netpoll, syscalls, the
// Go runtime's sysmon) matters as much as the unwrap; a saturating
// throughput benchmark hides that. The load generator and the sink run in
// a child process (this test binary again), so that the process's CPU
// time (getrusage) is the node's alone.
//
//	go test -run '^$' -bench Hop -benchtime 5000x -cpu 1 ./mixnet/node
//
// With -hop.sysmon-slack=10ms the node process gets the runtime tuning
// `mixnode run` applies by default (see runtimeTuning in cmd/mixnode).

var hopSysmonSlack = flag.Duration("hop.sysmon-slack", 0, "BenchmarkHop: timer slack for the runtime's sysmon thread, as `mixnode run` sets it")

// Environment of the load-generator child.
const (
	hopEnvRole   = "MIXVPN_HOP_BENCH_CHILD"
	hopEnvAddr   = "MIXVPN_HOP_ADDR"
	hopEnvLink   = "MIXVPN_HOP_LINK_KEY"
	hopEnvSphinx = "MIXVPN_HOP_SPHINX_KEY"
	hopEnvN      = "MIXVPN_HOP_N"
	hopEnvRate   = "MIXVPN_HOP_RATE"
	hopEnvDelay  = "MIXVPN_HOP_DELAY"
)

// BenchmarkHop is one mix node at a steady Poisson arrival rate, with the
// exponential delays (mean 15 ms) of the default anonymous mode. It
// reports the node process's CPU per packet (user+system, and system
// alone), its context switches and its page faults per packet.
func BenchmarkHop(b *testing.B) {
	for _, rate := range []int{300, 1000, 3000} {
		b.Run(fmt.Sprintf("rate=%d", rate), func(b *testing.B) { benchHop(b, rate, 15*time.Millisecond) })
	}
}

func benchHop(b *testing.B, rate int, delay time.Duration) {
	mixKey, err := ecdh.X25519().GenerateKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	linkKey, err := link.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHopLoadGenerator$", "-test.count=1")
	child.Env = append(os.Environ(),
		hopEnvRole+"=1",
		hopEnvAddr+"="+ln.Addr().String(),
		hopEnvLink+"="+hex.EncodeToString(linkKey.Public[:]),
		hopEnvSphinx+"="+hex.EncodeToString(mixKey.PublicKey().Bytes()),
		hopEnvN+"="+strconv.Itoa(b.N),
		hopEnvRate+"="+strconv.Itoa(rate),
		hopEnvDelay+"="+delay.String(),
		"GOMAXPROCS=1",
	)
	child.Stderr = os.Stderr
	stdin, err := child.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := child.Start(); err != nil {
		b.Fatal(err)
	}
	defer child.Wait()
	lines := bufio.NewScanner(stdout)
	ready := hopExpect(b, lines, "READY")
	if len(ready) != 2 {
		b.Fatalf("child said %q", ready)
	}
	var sinkKey [32]byte
	if k, err := hex.DecodeString(ready[1]); err != nil || len(k) != 32 {
		b.Fatalf("sink key %q", ready[1])
	} else {
		copy(sinkKey[:], k)
	}

	clientKey, err := link.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	peer := link.NewPeer(link.PeerConfig{Config: link.Config{Static: clientKey}, Addr: ready[0], Key: sinkKey})
	go peer.Run(ctx)
	rf, err := replay.New(replay.Config{})
	if err != nil {
		b.Fatal(err)
	}
	n, err := New(Config{Keys: staticKeys{{Epoch: 1, Key: mixKey}}, Replay: rf, Router: peerRouter{peer}})
	if err != nil {
		b.Fatal(err)
	}
	go n.Run(ctx)
	go link.Serve(ctx, ln, link.ListenerConfig{Config: link.Config{Static: linkKey, Handler: func(_ *link.Conn, t link.FrameType, body []byte) {
		if t == link.FramePacket {
			n.Receive(body)
		}
	}}})
	// Let the link to the sink come up before the clock starts.
	for deadline := time.Now().Add(10 * time.Second); peer.Conn() == nil; {
		if time.Now().After(deadline) {
			b.Fatal("no link to the sink")
		}
		time.Sleep(10 * time.Millisecond)
	}

	if *hopSysmonSlack > 0 {
		if err := sysmon.SetSlack(*hopSysmonSlack); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	before := hopUsage(b)
	fmt.Fprintln(stdin, "GO")
	done := hopExpect(b, lines, "DONE")
	after := hopUsage(b)
	b.StopTimer()
	got, _ := strconv.Atoi(done[0])
	if got < b.N*99/100 {
		b.Errorf("sink got %d of %d packets", got, b.N)
	}
	cpu := time.Duration((after.Utime.Nano() + after.Stime.Nano()) - (before.Utime.Nano() + before.Stime.Nano()))
	sys := time.Duration(after.Stime.Nano() - before.Stime.Nano())
	csw := (after.Nvcsw + after.Nivcsw) - (before.Nvcsw + before.Nivcsw)
	faults := after.Minflt - before.Minflt
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/pkt")
	b.ReportMetric(float64(sys.Microseconds())/float64(b.N), "sys-µs/pkt")
	b.ReportMetric(float64(csw)/float64(b.N), "ctxsw/pkt")
	b.ReportMetric(float64(faults)/float64(b.N), "faults/pkt")
}

// peerRouter routes every packet over one link, as a mix whose next hops
// are all one node.
type peerRouter struct{ p *link.Peer }

func (r peerRouter) Route(_ sphinx.Address, pkt []byte) error { return r.p.Send(pkt) }

func hopUsage(b *testing.B) syscall.Rusage {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return ru
}

// hopExpect reads the child's next line, which must start with word, and
// returns its other fields.
func hopExpect(b *testing.B, lines *bufio.Scanner, word string) []string {
	for lines.Scan() {
		f := strings.Fields(lines.Text())
		if len(f) > 0 && f[0] == word {
			return f[1:]
		}
	}
	b.Fatalf("child ended before %s: %v", word, lines.Err())
	return nil
}

// TestHopLoadGenerator is BenchmarkHop's child process; it does nothing
// when run as a test.
func TestHopLoadGenerator(t *testing.T) {
	if os.Getenv(hopEnvRole) == "" {
		t.Skip("the load generator of BenchmarkHop")
	}
	if err := hopLoadGenerator(); err != nil {
		fmt.Println("FAIL", err)
		t.Fatal(err)
	}
}

func hopLoadGenerator() error {
	n, _ := strconv.Atoi(os.Getenv(hopEnvN))
	rate, _ := strconv.Atoi(os.Getenv(hopEnvRate))
	delay, err := time.ParseDuration(os.Getenv(hopEnvDelay))
	if err != nil || n <= 0 || rate <= 0 {
		return fmt.Errorf("bad load: n=%d rate=%d delay %v", n, rate, err)
	}
	var nodeLink [32]byte
	if k, err := hex.DecodeString(os.Getenv(hopEnvLink)); err != nil || len(k) != 32 {
		return fmt.Errorf("link key: %v", err)
	} else {
		copy(nodeLink[:], k)
	}
	mixPub, err := hex.DecodeString(os.Getenv(hopEnvSphinx))
	if err != nil {
		return err
	}
	mixKey, err := ecdh.X25519().NewPublicKey(mixPub)
	if err != nil {
		return err
	}
	nextKey, err := ecdh.X25519().GenerateKey(nil)
	if err != nil {
		return err
	}
	rnd := rand.New(rand.NewPCG(rand.Uint64(), 0))
	pkts := make([][]byte, n)
	for i := range pkts {
		path := []sphinx.Hop{
			{Address: sphinx.Address{1}, Key: mixKey, Delay: time.Duration(rnd.ExpFloat64() * float64(delay))},
			{Address: sphinx.Address{2}, Key: nextKey.PublicKey()},
		}
		if pkts[i], err = sphinx.NewPacket(nil, path, sphinx.Address{}, sphinx.MessageID{}, nil); err != nil {
			return err
		}
	}

	sinkKey, err := link.GenerateKey()
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var got atomic.Int64
	all := make(chan struct{})
	go link.Serve(ctx, ln, link.ListenerConfig{Config: link.Config{Static: sinkKey, Handler: func(_ *link.Conn, t link.FrameType, _ []byte) {
		if t == link.FramePacket && got.Add(1) == int64(n) {
			close(all)
		}
	}}})
	fmt.Println("READY", ln.Addr().String(), hex.EncodeToString(sinkKey.Public[:]))

	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "GO" {
		return fmt.Errorf("no GO: %v", in.Err())
	}
	clientKey, err := link.GenerateKey()
	if err != nil {
		return err
	}
	c, err := link.Dial(ctx, os.Getenv(hopEnvAddr), nodeLink, link.Config{Static: clientKey, QueueSize: 8192})
	if err != nil {
		return err
	}
	defer c.Close()
	// Poisson arrivals on a schedule, so that late wake-ups here do not
	// lower the rate.
	next := time.Now()
	for _, p := range pkts {
		next = next.Add(time.Duration(rnd.ExpFloat64() / float64(rate) * float64(time.Second)))
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		if err := c.Send(p); err != nil {
			return err
		}
	}
	select {
	case <-all:
	case <-time.After(10 * time.Second):
	}
	fmt.Println("DONE", got.Load())
	return nil
}
