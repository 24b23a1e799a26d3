//go:build linux

package router

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// linuxRouter keeps track of every address, route and rule it installed,
// so that Close removes exactly those and nothing the system had before.
type linuxRouter struct {
	log   *slog.Logger
	h     *netlink.Handle
	diag  *nl.SocketHandle // sock_diag, to abort sockets of deleted addresses
	table int
	prio  int

	mu          sync.Mutex
	up, closed  bool
	ifname      string // interface the state below belongs to
	restoreDown bool   // the interface was down before Set raised it
	addrs       map[netip.Prefix]bool
	routes      map[string]netlink.Route
	rules       map[string]netlink.Rule
}

// New opens the netlink socket the router uses for its whole life. The
// socket belongs to the calling thread's network namespace, so a router
// made in a namespace keeps working there from any goroutine.
func New(opts Options) (Router, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("router: netlink: %w", err)
	}
	diag, err := nl.Subscribe(unix.NETLINK_INET_DIAG)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("router: sock_diag: %w", err)
	}
	r := &linuxRouter{
		log:    opts.Logger,
		h:      h,
		diag:   &nl.SocketHandle{Socket: diag},
		table:  opts.Table,
		prio:   opts.Priority,
		addrs:  map[netip.Prefix]bool{},
		routes: map[string]netlink.Route{},
		rules:  map[string]netlink.Rule{},
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.table == 0 {
		r.table = DefaultTable
	}
	if r.prio == 0 {
		r.prio = DefaultPriority
	}
	return r, nil
}

// Up deletes rules and routes that look like ours: a daemon that crashed
// left them, and with them in place traffic would go into a TUN that no
// longer exists.
func (r *linuxRouter) Up(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("router: Up after Close")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("router: up: %w", err)
	}
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := r.h.RuleList(fam)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("router: list rules: %w", err)
		}
		for _, rule := range rules {
			ours := rule.Table == r.table ||
				(rule.Table == unix.RT_TABLE_MAIN || rule.Goto >= 0) && rule.Priority >= r.prio && rule.Priority <= r.prio+prioCatchAll
			if !ours {
				continue
			}
			r.log.Warn("removing a rule left by an earlier run", "rule", rule.String())
			if err := r.h.RuleDel(&rule); err != nil && !gone(err) {
				errs = append(errs, fmt.Errorf("router: delete leftover rule %v: %w", rule, err))
			}
		}
		routes, err := r.h.RouteListFiltered(fam, &netlink.Route{Table: r.table}, netlink.RT_FILTER_TABLE)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return fmt.Errorf("router: list routes of table %d: %w", r.table, err)
		}
		for _, rt := range routes {
			r.log.Warn("removing a route left by an earlier run", "route", rt.String())
			if err := r.h.RouteDel(&rt); err != nil && !gone(err) {
				errs = append(errs, fmt.Errorf("router: delete leftover route %v: %w", rt, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.up = true
	return nil
}

// Set re-asserts every address, route and rule of cfg, since replacing an
// identical one changes nothing, then removes what only the previous
// config had. Routes go in before the rules that lead to them and stale
// rules go before their routes, so no rule ever points at an empty table.
func (r *linuxRouter) Set(ctx context.Context, cfg Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.up || r.closed {
		return errors.New("router: Set needs Up and no Close")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("router: set: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if r.ifname != "" && r.ifname != cfg.Interface {
		if err := r.teardown(); err != nil {
			return err
		}
	}
	link, err := r.h.LinkByName(cfg.Interface)
	if err != nil {
		return fmt.Errorf("router: interface %s: %w", cfg.Interface, err)
	}
	if r.ifname == "" {
		r.ifname = cfg.Interface
		r.restoreDown = link.Attrs().Flags&net.FlagUp == 0
	}

	want := map[netip.Prefix]bool{}
	for _, p := range cfg.Addresses {
		want[p] = true
		a := &netlink.Addr{IPNet: ipnet(p)}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD // nobody else is on a TUN
		}
		if err := r.h.AddrReplace(link, a); err != nil {
			return fmt.Errorf("router: add address %v to %s: %w", p, cfg.Interface, err)
		}
		r.addrs[p] = true
	}
	removed := map[netip.Addr]bool{}
	for p := range r.addrs {
		if want[p] {
			continue
		}
		if err := r.h.AddrDel(link, &netlink.Addr{IPNet: ipnet(p)}); err != nil && !gone(err) {
			return fmt.Errorf("router: delete address %v from %s: %w", p, cfg.Interface, err)
		}
		delete(r.addrs, p)
		removed[p.Addr()] = true
	}
	r.abortConnections(removed)
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := r.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("router: bring %s up: %w", cfg.Interface, err)
		}
	}

	routes := r.wantRoutes(cfg, link.Attrs().Index)
	for k, rt := range routes {
		if err := r.h.RouteReplace(&rt); err != nil {
			return fmt.Errorf("router: add route %v: %w", rt, err)
		}
		r.routes[k] = rt
	}
	rules := r.wantRules(cfg)
	// In priority order, so that the way out of a rule (the main table
	// ahead of the catch-all into the TUN) is in place before the rule
	// is; but gotos last, after their targets, which come after them in
	// priority: the kernel ignores a goto whose target is missing, and
	// until the target came, what the goto skips would take the rule
	// after it (a resolver's into the TUN, say).
	for _, k := range ruleOrder(rules, true) {
		rule := rules[k]
		if err := r.h.RuleAdd(&rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("router: add rule %v: %w", rule, err)
		}
		r.rules[k] = rule
	}
	// Stale gotos go first, for the same reason.
	for _, k := range ruleOrder(r.rules, false) {
		rule := r.rules[k]
		if _, ok := rules[k]; ok {
			continue
		}
		if err := r.h.RuleDel(&rule); err != nil && !gone(err) {
			return fmt.Errorf("router: delete rule %v: %w", rule, err)
		}
		delete(r.rules, k)
	}
	for k, rt := range r.routes {
		if _, ok := routes[k]; ok {
			continue
		}
		if err := r.h.RouteDel(&rt); err != nil && !gone(err) {
			return fmt.Errorf("router: delete route %v: %w", rt, err)
		}
		delete(r.routes, k)
	}
	r.log.Info("routes set", "interface", cfg.Interface, "ipv4", cfg.RouteIPv4, "ipv6", cfg.RouteIPv6, "block_ipv6", cfg.BlockIPv6,
		"tunneled", len(cfg.Tunnel), "rules", len(r.rules), "routes", len(r.routes))
	return nil
}

// ruleOrder is the keys of rules in priority order, with the gotos
// (Goto >= 0) after the rest to add them (add) or before it to delete
// them: a goto must never be in place without its target.
func ruleOrder(rules map[string]netlink.Rule, add bool) []string {
	isGoto := func(k string) int {
		if (rules[k].Goto >= 0) == add {
			return 1
		}
		return 0
	}
	return slices.SortedFunc(maps.Keys(rules), func(a, b string) int {
		return cmp.Or(cmp.Compare(isGoto(a), isGoto(b)), cmp.Compare(rules[a].Priority, rules[b].Priority), strings.Compare(a, b))
	})
}

// abortConnections aborts the TCP connections of addresses just deleted
// (see sockets_linux.go). Failing to is logged, not returned: the routes
// are right either way, and the connections only take longer to fail.
func (r *linuxRouter) abortConnections(removed map[netip.Addr]bool) {
	n, err := abortTCP(r.h, r.diag, removed)
	if err != nil {
		r.log.Warn("aborting connections of removed addresses", "err", err)
	}
	if n > 0 {
		r.log.Info("aborted connections of removed addresses", "sockets", n)
	}
}

// Close undoes everything; closing twice is fine.
func (r *linuxRouter) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed, r.up = true, false
	err := r.teardown()
	r.h.Close()
	r.diag.Close()
	return err
}

