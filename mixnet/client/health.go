package client

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// Loop health. Every loop in flight has a deadline drawn from the round
// trips loops actually take; one past it is suspected lost and counts
// against the mixes of its path. A dead mix loses every loop it carries,
// while a healthy mix that shared some of them has its loops over other
// paths return, so the dead one soon stands out. A suspect loop that still
// returns before LoopTimeout takes its loss back and teaches the deadline
// that the network got slower.
//
// An avoided mix carries no real traffic, drop cover or reply blocks, only
// probe loops, until enough of those return in time; one that stays dead
// stays avoided.
const (
	// window is how many of its last loop outcomes a mix's record keeps.
	window = 10
	// A mix is avoided after badStreak lost loops in a row, but only
	// while its layer has another mix with no loss since its last return
	// and at most goodLosses in its window. At λ_L = 10/s and two mixes a
	// layer a dead mix loses five loops a second, so seven take about
	// 1.4 s; with 30% of all loops lost everywhere a run of seven starts
	// at a healthy mix about once in 6,000 loops, and seldom while its
	// layer peer is clean.
	badStreak  = 7
	goodLosses = 1

	// recentLoops is how many loop outcomes the return rate covers, and
	// Degraded needs degradedMin of them below degradedBelow.
	recentLoops   = 64
	degradedMin   = 16
	degradedBelow = 0.8

	// probeShare is the share of loops that cross an avoided mix while
	// there is one. Loops look like every other packet to the entry and
	// the mixes (same size, and a loop reaches the entry as a reply from
	// an exit does), so sending some of them through a suspect tells
	// nobody anything new: the suspect cannot tell a probe from real
	// traffic, which is also why it cannot pass probes while dropping the
	// rest. A quarter of λ_L = 10/s probes at 2.5/s.
	probeShare = 0.25
	// readmitReturns probes returned in time in a row bring an avoided
	// mix back into routes, with a clean record, once they have crossed
	// every working mix of the layers next to it: a mix that restarts
	// has its links from the layer before redialled one by one, with
	// backoff of up to 10 s, and until all are up some of its traffic
	// is lost.
	readmitReturns = 4

	// The deadline is deadlineFactor times the 99th percentile of the
	// last rttWindow round trips of loops over routes in use, recomputed
	// every rttRecompute returns once rttMinSamples are in; until then it
	// is LoopTimeout. Twice the 99th percentile leaves room for the rarer
	// tail and for load that grows faster than the window follows.
	rttWindow      = 256
	rttMinSamples  = 32
	rttRecompute   = 8
	deadlineFactor = 2
	// The deadline is never below floorDelays mean per-mix delays plus
	// floorSlack: a loop waits at three mixes, and the sum of three
	// exponential delays exceeds 14 means about once in 10^4 loops
	// (Erlang-3 tail e^-14·(1+14+98)), whatever a lucky quiet spell
	// measured.
	floorDelays = 14
	floorSlack  = 50 * time.Millisecond
)

// Health is what loops tell about the network.
type Health struct {
	// ReturnRate is the share of the recent loops (up to 64) over the
	// routes in use that came back; 1 before any loop ended. Probes of
	// avoided mixes are left out: they measure a mix traffic no longer
	// takes.
	ReturnRate float64
	// Degraded says the return rate fell below 80% over at least 16
	// loops: packets are being lost on the way, and routing around
	// single mixes did not help.
	Degraded bool
	// Avoided lists the mixes new routes leave out because their loops
	// stopped returning; each is probed with loops until they return.
	Avoided []string
	// LoopDeadline is how long a loop may take before it counts against
	// its mixes.
	LoopDeadline time.Duration
}

