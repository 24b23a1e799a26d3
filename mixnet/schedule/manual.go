package schedule

import (
	"sync"
	"time"
)

// ManualClock is a test double for Config.Now and Config.NewTimer: time
// stands still until Advance moves it, and only then do timers fire. It is
// safe for concurrent use.
type ManualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
}

// NewManualClock returns a clock reading start.
func NewManualClock(start time.Time) *ManualClock {
	return &ManualClock{now: start}
}

// Now returns the clock's time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer that fires once the clock has advanced by d.
func (c *ManualClock) NewTimer(d time.Duration) Timer {
	t := &manualTimer{clock: c, c: make(chan time.Time, 1)}
	c.mu.Lock()
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	t.Reset(d)
	return t
}

// Advance moves the clock forward by d and fires the timers that fall due.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.timers {
		t.fireIfDue(c.now)
	}
}

// Deadline returns the earliest time an armed timer will fire at, so that a
// test can wait for the code under test to arm its timer before advancing.
func (c *ManualClock) Deadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first time.Time
	armed := false
	for _, t := range c.timers {
		if t.armed && (!armed || t.at.Before(first)) {
			first, armed = t.at, true
		}
	}
	return first, armed
}

// manualTimer is a ManualClock's Timer; its fields are guarded by the
// clock's mutex.
type manualTimer struct {
	clock *ManualClock
	c     chan time.Time
	at    time.Time
	armed bool
}

func (t *manualTimer) C() <-chan time.Time { return t.c }

func (t *manualTimer) Reset(d time.Duration) {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	t.drain()
	t.at, t.armed = t.clock.now.Add(d), true
	t.fireIfDue(t.clock.now)
}

func (t *manualTimer) Stop() {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	t.drain()
	t.armed = false
}

// drain drops a fired but unreceived value, as a *time.Timer does on Reset
// and Stop since Go 1.23.
func (t *manualTimer) drain() {
	select {
	case <-t.c:
	default:
	}
}

func (t *manualTimer) fireIfDue(now time.Time) {
	if t.armed && !t.at.After(now) {
		t.armed = false
		t.c <- now // cannot block: drained when armed, fired once per arming
	}
}
