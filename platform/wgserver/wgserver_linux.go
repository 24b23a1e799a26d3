//go:build linux

// Package wgserver runs a gateway's WireGuard server: the kernel's
// WireGuard where the kernel has it, otherwise an embedded wireguard-go
// device with its UAPI socket, so that `wg show` works either way. Peers
// are configured through wgctrl in both cases.
package wgserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Config describes the server.
type Config struct {
	// Name of the interface; default "mvwg0".
	Name       string
	PrivateKey [32]byte
	ListenPort int
	// Addrs are the gateway's own addresses inside the tunnel.
	Addrs []netip.Prefix
	// MTU of the interface; default 1420.
	MTU int
	// ForceUserspace skips the kernel module even if present.
	ForceUserspace bool
	Logger         *slog.Logger
}

// Server is a running WireGuard server.
type Server struct {
	name   string
	dev    *device.Device // nil with kernel WireGuard
	uapi   net.Listener
	client *wgctrl.Client
	kernel bool
	log    *slog.Logger
}

// Start brings the server up.
func Start(cfg Config) (*Server, error) {
	if cfg.Name == "" {
		cfg.Name = "mvwg0"
	}
	if cfg.MTU <= 0 {
		cfg.MTU = 1420
	}
	s := &Server{name: cfg.Name, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.ForceUserspace || !s.startKernel(cfg) {
		if err := s.startUserspace(cfg); err != nil {
			return nil, err
		}
	}
	var err error
	if s.client, err = wgctrl.New(); err != nil {
		s.Close()
		return nil, fmt.Errorf("wgserver: wgctrl: %w", err)
	}
	key := wgtypes.Key(cfg.PrivateKey)
	if err := s.client.ConfigureDevice(cfg.Name, wgtypes.Config{PrivateKey: &key, ListenPort: &cfg.ListenPort}); err != nil {
		s.Close()
		return nil, fmt.Errorf("wgserver: configure %s: %w", cfg.Name, err)
	}
	if err := s.addresses(cfg); err != nil {
		s.Close()
		return nil, err
	}
	s.log.Info("WireGuard server up", "name", cfg.Name, "kernel", s.kernel, "port", cfg.ListenPort)
	return s, nil
}

// startKernel tries the kernel module and reports whether it worked.
func (s *Server) startKernel(cfg Config) bool {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = cfg.Name
	attrs.MTU = cfg.MTU
	if err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: attrs}); err != nil {
		s.log.Debug("no kernel WireGuard, using wireguard-go", "err", err)
		return false
	}
	s.kernel = true
	return true
}

func (s *Server) startUserspace(cfg Config) error {
	t, err := tun.CreateTUN(cfg.Name, cfg.MTU)
	if err != nil {
		return fmt.Errorf("wgserver: create TUN %s: %w", cfg.Name, err)
	}
	logger := &device.Logger{Verbosef: device.DiscardLogf, Errorf: func(f string, a ...any) { s.log.Warn(fmt.Sprintf(f, a...)) }}
	s.dev = device.NewDevice(t, conn.NewDefaultBind(), logger)
	file, err := ipc.UAPIOpen(cfg.Name)
	if err != nil {
		s.dev.Close()
		return fmt.Errorf("wgserver: UAPI socket: %w", err)
	}
	if s.uapi, err = ipc.UAPIListen(cfg.Name, file); err != nil {
		s.dev.Close()
		return fmt.Errorf("wgserver: UAPI listen: %w", err)
	}
	go func() {
		for {
			c, err := s.uapi.Accept()
			if err != nil {
				return
			}
			go s.dev.IpcHandle(c)
		}
	}()
	return s.dev.Up()
}

func (s *Server) addresses(cfg Config) error {
	l, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		return fmt.Errorf("wgserver: find %s: %w", cfg.Name, err)
	}
	for _, p := range cfg.Addrs {
		ipnet := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipnet, Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("wgserver: address %v: %w", p, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("wgserver: up: %w", err)
	}
	return nil
}

// Kernel reports whether the kernel's WireGuard serves.
func (s *Server) Kernel() bool { return s.kernel }

// AddPeer lets key in with the given inner addresses.
func (s *Server) AddPeer(key [32]byte, allowed []netip.Prefix) error {
	ips := make([]net.IPNet, len(allowed))
	for i, p := range allowed {
		ips[i] = net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	return s.client.ConfigureDevice(s.name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{
		PublicKey: wgtypes.Key(key), ReplaceAllowedIPs: true, AllowedIPs: ips,
	}}})
}

// RemovePeer removes key.
func (s *Server) RemovePeer(key [32]byte) error {
	return s.client.ConfigureDevice(s.name, wgtypes.Config{Peers: []wgtypes.PeerConfig{{PublicKey: wgtypes.Key(key), Remove: true}}})
}

// ErrNoPeer is returned for a key the server does not know.
var ErrNoPeer = errors.New("wgserver: no such peer")

// LastHandshake is the peer's latest handshake, zero if none.
func (s *Server) LastHandshake(key [32]byte) (time.Time, error) {
	d, err := s.client.Device(s.name)
	if err != nil {
		return time.Time{}, fmt.Errorf("wgserver: read %s: %w", s.name, err)
	}
	for _, p := range d.Peers {
		if p.PublicKey == wgtypes.Key(key) {
			return p.LastHandshakeTime, nil
		}
	}
	return time.Time{}, ErrNoPeer
}

// Close takes the server down.
func (s *Server) Close() error {
	if s.client != nil {
		s.client.Close()
	}
	if s.uapi != nil {
		s.uapi.Close()
	}
	if s.dev != nil {
		s.dev.Close()
	}
	if s.kernel {
		if l, err := netlink.LinkByName(s.name); err == nil {
			return netlink.LinkDel(l)
		}
	}
	return nil
}
