// Package firewall is the daemon's kill switch: an nftables table that
// drops every packet except those the tunnel needs, so that nothing leaks
// around the tunnel while it connects, reconnects or has died. The same
// ruleset renders as nft text for a boot-time unit that locks the machine
// down before any network comes up.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
)

// TableName is the nftables table (family inet) the firewall owns.
const TableName = "mixvpn"

// Firewall installs and removes the kill switch.
type Firewall interface {
	// Apply replaces whatever policy is installed with p in one step, so
	// that switching policies never lets a packet through that neither
	// policy allows.
	Apply(ctx context.Context, p Policy) error
	// Remove deletes the table; it is not an error if there is none.
	Remove() error
}

// Proto is a transport protocol an endpoint is reached over.
type Proto string

// The protocols a tunnel endpoint can use.
const (
	UDP Proto = "udp"
	TCP Proto = "tcp"
)

// Endpoint is an address the daemon's own traffic must reach outside the
// tunnel, such as the entry gateway.
type Endpoint struct {
	Addr  netip.AddrPort
	Proto Proto
}

// Policy says what may pass besides loopback.
type Policy struct {
	// Interface is the TUN device; everything sent out of it is allowed.
	// Empty means there is no tunnel and nothing leaves at all.
	Interface string
	// Endpoints the daemon must reach around the tunnel.
	Endpoints []Endpoint
	// AllowLAN lets traffic to and from LAN through.
	AllowLAN bool
	// LAN is what counts as LAN; empty means DefaultLAN.
	LAN []netip.Prefix
	// AllowDHCP lets DHCP and DHCPv6 through, so that the machine keeps
	// its address on the physical network while locked down.
	AllowDHCP bool
}

// Options configure New.
type Options struct {
	// Logger defaults to a discard logger.
	Logger *slog.Logger
}

// DefaultLAN returns private, link-local and multicast ranges of both
// families. It returns a fresh slice each time so no caller can change
// another's.
func DefaultLAN() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
		"224.0.0.0/4", "255.255.255.255/32",
		"fe80::/10", "fc00::/7", "ff00::/8",
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// Validate reports whether p can be installed. The interface name ends up
// quoted in nft text, so anything but a plain Linux interface name is
// refused rather than escaped.
func (p Policy) Validate() error {
	if p.Interface != "" {
		if len(p.Interface) > 15 {
			return fmt.Errorf("firewall: interface name %q is longer than 15 bytes", p.Interface)
		}
		for _, c := range p.Interface {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
				return fmt.Errorf("firewall: interface name %q has a character other than letters, digits, '-', '_' and '.'", p.Interface)
			}
		}
	}
	for _, e := range p.Endpoints {
		if !e.Addr.IsValid() || e.Addr.Port() == 0 {
			return fmt.Errorf("firewall: endpoint %v needs an address and a port", e.Addr)
		}
		if e.Proto != UDP && e.Proto != TCP {
			return fmt.Errorf("firewall: endpoint %v: protocol %q is neither udp nor tcp", e.Addr, e.Proto)
		}
	}
	for _, l := range p.LAN {
		if !l.IsValid() {
			return errors.New("firewall: invalid LAN prefix")
		}
	}
	return nil
}

