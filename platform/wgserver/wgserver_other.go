//go:build !linux

package wgserver

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"
)

// Config describes the server.
type Config struct {
	Name           string
	PrivateKey     [32]byte
	ListenPort     int
	Addrs          []netip.Prefix
	MTU            int
	ForceUserspace bool
	Logger         *slog.Logger
}

// Server is a WireGuard server; gateways run on Linux only for now.
type Server struct{}

// ErrNoPeer is returned for a key the server does not know.
var ErrNoPeer = errors.New("wgserver: no such peer")

// Start is not supported on this operating system yet.
func Start(Config) (*Server, error) { return nil, errors.New("wgserver: Linux only for now") }

// AddPeer is not supported on this operating system yet.
func (*Server) AddPeer([32]byte, []netip.Prefix) error { return ErrNoPeer }

// RemovePeer is not supported on this operating system yet.
func (*Server) RemovePeer([32]byte) error { return ErrNoPeer }

// LastHandshake is not supported on this operating system yet.
func (*Server) LastHandshake([32]byte) (time.Time, error) { return time.Time{}, ErrNoPeer }

// Close does nothing.
func (*Server) Close() error { return nil }