// health tracks the loops in flight and what their outcomes say about each
// mix. Guarded by Client.mu.
type health struct {
	// timeout is LoopTimeout: a loop not back by then is lost for good.
	timeout  time.Duration
	floor    time.Duration
	maxLoops int
	deadline time.Duration

	pending map[sphinx.MessageID]*pendingLoop
	queue   []*pendingLoop // launch order; taken ones stay until swept
	seq     uint64

	mixes  map[string]*mixRecord
	recent ring

	rtts   []time.Duration // ring of rttWindow round trips
	rttPos int
	fresh  int // round trips since the deadline was computed
}

// pendingLoop is a loop in flight.
type pendingLoop struct {
	keys *sphinx.SURBKeys
	at   time.Time
	path [directory.Layers]string
	seq  uint64
	// probe says the loop was built to cross an avoided mix.
	probe bool
	// late says it passed its deadline and was counted lost; done that
	// it returned or was given up.
	late, done bool
}

// mixRecord is a mix's recent loop outcomes, the losses counted against
// it since its last loop returned, and while avoided, its timely probe
// returns in a row and the neighbours (mixes of the layers before and
// after) those probes came from and went to.
type mixRecord struct {
	ring
	fails   int
	avoided bool
	probes  int
	via     map[string]bool
}

// healthEvents is what a health update decided, for the client to act on
// outside its lock.
type healthEvents struct {
	// lost counts loops given up for good (LoopTimeout passed).
	lost int
	// avoided and readmitted are the mixes newly left out of routes and
	// newly back in them.
	avoided, readmitted []string
}

func (e *healthEvents) merge(o healthEvents) {
	e.lost += o.lost
	e.avoided = append(e.avoided, o.avoided...)
	e.readmitted = append(e.readmitted, o.readmitted...)
}

// newHealth tracks up to maxLoops loops, waiting at most timeout for each,
// on a network of the given mean per-mix delay.
func newHealth(timeout, meanDelay time.Duration, maxLoops int) health {
	return health{
		timeout:  timeout,
		floor:    min(floorDelays*meanDelay+floorSlack, timeout),
		maxLoops: maxLoops,
		deadline: timeout,
		pending:  make(map[sphinx.MessageID]*pendingLoop),
		mixes:    make(map[string]*mixRecord),
		recent:   newRing(recentLoops),
		rtts:     make([]time.Duration, 0, rttWindow),
	}
}

// ring keeps the last outcomes of some loops, each with the loop's
// sequence number, so that a suspect loop that returns late can take its
// loss back.
type ring struct {
	seq    []uint64
	lost   []bool
	n, pos int
	losses int
}

func newRing(size int) ring {
	return ring{seq: make([]uint64, size), lost: make([]bool, size)}
}

func (r *ring) add(seq uint64, lost bool) {
	if r.n == len(r.seq) && r.lost[r.pos] {
		r.losses--
	}
	r.seq[r.pos], r.lost[r.pos] = seq, lost
	if lost {
		r.losses++
	}
	r.pos = (r.pos + 1) % len(r.seq)
	r.n = min(r.n+1, len(r.seq))
}

// forgive turns loop seq's loss, if still kept, into a return.
func (r *ring) forgive(seq uint64) {
	for i := range r.n {
		if r.seq[i] == seq && r.lost[i] {
			r.lost[i] = false
			r.losses--
			return
		}
	}
}

func (h *health) mix(id string) *mixRecord {
	r := h.mixes[id]
	if r == nil {
		r = &mixRecord{ring: newRing(window)}
		h.mixes[id] = r
	}
	return r
}

// launch starts tracking a loop sent now. Past maxLoops in flight the
// oldest is given up.
func (h *health) launch(keys *sphinx.SURBKeys, path [directory.Layers]string, probe bool, t *Topology, now time.Time) healthEvents {
	var ev healthEvents
	for len(h.pending) >= h.maxLoops {
		p := h.queue[0]
		h.queue = h.queue[1:]
		if !p.done {
			ev.merge(h.giveUp(p, t))
		}
	}
	h.seq++
	p := &pendingLoop{keys: keys, at: now, path: path, seq: h.seq, probe: probe}
	h.pending[keys.ID] = p
	h.queue = append(h.queue, p)
	return ev
}