// teardown removes rules first, so that traffic falls back to the main
// table at once instead of into a table being emptied.
func (r *linuxRouter) teardown() error {
	var errs []error
	for _, k := range ruleOrder(r.rules, false) {
		rule := r.rules[k]
		if err := r.h.RuleDel(&rule); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("router: delete rule %v: %w", rule, err))
			continue
		}
		delete(r.rules, k)
	}
	for k, rt := range r.routes {
		if err := r.h.RouteDel(&rt); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("router: delete route %v: %w", rt, err))
			continue
		}
		delete(r.routes, k)
	}
	if r.ifname != "" {
		// The TUN may be gone already, and its addresses with it.
		link, err := r.h.LinkByName(r.ifname)
		if err == nil {
			removed := map[netip.Addr]bool{}
			for p := range r.addrs {
				if err := r.h.AddrDel(link, &netlink.Addr{IPNet: ipnet(p)}); err != nil && !gone(err) {
					errs = append(errs, fmt.Errorf("router: delete address %v: %w", p, err))
				}
				removed[p.Addr()] = true
			}
			r.abortConnections(removed)
			if r.restoreDown {
				if err := r.h.LinkSetDown(link); err != nil && !gone(err) {
					errs = append(errs, fmt.Errorf("router: set %s down: %w", r.ifname, err))
				}
			}
		}
		clear(r.addrs)
		r.ifname = ""
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.log.Info("routes removed")
	return nil
}

// blockMetric is the metric of BlockIPv6's unreachable default route.
// It differs from the route into the TUN's (the kernel's 1024), so that
// while Set swaps one for the other both can be in the table at once and
// deleting one never matches the other; and it is the highest, as the
// kernel's VRF documentation has it for the same kind of route, so that
// the route into the TUN wins while both are there.
const blockMetric = 4278198272

