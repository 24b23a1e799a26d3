package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// Uplink carries packets to the entry gateway. It must not block and must
// not keep pkt; link.Conn and link.Peer satisfy it.
type Uplink interface {
	Send(pkt []byte) error
}

// Defaults for Config.
const (
	// DefaultRate is λ_P, real-or-drop-cover packets per second: a fixed
	// 3.9 Mbit/s of link traffic up whether or not the user is active,
	// whose slots carry up to five SURBs each, room for about 15 Mbit/s of
	// replies down.
	DefaultRate = 200
	// DefaultLoopRate is λ_L: loops measure the path and make active
	// attacks on the client's traffic visible; 10/s costs 5% of the rate.
	DefaultLoopRate = 10
	// DownRatePerRate sizes DownRate's default from λ_P: five reply
	// frames per send slot, as many as the SURBs a slot can carry. Four
	// left the entry's paced queue nearly full in a download, and loops
	// crossing it took twice as long at the 90th percentile (270 against
	// 120 ms, docs/PERFORMANCE.md).
	DownRatePerRate = 5
	// DefaultMeanDelay is the mean per-mix delay: six delays on a round
	// trip give about 90 ms of mixing, still usable for interactive TCP.
	DefaultMeanDelay = 15 * time.Millisecond
	// DefaultPoolSize bounds each pool of ready cover and loop packets.
	DefaultPoolSize = 16
	// DefaultSURBPoolSize bounds the pool of ready reply blocks: enough
	// for several full messages of SURBs.
	DefaultSURBPoolSize = 64
	// DefaultMaxReplyKeys bounds the kept SURB keys.
	DefaultMaxReplyKeys = 8192
	// DefaultReplyKeyLifetime is how long SURB keys are kept; an exit
	// forgets an idle session after a minute, and key epochs last longer.
	DefaultReplyKeyLifetime = 5 * time.Minute
	// DefaultLoopTimeout is how long a loop is waited for at most: it
	// crosses three exponential delays of 15 ms, so one still out after
	// 3 s is gone even on a loaded network. Its mixes are blamed much
	// sooner, at a deadline drawn from the round trips loops take (see
	// Health.LoopDeadline).
	DefaultLoopTimeout = 3 * time.Second
)

// Config configures a Client.
type Config struct {
	// Uplink sends packets to the entry gateway.
	Uplink Uplink
	// Topology is the network to route over; SetTopology replaces it.
	Topology Topology
	// Address is the client's own address, to which its SURBs and loops
	// are delivered: gateway.ClientAddress of its link key.
	Address sphinx.Address
	// Rate is λ_P in packets per second; default DefaultRate.
	Rate float64
	// LoopRate is λ_L in packets per second; default DefaultLoopRate.
	LoopRate float64
	// MeanDelay is the mean exponential delay per mix; default
	// DefaultMeanDelay.
	MeanDelay time.Duration
	// DownRate is the steady rate, in frames per second, at which Connect
	// asks the entry to send to the client, dummies filling the gaps, so
	// that a download does not show on the client's link; default
	// DownRatePerRate × Rate + LoopRate, room for the replies the SURBs of
	// a busy send stream can bring. Negative leaves the entry unpaced.
	DownRate float64
	// Exit is the ID of the exit sessions use; empty picks one at random
	// per session.
	Exit string
	// PoolSize bounds the pools of ready cover and loop packets; default
	// DefaultPoolSize. SURBPoolSize bounds ready SURBs; default
	// DefaultSURBPoolSize.
	PoolSize, SURBPoolSize int
	// MaxReplyKeys and ReplyKeyLifetime bound the SURB keys kept;
	// defaults DefaultMaxReplyKeys and DefaultReplyKeyLifetime.
	MaxReplyKeys     int
	ReplyKeyLifetime time.Duration
	// LoopTimeout is when a loop that did not return is given up as
	// lost, and the most its deadline can grow to; default
	// DefaultLoopTimeout.
	LoopTimeout time.Duration
	// Session configures sessions opened on this client.
	Session SessionConfig
	Logger  *slog.Logger
}