// take finds the loop a delivery belongs to and stops tracking it.
func (h *health) take(id sphinx.MessageID, now time.Time) (*pendingLoop, bool) {
	p, ok := h.pending[id]
	if !ok || now.Sub(p.at) >= h.timeout {
		return nil, false
	}
	delete(h.pending, id)
	p.done = true
	return p, true
}

// returned takes the outcome of a loop that came back now.
func (h *health) returned(p *pendingLoop, t *Topology, now time.Time) healthEvents {
	var ev healthEvents
	if !p.probe {
		h.addRTT(now.Sub(p.at))
	}
	if p.late {
		// Slow, not lost: take the blame back, but a suspect mix earns
		// its way back only with timely probes.
		if !p.probe {
			h.recent.forgive(p.seq)
		}
		for _, id := range p.path {
			r := h.mix(id)
			r.forgive(p.seq)
			r.fails = 0
		}
		return ev
	}
	if !p.probe {
		h.recent.add(p.seq, false)
	}
	for l, id := range p.path {
		r := h.mix(id)
		r.add(p.seq, false)
		r.fails = 0
		if !r.avoided {
			continue
		}
		r.probes++
		if r.via == nil {
			r.via = make(map[string]bool)
		}
		for _, n := range []int{l - 1, l + 1} {
			if n >= 0 && n < len(p.path) {
				r.via[p.path[n]] = true
			}
		}
		if r.probes >= readmitReturns && h.probedAround(r, t, l) {
			*r = mixRecord{ring: newRing(window)}
			ev.readmitted = append(ev.readmitted, id)
		}
	}
	return ev
}

// probedAround reports whether r's probes crossed every mix, not avoided,
// of the layers next to layer l.
func (h *health) probedAround(r *mixRecord, t *Topology, l int) bool {
	for _, n := range []int{l - 1, l + 1} {
		if n < 0 || n >= len(t.Layers) {
			continue
		}
		for _, m := range t.Layers[n] {
			if !r.via[m.ID] && !h.mix(m.ID).avoided {
				return false
			}
		}
	}
	return true
}

// sweep suspects the loops past their deadline and gives up those past
// LoopTimeout.
func (h *health) sweep(t *Topology, now time.Time) healthEvents {
	var ev healthEvents
	for _, p := range h.queue {
		age := now.Sub(p.at)
		if age < h.deadline {
			break // later loops are younger
		}
		if p.done || p.late {
			continue
		}
		p.late = true
		ev.merge(h.blame(p, t))
	}
	for len(h.queue) > 0 {
		p := h.queue[0]
		if !p.done && now.Sub(p.at) < h.timeout {
			break
		}
		h.queue = h.queue[1:]
		if !p.done {
			ev.merge(h.giveUp(p, t))
		}
	}
	return ev
}

// giveUp stops waiting for p, past LoopTimeout or back unreadable: it is
// lost.
func (h *health) giveUp(p *pendingLoop, t *Topology) healthEvents {
	delete(h.pending, p.keys.ID)
	p.done = true
	ev := healthEvents{lost: 1}
	if !p.late {
		p.late = true
		ev.merge(h.blame(p, t))
	}
	return ev
}

