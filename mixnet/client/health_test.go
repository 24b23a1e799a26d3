package client

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// simLoops plays a client's loops over a topology on a manual clock: loops
// leave as a Poisson stream of rate DefaultLoopRate on routes chosen as
// makeLoop chooses them, each takes a link time and the three mix delays
// its hops carry, and one that crosses a dead mix never returns. The
// health records are swept as often as sweepLoops would.
type simLoops struct {
	t    *testing.T
	topo Topology
	h    health
	rng  *rand.Rand
	now  time.Time

	dead  map[string]bool
	cut   map[[2]string]bool // links between mixes that are down
	drops map[string]float64 // chance a mix loses a loop
	link  time.Duration      // every round trip's share outside the mixes
	lossP float64            // chance a loop is lost wherever it goes

	nextLaunch, nextSweep time.Time
	arrivals              []simArrival
	ids                   uint64

	// probes counts probe loops per mix; real counts, per mix, routes
	// for real traffic drawn beside each loop (the routine every forward
	// packet and SURB uses).
	probes, real map[string]int
	events       []simEvent
}

type simArrival struct {
	at time.Time
	id sphinx.MessageID
}

type simEvent struct {
	at      time.Time
	mix     string
	readmit bool
}

func newSim(t *testing.T, seed uint64) *simLoops {
	t.Helper()
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	s := &simLoops{
		t:          t,
		topo:       testTopology(t),
		h:          newHealth(DefaultLoopTimeout, DefaultMeanDelay, DefaultMaxReplyKeys),
		rng:        rand.New(rand.NewPCG(seed, 0x6d6978)),
		now:        start,
		dead:       map[string]bool{},
		cut:        map[[2]string]bool{},
		drops:      map[string]float64{},
		link:       30 * time.Millisecond,
		nextLaunch: start,
		nextSweep:  start,
		probes:     map[string]int{},
		real:       map[string]int{},
	}
	return s
}

// run advances the clock by d, handling every launch, return and sweep due
// on the way in time order.
func (s *simLoops) run(d time.Duration) {
	end := s.now.Add(d)
	for {
		at := s.nextLaunch
		if s.nextSweep.Before(at) {
			at = s.nextSweep
		}
		if len(s.arrivals) > 0 && s.arrivals[0].at.Before(at) {
			at = s.arrivals[0].at
		}
		if at.After(end) {
			break
		}
		s.now = at
		switch {
		case len(s.arrivals) > 0 && s.arrivals[0].at.Equal(at):
			a := s.arrivals[0]
			s.arrivals = s.arrivals[1:]
			if p, ok := s.h.take(a.id, s.now); ok {
				s.note(s.h.returned(p, &s.topo, s.now))
			}
		case s.nextSweep.Equal(at):
			s.note(s.h.sweep(&s.topo, s.now))
			s.nextSweep = s.now.Add(sweepEvery(s.h.deadline))
		default:
			s.launch()
			s.nextLaunch = s.now.Add(time.Duration(s.rng.ExpFloat64() / DefaultLoopRate * float64(time.Second)))
		}
	}
	s.now = end
}

func (s *simLoops) launch() {
	avoid := s.h.avoided()
	_, real := s.topo.appendMixes(nil, s.rng, DefaultMeanDelay, avoid, "")
	for _, id := range real {
		s.real[id]++
	}
	via := probeVia(s.rng, avoid)
	if via != "" {
		s.probes[via]++
	}
	hops, path := s.topo.replyPath(s.rng, DefaultMeanDelay, avoid, via)
	s.ids++
	var id sphinx.MessageID
	binary.BigEndian.PutUint64(id[:], s.ids)
	s.note(s.h.launch(&sphinx.SURBKeys{ID: id}, path, via != "", &s.topo, s.now))
	if s.rng.Float64() < s.lossP {
		return
	}
	rtt := s.link
	for i, hop := range hops {
		if i < len(path) && (s.dead[path[i]] || s.rng.Float64() < s.drops[path[i]]) {
			return
		}
		if i > 0 && i < len(path) && s.cut[[2]string{path[i-1], path[i]}] {
			return
		}
		rtt += hop.Delay
	}
	a := simArrival{at: s.now.Add(rtt), id: id}
	i, _ := slices.BinarySearchFunc(s.arrivals, a, func(x, y simArrival) int { return x.at.Compare(y.at) })
	s.arrivals = slices.Insert(s.arrivals, i, a)
}

