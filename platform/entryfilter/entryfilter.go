// Package entryfilter holds an entry gateway to its one job in Fast mode:
// carrying its WireGuard clients' sealed datagrams to the exit gateways.
// An nftables table lets the clients forward UDP to the WireGuard
// endpoints (address and port) of the exits the directory lists, and to
// endpoints the operator adds, and drops everything else they send through
// the gateway: no TCP to the internet, no UDP to other hosts, nothing from
// one client to another, and nothing addressed to the gateway itself but
// ICMP. Without it an entry would be an open one-hop VPN that sees both who
// its clients are and where they go, which is what the two hops are for
// never to happen.
//
// The allowed endpoints live in named sets, so a new directory document
// changes one set in one netlink transaction and never rebuilds the rules.
package entryfilter

import (
	"log/slog"
	"net/netip"
	"slices"
)

// TableName is the nftables table the filter owns (family inet).
const TableName = "mixvpn_entry_filter"

// Config describes the filter.
type Config struct {
	// Interface is the entry's WireGuard device: everything that arrives
	// on it is from a client. The name may not exist yet.
	Interface string
	// Static are exit endpoints allowed whatever the directory says: an
	// operator's own exits, for clients who bring their own exit
	// configuration.
	Static []netip.AddrPort
	Logger *slog.Logger
}

// normalise sorts, unmaps and de-duplicates endpoints, so that two lists
// with the same members compare equal.
func normalise(eps []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(eps))
	for _, ep := range eps {
		if ep.IsValid() && ep.Port() != 0 {
			out = append(out, netip.AddrPortFrom(ep.Addr().Unmap(), ep.Port()))
		}
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return slices.Compact(out)
}
