package router

import (
	"context"
	"errors"
	"slices"
	"sync"
)

// Fake is a Router that only records what it was told, for tests of the
// code that drives the router. It enforces the same order as the real
// one: Up, then any number of Set, then Close. Its zero value is ready.
type Fake struct {
	mu      sync.Mutex
	up      bool
	closed  bool
	configs []Config
	// Err, when set, is returned by Up, Set and Close instead of acting.
	Err error
}

// Up marks the router as up.
func (f *Fake) Up(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	if f.closed {
		return errors.New("router: Up after Close")
	}
	f.up = true
	return ctx.Err()
}

// Set records cfg.
func (f *Fake) Set(ctx context.Context, cfg Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	if !f.up || f.closed {
		return errors.New("router: Set needs Up and no Close")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg.Addresses = slices.Clone(cfg.Addresses)
	cfg.Bypass = slices.Clone(cfg.Bypass)
	cfg.AllowLAN = slices.Clone(cfg.AllowLAN)
	cfg.Tunnel = slices.Clone(cfg.Tunnel)
	f.configs = append(f.configs, cfg)
	return nil
}

// Close marks the router as closed; closing twice is fine.
func (f *Fake) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.up, f.closed = false, true
	return nil
}

// Current returns the config last set, while the router is up.
func (f *Fake) Current() (Config, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.up || len(f.configs) == 0 {
		return Config{}, false
	}
	return f.configs[len(f.configs)-1], true
}

// Configs returns every config set so far, oldest first.
func (f *Fake) Configs() []Config {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.configs)
}

// Closed reports whether Close was called.
func (f *Fake) Closed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

// FakeMonitor is a Monitor whose changes a test makes with Change. Its
// zero value is ready; it serves one Changes call at a time.
type FakeMonitor struct {
	mu sync.Mutex
	ch chan Change
}

// Changes implements Monitor.
func (f *FakeMonitor) Changes(ctx context.Context) (<-chan Change, error) {
	ch := make(chan Change, 1)
	f.mu.Lock()
	f.ch = ch
	f.mu.Unlock()
	go func() {
		<-ctx.Done()
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.ch == ch {
			f.ch = nil
		}
		close(ch)
	}()
	return ch, nil
}

// Watched reports whether someone is watching the changes now.
func (f *FakeMonitor) Watched() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ch != nil
}

// Change reports a change to the current watcher, if there is one and
// it has none pending, and tells whether it did.
func (f *FakeMonitor) Change(reason string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ch == nil {
		return false
	}
	select {
	case f.ch <- Change{Reason: reason}:
		return true
	default:
		return false
	}
}
