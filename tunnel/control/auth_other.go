//go:build !linux

package control

import (
	"fmt"
	"net"
	"runtime"
	"syscall"

	"google.golang.org/grpc/credentials"
)

// ServerHandshake admits the connection but marks its caller unidentified:
// reading a Unix socket peer's credentials is written for Linux only so
// far, and without them nobody may be let in. The connection is kept, not
// failed, so that authorize can refuse each call with a message the CLI
// shows; a failed handshake would reach the user as a dropped connection.
// A connection that is not a socket still fails, as on Linux.
func (peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if _, ok := conn.(syscall.Conn); !ok {
		return nil, nil, fmt.Errorf("control: %T is not a socket", conn)
	}
	return conn, unidentifiedPeer{reason: fmt.Sprintf(
		"mixvpn: peer credentials not supported yet on %s: mixvpnd cannot tell who is calling, so it refuses every call", runtime.GOOS)}, nil
}
