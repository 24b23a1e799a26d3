//go:build !linux

package fast

import "net"

// bigBuffers asks for wireguard-go's socket buffers for c. Only Linux can
// force past the system's limits (SO_RCVBUFFORCE), so here they cap what
// c gets.
func bigBuffers(c *net.UDPConn) error {
	if err := c.SetReadBuffer(socketBuffer); err != nil {
		return err
	}
	return c.SetWriteBuffer(socketBuffer)
}