// wantRoutes are the default routes into the TUN, in the router's table,
// and BlockIPv6's unreachable one.
func (r *linuxRouter) wantRoutes(cfg Config, index int) map[string]netlink.Route {
	out := map[string]netlink.Route{}
	if cfg.RouteIPv4 {
		out[fmt.Sprintf("4 default %d", index)] = netlink.Route{
			LinkIndex: index, Table: r.table, Scope: netlink.SCOPE_LINK, Family: netlink.FAMILY_V4,
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		}
	}
	if cfg.RouteIPv6 {
		out[fmt.Sprintf("6 default %d", index)] = netlink.Route{
			LinkIndex: index, Table: r.table, Family: netlink.FAMILY_V6,
			Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		}
	}
	if cfg.BlockIPv6 {
		// An unreachable route ends the lookup with an error (for IPv6,
		// EHOSTUNREACH): it does not fall through to the main table's
		// default route, as an empty table would.
		out["6 unreachable default"] = netlink.Route{
			Table: r.table, Family: netlink.FAMILY_V6, Type: unix.RTN_UNREACHABLE, Priority: blockMetric,
			Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		}
	}
	return out
}

// The router's rules, by priority after Options.Priority. Lower comes
// first.
const (
	// prioSkip sends FwMark's packets past the Tunnel rules.
	prioSkip = iota
	// prioTunnel sends Config.Tunnel's destinations to the TUN's table.
	prioTunnel
	// prioBypass sends the bypass and LAN destinations to the main table.
	prioBypass
	// prioSuppress sends what the main table has a route for, other than
	// its default route, to the main table.
	prioSuppress
	// prioCatchAll sends every packet without FwMark to the TUN's table.
	prioCatchAll
)

// wantRules are, per family routed or blocked and in priority order: the
// Tunnel destinations to the router's table, which FwMark's packets skip;
// the bypass and LAN destinations to the main table; the main table for
// everything but its default route, so that connected and LAN routes keep
// working; and the router's table for every packet without FwMark.
func (r *linuxRouter) wantRules(cfg Config) map[string]netlink.Rule {
	out := map[string]netlink.Rule{}
	for _, fam := range []struct {
		on  bool
		num int
		is4 bool
	}{{cfg.RouteIPv4, netlink.FAMILY_V4, true}, {cfg.RouteIPv6 || cfg.BlockIPv6, netlink.FAMILY_V6, false}} {
		if !fam.on {
			continue
		}
		bypassed := false
		for _, b := range cfg.Bypass {
			a := b.Addr().Unmap()
			if a.Is4() != fam.is4 {
				continue
			}
			rule := r.rule(fam.num, r.prio+prioBypass, unix.RT_TABLE_MAIN)
			rule.Dst = ipnet(netip.PrefixFrom(a, a.BitLen()))
			if b.Port() != 0 {
				rule.Dport = netlink.NewRulePortRange(b.Port(), b.Port())
			}
			out[fmt.Sprintf("bypass %v", netip.AddrPortFrom(a, b.Port()))] = *rule
			bypassed = true
		}
		for _, p := range cfg.AllowLAN {
			p = unmapPrefix(p)
			if p.Addr().Is4() != fam.is4 {
				continue
			}
			rule := r.rule(fam.num, r.prio+prioBypass, unix.RT_TABLE_MAIN)
			rule.Dst = ipnet(p)
			out["lan "+p.String()] = *rule
			bypassed = true
		}
		tunneled := false
		for _, p := range cfg.Tunnel {
			p = unmapPrefix(p)
			if p.Addr().Is4() != fam.is4 {
				continue
			}
			rule := r.rule(fam.num, r.prio+prioTunnel, r.table)
			rule.Dst = ipnet(p)
			out["tunnel "+p.String()] = *rule
			tunneled = true
		}
		if tunneled {
			// A rule cannot match a destination and the absence of a
			// mark at once ("not" inverts all it matches), so marked
			// packets jump over the Tunnel rules to the first rule that
			// follows them, which they would have reached anyway.
			target := r.prio + prioSuppress
			if bypassed {
				target = r.prio + prioBypass
			}
			skip := r.rule(fam.num, r.prio+prioSkip, 0)
			skip.Mark = FwMark
			skip.Goto = target
			out[fmt.Sprintf("%d fwmark goto %d", fam.num, target)] = *skip
		}
		suppress := r.rule(fam.num, r.prio+prioSuppress, unix.RT_TABLE_MAIN)
		suppress.SuppressPrefixlen = 0
		out[fmt.Sprintf("%d suppress", fam.num)] = *suppress
		tunnel := r.rule(fam.num, r.prio+prioCatchAll, r.table)
		tunnel.Mark = FwMark
		tunnel.Invert = true
		out[fmt.Sprintf("%d not fwmark", fam.num)] = *tunnel
	}
	return out
}

// unmapPrefix is p with an IPv4-mapped address as plain IPv4, the way
// the kernel matches it.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if !p.Addr().Is4In6() {
		return p.Masked()
	}
	return netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0)).Masked()
}

func (r *linuxRouter) rule(family, prio, table int) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = family
	rule.Priority = prio
	rule.Table = table
	return rule
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// gone reports errors that mean the thing to delete is not there, which
// is what deleting wanted.
func gone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) ||
		errors.Is(err, unix.ENODEV) || errors.Is(err, unix.EADDRNOTAVAIL)
}
