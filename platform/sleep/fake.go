package sleep

import (
	"context"
	"sync"
)

// Fake is a notifier whose resumes a test makes with Resume. Its zero
// value is ready; it serves one Resumed call at a time.
type Fake struct {
	// Err, when set, makes Resumed fail with it, as on a machine without
	// systemd-logind.
	Err error

	mu sync.Mutex
	ch chan struct{}
}

// Resumed sends a value for each Resume until ctx ends, then closes the
// channel, like Notifier.Resumed.
func (f *Fake) Resumed(ctx context.Context) (<-chan struct{}, error) {
	if f.Err != nil {
		return nil, f.Err
	}
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	f.ch = ch
	f.mu.Unlock()
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.ch == ch {
			f.ch = nil
		}
		close(ch)
	})
	return ch, nil
}

// Watched reports whether someone is listening for resumes now.
func (f *Fake) Watched() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ch != nil
}

// Resume reports a resume to the current listener, if there is one and
// it has none pending, and tells whether it did.
func (f *Fake) Resume() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ch == nil {
		return false
	}
	select {
	case f.ch <- struct{}{}:
		return true
	default:
		return false
	}
}
