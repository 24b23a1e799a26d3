//go:build linux

package router

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netlinkMonitor follows rtnetlink's link and route notifications in the
// network namespace of the thread that calls Changes.
type netlinkMonitor struct {
	opts MonitorOptions
	log  *slog.Logger
}

// NewMonitor returns the netlink monitor. It opens nothing until Changes.
func NewMonitor(opts MonitorOptions) (Monitor, error) {
	m := &netlinkMonitor{opts: opts, log: opts.Logger}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	return m, nil
}

// linkFlags are the flags whose change means the link went down or up:
// administratively (IFF_UP) or its carrier (IFF_LOWER_UP).
const linkFlags = unix.IFF_UP | unix.IFF_LOWER_UP

// netState is what the monitor knows of the namespace's links.
type netState struct {
	names map[int]string
	flags map[int]uint32
	// defaults are the default routes of the main table.
	defaults map[defaultRoute]bool
}

// defaultRoute is a default route as far as the tunnel cares: where it
// leads. A route announced again unchanged (as router advertisements
// refresh IPv6's) is no change.
type defaultRoute struct {
	link, family int
	gw           string
}

func defaultOf(r netlink.Route) defaultRoute {
	return defaultRoute{link: routeLink(r), family: r.Family, gw: r.Gw.String()}
}

// hasDefault reports whether a default route leaves by link.
func (st *netState) hasDefault(link int) bool {
	for d := range st.defaults {
		if d.link == link {
			return true
		}
	}
	return false
}

// dropDefaults forgets link's default routes.
func (st *netState) dropDefaults(link int) {
	for d := range st.defaults {
		if d.link == link {
			delete(st.defaults, d)
		}
	}
}

// Changes subscribes before it lists the links and routes there are, so
// that nothing changes unseen in between.
func (m *netlinkMonitor) Changes(ctx context.Context) (<-chan Change, error) {
	done := make(chan struct{})
	links := make(chan netlink.LinkUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	onErr := func(err error) { m.log.Debug("network monitor", "err", err) }
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		close(done)
		return nil, fmt.Errorf("router: subscribe to links: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		close(done)
		return nil, fmt.Errorf("router: subscribe to routes: %w", err)
	}
	st := netState{names: map[int]string{}, flags: map[int]uint32{}, defaults: map[defaultRoute]bool{}}
	ll, err := netlink.LinkList()
	if err != nil {
		close(done)
		return nil, fmt.Errorf("router: list links: %w", err)
	}
	for _, l := range ll {
		a := l.Attrs()
		st.names[a.Index], st.flags[a.Index] = a.Name, a.RawFlags&linkFlags
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			close(done)
			return nil, fmt.Errorf("router: list routes: %w", err)
		}
		for _, r := range rs {
			if isDefault(r) {
				st.defaults[defaultOf(r)] = true
			}
		}
	}
	out := make(chan Change, 1)
	go func() {
		defer close(out)
		stop := ctx.Done()
		stopped := false
		for links != nil || routes != nil {
			select {
			case <-stop:
				// Closing done closes the sockets; the update channels
				// close after, and are drained until then so that the
				// readers behind them never block.
				close(done)
				stop, stopped = nil, true
			case u, ok := <-links:
				if !ok {
					links = nil
					continue
				}
				if c, ok := m.link(&st, u); ok && !stopped {
					m.log.Info("network changed", "reason", c.Reason)
					send(out, c)
				}
			case u, ok := <-routes:
				if !ok {
					routes = nil
					continue
				}
				if c, ok := m.route(&st, u); ok && !stopped {
					m.log.Info("network changed", "reason", c.Reason)
					send(out, c)
				}
			}
		}
		if !stopped {
			close(done) // both sockets failed: stop the closers
		}
	}()
	return out, nil
}

func (m *netlinkMonitor) ignored(name string) bool { return slices.Contains(m.opts.Ignore, name) }

// link notes a link's new flags and reports a change of a link that
// carries a default route.
func (m *netlinkMonitor) link(st *netState, u netlink.LinkUpdate) (Change, bool) {
	idx := int(u.Index)
	name := u.Attrs().Name
	if u.Header.Type == unix.RTM_DELLINK {
		had := st.hasDefault(idx)
		delete(st.names, idx)
		delete(st.flags, idx)
		st.dropDefaults(idx)
		if had && !m.ignored(name) {
			return Change{Reason: name + " was removed"}, true
		}
		return Change{}, false
	}
	st.names[idx] = name
	flags := u.Flags & linkFlags
	old, known := st.flags[idx]
	st.flags[idx] = flags
	if !known || old == flags || !st.hasDefault(idx) || m.ignored(name) {
		return Change{}, false
	}
	if flags == linkFlags {
		return Change{Reason: name + " came up"}, true
	}
	// The kernel drops a downed link's IPv4 routes without telling, so
	// the link is all there is to go by.
	if flags&unix.IFF_UP == 0 {
		st.dropDefaults(idx)
	}
	return Change{Reason: name + " went down"}, true
}

// route reports default routes of the main table coming and going.
func (m *netlinkMonitor) route(st *netState, u netlink.RouteUpdate) (Change, bool) {
	if u.Table != unix.RT_TABLE_MAIN || !isDefault(u.Route) {
		return Change{}, false
	}
	idx := routeLink(u.Route)
	name := st.names[idx]
	if name == "" {
		if l, err := netlink.LinkByIndex(idx); err == nil {
			name = l.Attrs().Name
			st.names[idx] = name
		} else {
			name = fmt.Sprintf("link %d", idx)
		}
	}
	if m.ignored(name) {
		return Change{}, false
	}
	fam := "IPv4"
	if u.Family == netlink.FAMILY_V6 {
		fam = "IPv6"
	}
	key := defaultOf(u.Route)
	switch {
	case u.Type == unix.RTM_NEWROUTE && !st.defaults[key]:
		st.defaults[key] = true
		return Change{Reason: fmt.Sprintf("%s default route via %s added", fam, name)}, true
	case u.Type == unix.RTM_DELROUTE && st.defaults[key]:
		delete(st.defaults, key)
		return Change{Reason: fmt.Sprintf("%s default route via %s removed", fam, name)}, true
	}
	return Change{}, false
}

// isDefault reports a route to everywhere: netlink leaves Dst nil for
// one, but a /0 is the same.
func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0 && (r.Dst.IP.Equal(net.IPv4zero) || r.Dst.IP.Equal(net.IPv6zero))
}

// routeLink is the link a route leaves by; a multipath route's first.
func routeLink(r netlink.Route) int {
	if r.LinkIndex == 0 && len(r.MultiPath) > 0 {
		return r.MultiPath[0].LinkIndex
	}
	return r.LinkIndex
}
