package daemon

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

// directoryEndpoint is the address and port the directory at rawURL
// listens on, the port defaulting to the scheme's.
//
// The URL must name the directory by IP address. The firewall and the
// routes let the daemon reach the directory around the tunnel, and
// nftables rules and ip rules match addresses, not names; a name would
// have to be resolved before any of them is in place, which lockdown's
// boot ruleset (it allows the directory and nothing else, DNS included)
// makes impossible, and an address resolved once would go stale without
// anyone noticing until the daemon could no longer connect. A clear error
// at start is better than either.
func directoryEndpoint(rawURL string) (netip.AddrPort, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("daemon: directory URL: %w", err)
	}
	var port uint16
	switch u.Scheme {
	case "http":
		port = 80
	case "https":
		port = 443
	default:
		return netip.AddrPort{}, fmt.Errorf("daemon: directory URL %q: the scheme must be http or https", rawURL)
	}
	ip, err := netip.ParseAddr(u.Hostname())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("daemon: directory URL %q must name the directory by IP address, not %q: the firewall and routes let the daemon reach it by address, before any DNS: %w",
			rawURL, u.Hostname(), err)
	}
	if ip.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("daemon: directory URL %q: an address with a zone cannot be routed around the tunnel", rawURL)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("daemon: directory URL %q: port: %w", rawURL, err)
		}
		if n == 0 {
			return netip.AddrPort{}, fmt.Errorf("daemon: directory URL %q: port 0", rawURL)
		}
		port = uint16(n)
	}
	return netip.AddrPortFrom(ip.Unmap(), port), nil
}

// firewallPolicy is the kill switch the settings ask for, and whether
// there is one: while the tunnel is meant to be up (allowing the
// directory and doc's entries) and, with lockdown, always (allowing only
// the directory while it is not).
func (d *Daemon) firewallPolicy(s control.Settings, doc *directory.Document, meantUp bool) (firewall.Policy, bool) {
	if !s.Lockdown && !(meantUp && s.KillSwitch) {
		return firewall.Policy{}, false
	}
	if !meantUp {
		doc = nil
	}
	p := firewall.Policy{Interface: d.ifname, AllowLAN: s.AllowLAN, AllowDHCP: true}
	if s.AllowLAN {
		p.LAN = firewall.DefaultLAN()
	}
	for _, ap := range d.bypass(doc) {
		// The directory and links are TCP, WireGuard is UDP; the
		// port tells which, but allowing both costs nothing.
		p.Endpoints = append(p.Endpoints, firewall.Endpoint{Addr: ap, Proto: firewall.TCP}, firewall.Endpoint{Addr: ap, Proto: firewall.UDP})
	}
	return p, true
}

// allowsTCP reports whether a TCP connection to addr gets through p
// outside the tunnel: to one of its endpoints or, with AllowLAN, to the
// LAN.
func allowsTCP(p firewall.Policy, addr string) bool {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return false
	}
	ap = unmap(ap)
	for _, e := range p.Endpoints {
		if e.Proto == firewall.TCP && unmap(e.Addr) == ap {
			return true
		}
	}
	if p.AllowLAN {
		lan := p.LAN
		if len(lan) == 0 {
			lan = firewall.DefaultLAN()
		}
		for _, pfx := range lan {
			if pfx.Contains(ap.Addr()) {
				return true
			}
		}
	}
	return false
}

// unmap is ap with an IPv4-mapped address as plain IPv4, the way the
// firewall and the router match it.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
