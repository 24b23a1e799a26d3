package dns

import (
	"context"
	"slices"
	"sync"
)

// Fake is a Configurator that only records what it was told, for tests of
// the code that drives DNS. Its zero value is ready to use.
type Fake struct {
	mu      sync.Mutex
	current *Config
	sets    int
	// Err, when set, is returned by Set and Restore instead of acting.
	Err error
}

// Set records cfg as the configuration in force.
func (f *Fake) Set(ctx context.Context, cfg Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg.Servers = slices.Clone(cfg.Servers)
	cfg.Domains = slices.Clone(cfg.Domains)
	f.current = &cfg
	f.sets++
	return nil
}

// Restore forgets the configuration.
func (f *Fake) Restore() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.current = nil
	return nil
}

// SetErr sets Err, for a test that makes DNS fail under a running user
// of the Fake.
func (f *Fake) SetErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Err = err
}

// Current returns the configuration in force, if any.
func (f *Fake) Current() (Config, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.current == nil {
		return Config{}, false
	}
	return *f.current, true
}

// Sets counts the successful calls to Set.
func (f *Fake) Sets() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sets
}
