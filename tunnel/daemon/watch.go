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
	// ProbeAfter is how long a tunnel may send without hearing anything
	// back before the daemon asks its entry, with a TCP connection to
	// the entry's link port, whether it is still there; default 3 s,
	// which the checks, 2 s apart, see at the second check into a
	// silence (a silence of a hair under 4 s, as the ticks' jitter
	// measures it). Silence this short is common on a healthy tunnel (a
	// WireGuard handshake is retried after 5 s, and a peer with nothing
	// to say answers data only with a keepalive after 10 s), so it
	// proves nothing by itself; but an entry that refuses the connection
	// or does not answer it is gone, and waiting out DeadAfter would
	// only keep the user offline longer.
	ProbeAfter time.Duration
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

	// sleepRetryMin and sleepRetryMax bound the wait between tries to
	// subscribe to resumes from sleep, should the first fail (the bus or
	// logind not up yet); defaults 1 s and 60 s. Tests shorten them.
	sleepRetryMin, sleepRetryMax time.Duration
}

func (c ReconnectConfig) withDefaults() ReconnectConfig {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.CheckInterval, 2*time.Second)
	def(&c.DeadAfter, 20*time.Second)
	def(&c.ProbeAfter, 3*time.Second)
	def(&c.SleepJump, 15*time.Second)
	def(&c.Settle, time.Second)
	def(&c.RetryMin, time.Second)
	def(&c.RetryMax, 30*time.Second)
	c.RetryMax = max(c.RetryMax, c.RetryMin)
	def(&c.sleepRetryMin, time.Second)
	def(&c.sleepRetryMax, time.Minute)
	c.sleepRetryMax = max(c.sleepRetryMax, c.sleepRetryMin)
	return c
}

// sameWakeUp is how close, by the wall clock, a resume the system reports
// follows a wake-up the clocks showed for the two to be the same: the
// clocks are read every CheckInterval of monotonic time, which stood still
// in suspend, so the first check after waking may come just before
// logind's word.
const sameWakeUp = 10 * time.Second

// SleepNotifier tells the daemon at once that the machine resumed from
// sleep; platform/sleep's Notifier asks systemd-logind. The clocks notice
// a sleep too, but only at the next check and only one long enough to
// tell from drift (SleepJump).
type SleepNotifier interface {
	// Resumed sends on the channel after each resume until ctx ends,
	// then closes it. A receiver that falls behind loses resumes but
	// never blocks the notifier: one pending is as good as many. It
	// fails when the system cannot say (no logind, no bus).
	Resumed(ctx context.Context) (<-chan struct{}, error)
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

// verdict is what liveness makes of a tunnel's counters.
type verdict int

const (
	// fine: answered, idle, or not unanswered for long.
	fine verdict = iota
	// askEntry: unanswered for ProbeAfter, for the first time in this
	// silence: whether the entry still takes connections decides.
	askEntry
	// dead: unanswered for DeadAfter, whatever the entry says.
	dead
)

// liveness tells a dead tunnel from an idle one: dead is sending for
// DeadAfter without hearing anything back, or sending for ProbeAfter
// through an entry found gone. A tunnel that sends nothing is never
// judged; the first packet it sends starts the clock.
type liveness struct {
	sent, heard uint64
	waiting     bool
	since       time.Duration
	// silence numbers the silences, so that a probe's answer counts
	// only for the one it was made in; probed is whether this one's
	// probe was asked for. One probe a silence: an entry that answered
	// leaves the tunnel to DeadAfter.
	silence uint64
	probed  bool
}

// observe takes the counters at monotonic time now and reports how long
// the tunnel has gone unanswered and what to make of it.
func (l *liveness) observe(now time.Duration, sent, heard uint64, rc ReconnectConfig) (time.Duration, verdict) {
	switch {
	case heard != l.heard:
		l.waiting = false
	case sent != l.sent && !l.waiting:
		l.waiting, l.since, l.probed = true, now, false
		l.silence++
	}
	l.sent, l.heard = sent, heard
	if !l.waiting {
		return 0, fine
	}
	silent := now - l.since
	switch {
	case silent >= rc.DeadAfter:
		return silent, dead
	case silent >= rc.ProbeAfter && !l.probed:
		l.probed = true
		return silent, askEntry
	}
	return silent, fine
}

// stillSilent reports whether silence n goes on, heard being the
// tunnel's answers counted now: an answer since the last check means the
// tunnel is alive, whatever a probe made meanwhile found.
func (l *liveness) stillSilent(n, heard uint64) bool {
	return l.waiting && l.silence == n && heard == l.heard
}

// watch runs until ctx ends: it follows the network monitor, the
// system's resumes from sleep and, every CheckInterval, the clocks and the
// tunnel's counters.
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
	// Resumes from sleep: if subscribing fails (the bus or logind is not
	// up yet at boot), it is tried again, waiting from sleepRetryMin
	// doubling to sleepRetryMax, until it works or ctx ends.
	var resumes <-chan struct{}
	var resubscribe <-chan time.Time
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	wait := d.rc.sleepRetryMin
	subscribe := func() {
		ch, err := d.cfg.Sleep.Resumed(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.Warn("not told of resumes from sleep yet; the clocks still show long sleeps", "err", err, "retry_in", wait)
			retry.Reset(wait)
			resubscribe = retry.C
			wait = min(2*wait, d.rc.sleepRetryMax)
			return
		}
		if wait != d.rc.sleepRetryMin {
			d.log.Info("told of resumes from sleep now")
		}
		resumes = ch
	}
	if d.cfg.Sleep != nil {
		subscribe()
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
		case _, ok := <-resumes:
			if !ok {
				resumes = nil
				continue
			}
			d.resumed(d.clock.now())
		case <-resubscribe:
			resubscribe = nil
			subscribe()
		case <-tick.C:
			d.check(d.clock.now())
		}
	}
}