// Stats counts what a client did.
type Stats struct {
	RealSent, CoverSent, LoopsSent uint64
	// SendErrors counts packets the uplink refused.
	SendErrors uint64
	// Late counts ticks whose packet was not ready in a pool and was
	// built on the spot.
	Late            uint64
	RepliesReceived uint64
	// UnknownDeliveries counts deliveries with no kept keys (expired,
	// duplicated or forged).
	UnknownDeliveries uint64
	LoopsReturned     uint64
	// LoopsLost counts loops that did not return within LoopTimeout.
	// (Mixes are blamed earlier, at Health.LoopDeadline.)
	LoopsLost uint64
	// LoopRTTMean, P50 and P90 describe loop round trips (p50 and p90
	// over the most recent 1024).
	LoopRTTMean, LoopRTTP50, LoopRTTP90 time.Duration
	SURBsMade                           uint64
	BytesSent, BytesReceived            uint64
	// ScheduledRate is λ_P+λ_L; ActualRate is packets sent per second
	// since Run started.
	ScheduledRate, ActualRate float64
	// Health is what the loops say about the network.
	Health Health
}

// Client is an anonymous mixnet client.
type Client struct {
	cfg    Config
	log    *slog.Logger
	lambda float64

	mu        sync.Mutex
	topo      Topology
	gen       uint64
	replyKeys keyStore
	health    health
	topoPrint string
	rtts      []time.Duration // ring of recent loop RTTs
	rttNext   int
	rttSum    time.Duration
	sess      *Session

	cover  chan packetItem
	loops  chan loopItem
	surbs  chan surbItem
	real   chan []byte
	refill chan struct{}

	started  chan struct{}
	runCtx   context.Context
	running  atomic.Bool
	start    time.Time
	sessions sync.WaitGroup

	stats struct {
		real, cover, loops, sendErr, late, replies, unknown, returned, lost, surbs, bytesOut, bytesIn atomic.Uint64
	}
}

type packetItem struct {
	pkt []byte
	gen uint64
}

type loopItem struct {
	pkt   []byte
	keys  *sphinx.SURBKeys
	path  [directory.Layers]string
	probe bool
	gen   uint64
}

type surbItem struct {
	surb []byte
	keys *sphinx.SURBKeys
	gen  uint64
}

