package node

import (
	"context"
	"crypto/ecdh"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mixvpn/mixvpn/mixnet/schedule"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// EpochKey is a Sphinx private key and the key epoch it belongs to.
type EpochKey struct {
	Epoch uint64
	Key   *ecdh.PrivateKey
}

// KeySource yields the keys a packet may have been made for: the current
// epoch's first, then those still honoured during a rotation.
type KeySource interface {
	UnwrapKeys() []EpochKey
}

// ReplayFilter remembers replay tags per key epoch. Seen reports whether
// the tag was seen before and records it.
type ReplayFilter interface {
	Seen(epoch uint64, tag [sphinx.ReplayTagSize]byte) bool
}

// Router sends a packet to the node with the given address. It must not
// keep pkt after it returns.
type Router interface {
	Route(next sphinx.Address, pkt []byte) error
}

// Handler takes packets for which this node is the last Sphinx hop. It must
// not keep payload after it returns.
type Handler interface {
	// Deliver gets a still-encrypted payload block for a client behind this
	// gateway (FlagDeliver: SURB replies and loop cover).
	Deliver(dest sphinx.Address, id sphinx.MessageID, block []byte) error
	// Final gets a plaintext message addressed to this node (FlagFinal).
	Final(dest sphinx.Address, id sphinx.MessageID, msg []byte) error
}

// Config configures a Node.
type Config struct {
	Keys   KeySource
	Replay ReplayFilter
	Router Router
	// Handler serves last hops; nil drops them (a mix is never a last hop).
	Handler Handler
	// Workers unwrap in parallel; default GOMAXPROCS.
	Workers int
	// QueueSize bounds packets waiting for a worker; default 4096.
	QueueSize int
	// MaxWait drops a packet that waited longer than this for a worker;
	// default 1 s.
	MaxWait time.Duration
	// HoldCapacity bounds packets held by the delay scheduler; default 65536.
	HoldCapacity int
	// MaxLateness drops a held packet released this long past due; default 1 s.
	MaxLateness time.Duration
	// Registerer receives the node's metrics; nil keeps them private.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Now        func() time.Time
}

// Node is one Sphinx-processing node's pipeline. Feed it with Receive and
// run it with Run.
type Node struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	pool    sync.Pool
	queue   chan queued
	sched   *schedule.Scheduler[held]
	metrics *Metrics
	// Children of metrics.PacketsOut, looked up once rather than by label
	// for every packet.
	outForward, outDeliver, outFinal prometheus.Counter
}

type queued struct {
	buf *[sphinx.PacketSize]byte
	at  time.Time
}

type held struct {
	buf  *[sphinx.PacketSize]byte
	next sphinx.Address
	at   time.Time
}