// check compares the clocks with the last check's and reads the tunnel's
// counters.
func (d *Daemon) check(wall time.Time, mono time.Duration) {
	slept, ok := d.readClocks(wall, mono)
	if !ok {
		return
	}
	if slept > d.rc.SleepJump {
		d.woke(wall, slept)
		return
	}
	d.checkAlive(mono)
}

// resumed acts on the system's word that the machine resumed from sleep,
// at the clocks' wall and mono, as on a sleep the clocks show, whatever
// its length. Once: a wake-up a check has just acted on is this one, and
// the clocks start afresh so that the next check does not count it again.
func (d *Daemon) resumed(wall time.Time, mono time.Duration) {
	slept, _ := d.readClocks(wall, mono)
	// A wall clock set back since is no reason to ignore a resume.
	if since := wall.Sub(d.wokeWall); !d.wokeWall.IsZero() && since >= 0 && since < sameWakeUp {
		d.log.Debug("resumed from sleep, already acted on", "slept", slept)
		return
	}
	d.woke(wall, slept)
}

// readClocks takes the clocks and returns how far the wall clock ran
// ahead of the monotonic one since they were last taken: how long the
// machine slept. ok is false the first time, with nothing to compare.
func (d *Daemon) readClocks(wall time.Time, mono time.Duration) (slept time.Duration, ok bool) {
	if !d.prevWall.IsZero() {
		slept, ok = wall.Sub(d.prevWall)-(mono-d.prevMono), true
	}
	d.prevWall, d.prevMono = wall, mono
	return slept, ok
}

// woke reconnects after a wake-up at wall, found by the clocks or said by
// the system, that ended a sleep of about slept (0 if unknown): the
// tunnel's connections, NAT mappings and sessions are likely stale.
func (d *Daemon) woke(wall time.Time, slept time.Duration) {
	d.wokeWall = wall
	reason := "woke up from sleep"
	if slept >= time.Second {
		reason = fmt.Sprintf("woke up from about %v of sleep", slept.Round(time.Second))
	}
	d.networkChanged(reason)
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

// entryProbeTimeout bounds the probe of a silent tunnel's entry: an entry
// that has not taken a TCP connection by then, while the tunnel through
// it hears nothing either, is not carrying the tunnel. Long enough for a
// lost SYN to be sent again.
const entryProbeTimeout = 3 * time.Second

// checkAlive reconnects a connected tunnel that has gone unanswered for
// DeadAfter, and has its entry probed once it has been for ProbeAfter.
// A tunnel found dead puts its gateways among those to avoid, so that,
// unless the user pinned them, the next attempt goes elsewhere.
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
	silent, v := d.live.observe(now, sent, heard, d.rc)
	entry, exit := d.status.Entry, d.status.Exit
	switch v {
	case dead:
		// The entry may still take connections (or was not probed):
		// either hop may be what died.
		d.failed.add(now, entry, exit)
		reason := fmt.Sprintf("the tunnel got no answer for %v", silent.Round(time.Second))
		d.log.Warn("reconnecting", "reason", reason)
		d.startLocked(d.target, d.target, control.StateReconnecting, reason, true)
	case askEntry:
		var addr string
		if d.doc != nil {
			if n := d.doc.ByID(entry); n != nil {
				addr = n.Address
			}
		}
		if addr == "" {
			d.log.Debug("tunnel unanswered, its entry not in the directory to probe", "entry", entry, "silent", silent)
			return
		}
		ctx, n := d.genCtx, d.live.silence
		d.loops.Go(func() { d.probeEntry(ctx, gen, cur, n, entry, addr, silent) })
	}
}

// probeEntry connects to the link port addr of the entry of gen's tunnel
// cur, which had gone unanswered for silent in its silence n, with the
// daemon's marked dialer (the tunnel holds the default route). An entry
// that refuses or does not answer is gone: the tunnel reconnects through
// another if the user's choice allows, rather than wait out DeadAfter. One
// that answers leaves the tunnel to DeadAfter, since the exit, or traffic
// that has no answer yet, may be why it is silent. ctx is gen's: the
// probe ends with it.
func (d *Daemon) probeEntry(ctx context.Context, gen uint64, cur modeTunnel, n uint64, entry, addr string, silent time.Duration) {
	pctx, cancel := context.WithTimeout(ctx, entryProbeTimeout)
	defer cancel()
	c, err := d.dial(pctx, "tcp", addr)
	if err == nil {
		c.Close()
		d.log.Debug("tunnel unanswered, but its entry takes connections", "entry", entry, "silent", silent)
		return
	}
	if ctx.Err() != nil {
		return // superseded: the probe says nothing about the tunnel now
	}
	_, heard := cur.Progress()
	_, now := d.clock.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen != gen || d.cur != cur || d.status.State != control.StateConnected || !d.live.stillSilent(n, heard) {
		d.log.Debug("entry probe failed, but the tunnel was answered or replaced meanwhile", "entry", entry, "err", err)
		return
	}
	d.failed.add(now, entry)
	reason := fmt.Sprintf("the tunnel got no answer for %v and its entry %s is unreachable: %v", silent.Round(time.Second), entry, err)
	d.log.Warn("reconnecting", "reason", reason)
	d.startLocked(d.target, d.target, control.StateReconnecting, reason, true)
}
