package socks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/tunnel/anon"
)

// Errors of a Front's dials.
var (
	// ErrNoDNS: a name was asked for and no resolver is configured. Names
	// are never resolved outside the tunnel, so the dial fails instead.
	ErrNoDNS = errors.New("socks: no DNS server to resolve names through the tunnel (give one with --dns)")
	// ErrNetwork: DialContext carries TCP, ListenPacket UDP, nothing else.
	ErrNetwork = errors.New("socks: network not carried")
	// ErrNotUp: Up has not succeeded, or Close was called.
	ErrNotUp = errors.New("socks: the mixnet front is not up")
)

// Config configures a Front.
type Config struct {
	// Connect says how to join the mixnet: directory, pinned key,
	// gateways and the client's rates.
	Connect client.ConnectConfig
	// DNS are the resolvers names are looked up with. Queries travel
	// through the tunnel, from the session's inner address, so the exit's
	// side of the internet answers them and nothing local sees them.
	DNS []netip.Addr
	// MTU of the userspace stack; default anon.DefaultMTU.
	MTU    int
	Logger *slog.Logger
}

// Front is Anonymous mode in a process without privileges: a mixnet
// session (tunnel/anon) whose device is a userspace TCP/IP stack
// (gVisor's, through wireguard-go's netstack), so that connections are
// opened with DialContext instead of through a TUN device and routes.
type Front struct {
	cfg Config
	log *slog.Logger
	dev *deferredDevice
	t   *anon.Tunnel

	mu     sync.Mutex
	net    *netstack.Net
	closed bool
}

// NewFront builds a Front; Up starts it.
func NewFront(cfg Config) (*Front, error) {
	if cfg.MTU <= 0 {
		cfg.MTU = anon.DefaultMTU
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, a := range cfg.DNS {
		if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() {
			return nil, fmt.Errorf("socks: %v cannot be a resolver inside the tunnel", a)
		}
	}
	dev := newDeferredDevice(cfg.MTU)
	t, err := anon.New(anon.Config{Connect: cfg.Connect, Logger: log}, dev)
	if err != nil {
		return nil, fmt.Errorf("socks: %w", err)
	}
	return &Front{cfg: cfg, log: log, dev: dev, t: t}, nil
}

// Up joins the mixnet, opens a session with the exit and builds the
// userspace stack on the session's inner addresses. It returns once
// DialContext can be used.
func (f *Front) Up(ctx context.Context) error {
	if err := f.t.Up(ctx); err != nil {
		return fmt.Errorf("socks: %w", err)
	}
	v4, v6 := f.t.Addrs()
	var addrs []netip.Addr
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			addrs = append(addrs, a)
		}
	}
	if len(addrs) == 0 {
		return errors.New("socks: the exit assigned no inner address")
	}
	dev, tnet, err := netstack.CreateNetTUN(addrs, f.cfg.DNS, f.cfg.MTU)
	if err != nil {
		return fmt.Errorf("socks: userspace stack: %w", err)
	}
	if !f.dev.attach(dev) {
		return ErrNotUp
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrNotUp
	}
	f.net = tnet
	st := f.t.Stats()
	f.log.Info("mixnet front up", "entry", st.Entry, "exit", st.Exit, "v4", v4, "v6", v6, "dns", f.cfg.DNS)
	return nil
}

// DialContext opens a TCP connection through the mixnet. A name in
// address is resolved through the tunnel with the configured DNS servers,
// never by the local resolver.
func (f *Front) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, fmt.Errorf("%w: %q", ErrNetwork, network)
	}
	f.mu.Lock()
	tnet := f.net
	f.mu.Unlock()
	if tnet == nil {
		return nil, ErrNotUp
	}
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("socks: %w", err)
	}
	if _, err := netip.ParseAddr(host); err != nil && len(f.cfg.DNS) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoDNS, host)
	}
	// The stack's resolver bounds its queries by its own timeouts, not by
	// ctx: wait for ctx alone, so a client that gives up or a server that
	// stops is not held for seconds, and close what comes late.
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := tnet.DialContext(ctx, network, address)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("socks: dial %s: %w", address, ctx.Err())
	}
}

// ListenPacket opens a UDP socket in the tunnel on the session's inner
// address of network's family ("udp4" or "udp6").
func (f *Front) ListenPacket(_ context.Context, network string) (net.PacketConn, error) {
	f.mu.Lock()
	tnet := f.net
	f.mu.Unlock()
	if tnet == nil {
		return nil, ErrNotUp
	}
	v4, v6 := f.t.Addrs()
	var local netip.Addr
	switch network {
	case "udp4":
		local = v4
	case "udp6":
		local = v6
	default:
		return nil, fmt.Errorf("%w: %q", ErrNetwork, network)
	}
	if !local.IsValid() {
		return nil, fmt.Errorf("%w: the exit assigned no %s address", ErrNetwork, network)
	}
	pc, err := tnet.ListenUDPAddrPort(netip.AddrPortFrom(local, 0))
	if err != nil {
		return nil, fmt.Errorf("socks: %s socket: %w", network, err)
	}
	return pc, nil
}

// LookupNetIP resolves name through the tunnel with the configured DNS
// servers, IPv6 addresses first.
func (f *Front) LookupNetIP(ctx context.Context, name string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(name); err == nil {
		return []netip.Addr{ip}, nil
	}
	f.mu.Lock()
	tnet := f.net
	f.mu.Unlock()
	if tnet == nil {
		return nil, ErrNotUp
	}
	if len(f.cfg.DNS) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoDNS, name)
	}
	type result struct {
		addrs []string
		err   error
	}
	done := make(chan result, 1)
	go func() {
		a, err := tnet.LookupContextHost(ctx, name)
		done <- result{a, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		return nil, fmt.Errorf("socks: resolve %s: %w", name, ctx.Err())
	}
	if r.err != nil {
		return nil, r.err
	}
	out := make([]netip.Addr, 0, len(r.addrs))
	for _, s := range r.addrs {
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, ip)
		}
	}
	return out, nil
}

// Addrs are the inner addresses the exit assigned, once Up returned.
func (f *Front) Addrs() (v4, v6 netip.Addr) { return f.t.Addrs() }

// Stats are the tunnel's counters: the client's Poisson stream, loops and
// packets carried.
func (f *Front) Stats() anon.Stats { return f.t.Stats() }

// Health is what the client's loops say about the network.
func (f *Front) Health() client.Health { return f.t.Health() }

// Close ends the session, leaves the mixnet and closes the stack; open
// connections through it fail.
func (f *Front) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	f.net = nil
	f.mu.Unlock()
	// The tunnel closes its device, which closes the stack.
	return f.t.Close()
}