// New builds a client; Run starts it.
func New(cfg Config) (*Client, error) {
	if cfg.Uplink == nil {
		return nil, errors.New("client: no Uplink")
	}
	if err := cfg.Topology.validate(); err != nil {
		return nil, err
	}
	if cfg.Exit != "" {
		if _, ok := cfg.Topology.exit(cfg.Exit); !ok {
			return nil, fmt.Errorf("client: exit %q not in the topology", cfg.Exit)
		}
	}
	if cfg.Rate < 0 || cfg.LoopRate < 0 {
		return nil, fmt.Errorf("client: negative rate %v or loop rate %v", cfg.Rate, cfg.LoopRate)
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.LoopRate == 0 {
		cfg.LoopRate = DefaultLoopRate
	}
	if cfg.MeanDelay <= 0 {
		cfg.MeanDelay = DefaultMeanDelay
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = DefaultPoolSize
	}
	if cfg.SURBPoolSize <= 0 {
		cfg.SURBPoolSize = DefaultSURBPoolSize
	}
	if cfg.MaxReplyKeys <= 0 {
		cfg.MaxReplyKeys = DefaultMaxReplyKeys
	}
	if cfg.ReplyKeyLifetime <= 0 {
		cfg.ReplyKeyLifetime = DefaultReplyKeyLifetime
	}
	if cfg.LoopTimeout <= 0 {
		cfg.LoopTimeout = DefaultLoopTimeout
	}
	if cfg.DownRate == 0 {
		cfg.DownRate = DownRatePerRate*cfg.Rate + cfg.LoopRate
	}
	cfg.Session.setDefaults()
	if cfg.Session.ReorderHold == 0 {
		cfg.Session.ReorderHold = reorderHoldPerDelay * cfg.MeanDelay
	}
	c := &Client{
		cfg:       cfg,
		log:       cfg.Logger,
		lambda:    cfg.Rate + cfg.LoopRate,
		topo:      cfg.Topology,
		topoPrint: cfg.Topology.fingerprint(),
		health:    newHealth(cfg.LoopTimeout, cfg.MeanDelay, cfg.MaxReplyKeys),
		replyKeys: keyStore{max: cfg.MaxReplyKeys, ttl: cfg.ReplyKeyLifetime},
		rtts:      make([]time.Duration, 0, 1024),
		cover:     make(chan packetItem, cfg.PoolSize),
		loops:     make(chan loopItem, cfg.PoolSize),
		surbs:     make(chan surbItem, cfg.SURBPoolSize),
		real:      make(chan []byte, 2),
		refill:    make(chan struct{}, 1),
		started:   make(chan struct{}),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c, nil
}

// SetTopology replaces the topology, for example at a new key epoch.
// Packets and SURBs prepared for the old one are discarded; an unchanged
// topology keeps them.
func (c *Client) SetTopology(t Topology) error {
	if err := t.validate(); err != nil {
		return err
	}
	fp := t.fingerprint()
	c.mu.Lock()
	if fp == c.topoPrint {
		c.mu.Unlock()
		return nil
	}
	c.topo, c.topoPrint = t, fp
	c.gen++
	c.health.retain(&c.topo)
	c.mu.Unlock()
	c.kick()
	return nil
}

// route is what a new packet is routed over: the topology, its
// generation, and the mixes to leave out.
type route struct {
	Topology
	gen   uint64
	avoid map[string]bool
}

func (c *Client) route() route {
	c.mu.Lock()
	defer c.mu.Unlock()
	return route{c.topo, c.gen, c.health.avoided()}
}

// Topology returns the topology the client routes over.
func (c *Client) Topology() Topology {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.topo
}

func (c *Client) currentGen() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// Run sends the client's packet stream until ctx ends.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("client: Run called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.runCtx = ctx
	c.start = time.Now()
	var wg sync.WaitGroup
	wg.Go(func() { c.precompute(ctx) })
	wg.Go(func() { c.sweepLoops(ctx) })
	close(c.started)
	c.send(ctx)
	cancel()
	wg.Wait()
	c.sessions.Wait()
	return nil
}

func (c *Client) kick() {
	select {
	case c.refill <- struct{}{}:
	default:
	}
}

// send is the Poisson process: exponential gaps of mean 1/λ on an
// absolute timeline, so a late wake-up shortens the next gap instead of
// lowering the rate.
func (c *Client) send(ctx context.Context) {
	rng := newRand()
	pLoop := c.cfg.LoopRate / c.lambda
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	next := time.Now()
	for {
		next = next.Add(time.Duration(rng.ExpFloat64() / c.lambda * float64(time.Second)))
		if d := time.Until(next); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		} else if d < -time.Second {
			next = time.Now() // after a stall (suspend), do not burst
		} else if ctx.Err() != nil {
			return
		}
		c.tick(rng, rng.Float64() < pLoop)
	}
}

func (c *Client) tick(rng *mrand.Rand, loop bool) {
	if loop {
		c.sendLoop(rng)
		return
	}
	select {
	case pkt := <-c.real:
		c.stats.real.Add(1)
		c.transmit(pkt)
	default:
		c.sendCover(rng)
	}
}

func (c *Client) transmit(pkt []byte) {
	if err := c.cfg.Uplink.Send(pkt); err != nil {
		c.stats.sendErr.Add(1)
		c.log.Debug("uplink send failed", "err", err)
		return
	}
	c.stats.bytesOut.Add(uint64(len(pkt)))
}

// pooled is a prepared item, built for one generation of the topology.
type pooled interface {
	generation() uint64
}

func (it packetItem) generation() uint64 { return it.gen }
func (it loopItem) generation() uint64   { return it.gen }
func (it surbItem) generation() uint64   { return it.gen }

// fromPool takes a prepared item of the current generation from pool,
// throwing away stale ones, and reports false if none is ready. Every take
// asks the precompute worker to refill.
func fromPool[T pooled](c *Client, pool chan T) (T, bool) {
	gen := c.currentGen()
	for {
		select {
		case it := <-pool:
			c.kick()
			if it.generation() == gen {
				return it, true
			}
		default:
			var zero T
			return zero, false
		}
	}
}

