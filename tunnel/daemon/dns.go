package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

// resolvers picks the DNS servers for a tunnel that leaves by exitID:
// the user's (dns_servers) if there are any, else the ones the exit
// advertises in the directory. Both modes reach the internet by the exit,
// so its resolvers are reachable through the tunnel and see lookups
// coming from the exit, like the rest of the traffic.
//
// With neither, it fails rather than leave the machine's resolver in
// place: that one is on the local network (the ISP's, the router's) and
// would see every name looked up, or, under the kill switch, be blocked
// and leave the user with a tunnel that resolves nothing.
func resolvers(s control.Settings, doc *directory.Document, exitID string) ([]netip.Addr, error) {
	if len(s.DNSServers) > 0 {
		return s.DNSServers, nil
	}
	var exit *directory.Descriptor
	if doc != nil {
		exit = doc.ByID(exitID)
	}
	if exit == nil || exit.Role != directory.RoleExit || len(exit.DNS) == 0 {
		return nil, fmt.Errorf("no DNS server: set dns_servers or choose an exit that provides one (exit %q provides none)", exitID)
	}
	var out []netip.Addr
	for _, a := range exit.DNS {
		// Without ipv6 the tunnel carries no IPv6 and the routes block
		// it (see routeConfig), so an IPv6 resolver would never answer.
		if a.Is6() && !s.IPv6 {
			continue
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no DNS server: set dns_servers, turn ipv6 on or choose another exit (exit %q provides only IPv6 resolvers, and ipv6 is off)", exitID)
	}
	return out, nil
}

// usableExit reports whether a tunnel through exit would have DNS under
// s: choosing only such exits keeps an attempt from building a tunnel
// through one whose lack of a resolver fails it anyway.
func usableExit(s control.Settings, doc *directory.Document) func(*directory.Descriptor) bool {
	return func(exit *directory.Descriptor) bool {
		_, err := resolvers(s, doc, exit.ID)
		return err == nil
	}
}

// setDNS points the system's resolver at servers, through the tunnel's
// device. It records that DNS is on before trying, since a Set that
// failed half way (resolved took the servers but not the domains) still
// leaves something for Restore to undo; and, until the Set succeeds, that
// the system may point at the servers before as well as at these, so
// that the routes keep both in the tunnel (see setRoutes).
func (d *Daemon) setDNS(ctx context.Context, servers []netip.Addr) error {
	d.mu.Lock()
	d.dnsOn = true
	d.resolving = union(d.resolving, servers)
	d.mu.Unlock()
	if err := d.cfg.DNS.Set(ctx, dns.Config{Servers: servers, Interface: d.ifname}); err != nil {
		if d.needsRestart(err) {
			// Not again in this process: the attempt, or the reconnect
			// a failed change of settings would start, is called off,
			// and the stop that follows removes the routes and DNS.
			d.mu.Lock()
			d.supersedeLocked()
			d.mu.Unlock()
		}
		return fmt.Errorf("DNS: %w", err)
	}
	d.mu.Lock()
	d.resolving = slices.Clone(servers)
	d.mu.Unlock()
	return nil
}

// setRoutes gives the tunnel with addrs the routes of s, with servers,
// the resolvers DNS is about to point at, routed into the TUN along with
// those it may point at now: until DNS has moved, a lookup may still go
// to the old ones, and it must not leave outside the tunnel either. It
// returns what it routed into the TUN, for dropResolvers.
func (d *Daemon) setRoutes(ctx context.Context, s control.Settings, addrs []netip.Prefix, doc *directory.Document, servers []netip.Addr) ([]netip.Addr, error) {
	d.mu.Lock()
	tunneled := union(d.resolving, servers)
	d.mu.Unlock()
	if err := d.cfg.Router.Set(ctx, d.routeConfig(s, addrs, doc, tunneled)); err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	return tunneled, nil
}

// dropResolvers sets the routes again without the resolvers setRoutes
// routed into the TUN (tunneled) that DNS, set since, no longer points
// at: their addresses may be on the LAN for other uses. Failing is only
// logged, since a resolver too many in the tunnel leaks nothing and the
// next change of routes drops it.
func (d *Daemon) dropResolvers(ctx context.Context, s control.Settings, addrs []netip.Prefix, doc *directory.Document, tunneled []netip.Addr) {
	d.mu.Lock()
	now := slices.Clone(d.resolving)
	d.mu.Unlock()
	if len(union(now, tunneled)) == len(now) {
		return // nothing to drop
	}
	if err := d.cfg.Router.Set(ctx, d.routeConfig(s, addrs, doc, now)); err != nil {
		d.log.Warn("routes: taking old resolvers out of the tunnel", "err", err)
	}
}

// union is a followed by what of b it lacks.
func union(a, b []netip.Addr) []netip.Addr {
	out := slices.Clone(a)
	for _, x := range b {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}
