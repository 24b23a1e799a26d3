package firewall

import (
	"context"
	"sync"
)

// Fake is a Firewall that only records what it was told, for tests of
// the code that drives the firewall. It validates policies as the real
// one does. Its zero value is ready to use.
type Fake struct {
	mu      sync.Mutex
	applied []Policy
	active  bool
	removes int
	// Err, when set, is returned by Apply and Remove instead of acting.
	Err error
}

// Apply records p as the active policy.
func (f *Fake) Apply(ctx context.Context, p Policy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	f.applied = append(f.applied, p)
	f.active = true
	return nil
}

// Remove marks the firewall as removed.
func (f *Fake) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.active = false
	f.removes++
	return nil
}

// Removes counts the calls of Remove that succeeded, for tests that check
// the kill switch never came down.
func (f *Fake) Removes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.removes
}

// Active returns the policy in force, if any.
func (f *Fake) Active() (Policy, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.active || len(f.applied) == 0 {
		return Policy{}, false
	}
	return f.applied[len(f.applied)-1], true
}

// Applied returns every policy applied so far, oldest first.
func (f *Fake) Applied() []Policy {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Policy(nil), f.applied...)
}
