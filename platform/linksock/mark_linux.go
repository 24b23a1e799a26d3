//go:build linux

package linksock

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// MarkControl returns a net.Dialer Control hook that gives each socket
// the mark (SO_MARK) mark before it connects, so that policy routing can
// send the daemon's own traffic around the tunnel it carries. Zero marks
// nothing. Setting a mark needs CAP_NET_ADMIN; without it the dial fails
// rather than let the socket follow the tunnel's routes.
func MarkControl(mark uint32) func(network, address string, raw syscall.RawConn) error {
	return func(_, _ string, raw syscall.RawConn) error {
		if mark == 0 {
			return nil
		}
		if err := control(raw, func(fd int) error { return setMark(fd, mark) }); err != nil {
			return fmt.Errorf("linksock: socket mark %#x: %w", mark, err)
		}
		return nil
	}
}

// setMark marks the socket fd.
func setMark(fd int, mark uint32) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark))
}