func (s *simLoops) note(ev healthEvents) {
	for _, id := range ev.avoided {
		s.events = append(s.events, simEvent{at: s.now, mix: id})
	}
	for _, id := range ev.readmitted {
		s.events = append(s.events, simEvent{at: s.now, mix: id, readmit: true})
	}
}

// until runs the clock in small steps until cond holds, at most limit, and
// returns how long that took.
func (s *simLoops) until(cond func() bool, limit time.Duration) (time.Duration, bool) {
	start := s.now
	for !cond() {
		if s.now.Sub(start) >= limit {
			return limit, false
		}
		s.run(10 * time.Millisecond)
	}
	return s.now.Sub(start), true
}

func (s *simLoops) avoids(id string) bool { return s.h.avoided()[id] }

// eventsSince lists the avoid and readmit events after t.
func (s *simLoops) eventsSince(t time.Time) []simEvent {
	var out []simEvent
	for _, e := range s.events {
		if e.at.After(t) {
			out = append(out, e)
		}
	}
	return out
}

// At the default rates a dead mix is avoided within about two seconds: the deadline follows the measured round trips (a few hundred
// milliseconds here) instead of waiting out LoopTimeout, and only the dead
// mix is blamed.
func TestDeadMixDetectedWithinSeconds(t *testing.T) {
	const runs = 20
	var worst, sum time.Duration
	for seed := range uint64(runs) {
		s := newSim(t, seed)
		s.run(30 * time.Second)
		if d := s.h.deadline; d < s.h.floor || d > 600*time.Millisecond {
			t.Fatalf("seed %d: loop deadline %v after warm-up; want between the floor %v and 600ms", seed, d, s.h.floor)
		}
		if h := s.h.snapshot(); h.ReturnRate != 1 || len(h.Avoided) != 0 {
			t.Fatalf("seed %d: healthy network reported as %+v", seed, h)
		}
		s.dead["b1"] = true
		took, ok := s.until(func() bool { return s.avoids("b1") }, 10*time.Second)
		if !ok {
			t.Fatalf("seed %d: dead mix not avoided within 10 s; health %+v", seed, s.h.snapshot())
		}
		if got := s.h.snapshot().Avoided; !slices.Equal(got, []string{"b1"}) {
			t.Fatalf("seed %d: avoided %v, want only b1", seed, got)
		}
		worst, sum = max(worst, took), sum+took
	}
	t.Logf("dead mix avoided after %v on average, %v at worst, over %d runs", sum/runs, worst, runs)
	// Seven losses at five a second take 1.4 s on average, 3.6 s once in
	// a thousand; the deadline and the sweep add a few tenths.
	if avg := sum / runs; avg > 2*time.Second || worst > 4*time.Second {
		t.Fatalf("detection took %v on average and up to %v; want at most 2 s and 4 s", avg, worst)
	}
}

// A mix that stays dead stays avoided, however long: no real route crosses
// it, only probe loops, at about probeShare of the loop rate; and the
// routes in use report a healthy return rate.
func TestDeadMixOnlyProbed(t *testing.T) {
	s := newSim(t, 7)
	s.run(20 * time.Second)
	s.dead["b1"] = true
	if _, ok := s.until(func() bool { return s.avoids("b1") }, 10*time.Second); !ok {
		t.Fatal("dead mix not avoided")
	}
	avoidedAt := s.now
	clear(s.real)
	clear(s.probes)
	const dead = 90 * time.Second // three times the old retry interval
	s.run(dead)
	if ev := s.eventsSince(avoidedAt); len(ev) != 0 {
		t.Fatalf("routes changed while the mix stayed dead: %+v", ev)
	}
	if !s.avoids("b1") {
		t.Fatal("dead mix readmitted")
	}
	if s.real["b1"] != 0 {
		t.Fatalf("%d real routes crossed the avoided mix", s.real["b1"])
	}
	if s.real["b2"] == 0 || s.real["a1"] == 0 || s.real["a2"] == 0 {
		t.Fatalf("real routes %v", s.real)
	}
	want := probeShare * DefaultLoopRate * dead.Seconds()
	if got := float64(s.probes["b1"]); got < want*0.8 || got > want*1.2 {
		t.Fatalf("%v probes through the dead mix in %v, want about %v", got, dead, want)
	}
	if h := s.h.snapshot(); h.Degraded || h.ReturnRate < 0.95 {
		t.Fatalf("routes around the dead mix reported as %+v", h)
	}
}

