// Package sleep tells when the machine resumes from suspend, as soon as
// the system says so. A tunnel's outer connections do not survive a long
// sleep (NAT mappings and the peers' sessions time out meanwhile), so the
// daemon reconnects on waking; it also notices a sleep by its clocks, but
// only at its next check and only a sleep long enough to tell from drift,
// while the system's word comes at once and for any sleep.
//
// On Linux the word is systemd-logind's PrepareForSleep signal on the
// system bus.
package sleep

import (
	"log/slog"
	"time"
)

// Options configure New.
type Options struct {
	// DBusAddress is the bus to find systemd-logind on; empty means the
	// system bus. Tests point it at a bus of their own.
	DBusAddress string
	// Logger defaults to a discard logger.
	Logger *slog.Logger
}

// Bounds of the delay between attempts to subscribe again after losing
// the bus: short at first, as a bus that restarts is back in a moment,
// and never so long that resumes go unreported for long once it is.
const (
	retryFirst = time.Second
	retryMax   = 30 * time.Second
)

// Notifier reports the machine's resumes from sleep. It holds no
// connection of its own: each Resumed call opens one, and opens another
// whenever the bus goes away, for as long as its context lasts.
type Notifier struct {
	opts Options
	log  *slog.Logger
	// retryFirst and retryMax are the constants', which tests shorten.
	retryFirst, retryMax time.Duration
}

// New returns a Notifier. It opens nothing until Resumed, so that the
// caller's context owns the connection.
func New(opts Options) *Notifier {
	n := &Notifier{opts: opts, log: opts.Logger, retryFirst: retryFirst, retryMax: retryMax}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	return n
}
