package router

import (
	"context"
	"log/slog"
)

// Monitor watches the machine's network for the changes that can leave a
// tunnel's outer connection dead: a default route coming or going, or
// the link that carries one going down or up. Links without a default
// route (a container's veth, a docker bridge) do not count, so starting
// a container does not make the daemon reconnect.
type Monitor interface {
	// Changes sends each change until ctx ends, then closes the
	// channel. A receiver that falls behind loses changes but never
	// blocks the monitor: every change means "look again", so one
	// pending is as good as many.
	Changes(ctx context.Context) (<-chan Change, error)
}

// Change is one change of the network under the tunnel.
type Change struct {
	// Reason says what changed, for the log and the daemon's status,
	// e.g. "eth0 went down".
	Reason string
}

// MonitorOptions configure NewMonitor.
type MonitorOptions struct {
	// Ignore names interfaces whose changes never matter: the tunnel's
	// own TUN device.
	Ignore []string
	// Logger defaults to a discard logger.
	Logger *slog.Logger
}

// send offers c without blocking; see Monitor.Changes.
func send(ch chan<- Change, c Change) {
	select {
	case ch <- c:
	default:
	}
}
