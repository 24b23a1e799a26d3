//go:build linux

package fast

import (
	"net"

	"golang.org/x/sys/unix"
)

// bigBuffers gives c wireguard-go's socket buffers, forcing past the sysctl
// limits as root and settling for those limits otherwise.
func bigBuffers(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[0], socketBuffer) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt[1], socketBuffer)
			}
		}
	})
}
