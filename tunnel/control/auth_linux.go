//go:build linux

package control

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// ServerHandshake records the caller's credentials as the connection's
// AuthInfo, and fails on a connection that is not a Unix socket, since
// nobody can vouch for its caller.
func (peerCredentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info, err := peerInfo(conn)
	if err != nil {
		return nil, nil, err
	}
	return conn, info, nil
}

// peerInfo reads the credentials of a Unix socket's peer.
func peerInfo(conn net.Conn) (PeerInfo, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return PeerInfo{}, fmt.Errorf("control: %T is not a socket", conn)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return PeerInfo{}, fmt.Errorf("control: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return PeerInfo{}, fmt.Errorf("control: peer credentials: %w", err)
	}
	if credErr != nil {
		return PeerInfo{}, fmt.Errorf("control: SO_PEERCRED: %w", credErr)
	}
	info := PeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		PID:            cred.Pid,
		UID:            cred.Uid,
		GID:            cred.Gid,
	}
	info.Groups = procGroups(cred.Pid, cred.Uid)
	return info, nil
}