func (c *Client) sendCover(rng *mrand.Rand) {
	c.stats.cover.Add(1)
	if it, ok := fromPool(c, c.cover); ok {
		c.transmit(it.pkt)
		return
	}
	c.stats.late.Add(1)
	pkt, _, err := c.makeCover(rng)
	if err != nil {
		c.log.Warn("drop cover", "err", err)
		return
	}
	c.transmit(pkt)
}

func (c *Client) sendLoop(rng *mrand.Rand) {
	c.stats.loops.Add(1)
	if it, ok := fromPool(c, c.loops); ok {
		c.launchLoop(it)
		return
	}
	c.stats.late.Add(1)
	it, err := c.makeLoop(rng)
	if err != nil {
		c.log.Warn("loop", "err", err)
		return
	}
	c.launchLoop(it)
}

func (c *Client) launchLoop(it loopItem) {
	now := time.Now()
	c.updateHealth(func(h *health) healthEvents { return h.launch(it.keys, it.path, it.probe, &c.topo, now) })
	c.transmit(it.pkt)
}

// sweepLoops blames the mixes of loops past their deadline and gives up
// loops past LoopTimeout. It wakes several times per deadline, so a loss
// is noticed soon after it is due.
func (c *Client) sweepLoops(ctx context.Context) {
	t := time.NewTimer(sweepEvery(c.cfg.LoopTimeout))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			var deadline time.Duration
			c.updateHealth(func(h *health) healthEvents {
				deadline = h.deadline
				return h.sweep(&c.topo, now)
			})
			t.Reset(sweepEvery(deadline))
		}
	}
}

// sweepEvery is how often to look for overdue loops under deadline: a
// quarter of it, within bounds that keep the wake-ups cheap and a
// detection prompt.
func sweepEvery(deadline time.Duration) time.Duration {
	return min(max(deadline/4, 10*time.Millisecond), 250*time.Millisecond)
}

// updateHealth runs f on the loop records and acts on what it decided. A
// newly avoided mix makes prepared packets stale, since some of them cross
// it, and the exit's reply blocks too; a mix back in routes needs nothing
// thrown away.
func (c *Client) updateHealth(f func(*health) healthEvents) {
	c.mu.Lock()
	was := c.health.degraded()
	ev := f(&c.health)
	if len(ev.avoided) > 0 {
		c.gen++
	}
	is := c.health.degraded()
	var snap Health
	if len(ev.avoided)+len(ev.readmitted) > 0 || is != was {
		snap = c.health.snapshot()
	}
	s := c.sess
	c.mu.Unlock()
	if ev.lost > 0 {
		c.stats.lost.Add(uint64(ev.lost))
	}
	if len(ev.avoided) > 0 {
		c.log.Warn("routing around mixes whose loops stopped returning",
			"mixes", ev.avoided, "avoided", snap.Avoided, "loop_deadline", snap.LoopDeadline)
		c.kick()
		if s != nil {
			s.flushSURBs()
		}
	}
	if len(ev.readmitted) > 0 {
		c.log.Info("mixes back in routes: their probe loops return", "readmitted", ev.readmitted, "avoided", snap.Avoided)
	}
	switch {
	case is && !was:
		c.log.Warn("network trouble: loops are not returning", "return_rate", snap.ReturnRate, "avoided", snap.Avoided)
	case was && !is:
		c.log.Info("loops return again", "return_rate", snap.ReturnRate)
	}
}

// Health reports what the loops say about the network.
func (c *Client) Health() Health {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.health.snapshot()
}

// precompute keeps the pools full; loops first, since a late loop also
// delays the measurement it exists for.
func (c *Client) precompute(ctx context.Context) {
	rng := newRand()
	for ctx.Err() == nil {
		did := false
		if len(c.loops) < cap(c.loops) {
			if it, err := c.makeLoop(rng); err == nil {
				c.loops <- it
				did = true
			}
		}
		if len(c.cover) < cap(c.cover) {
			if pkt, gen, err := c.makeCover(rng); err == nil {
				c.cover <- packetItem{pkt, gen}
				did = true
			}
		}
		if len(c.surbs) < cap(c.surbs) {
			if it, err := c.makeSURB(rng); err == nil {
				c.surbs <- it
				did = true
			}
		}
		if did {
			continue
		}
		select {
		case <-ctx.Done():
		case <-c.refill:
		}
	}
}