// A dead mix that comes back is readmitted within seconds by its probes,
// and carries real routes again.
func TestRecoveredMixReadmitted(t *testing.T) {
	var worst time.Duration
	for seed := range uint64(10) {
		s := newSim(t, 100+seed)
		s.run(20 * time.Second)
		s.dead["b1"] = true
		if _, ok := s.until(func() bool { return s.avoids("b1") }, 10*time.Second); !ok {
			t.Fatalf("seed %d: dead mix not avoided", seed)
		}
		s.run(40 * time.Second)
		if !s.avoids("b1") {
			t.Fatalf("seed %d: dead mix readmitted while dead", seed)
		}
		delete(s.dead, "b1")
		back := s.now
		took, ok := s.until(func() bool { return !s.avoids("b1") }, 10*time.Second)
		if !ok {
			t.Fatalf("seed %d: recovered mix still avoided after 10 s: %+v", seed, s.h.snapshot())
		}
		worst = max(worst, took)
		clear(s.real)
		s.run(10 * time.Second)
		if s.real["b1"] == 0 {
			t.Fatalf("seed %d: readmitted mix carries no routes", seed)
		}
		if ev := s.eventsSince(back); len(ev) != 1 || !ev[0].readmit {
			t.Fatalf("seed %d: events after the recovery %+v, want one readmission", seed, ev)
		}
		if r := s.h.mix("b1"); r.losses != 0 {
			t.Fatalf("seed %d: readmitted mix has %d losses on record", seed, r.losses)
		}
	}
	t.Logf("recovered mix readmitted after %v at worst", worst)
	if worst > 4*time.Second {
		t.Fatalf("readmission took up to %v; want at most 4 s", worst)
	}
}

// A restarted mix has its links from the layer before redialled one by
// one. While one of them is still down its probes over that link are lost,
// and it stays out of routes; it comes back once its probes return over
// every neighbour.
func TestReadmittedOnlyOnceEveryLinkWorks(t *testing.T) {
	for seed := range uint64(10) {
		s := newSim(t, 300+seed)
		s.run(20 * time.Second)
		s.dead["b1"] = true
		if _, ok := s.until(func() bool { return s.avoids("b1") }, 10*time.Second); !ok {
			t.Fatalf("seed %d: dead mix not avoided", seed)
		}
		s.run(10 * time.Second)
		delete(s.dead, "b1")
		s.cut[[2]string{"a2", "b1"}] = true
		clear(s.real)
		s.run(20 * time.Second)
		if !s.avoids("b1") || s.real["b1"] != 0 {
			t.Fatalf("seed %d: mix with a link down readmitted (%d real routes over it)", seed, s.real["b1"])
		}
		clear(s.cut)
		took, ok := s.until(func() bool { return !s.avoids("b1") }, 10*time.Second)
		if !ok || took > 5*time.Second {
			t.Fatalf("seed %d: mix readmitted %v after its last link came back (%v)", seed, took, ok)
		}
	}
}

// When the whole network slows down (a queue builds up at the entry), the
// loops that miss the deadline still return; their losses are taken back,
// the deadline follows, and no mix ends up avoided.
func TestSlowdownFollowedNotBlamed(t *testing.T) {
	for seed := range uint64(10) {
		s := newSim(t, 200+seed)
		s.run(30 * time.Second)
		before := s.h.deadline
		s.link = 600 * time.Millisecond
		s.run(30 * time.Second)
		if s.h.deadline < s.link+s.h.floor/2 {
			t.Fatalf("seed %d: deadline %v after round trips grew to over %v (was %v)", seed, s.h.deadline, s.link, before)
		}
		if h := s.h.snapshot(); len(h.Avoided) != 0 || h.Degraded || h.ReturnRate < 0.95 {
			t.Fatalf("seed %d: after a slowdown everywhere %+v; events %+v", seed, h, s.events)
		}
	}
}

// Loss everywhere, which no choice of mixes avoids, shows as a falling
// return rate.
func TestLossEverywhereIsDegraded(t *testing.T) {
	s := newSim(t, 3)
	s.run(20 * time.Second)
	if h := s.h.snapshot(); h.Degraded {
		t.Fatalf("healthy network degraded: %+v", h)
	}
	s.lossP = 0.4
	s.run(20 * time.Second)
	h := s.h.snapshot()
	if !h.Degraded || h.ReturnRate > 0.75 || h.ReturnRate < 0.35 {
		t.Fatalf("with 40%% loss everywhere: %+v", h)
	}
	s.lossP = 0
	s.run(20 * time.Second)
	if h := s.h.snapshot(); h.Degraded || h.ReturnRate < 0.95 || len(h.Avoided) != 0 {
		t.Fatalf("after the loss ended: %+v", h)
	}
}