// blame counts a lost loop against the mixes of its path. A path through
// an avoided mix is explained by it, and the others are left alone: that
// keeps probes and loops sent before the mix was avoided from smearing the
// records of healthy mixes.
//
// A mix is avoided once it lost badStreak loops in a row, more than any
// other mix of the path (a healthy mix sharing loops with a dead one has
// its loops over other paths return, so its run stays shorter), while a
// mix of its layer returns its loops: if all of a layer lose loops the
// fault is elsewhere, and nobody there is blamed.
func (h *health) blame(p *pendingLoop, t *Topology) healthEvents {
	var ev healthEvents
	if !p.probe {
		h.recent.add(p.seq, true)
	}
	suspect := false
	for _, id := range p.path {
		suspect = suspect || h.mix(id).avoided
	}
	for _, id := range p.path {
		if r := h.mix(id); r.avoided || !suspect {
			r.add(p.seq, true)
			r.fails++
			r.probes, r.via = 0, nil
		}
	}
	if suspect {
		return ev
	}
	for l, id := range p.path {
		r := h.mix(id)
		if r.fails < badStreak || !h.standsOut(p, id) || !h.layerWorks(t.Layers[l], id) {
			continue
		}
		r.avoided, r.probes, r.via = true, 0, nil
		ev.avoided = append(ev.avoided, id)
	}
	return ev
}

// standsOut reports whether mix id has lost more loops in a row than every
// other mix of p's path: mixes that lost the same loops are not told apart
// until a loop over another path settles it.
func (h *health) standsOut(p *pendingLoop, id string) bool {
	f := h.mix(id).fails
	for _, o := range p.path {
		if o != id && h.mix(o).fails >= f {
			return false
		}
	}
	return true
}

// layerWorks reports whether a mix of layer other than id, not avoided,
// returns its loops.
func (h *health) layerWorks(layer []Node, id string) bool {
	for _, n := range layer {
		if r := h.mix(n.ID); n.ID != id && !r.avoided && r.fails == 0 && r.losses <= goodLosses {
			return true
		}
	}
	return false
}

// addRTT takes a round trip of a loop over routes in use and keeps the
// deadline in step with them.
func (h *health) addRTT(d time.Duration) {
	if len(h.rtts) < rttWindow {
		h.rtts = append(h.rtts, d)
	} else {
		h.rtts[h.rttPos] = d
		h.rttPos = (h.rttPos + 1) % rttWindow
	}
	if h.fresh++; h.fresh < rttRecompute || len(h.rtts) < rttMinSamples {
		return
	}
	h.fresh = 0
	s := slices.Clone(h.rtts)
	slices.Sort(s)
	q := s[(len(s)*99+99)/100-1]
	h.deadline = min(max(deadlineFactor*q, h.floor), h.timeout)
}

// avoided returns the mixes to leave out of new routes.
func (h *health) avoided() map[string]bool {
	var out map[string]bool
	for id, r := range h.mixes {
		if r.avoided {
			if out == nil {
				out = make(map[string]bool)
			}
			out[id] = true
		}
	}
	return out
}

// retain forgets mixes that are no longer in t: a mix that left the
// directory needs no avoiding, and one that rejoins starts afresh.
func (h *health) retain(t *Topology) {
	for id := range h.mixes {
		if !t.hasMix(id) {
			delete(h.mixes, id)
		}
	}
}

func (h *health) degraded() bool {
	return h.recent.n >= degradedMin && h.returnRate() < degradedBelow
}

func (h *health) returnRate() float64 {
	if h.recent.n == 0 {
		return 1
	}
	return float64(h.recent.n-h.recent.losses) / float64(h.recent.n)
}

func (h *health) snapshot() Health {
	r := Health{ReturnRate: h.returnRate(), Degraded: h.degraded(), LoopDeadline: h.deadline}
	for id, m := range h.mixes {
		if m.avoided {
			r.Avoided = append(r.Avoided, id)
		}
	}
	slices.Sort(r.Avoided)
	return r
}

// probeVia decides whether a new loop probes an avoided mix, and which:
// it returns the mix to cross, or "" for a loop over the routes in use.
func probeVia(rng *rand.Rand, avoid map[string]bool) string {
	if len(avoid) == 0 || rng.Float64() >= probeShare {
		return ""
	}
	ids := make([]string, 0, len(avoid))
	for id := range avoid {
		ids = append(ids, id)
	}
	slices.Sort(ids) // map order is not a fair draw
	return ids[rng.IntN(len(ids))]
}