// makeCover builds drop cover: an all-zero payload to a random exit, which
// the exit drops because it is not a session message.
func (c *Client) makeCover(rng *mrand.Rand) ([]byte, uint64, error) {
	r := c.route()
	exit := r.Exits[rng.IntN(len(r.Exits))]
	var zero [sphinx.PayloadSize]byte
	pkt, err := sphinx.NewPacket(nil, r.forwardPath(rng, c.cfg.MeanDelay, exit, r.avoid), sphinx.Address{}, sphinx.MessageID{}, zero[:])
	if err != nil {
		return nil, 0, fmt.Errorf("client: build drop cover: %w", err)
	}
	return pkt, r.gen, nil
}

// makeLoop builds a loop: a reply through a SURB to ourselves over entry,
// three mixes and the entry again, so it reaches the entry exactly as a
// reply from an exit does.
func (c *Client) makeLoop(rng *mrand.Rand) (loopItem, error) {
	r := c.route()
	// While a mix is avoided some loops probe it, so that it can earn
	// its way back (see probeShare for why this costs no privacy).
	via := probeVia(rng, r.avoid)
	back, ids := r.replyPath(rng, c.cfg.MeanDelay, r.avoid, via)
	path := append([]sphinx.Hop{{Address: r.Entry.Address, Key: r.Entry.Key}}, back...)
	surb, keys, err := sphinx.NewSURB(nil, path, c.cfg.Address, randomID())
	if err != nil {
		return loopItem{}, fmt.Errorf("client: build loop SURB: %w", err)
	}
	var zero [sphinx.PayloadSize]byte
	_, pkt, err := sphinx.NewReply(surb, zero[:])
	if err != nil {
		return loopItem{}, fmt.Errorf("client: build loop: %w", err)
	}
	return loopItem{pkt: pkt, keys: keys, path: ids, probe: via != "", gen: r.gen}, nil
}

func (c *Client) makeSURB(rng *mrand.Rand) (surbItem, error) {
	r := c.route()
	path, _ := r.replyPath(rng, c.cfg.MeanDelay, r.avoid, "")
	surb, keys, err := sphinx.NewSURB(nil, path, c.cfg.Address, randomID())
	if err != nil {
		return surbItem{}, fmt.Errorf("client: build SURB: %w", err)
	}
	return surbItem{surb: surb, keys: keys, gen: r.gen}, nil
}

// takeSURB returns a ready SURB, building one if the pool is empty, and
// keeps its keys for the reply.
func (c *Client) takeSURB(rng *mrand.Rand) ([]byte, error) {
	it, ok := fromPool(c, c.surbs)
	if !ok {
		var err error
		if it, err = c.makeSURB(rng); err != nil {
			return nil, err
		}
	}
	c.stats.surbs.Add(1)
	c.mu.Lock()
	now := time.Now()
	c.replyKeys.put(keyEntry{keys: it.keys, at: now}, now)
	c.mu.Unlock()
	return it.surb, nil
}

// HandleDelivery takes one delivery from the entry gateway (see
// gateway.ParseDelivery). It decrypts block in place.
func (c *Client) HandleDelivery(id sphinx.MessageID, block []byte) {
	c.stats.bytesIn.Add(uint64(len(block)))
	now := time.Now()
	c.mu.Lock()
	if p, ok := c.health.take(id, now); ok {
		c.mu.Unlock()
		if _, err := p.keys.OpenReply(block); err != nil {
			c.log.Debug("loop did not open", "err", err)
			c.updateHealth(func(h *health) healthEvents { return h.giveUp(p, &c.topo) })
			return
		}
		c.stats.returned.Add(1)
		c.recordRTT(now.Sub(p.at))
		c.updateHealth(func(h *health) healthEvents { return h.returned(p, &c.topo, now) })
		return
	}
	e, ok := c.replyKeys.take(id, now)
	s := c.sess
	c.mu.Unlock()
	if !ok {
		c.stats.unknown.Add(1)
		return
	}
	msg, err := e.keys.OpenReply(block)
	if err != nil {
		c.log.Debug("reply did not open", "err", err)
		return
	}
	c.stats.replies.Add(1)
	if s != nil {
		s.handle(msg, now)
	}
}

