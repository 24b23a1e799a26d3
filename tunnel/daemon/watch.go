package daemon

import (
	"context"
	"fmt"
	"time"

	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

// ReconnectConfig tunes how the daemon notices that a tunnel needs
// bringing back, and how it tries. Zero values take the defaults.
type ReconnectConfig struct {
	// CheckInterval is how often the tunnel's counters and the clocks
	// are read; default 2 s.
	CheckInterval time.Duration
	// DeadAfter is how long a tunnel may send without hearing anything
	// back before it counts as dead; default 20 s, past WireGuard's own
	// 15 s retry and many of the mixnet's 3 s loop timeouts.
	DeadAfter time.Duration
	// SleepJump is how far the wall clock may run ahead of the monotonic
	// clock between two checks before the daemon takes it that the
	// machine slept (the monotonic clock stands still in suspend) and
	// its connections are stale; default 15 s.
	SleepJump time.Duration
	// Settle is how long network changes must be quiet before the
	// daemon acts on them, so that a burst (a link down, its routes
	// flushed) makes one reconnect; default 1 s.
	Settle time.Duration
	// RetryMin and RetryMax bound the wait between attempts, which
	// doubles from one to the other; a network change starts over.
	// Defaults 1 s and 30 s.
	RetryMin, RetryMax time.Duration
}

func (c ReconnectConfig) withDefaults() ReconnectConfig {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.CheckInterval, 2*time.Second)
	def(&c.DeadAfter, 20*time.Second)
	def(&c.SleepJump, 15*time.Second)
	def(&c.Settle, time.Second)
	def(&c.RetryMin, time.Second)
	def(&c.RetryMax, 30*time.Second)
	c.RetryMax = max(c.RetryMax, c.RetryMin)
	return c
}

// clock reads the two clocks whose drift tells that the machine slept:
// the wall clock runs on in suspend, the monotonic clock does not.
type clock interface {
	now() (wall time.Time, mono time.Duration)
}

// systemClock is the machine's clocks; mono counts from its creation.
type systemClock struct{ start time.Time }

func newSystemClock() systemClock { return systemClock{start: time.Now()} }

func (c systemClock) now() (time.Time, time.Duration) {
	n := time.Now()
	return n.Round(0), n.Sub(c.start) // Round(0) drops the monotonic reading
}

// liveness tells a dead tunnel from an idle one: dead is sending for
// DeadAfter without hearing anything back. A tunnel that sends nothing is
// never judged; the first packet it sends starts the clock.
type liveness struct {
	sent, heard uint64
	waiting     bool
	since       time.Duration
}

// observe takes the counters at monotonic time now and reports how long
// the tunnel has gone unanswered and whether that makes it dead.
func (l *liveness) observe(now time.Duration, sent, heard uint64, deadAfter time.Duration) (time.Duration, bool) {
	switch {
	case heard != l.heard:
		l.waiting = false
	case sent != l.sent && !l.waiting:
		l.waiting, l.since = true, now
	}
	l.sent, l.heard = sent, heard
	if !l.waiting {
		return 0, false
	}
	silent := now - l.since
	return silent, silent >= deadAfter
}

// watch runs until ctx ends: it follows the network monitor and, every
// CheckInterval, the clocks and the tunnel's counters.
func (d *Daemon) watch(ctx context.Context) {
	var changes <-chan router.Change
	if d.cfg.Monitor != nil {
		ch, err := d.cfg.Monitor.Changes(ctx)
		if err != nil {
			d.log.Warn("not watching the network; dead tunnels are still noticed", "err", err)
		} else {
			changes = ch
		}
	}
	tick := time.NewTicker(d.rc.CheckInterval)
	defer tick.Stop()
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	var settling <-chan time.Time
	var reason string
	for {
		select {
		case <-ctx.Done():
			return
		case c, ok := <-changes:
			if !ok {
				changes = nil
				continue
			}
			reason = c.Reason
			settle.Reset(d.rc.Settle)
			settling = settle.C
		case <-settling:
			settling = nil
			d.networkChanged("network changed: " + reason)
		case <-tick.C:
			d.check(d.clock.now())
		}
	}
}

// check compares the clocks with the last check's and reads the tunnel's
// counters.
func (d *Daemon) check(wall time.Time, mono time.Duration) {
	if d.prevWall.IsZero() {
		d.prevWall, d.prevMono = wall, mono
		return
	}
	slept := wall.Sub(d.prevWall) - (mono - d.prevMono)
	d.prevWall, d.prevMono = wall, mono
	if slept > d.rc.SleepJump {
		d.networkChanged(fmt.Sprintf("woke up from about %v of sleep", slept.Round(time.Second)))
		return
	}
	d.checkAlive(mono)
}

// networkChanged reconnects a connected tunnel, and makes one being
// brought back start over now: an attempt under way or a wait between
// attempts belongs to the network that was.
func (d *Daemon) networkChanged(reason string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch d.status.State {
	case control.StateConnected, control.StateReconnecting:
		d.log.Warn("reconnecting", "reason", reason)
		d.startLocked(d.target, d.target, control.StateReconnecting, reason, true)
	}
}

// checkAlive reconnects a connected tunnel that has gone unanswered for
// DeadAfter.
func (d *Daemon) checkAlive(now time.Duration) {
	d.mu.Lock()
	cur, gen := d.cur, d.gen
	connected := d.status.State == control.StateConnected
	d.mu.Unlock()
	if !connected || cur == nil {
		return
	}
	sent, heard := cur.Progress() // may ask a WireGuard device: not under mu
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen != gen || d.cur != cur || d.status.State != control.StateConnected {
		return
	}
	silent, dead := d.live.observe(now, sent, heard, d.rc.DeadAfter)
	if dead {
		reason := fmt.Sprintf("the tunnel got no answer for %v", silent.Round(time.Second))
		d.log.Warn("reconnecting", "reason", reason)
		d.startLocked(d.target, d.target, control.StateReconnecting, reason, true)
	}
}
