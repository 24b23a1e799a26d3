//go:build linux

package linksock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// firstSegment is the largest TCP payload beside the timestamp
	// option in a 1500-byte IPv4 packet: the first bound tried, before
	// the path is known.
	firstSegment = 1448
	// timestampOption is what the TCP timestamp option, which Linux peers
	// negotiate by default, takes out of every segment.
	timestampOption = 12
	// tcpiOptTimestamps is TCPI_OPT_TIMESTAMPS of linux/tcp.h: the
	// timestamp option was negotiated.
	tcpiOptTimestamps = 1
)

// dialAttempts bounds the dials Dial makes to find a segment size the
// path takes: the first guess, one fitted to what the kernel reported,
// and one more should the options differ from the guess too.
const dialAttempts = 3

func (c Config) withDefaults() Config {
	if c.Poll <= 0 {
		c.Poll = DefaultPoll
	}
	if c.Backlog <= 0 {
		c.Backlog = DefaultBacklog
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Dial connects to addr over TCP with the connection shaped as the
// package describes; it has the signature of link.PeerConfig.Dial.
//
// The segment size has to be fixed before the connection exists (it is
// announced in the SYN), and what the path and the peer's options leave
// of it is known only after, so Dial checks, and redials with a size
// fitted to what it found when the first guess did not divide a record.
func (c Config) Dial(ctx context.Context, addr string) (net.Conn, error) {
	c = c.withDefaults()
	seg := 0
	if c.Record > 0 {
		seg = segmentFor(c.Record, firstSegment)
	}
	maxseg := 0
	if seg > 0 {
		maxseg = seg + timestampOption
	}
	var tc *net.TCPConn
	for attempt := 1; ; attempt++ {
		var err error
		if tc, err = dialTCP(ctx, addr, maxseg, c.Mark); err != nil {
			return nil, err
		}
		if seg == 0 {
			break
		}
		got, overhead, err := segmentOf(tc)
		if err != nil {
			tc.Close()
			return nil, err
		}
		if got == seg {
			break
		}
		next := segmentFor(c.Record, got)
		if next == 0 || attempt == dialAttempts {
			c.Logger.Warn("link segments cannot all have one length", "addr", addr, "segment", got, "frame", c.Record)
			break
		}
		c.Logger.Debug("link segment size refitted", "addr", addr, "asked", seg, "got", got, "next", next)
		tc.Close()
		seg, maxseg = next, next+overhead
	}
	raw, err := tc.SyscallConn()
	if err == nil {
		err = control(raw, func(fd int) error {
			return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, c.Backlog)
		})
	}
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("linksock: receive low-water mark: %w", err)
	}
	return &polledConn{Conn: tc, raw: raw, every: c.Poll}, nil
}

// dialTCP dials addr with the maximum segment size maxseg (0: the
// kernel's) and the socket mark mark (0: none).
func dialTCP(ctx context.Context, addr string, maxseg int, mark uint32) (*net.TCPConn, error) {
	marked := MarkControl(mark)
	d := net.Dialer{Control: func(network, address string, raw syscall.RawConn) error {
		if err := marked(network, address, raw); err != nil {
			return err
		}
		if maxseg == 0 {
			return nil
		}
		return control(raw, func(fd int) error {
			return unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG, maxseg)
		})
	}}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("linksock: %w", err)
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		return nil, fmt.Errorf("linksock: dial %s gave a %T", addr, nc)
	}
	return tc, nil
}

// segmentOf is the payload of a full segment the connection sends, and
// what its options take from each segment.
func segmentOf(tc *net.TCPConn) (seg, overhead int, err error) {
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0, 0, fmt.Errorf("linksock: %w", err)
	}
	err = control(raw, func(fd int) error {
		// On a connected socket TCP_MAXSEG reads the segment size in
		// use, options already taken off.
		if seg, err = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG); err != nil {
			return err
		}
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return err
		}
		if info.Options&tcpiOptTimestamps != 0 {
			overhead = timestampOption
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("linksock: segment size: %w", err)
	}
	return seg, overhead, nil
}

// control runs f on raw's descriptor and returns either error.
func control(raw syscall.RawConn, f func(fd int) error) error {
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// polledConn reads its TCP connection on a clock. With the low-water
// mark far above what is queued, the kernel would not wake a reader until
// that much had arrived, so Read never waits for readiness: it tries, and
// sleeps a tick when there is nothing. Writes, deadlines and Close are
// the TCP connection's; a read deadline or Close ends a sleeping Read
// within a tick, because each try checks them.
type polledConn struct {
	net.Conn
	raw   syscall.RawConn
	every time.Duration
}

// Read reads what is queued, waiting in ticks until something is.
func (p *polledConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		var n int
		var rerr error
		err := p.raw.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), b)
			return true
		})
		switch {
		case err != nil:
			return 0, p.opError(err)
		case rerr == nil && n > 0:
			return n, nil
		case rerr == nil:
			return 0, io.EOF
		case errors.Is(rerr, unix.EINTR):
			continue
		case !errors.Is(rerr, unix.EAGAIN):
			return 0, p.opError(os.NewSyscallError("read", rerr))
		}
		time.Sleep(p.every)
	}
}

// opError wraps a read error the way net.Conn reports one, so that
// timeouts still answer net.Error's Timeout.
func (p *polledConn) opError(err error) error {
	return &net.OpError{Op: "read", Net: "tcp", Source: p.LocalAddr(), Addr: p.RemoteAddr(), Err: err}
}