func (c *Client) recordRTT(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rttSum += d
	if len(c.rtts) < cap(c.rtts) {
		c.rtts = append(c.rtts, d)
		return
	}
	c.rtts[c.rttNext] = d
	c.rttNext = (c.rttNext + 1) % len(c.rtts)
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	s := Stats{
		RealSent: c.stats.real.Load(), CoverSent: c.stats.cover.Load(), LoopsSent: c.stats.loops.Load(),
		SendErrors: c.stats.sendErr.Load(), Late: c.stats.late.Load(),
		RepliesReceived: c.stats.replies.Load(), UnknownDeliveries: c.stats.unknown.Load(),
		LoopsReturned: c.stats.returned.Load(), LoopsLost: c.stats.lost.Load(), SURBsMade: c.stats.surbs.Load(),
		BytesSent: c.stats.bytesOut.Load(), BytesReceived: c.stats.bytesIn.Load(),
		ScheduledRate: c.lambda,
	}
	c.mu.Lock()
	rtts := slices.Clone(c.rtts)
	sum := c.rttSum
	s.Health = c.health.snapshot()
	c.mu.Unlock()
	if s.LoopsReturned > 0 {
		s.LoopRTTMean = sum / time.Duration(s.LoopsReturned)
	}
	if len(rtts) > 0 {
		slices.Sort(rtts)
		s.LoopRTTP50 = rtts[len(rtts)/2]
		s.LoopRTTP90 = rtts[len(rtts)*9/10]
	}
	if c.running.Load() {
		select {
		case <-c.started:
			if el := time.Since(c.start).Seconds(); el > 0 {
				s.ActualRate = float64(s.RealSent+s.CoverSent+s.LoopsSent) / el
			}
		default:
		}
	}
	return s
}

// keyStore keeps SURB keys by message id, bounded in count and age:
// entries leave in the order they came.
type keyStore struct {
	max   int
	ttl   time.Duration
	byID  map[sphinx.MessageID]keyEntry
	order []sphinx.MessageID
}

type keyEntry struct {
	keys *sphinx.SURBKeys
	at   time.Time
}

func (s *keyStore) put(e keyEntry, now time.Time) []keyEntry {
	if s.byID == nil {
		s.byID = make(map[sphinx.MessageID]keyEntry)
	}
	gone := s.prune(now)
	for len(s.order) >= s.max {
		if old, ok := s.byID[s.order[0]]; ok {
			gone = append(gone, old)
		}
		delete(s.byID, s.order[0])
		s.order = s.order[1:]
	}
	s.byID[e.keys.ID] = e
	s.order = append(s.order, e.keys.ID)
	return gone
}

// prune forgets entries older than the lifetime and returns them.
func (s *keyStore) prune(now time.Time) []keyEntry {
	var gone []keyEntry
	for len(s.order) > 0 {
		e, ok := s.byID[s.order[0]]
		if ok && now.Sub(e.at) < s.ttl {
			break
		}
		if ok {
			gone = append(gone, e)
		}
		delete(s.byID, s.order[0])
		s.order = s.order[1:]
	}
	return gone
}

func (s *keyStore) take(id sphinx.MessageID, now time.Time) (keyEntry, bool) {
	e, ok := s.byID[id]
	if !ok || now.Sub(e.at) >= s.ttl {
		return keyEntry{}, false
	}
	delete(s.byID, id)
	return e, true
}

func randomID() sphinx.MessageID {
	var id sphinx.MessageID
	cryptoRead(id[:])
	return id
}

// cryptoRead fills b from crypto/rand, which never fails on Linux.
func cryptoRead(b []byte) { rand.Read(b) }
