package daemon

import (
	"context"
	"fmt"
	"net/netip"

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

// setDNS points the system's resolver at servers, through the tunnel's
// device. It records that DNS is on before trying, since a Set that
// failed half way (resolved took the servers but not the domains) still
// leaves something for Restore to undo.
func (d *Daemon) setDNS(ctx context.Context, servers []netip.Addr) error {
	d.mu.Lock()
	d.dnsOn = true
	d.mu.Unlock()
	if err := d.cfg.DNS.Set(ctx, dns.Config{Servers: servers, Interface: d.ifname}); err != nil {
		return fmt.Errorf("DNS: %w", err)
	}
	return nil
}
