// Package linksock dials the TCP connection under a client's link to its
// entry gateway, shaped so that what an observer of the wire sees follows
// the link's schedule and not the traffic inside it:
//
//   - Segment length. After its handshake the link writes nothing but
//     whole frames of Config.Record bytes, so the maximum segment size is
//     set, for both directions, to a divisor of Record: every full data
//     segment then has the same length whether TCP sends one frame or
//     several together.
//   - ACK rate. A kernel acknowledges at once only while the application
//     keeps up with reading; once it falls behind, it delays ACKs, so the
//     rate of pure ACKs tells a busy client from an idle one. Here the
//     socket's receive low-water mark is set far above anything ever
//     queued, which makes the kernel acknowledge every second full
//     segment as it arrives, whatever the application is doing; and since
//     that mark would also hold back the wake-ups a reader waits for, the
//     connection is read on a clock instead. The client's ACKs then follow
//     the entry's paced frames alone.
//
// What stays visible: a pure ACK cannot have a data segment's length
// (only a link over UDP would hide them), and a path whose MTU changes
// mid-connection, or segments carrying SACK blocks after a loss, make
// some segments shorter.
//
// Dial also marks the socket (Config.Mark), and MarkControl gives any
// other socket of the daemon the same mark, so that policy routing keeps
// the daemon's own traffic out of the tunnel it carries.
//
// Only Linux has the socket options; elsewhere Dial is a plain TCP dial.
package linksock

import (
	"log/slog"
	"time"
)

// Defaults for Config.
const (
	// DefaultPoll is how often the connection is read. A frame waits at
	// most this long in the kernel, nothing beside a mix's delays; and at
	// the default paced rate (1010 frames/s) a tick finds one or two
	// frames, so reading on the clock wakes the process less often than
	// reading on every arrival would (measured: a little less CPU; at
	// 1 ms, a third more).
	DefaultPoll = 2 * time.Millisecond
	// DefaultBacklog is the receive low-water mark: as long as less than
	// this is queued unread, ACKs go out as segments arrive. 1 MiB is
	// half a second of the default paced rate; a reader that falls
	// further behind than that has worse problems.
	DefaultBacklog = 1 << 20
)

// minSegment is the smallest segment worth shaping: below it a frame
// would cost so many packets that the kernel's own size is kept.
const minSegment = 536

// Config says how to shape a link's connection.
type Config struct {
	// Record is the size of every write after the link's handshake
	// (link.FrameSize); segments are sized to divide it. Zero leaves the
	// segment size to the kernel.
	Record int
	// Poll is how often the connection is read; default DefaultPoll.
	Poll time.Duration
	// Backlog is the receive low-water mark in bytes; default
	// DefaultBacklog.
	Backlog int
	// Mark is the socket mark (SO_MARK, see MarkControl) of the
	// connection, so that policy routing sends it around the tunnel it
	// carries; zero marks nothing.
	Mark uint32
	// Logger hears when the segments cannot be given one length; nil
	// discards.
	Logger *slog.Logger
}

// segmentFor is the largest divisor of record that is at most limit, so
// that a record is a whole number of equal segments; 0 if that would be
// smaller than minSegment.
func segmentFor(record, limit int) int {
	for d := min(record, limit); d >= minSegment; d-- {
		if record%d == 0 {
			return d
		}
	}
	return 0
}
