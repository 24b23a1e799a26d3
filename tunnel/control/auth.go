package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// PeerInfo is who is at the other end of a control connection, as the
// kernel saw it when the client connected (SO_PEERCRED). It is the
// connection's credentials.AuthInfo. Only Linux supplies it yet; elsewhere
// a connection carries an unidentifiedPeer, which authorize refuses.
type PeerInfo struct {
	credentials.CommonAuthInfo
	PID      int32
	UID, GID uint32
	// Groups are the supplementary groups of the process, read from
	// /proc/<pid>/status when it connected; nil if they could not be read.
	Groups []uint32
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return "peercred" }

// peerCredentials is a server-only TransportCredentials that does no
// handshake but records the peer's credentials. Reading them at accept,
// rather than per call, ties them to the connection the kernel vouched for.
type peerCredentials struct{}

var _ credentials.TransportCredentials = peerCredentials{}

func (peerCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("control: peer credentials are for the server side only")
}

func (peerCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (c peerCredentials) Clone() credentials.TransportCredentials { return c }

func (peerCredentials) OverrideServerName(string) error { return nil }

// unidentifiedPeer is the AuthInfo of a connection whose caller the
// operating system cannot name to us. authorize refuses every call on it
// with reason, so that the client is told why instead of seeing the
// connection drop during the handshake.
type unidentifiedPeer struct {
	reason string
}

// AuthType implements credentials.AuthInfo.
func (unidentifiedPeer) AuthType() string { return "none" }

// procGroups returns the supplementary groups of pid, or nil if they cannot
// be read or the process there is no longer the one that connected (its
// effective uid differs), so a recycled pid grants nothing.
func procGroups(pid int32, uid uint32) []uint32 {
	f, err := os.Open("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	defer f.Close()
	euid, groups, err := parseProcStatus(f)
	if err != nil || euid != uid {
		return nil
	}
	return groups
}

// parseProcStatus reads the effective uid and the supplementary groups
// from a /proc/<pid>/status file.
func parseProcStatus(r io.Reader) (euid uint32, groups []uint32, err error) {
	sc := bufio.NewScanner(r)
	var sawUID, sawGroups bool
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch key {
		case "Uid":
			f := strings.Fields(val)
			if len(f) < 2 {
				return 0, nil, fmt.Errorf("control: Uid line %q", val)
			}
			u, err := strconv.ParseUint(f[1], 10, 32)
			if err != nil {
				return 0, nil, fmt.Errorf("control: Uid line: %w", err)
			}
			euid, sawUID = uint32(u), true
		case "Groups":
			groups = []uint32{}
			for _, g := range strings.Fields(val) {
				n, err := strconv.ParseUint(g, 10, 32)
				if err != nil {
					return 0, nil, fmt.Errorf("control: Groups line: %w", err)
				}
				groups = append(groups, uint32(n))
			}
			sawGroups = true
		}
	}
	if err := sc.Err(); err != nil {
		return 0, nil, fmt.Errorf("control: reading status: %w", err)
	}
	if !sawUID || !sawGroups {
		return 0, nil, errors.New("control: status has no Uid or Groups line")
	}
	return euid, groups, nil
}

// access decides who may use the control API: root, and the members of
// one group if it exists.
type access struct {
	group    string
	gid      uint32
	hasGroup bool
}

func (a access) allows(p PeerInfo) bool {
	if p.UID == 0 {
		return true
	}
	return a.hasGroup && (p.GID == a.gid || slices.Contains(p.Groups, a.gid))
}

// deniedMessage tells the user how to get in, since the CLI shows it as is.
func (a access) deniedMessage() string {
	g := a.group
	if g == "" {
		g = DefaultGroup
	}
	return fmt.Sprintf("you are not allowed to talk to mixvpnd: ask an administrator to add you to the %s group (sudo usermod -aG %s $USER) and log in again", g, g)
}

// authorize checks the caller of one RPC.
func (a access) authorize(ctx context.Context, log *slog.Logger, method string) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.PermissionDenied, a.deniedMessage())
	}
	var info PeerInfo
	switch ai := p.AuthInfo.(type) {
	case PeerInfo:
		info = ai
	case unidentifiedPeer:
		log.Warn("control: refused a caller it cannot identify", "method", method, "reason", ai.reason)
		return status.Error(codes.PermissionDenied, ai.reason)
	default:
		return status.Error(codes.PermissionDenied, a.deniedMessage())
	}
	if !a.allows(info) {
		log.Warn("control: refused a caller", "method", method, "pid", info.PID, "uid", info.UID, "gid", info.GID)
		return status.Error(codes.PermissionDenied, a.deniedMessage())
	}
	return nil
}

func (a access) unaryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := a.authorize(ctx, log, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

func (a access) streamInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := a.authorize(ss.Context(), log, info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}