// A loop past its deadline is suspected and blamed; if it returns before
// LoopTimeout the loss is taken back, and one that never returns is given
// up once.
func TestLateLoopForgiven(t *testing.T) {
	topo := testTopology(t)
	h := newHealth(3*time.Second, time.Millisecond, 16)
	if h.deadline != 3*time.Second {
		t.Fatalf("deadline %v before any round trip; want LoopTimeout", h.deadline)
	}
	h.deadline = 500 * time.Millisecond
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	path := [3]string{"a1", "b1", "c1"}
	late := &sphinx.SURBKeys{ID: sphinx.MessageID{1}}
	gone := &sphinx.SURBKeys{ID: sphinx.MessageID{2}}
	h.launch(late, path, false, &topo, now)
	h.launch(gone, path, false, &topo, now)
	if ev := h.sweep(&topo, now.Add(499*time.Millisecond)); ev.lost != 0 || h.recent.losses != 0 {
		t.Fatalf("loops blamed before their deadline: %+v", ev)
	}
	if ev := h.sweep(&topo, now.Add(600*time.Millisecond)); ev.lost != 0 {
		t.Fatalf("suspects given up before LoopTimeout: %+v", ev)
	}
	if h.recent.losses != 2 || h.mix("a1").losses != 2 {
		t.Fatalf("suspects not blamed: recent %d, a1 %d", h.recent.losses, h.mix("a1").losses)
	}
	p, ok := h.take(late.ID, now.Add(time.Second))
	if !ok {
		t.Fatal("late loop not found")
	}
	h.returned(p, &topo, now.Add(time.Second))
	if h.recent.losses != 1 || h.mix("a1").losses != 1 {
		t.Fatalf("late return not forgiven: recent %d, a1 %d", h.recent.losses, h.mix("a1").losses)
	}
	if ev := h.sweep(&topo, now.Add(3*time.Second)); ev.lost != 1 {
		t.Fatalf("%d loops given up, want the one that never returned", ev.lost)
	}
	if _, ok := h.take(gone.ID, now.Add(3*time.Second)); ok {
		t.Fatal("a loop taken after it was given up")
	}
	if ev := h.sweep(&topo, now.Add(4*time.Second)); ev.lost != 0 || len(h.queue) != 0 || len(h.pending) != 0 {
		t.Fatalf("loops kept after LoopTimeout: %+v, %d queued, %d pending", ev, len(h.queue), len(h.pending))
	}
	if h.recent.losses != 1 || h.recent.n != 2 {
		t.Fatalf("recent outcomes: %d lost of %d, want 1 of 2", h.recent.losses, h.recent.n)
	}
}

// Routes leave avoided mixes out while their layer has another; a probe
// crosses the mix it names.
func TestRoutesAvoidAndProbe(t *testing.T) {
	topo := testTopology(t)
	rng := newRand()
	avoid := map[string]bool{"b1": true}
	for range 100 {
		if n := pickNode(topo.Layers[1], rng, avoid); n.ID == "b1" {
			t.Fatal("picked an avoided mix")
		}
		if _, ids := topo.replyPath(rng, DefaultMeanDelay, avoid, "b1"); ids[1] != "b1" {
			t.Fatalf("probe path %v does not cross b1", ids)
		}
		if _, ids := topo.replyPath(rng, DefaultMeanDelay, avoid, ""); ids[1] == "b1" {
			t.Fatalf("reply path %v crosses the avoided mix", ids)
		}
	}
	if n := pickNode(topo.Layers[1][:1], rng, avoid); n.ID != "b1" {
		t.Fatal("a layer of only avoided mixes must still route")
	}
	probes := 0
	for range 1000 {
		if probeVia(rng, avoid) == "b1" {
			probes++
		}
	}
	if probes < 200 || probes > 300 {
		t.Fatalf("%d probes in 1000 loops, want about %v", probes, probeShare*1000)
	}
	if probeVia(rng, nil) != "" {
		t.Fatal("a probe with no mix avoided")
	}
}
