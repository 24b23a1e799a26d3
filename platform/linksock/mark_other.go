//go:build !linux

package linksock

import "syscall"

// MarkControl returns a net.Dialer Control hook for the socket mark mark.
// Only Linux has socket marks (and policy routing on them), so here the
// hook changes nothing: a router on such a system has to keep the
// tunnel's own traffic out of the tunnel some other way.
func MarkControl(mark uint32) func(network, address string, raw syscall.RawConn) error {
	return func(string, string, syscall.RawConn) error { return nil }
}
