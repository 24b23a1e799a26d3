// Package router sends the machine's traffic into the tunnel's TUN device
// and keeps the tunnel's own packets out of it. On Linux it does so the
// way wg-quick does: default routes in a table of their own, chosen by a
// policy rule for every packet that does not carry FwMark, so the main
// table (and with it the LAN and the physical default route) stays as it
// was and everything is undone by removing a few rules and one table.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
)

// FwMark is the socket mark (SO_MARK) of the tunnel's own sockets. Marked
// packets skip the tunnel's table and leave by the main table's routes;
// 0x6d78 is "mx".
const FwMark = 0x6d78

// DefaultTable is the routing table that holds the routes into the TUN.
const DefaultTable = 51888

// DefaultPriority is the priority of the first of the router's ip rules;
// the others follow it directly, five in all. It sits well before the
// main table's rule (32766) and after the local table's (0).
const DefaultPriority = 5280

// Router routes traffic through the TUN device.
type Router interface {
	// Up prepares the router. It removes what an earlier run that died
	// without Close left behind, so it must come before Set.
	Up(ctx context.Context) error
	// Set makes the system match cfg: calling it again with the same cfg
	// changes nothing, and with another cfg adds and removes only the
	// difference.
	Set(ctx context.Context, cfg Config) error
	// Close removes every address, route and rule the router added and
	// puts the interface back down if it found it down.
	Close() error
}

// Config is the routing the tunnel wants.
type Config struct {
	// Interface is the TUN device's name.
	Interface string
	// Addresses are the TUN's own addresses inside the tunnel.
	Addresses []netip.Prefix
	// RouteIPv4 and RouteIPv6 send that family's default route through
	// the TUN. A family not routed keeps using the main table.
	RouteIPv4, RouteIPv6 bool
	// BlockIPv6 is for a tunnel that carries no IPv6: what RouteIPv6
	// would send into the TUN fails at once with "no route to host"
	// (EHOSTUNREACH) instead, so that IPv6 does not leave around the
	// tunnel and applications fall back to IPv4 without waiting for a
	// timeout. The same rules as RouteIPv6 let through the bypass,
	// AllowLAN, the main table's routes other than its default (the
	// directly connected subnets and link-local, which neighbour
	// discovery, router adverts and DHCPv6 use) and FwMark's sockets.
	// It excludes RouteIPv6.
	BlockIPv6 bool
	// Bypass are the tunnel's own endpoints, such as the entry gateway.
	// Their traffic leaves by the main table even from unmarked sockets;
	// port 0 bypasses every port of the address.
	Bypass []netip.AddrPort
	// AllowLAN are prefixes reached by the main table instead of the
	// tunnel, for LAN ranges beyond the directly connected subnets (those
	// bypass the tunnel anyway).
	AllowLAN []netip.Prefix
	// Tunnel are destinations that always go through the TUN, ahead of
	// Bypass, AllowLAN and the main table's connected subnets: the
	// tunnel's resolvers, which may well have private addresses (an
	// exit's resolver inside its tunnel network, say 10.64.0.1) that a
	// LAN or a docker or libvirt bridge on this machine also covers, and
	// whose lookups must not go there in the clear. Only FwMark's sockets
	// skip them, so that the tunnel's own traffic never loops into the
	// TUN, should an endpoint share an address with one. A family that is
	// blocked (BlockIPv6) fails them as it fails the rest of its traffic;
	// a family neither routed nor blocked cannot have any.
	Tunnel []netip.Prefix
}

// Options configure New.
type Options struct {
	// Logger defaults to a discard logger.
	Logger *slog.Logger
	// Table defaults to DefaultTable; change it only to avoid a clash.
	Table int
	// Priority defaults to DefaultPriority; the router uses it and the
	// four numbers after it.
	Priority int
}

// Validate reports whether cfg can be applied.
func (c Config) Validate() error {
	if c.Interface == "" {
		return errors.New("router: no interface")
	}
	if c.RouteIPv6 && c.BlockIPv6 {
		return errors.New("router: IPv6 cannot be both routed into the tunnel and blocked")
	}
	for _, a := range c.Addresses {
		if !a.IsValid() {
			return errors.New("router: invalid interface address")
		}
	}
	for _, b := range c.Bypass {
		if !b.Addr().IsValid() {
			return fmt.Errorf("router: invalid bypass endpoint %v", b)
		}
	}
	for _, p := range c.AllowLAN {
		if !p.IsValid() {
			return errors.New("router: invalid LAN prefix")
		}
	}
	for _, p := range c.Tunnel {
		if !p.IsValid() {
			return errors.New("router: invalid tunnel prefix")
		}
		// Nothing would take such a prefix into the TUN: its lookups
		// would go by the main table, the very thing Tunnel prevents.
		if is4 := p.Addr().Unmap().Is4(); is4 && !c.RouteIPv4 || !is4 && !c.RouteIPv6 && !c.BlockIPv6 {
			return fmt.Errorf("router: %v must go through the tunnel, which does not carry its family", p)
		}
	}
	return nil
}
