package control

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// FakeConfig configures a Fake.
type FakeConfig struct {
	// Gateways are what Gateways lists. When there are any, Connect
	// accepts only entries and exits among them; with none it accepts any.
	Gateways []Gateway
	// Settings are the initial settings; the zero value gives settings
	// like a fresh install's.
	Settings Settings
}

// Fake is a Daemon in memory for tests of the Server and of its clients. It
// connects at once, emitting connecting then connected, and it drops events
// for a subscriber that has 64 unread.
type Fake struct {
	mu       sync.Mutex
	gateways []Gateway
	settings Settings
	status   Status
	stats    Stats
	subs     map[int]chan Event
	nextSub  int
}

var _ Daemon = (*Fake)(nil)

// NewFake makes a disconnected Fake.
func NewFake(cfg FakeConfig) *Fake {
	s := cfg.Settings
	if s.Mode == ModeUnspecified {
		// The mixnet client's defaults.
		s = Settings{
			KillSwitch: true,
			DNSServers: []netip.Addr{netip.MustParseAddr("10.64.0.1")},
			Mode:       ModeFast,
			MixRate:    200,
			LoopRate:   10,
			MeanDelay:  15 * time.Millisecond,
		}
	}
	return &Fake{
		gateways: slices.Clone(cfg.Gateways),
		settings: s,
		status:   Status{State: StateDisconnected, Mode: s.Mode, Since: time.Now()},
		subs:     make(map[int]chan Event),
	}
}

// Status implements Daemon.
func (f *Fake) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status
}

// Connect implements Daemon.
func (f *Fake) Connect(_ context.Context, mode Mode, entry, exit string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if mode == ModeUnspecified {
		mode = f.settings.Mode
	}
	if entry == "" {
		entry = f.settings.Entry
	}
	if exit == "" {
		exit = f.settings.Exit
	}
	entryID, err := f.pick(RoleEntry, entry)
	if err != nil {
		return err
	}
	exitID, err := f.pick(RoleExit, exit)
	if err != nil {
		return err
	}
	f.setLocked(Status{State: StateConnecting, Mode: mode})
	f.setLocked(Status{State: StateConnected, Mode: mode, Entry: entryID, Exit: exitID})
	return nil
}

// pick resolves an entry or exit choice like the directory does: an ID,
// else a country, else any gateway of the role.
func (f *Fake) pick(role Role, want string) (string, error) {
	if len(f.gateways) == 0 {
		if want == "" {
			return role.String() + "-1", nil
		}
		return want, nil
	}
	for _, g := range f.gateways {
		if g.Role == role && (want == "" || g.ID == want || g.Country == want) {
			return g.ID, nil
		}
	}
	return "", fmt.Errorf("%w: no %s gateway %q", ErrNotFound, role, want)
}

// Disconnect implements Daemon.
func (f *Fake) Disconnect(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.status.State == StateDisconnected {
		return nil
	}
	mode := f.status.Mode
	f.setLocked(Status{State: StateDisconnecting, Mode: mode})
	f.setLocked(Status{State: StateDisconnected, Mode: mode})
	return nil
}

// SetMode implements Daemon.
func (f *Fake) SetMode(_ context.Context, mode Mode) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.settings.Mode = mode
	st := f.status
	st.Mode = mode
	if st.State == StateConnected {
		f.setLocked(Status{State: StateConnecting, Mode: mode})
	}
	f.setLocked(st)
	return nil
}

// Gateways implements Daemon.
func (f *Fake) Gateways(context.Context) ([]Gateway, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.gateways), nil
}

// Settings implements Daemon.
func (f *Fake) Settings() Settings {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.settings
	s.DNSServers = slices.Clone(s.DNSServers)
	return s
}

// SetSettings implements Daemon.
func (f *Fake) SetSettings(_ context.Context, s Settings) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.DNSServers = slices.Clone(s.DNSServers)
	f.settings = s
	return nil
}

// Subscribe implements Daemon.
func (f *Fake) Subscribe() (<-chan Event, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	id := f.nextSub
	f.nextSub++
	ch := make(chan Event, 64)
	f.subs[id] = ch
	return ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if c, ok := f.subs[id]; ok {
			delete(f.subs, id)
			close(c)
		}
	}
}

// Subscribers is how many subscriptions are open, for tests that check
// streams let go of theirs.
func (f *Fake) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// Stats implements Daemon.
func (f *Fake) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// SetStats replaces the counters Stats returns.
func (f *Fake) SetStats(s Stats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats = s
}

// Fail moves the Fake to StateError with reason, as a dropped tunnel would.
func (f *Fake) Fail(reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setLocked(Status{State: StateError, Error: reason, Mode: f.status.Mode})
}

// Reconnecting moves the Fake to StateReconnecting with reason, as a
// daemon whose tunnel died does; Connect brings it back.
func (f *Fake) Reconnecting(reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.status
	st.State, st.Error = StateReconnecting, reason
	f.setLocked(st)
}

// Close ends every subscription, as a daemon that stops does.
func (f *Fake) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, c := range f.subs {
		delete(f.subs, id)
		close(c)
	}
}

func (f *Fake) setLocked(st Status) {
	now := time.Now()
	st.Since = now
	f.status = st
	for _, c := range f.subs {
		select {
		case c <- Event{Status: st, Time: now}:
		default:
		}
	}
}
