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

import "log/slog"

// Options configure New.
type Options struct {
	// DBusAddress is the bus to find systemd-logind on; empty means the
	// system bus. Tests point it at a bus of their own.
	DBusAddress string
	// Logger defaults to a discard logger.
	Logger *slog.Logger
}

// Notifier reports the machine's resumes from sleep. It holds no
// connection of its own: each Resumed call opens one for as long as its
// context lasts.
type Notifier struct {
	opts Options
	log  *slog.Logger
}

// New returns a Notifier. It opens nothing until Resumed, so that the
// caller's context owns the connection.
func New(opts Options) *Notifier {
	n := &Notifier{opts: opts, log: opts.Logger}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	return n
}
