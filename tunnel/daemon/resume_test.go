package daemon

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/platform/sleep"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

// newSleepRig is newRig with a sleep notifier the test fires: the
// notifier is part of the Config, which Run reads.
func newSleepRig(t *testing.T, notifier *sleep.Fake) *rig {
	t.Helper()
	return newRig(t, "", "", func(c *Config) { c.Sleep = notifier })
}

// The system's word that the machine resumed reconnects at once, as a
// sleep the clocks show does, even one too short for them to see.
func TestReconnectWhenTheSystemResumes(t *testing.T) {
	notifier := &sleep.Fake{}
	r := newSleepRig(t, notifier)
	r.watching(t)
	// The watcher asks for resumes just after the monitor's changes.
	deadline := time.Now().Add(10 * time.Second)
	for !notifier.Watched() {
		if time.Now().After(deadline) {
			t.Fatal("the daemon never listened for resumes")
		}
		time.Sleep(time.Millisecond)
	}
	first := r.connect(t)
	removes := r.fw.Removes()

	if !notifier.Resume() {
		t.Fatal("the resume was not taken")
	}
	st := r.untilState(t, control.StateReconnecting)
	if st.Error != "woke up from sleep" || st.Mode != control.ModeFast {
		t.Fatalf("reconnecting status %+v", st)
	}
	r.untilState(t, control.StateConnected)
	ts := r.net.opened()
	if len(ts) != 2 || !first.closed.Load() || ts[1].closed.Load() {
		t.Fatalf("tunnels after resuming: %d, first closed %v", len(ts), first.closed.Load())
	}
	r.killSwitchStayedOn(t, removes)
}

// Without the system's word (no logind) the daemon runs on, and the
// clocks still show a sleep.
func TestReconnectAfterSleepWithoutNotifier(t *testing.T) {
	r := newSleepRig(t, &sleep.Fake{Err: errors.New("sleep: systemd-logind is not running")})
	r.watching(t)
	r.d.check(r.clk.advance(0, 0))
	r.connect(t)
	r.d.check(r.clk.advance(time.Hour+2*time.Second, 2*time.Second))
	r.until(t, "reconnecting after a sleep", func(s control.Status) bool {
		return s.State == control.StateReconnecting && s.Error == "woke up from about 1h0m0s of sleep"
	})
	r.untilState(t, control.StateConnected)
}

// A wake-up the clocks show and the system's word of it are one wake-up,
// whichever comes first: one reconnect, not two. These call check and
// resumed in the watcher's place, as the other clock tests do.
func TestResumeAndClocksReconnectOnce(t *testing.T) {
	r := newRig(t, "", "")
	r.watching(t)
	r.d.check(r.clk.advance(0, 0))
	// Disconnected, a resume changes nothing.
	r.d.resumed(r.clk.advance(time.Hour, time.Second))
	if st := r.d.Status(); st.State != control.StateDisconnected {
		t.Fatalf("status after resuming disconnected: %+v", st)
	}
	r.d.check(r.clk.advance(time.Minute, time.Minute))
	r.connect(t)
	connected := func(tunnels int) {
		t.Helper()
		if st, n := r.d.Status(), len(r.net.opened()); st.State != control.StateConnected || n != tunnels {
			t.Fatalf("status %+v with %d tunnels, want connected with %d", st, n, tunnels)
		}
	}

	// The check comes first: the resume a moment later is the same.
	r.d.check(r.clk.advance(time.Hour+2*time.Second, 2*time.Second))
	r.until(t, "reconnecting after a sleep", func(s control.Status) bool {
		return s.State == control.StateReconnecting && s.Error == "woke up from about 1h0m0s of sleep"
	})
	r.untilState(t, control.StateConnected)
	r.d.resumed(r.clk.advance(time.Second, time.Second))
	connected(2) // status changes synchronously: no reconnect began

	// The resume comes first, with the sleep's length from the clocks;
	// the check after it does not count the sleep again.
	r.d.resumed(r.clk.advance(2*time.Hour+time.Second, time.Second))
	r.until(t, "reconnecting after a resume", func(s control.Status) bool {
		return s.State == control.StateReconnecting && s.Error == "woke up from about 2h0m0s of sleep"
	})
	r.untilState(t, control.StateConnected)
	r.d.check(r.clk.advance(2*time.Second, 2*time.Second))
	connected(3)

	// A sleep too short for the clocks to tell (under SleepJump), which
	// only the system's word reveals.
	r.d.check(r.clk.advance(time.Minute, time.Minute))
	r.d.resumed(r.clk.advance(5*time.Second+time.Second, time.Second))
	r.until(t, "reconnecting after a short sleep", func(s control.Status) bool {
		return s.State == control.StateReconnecting && s.Error == "woke up from about 5s of sleep"
	})
	r.untilState(t, control.StateConnected)
	connected(4)
}

// flakySleep fails its first fails Resumed calls as down (a Fake with
// Err: no bus or logind yet), then serves them with up.
type flakySleep struct {
	down, up *sleep.Fake
	fails    atomic.Int32
	calls    atomic.Int32
}

func (f *flakySleep) Resumed(ctx context.Context) (<-chan struct{}, error) {
	if f.calls.Add(1) <= f.fails.Load() {
		return f.down.Resumed(ctx)
	}
	return f.up.Resumed(ctx)
}

// Without the bus or logind at start, the daemon subscribes again, with
// a growing wait, until it can, and then hears resumes.
func TestResubscribeToResumesWhenFirstFails(t *testing.T) {
	f := &flakySleep{down: &sleep.Fake{Err: errors.New("sleep: connect to D-Bus: no such file or directory")}, up: &sleep.Fake{}}
	f.fails.Store(3)
	r := newRig(t, "", "", func(c *Config) {
		c.Sleep = f
		c.Reconnect.sleepRetryMin = time.Millisecond
		c.Reconnect.sleepRetryMax = 4 * time.Millisecond
	})
	r.watching(t)
	deadline := time.Now().Add(10 * time.Second)
	for !f.up.Watched() {
		if time.Now().After(deadline) {
			t.Fatalf("never subscribed again; %d tries", f.calls.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if n := f.calls.Load(); n != 4 {
		t.Fatalf("%d tries, want 4", n)
	}
	r.connect(t)
	if !f.up.Resume() {
		t.Fatal("the resume was not taken")
	}
	r.untilState(t, control.StateReconnecting)
	r.untilState(t, control.StateConnected)
}
