package client

import (
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
)

// Health tuning. Each mix keeps the outcomes of the last loops that
// crossed it; a lost loop counts against the mixes of its path that have
// lost the most already, so a dead mix soon stands out and the healthy
// mixes that shared its loops keep clean records.
const (
	window = 10
	// A mix with badLosses of its last window loops lost (and at least
	// minSamples loops seen) is avoided, but only while its layer has a
	// mix with at most goodLosses: when every mix of a layer loses loops
	// the fault is elsewhere, and nobody there is blamed.
	badLosses  = 8
	goodLosses = 3
	minSamples = 8
	// recentLoops is how many loop outcomes the return rate covers.
	recentLoops = 64
)

// Health is what loops tell about the network.
type Health struct {
	// ReturnRate is the share of the recent loops (up to 64) that came
	// back; 1 before any loop ended.
	ReturnRate float64
	// Degraded says the return rate fell below 80% over at least 16
	// loops: packets are being lost on the way.
	Degraded bool
	// Avoided lists the mixes new routes leave out because their loops
	// stopped returning.
	Avoided []string
}

// health keeps per-mix loop records. Guarded by Client.mu.
type health struct {
	avoidFor time.Duration
	mixes    map[string]*record
	avoid    map[string]time.Time // mix → until when
	outcomes [recentLoops]bool
	n, next  int
}

// record is a ring of a mix's last loop outcomes.
type record struct {
	lost   [window]bool
	n, pos int
}

func (r *record) add(lost bool) {
	r.lost[r.pos] = lost
	r.pos = (r.pos + 1) % window
	r.n = min(r.n+1, window)
}

func (r *record) losses() int {
	k := 0
	for i := range r.n {
		if r.lost[i] {
			k++
		}
	}
	return k
}

func (h *health) mix(id string) *record {
	if h.mixes == nil {
		h.mixes = make(map[string]*record)
		h.avoid = make(map[string]time.Time)
	}
	r := h.mixes[id]
	if r == nil {
		r = &record{}
		h.mixes[id] = r
	}
	return r
}

// record takes one loop's outcome over the mixes it crossed.
func (h *health) record(path [directory.Layers]string, ok bool, t *Topology, now time.Time) {
	h.outcomes[h.next] = ok
	h.next = (h.next + 1) % recentLoops
	h.n = min(h.n+1, recentLoops)
	if ok {
		for _, id := range path {
			h.mix(id).add(false)
		}
		return
	}
	worst := 0
	for _, id := range path {
		worst = max(worst, h.mix(id).losses())
	}
	for _, id := range path {
		r := h.mix(id)
		r.add(r.losses() == worst)
	}
	for l, id := range path {
		if r := h.mix(id); r.n < minSamples || r.losses() < badLosses || !h.avoid[id].IsZero() {
			continue
		}
		for _, n := range t.Layers[l] {
			if other := h.mix(n.ID); n.ID != id && other.losses() <= goodLosses && h.avoid[n.ID].IsZero() {
				h.avoid[id] = now.Add(h.avoidFor)
				break
			}
		}
	}
}

// avoided returns the mixes to leave out now; a mix whose time is up starts
// a clean record and carries loops again, so it is retried.
func (h *health) avoided(now time.Time) map[string]bool {
	if len(h.avoid) == 0 {
		return nil
	}
	out := make(map[string]bool, len(h.avoid))
	for id, until := range h.avoid {
		if now.After(until) {
			delete(h.avoid, id)
			h.mixes[id] = &record{}
			continue
		}
		out[id] = true
	}
	return out
}

func (h *health) snapshot(now time.Time) Health {
	r := Health{ReturnRate: 1}
	if h.n > 0 {
		ok := 0
		for i := range h.n {
			if h.outcomes[i] {
				ok++
			}
		}
		r.ReturnRate = float64(ok) / float64(h.n)
		r.Degraded = h.n >= 16 && r.ReturnRate < 0.8
	}
	for id, until := range h.avoid {
		if now.Before(until) {
			r.Avoided = append(r.Avoided, id)
		}
	}
	return r
}