// New builds a node. It does nothing until Run.
func New(cfg Config) (*Node, error) {
	if cfg.Keys == nil || cfg.Replay == nil || cfg.Router == nil {
		return nil, errors.New("node: Keys, Replay and Router are required")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 4096
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = time.Second
	}
	if cfg.HoldCapacity <= 0 {
		cfg.HoldCapacity = 65536
	}
	if cfg.MaxLateness <= 0 {
		cfg.MaxLateness = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	n := &Node{
		cfg:   cfg,
		log:   cfg.Logger,
		now:   cfg.Now,
		queue: make(chan queued, cfg.QueueSize),
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	n.pool.New = func() any { return new([sphinx.PacketSize]byte) }
	sched, err := schedule.New(schedule.Config[held]{
		Capacity:    cfg.HoldCapacity,
		MaxLateness: cfg.MaxLateness,
		Release:     n.release,
		Discard:     n.discard,
		Now:         cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n.sched = sched
	n.metrics = newMetrics(cfg.Registerer, func() float64 { return float64(n.sched.Len()) })
	n.outForward = n.metrics.PacketsOut.WithLabelValues("forward")
	n.outDeliver = n.metrics.PacketsOut.WithLabelValues("deliver")
	n.outFinal = n.metrics.PacketsOut.WithLabelValues("final")
	return n, nil
}

// Metrics returns the node's collectors.
func (n *Node) Metrics() *Metrics { return n.metrics }

// Receive takes one packet from a link. It copies pkt and never blocks: if
// the workers are behind, the packet is dropped and counted.
func (n *Node) Receive(pkt []byte) {
	n.metrics.PacketsIn.Inc()
	if len(pkt) != sphinx.PacketSize {
		n.drop(DropInvalid)
		return
	}
	buf := n.pool.Get().(*[sphinx.PacketSize]byte)
	copy(buf[:], pkt)
	select {
	case n.queue <- queued{buf: buf, at: n.now()}:
	default:
		n.pool.Put(buf)
		n.drop(DropOverload)
	}
}

// Run processes packets until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range n.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.work(ctx)
		}()
	}
	err := n.sched.Run(ctx)
	wg.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (n *Node) work(ctx context.Context) {
	var out sphinx.Processed
	for {
		select {
		case <-ctx.Done():
			return
		case q := <-n.queue:
			n.process(q, &out)
		}
	}
}

func (n *Node) process(q queued, out *sphinx.Processed) {
	now := n.now()
	if now.Sub(q.at) > n.cfg.MaxWait {
		n.pool.Put(q.buf)
		n.drop(DropStale)
		return
	}
	epoch, err := n.unwrap(q.buf[:], out)
	if err != nil {
		n.pool.Put(q.buf)
		n.drop(DropInvalid)
		n.log.Debug("unwrap failed", "err", err)
		return
	}
	if n.cfg.Replay.Seen(epoch, out.ReplayTag) {
		n.pool.Put(q.buf)
		n.drop(DropReplay)
		return
	}
	switch out.Flag {
	case sphinx.FlagForward:
		h := held{buf: q.buf, next: out.NextHop, at: now}
		if err := n.sched.Push(now.Add(out.Delay), h); err != nil {
			n.pool.Put(q.buf)
			n.drop(DropSchedule)
		}
		return
	case sphinx.FlagDeliver, sphinx.FlagFinal:
		n.last(out)
	}
	n.pool.Put(q.buf)
}

// unwrap tries each honoured key. A wrong key fails the MAC before the
// packet is touched, so the next key sees the original bytes.
func (n *Node) unwrap(pkt []byte, out *sphinx.Processed) (uint64, error) {
	var err error
	for _, k := range n.cfg.Keys.UnwrapKeys() {
		err = sphinx.Unwrap(k.Key, pkt, out)
		if err == nil {
			return k.Epoch, nil
		}
		if !errors.Is(err, sphinx.ErrBadMAC) {
			return 0, err
		}
	}
	if err == nil {
		err = errors.New("node: no Sphinx keys")
	}
	return 0, err
}

func (n *Node) last(out *sphinx.Processed) {
	h := n.cfg.Handler
	if h == nil {
		n.drop(DropRole)
		return
	}
	var err error
	kind, counter := "final", n.outFinal
	if out.Flag == sphinx.FlagDeliver {
		kind, counter = "deliver", n.outDeliver
		err = h.Deliver(out.Destination, out.ID, out.Payload)
	} else {
		err = h.Final(out.Destination, out.ID, out.Payload)
	}
	if err != nil {
		n.drop(DropHandler)
		n.log.Debug("last hop refused", "kind", kind, "err", err)
		return
	}
	counter.Inc()
}

// release is called by the scheduler, in due order.
func (n *Node) release(h held) {
	defer n.pool.Put(h.buf)
	n.metrics.Delay.Observe(n.now().Sub(h.at).Seconds())
	if err := n.cfg.Router.Route(h.next, h.buf[:]); err != nil {
		n.drop(DropUnroutable)
		n.log.Debug("route failed", "next", fmt.Sprintf("%x", h.next[:4]), "err", err)
		return
	}
	n.outForward.Inc()
}

// discard takes back the buffers of packets the scheduler will not
// release: those far past due, counted as late, and those still held at
// shutdown.
func (n *Node) discard(h held) {
	n.pool.Put(h.buf)
	n.drop(DropLate)
}

func (n *Node) drop(reason string) {
	n.metrics.Drops.WithLabelValues(reason).Inc()
}