// Protocol numbers and ICMPv6 neighbour discovery types the rules match.
const (
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// ndpTypes are the ICMPv6 neighbour discovery messages, by number.
func ndpTypes() [4]uint8 { return [4]uint8{133, 134, 135, 136} }

func ndpName(t uint8) string {
	return map[uint8]string{
		133: "nd-router-solicit", 134: "nd-router-advert",
		135: "nd-neighbor-solicit", 136: "nd-neighbor-advert",
	}[t]
}

// rule is one accept rule. Render and the netlink encoding both work from
// it, which is what keeps the boot-time file and Apply equivalent.
type rule struct {
	iifLo, oifLo bool
	iifname      string
	oifname      string
	established  bool
	src, dst     netip.Prefix // at most one is set
	l4           uint8
	sport, dport uint16
	icmp6        int // -1 for none
}

func newRule() rule { return rule{icmp6: -1} }

type chain struct {
	name  string
	rules []rule
}

// ruleset lays out the three chains. Every chain drops by default; the
// order inside a chain only matters for speed.
func ruleset(p Policy) []chain {
	lan := p.LAN
	if len(lan) == 0 {
		lan = DefaultLAN()
	}
	var in, out, fwd []rule
	add := func(dst *[]rule, f func(*rule)) {
		r := newRule()
		f(&r)
		*dst = append(*dst, r)
	}

	add(&in, func(r *rule) { r.iifLo = true })
	add(&in, func(r *rule) { r.established = true })
	add(&out, func(r *rule) { r.oifLo = true })
	if p.Interface != "" {
		add(&out, func(r *rule) { r.oifname = p.Interface })
	}
	for _, e := range p.Endpoints {
		a := e.Addr.Addr().Unmap()
		add(&out, func(r *rule) {
			r.dst = netip.PrefixFrom(a, a.BitLen())
			r.l4 = protoUDP
			if e.Proto == TCP {
				r.l4 = protoTCP
			}
			r.dport = e.Addr.Port()
		})
	}
	// Without neighbour discovery IPv6 cannot reach even the router that
	// leads to the entry gateway.
	for _, t := range ndpTypes() {
		add(&in, func(r *rule) { r.l4, r.icmp6 = protoICMPv6, int(t) })
		add(&out, func(r *rule) { r.l4, r.icmp6 = protoICMPv6, int(t) })
	}
	if p.AllowDHCP {
		add(&out, func(r *rule) { r.l4, r.sport, r.dport = protoUDP, 68, 67 })
		add(&in, func(r *rule) { r.l4, r.sport, r.dport = protoUDP, 67, 68 })
		add(&out, func(r *rule) { r.l4, r.sport, r.dport = protoUDP, 546, 547 })
		add(&in, func(r *rule) { r.l4, r.sport, r.dport = protoUDP, 547, 546 })
	}
	if p.AllowLAN {
		for _, l := range lan {
			l = l.Masked()
			add(&in, func(r *rule) { r.src = l })
			add(&out, func(r *rule) { r.dst = l })
		}
	}

	// Forwarding is for containers and VMs on this machine: they may use
	// the tunnel (and the LAN if allowed) but never go around it.
	if p.Interface != "" {
		add(&fwd, func(r *rule) { r.oifname = p.Interface })
		add(&fwd, func(r *rule) { r.iifname, r.established = p.Interface, true })
	}
	if p.AllowLAN {
		for _, l := range lan {
			l = l.Masked()
			add(&fwd, func(r *rule) { r.dst = l })
		}
	}
	return []chain{{"input", in}, {"output", out}, {"forward", fwd}}
}

// text is the rule as `nft list` prints it.
func (r rule) text() string {
	var b strings.Builder
	w := func(s string) {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s)
	}
	if r.iifLo {
		w(`iif "lo"`)
	}
	if r.oifLo {
		w(`oif "lo"`)
	}
	if r.iifname != "" {
		w(fmt.Sprintf("iifname %q", r.iifname))
	}
	if r.oifname != "" {
		w(fmt.Sprintf("oifname %q", r.oifname))
	}
	if r.established {
		w("ct state established,related")
	}
	for _, a := range []struct {
		dir string
		p   netip.Prefix
	}{{"saddr", r.src}, {"daddr", r.dst}} {
		if !a.p.IsValid() {
			continue
		}
		fam := "ip"
		if a.p.Addr().Is6() {
			fam = "ip6"
		}
		s := a.p.String()
		if a.p.IsSingleIP() {
			s = a.p.Addr().String()
		}
		w(fam + " " + a.dir + " " + s)
	}
	l4 := map[uint8]string{protoTCP: "tcp", protoUDP: "udp"}[r.l4]
	if r.sport != 0 {
		w(fmt.Sprintf("%s sport %d", l4, r.sport))
	}
	if r.dport != 0 {
		w(fmt.Sprintf("%s dport %d", l4, r.dport))
	}
	if r.icmp6 >= 0 {
		w("icmpv6 type " + ndpName(uint8(r.icmp6)))
	}
	w("accept")
	return b.String()
}

// Render returns p as an nft script that `nft -f` loads in one
// transaction, replacing any earlier mixvpn table, exactly as Apply does.
// It is meant for a unit ordered before network-pre.target, so the machine
// is locked down at boot before the daemon runs. The body after the first
// two lines is what `nft list table inet mixvpn` prints once it is loaded.
func Render(p Policy) (string, error) {
	if err := p.Validate(); err != nil {
		return "", err
	}
	var b strings.Builder
	// Declaring the table first makes the delete succeed when there is
	// none, so the file works on a fresh boot and on a running system.
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", TableName, TableName)
	fmt.Fprintf(&b, "table inet %s {\n", TableName)
	for i, c := range ruleset(p) {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tchain %s {\n", c.name)
		fmt.Fprintf(&b, "\t\ttype filter hook %s priority filter; policy drop;\n", c.name)
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r.text())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String(), nil
}
