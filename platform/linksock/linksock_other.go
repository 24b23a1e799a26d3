//go:build !linux

package linksock

import (
	"context"
	"fmt"
	"net"
)

// Dial connects to addr over TCP. Only Linux has the socket options that
// shape the connection, so here it is a plain dial, and segment lengths
// and the ACK rate are the kernel's.
func (c Config) Dial(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Control: MarkControl(c.Mark)}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("linksock: %w", err)
	}
	return nc, nil
}
