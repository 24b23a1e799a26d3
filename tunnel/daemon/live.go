package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

// routeConfig is the routing of a tunnel with addrs under s, whose DNS
// goes to servers.
//
// With ipv6 off the tunnel carries no IPv6, and IPv6 is blocked rather
// than left to the main table: a user who turns IPv6 off means it not to
// leave the machine outside the tunnel, kill switch or not, as with other
// VPN clients. The router's unreachable route makes it fail at once, so
// applications fall back to IPv4 without waiting for a timeout, while
// the LAN (with allow_lan), the directly connected subnets and
// link-local housekeeping (neighbour discovery, router adverts, DHCPv6)
// still go by the main table. The TUN gets no IPv6 address then, so
// nothing takes it for a way out, and connections on one it had are
// aborted when ipv6 goes off.
//
// The servers always go into the TUN, ahead of the LAN and the
// connected subnets: an exit's may well have a private address (one
// inside its tunnel network, say 10.64.0.1) that the LAN, or a docker or
// libvirt bridge, also covers, and the main table would then send every
// lookup there in the clear, which the kill switch lets through with
// allow_lan. A resolver the user named goes into the tunnel too, as
// resolvers promises.
func (d *Daemon) routeConfig(s control.Settings, addrs []netip.Prefix, doc *directory.Document, servers []netip.Addr) router.Config {
	rc := router.Config{Interface: d.ifname, RouteIPv4: true, RouteIPv6: s.IPv6, BlockIPv6: !s.IPv6, Bypass: d.bypass(doc)}
	for _, a := range addrs {
		if a.Addr().Is6() && !a.Addr().Is4In6() && !s.IPv6 {
			continue
		}
		rc.Addresses = append(rc.Addresses, a)
	}
	if s.AllowLAN {
		rc.AllowLAN = firewall.DefaultLAN()
	}
	for _, a := range servers {
		a = a.Unmap()
		rc.Tunnel = append(rc.Tunnel, netip.PrefixFrom(a, a.BitLen()))
	}
	return rc
}

// change is what a change of settings touches besides the firewall, which
// SetSettings always brings in step.
type change struct {
	// routes: ipv6 or allow_lan changed. dns: ipv6 (it decides which of
	// the exit's resolvers are used) or dns_servers changed.
	routes, dns bool
	// mode, entry and exit: that choice changed. tunnel: the tunnel
	// must be built again, for those or for the rates of an Anonymous
	// one.
	mode, entry, exit, tunnel bool
}

// changeOf compares old and s for a tunnel in mode (the one up or being
// brought up): the rates shape only an Anonymous tunnel.
func changeOf(old, s control.Settings, mode control.Mode) change {
	c := change{
		routes: old.IPv6 != s.IPv6 || old.AllowLAN != s.AllowLAN,
		dns:    old.IPv6 != s.IPv6 || !slices.Equal(old.DNSServers, s.DNSServers),
		mode:   old.Mode != s.Mode, entry: old.Entry != s.Entry, exit: old.Exit != s.Exit,
	}
	rates := old.MixRate != s.MixRate || old.LoopRate != s.LoopRate || old.MeanDelay != s.MeanDelay
	c.tunnel = c.mode || c.entry || c.exit || rates && mode == control.ModeAnonymous
	return c
}

// SetSettings stores s (validated by the control server) and applies it
// at once, since a user who changes a setting in the app means it now,
// not at the next connection:
//
//   - kill_switch, lockdown and allow_lan change the firewall, and
//     lockdown its boot ruleset;
//   - ipv6 and allow_lan change the routes of the tunnel that is up, and
//     ipv6 and dns_servers its DNS, in place: it stays up;
//   - mode, entry and exit, and in Anonymous mode mix_rate, loop_rate
//     and mean_delay_ms, shape the tunnel itself: one that is up is
//     replaced by one built with them, as a mode switch replaces it
//     (through the gateways in use for the choices that did not change;
//     the old tunnel keeps the device until the new one takes it, and a
//     kill switch keeps blocking), and the user's choice is remembered
//     for the next start;
//   - auto_connect matters only when the daemon starts.
//
// An attempt to connect that is under way starts over when its routes,
// DNS or tunnel would change, since it read the settings when it began.
// DNS the tunnel up cannot take (dns_servers emptied while its exit
// provides no resolver) is refused with ErrState, and nothing is stored.
func (d *Daemon) SetSettings(ctx context.Context, s control.Settings) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("%w: %v", control.ErrInvalid, err)
	}
	d.mu.Lock()
	err := d.checkLiveLocked(s)
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if d.cfg.Settings != "" {
		if err := saveSettings(d.cfg.Settings, s); err != nil {
			return err
		}
	}
	d.mu.Lock()
	old := d.settings
	d.settings = s
	ch := changeOf(old, s, d.target.Mode)
	live, gen, retargeted := d.applyLocked(s, ch)
	meantUp := d.target.Connected
	d.mu.Unlock()
	if retargeted {
		d.persistTarget()
	}
	err = d.syncFirewall(meantUp)
	if live {
		err = errors.Join(err, d.reapply(ctx, gen, ch))
	}
	return err
}

// checkLiveLocked refuses settings whose DNS the connected tunnel cannot
// take: the user would be left with a tunnel that resolves nothing, or
// with a resolver other than the one asked for. Called with mu.
func (d *Daemon) checkLiveLocked(s control.Settings) error {
	if d.status.State != control.StateConnected {
		return nil
	}
	ch := changeOf(d.settings, s, d.target.Mode)
	if !ch.dns || ch.tunnel {
		return nil
	}
	if _, err := resolvers(s, d.doc, d.status.Exit); err != nil {
		return fmt.Errorf("%w: while connected: %w", control.ErrState, err)
	}
	return nil
}

// applyLocked acts on ch in the daemon's state, with s stored: it
// replaces a tunnel that is up and must change, starts over an attempt
// under way that would bring up the wrong routes, DNS or tunnel, and
// records the choices for the next connection when there is no tunnel.
// It reports whether the tunnel of gen must take new routes or DNS in
// place, and whether the target changed. Called with mu.
func (d *Daemon) applyLocked(s control.Settings, ch change) (live bool, gen uint64, retargeted bool) {
	tg := d.target
	if ch.mode {
		tg.Mode = s.Mode
	}
	if ch.entry {
		tg.Entry = s.Entry
	}
	if ch.exit {
		tg.Exit = s.Exit
	}
	st := d.status
	switch st.State {
	case control.StateConnected:
		if !ch.tunnel {
			return ch.routes || ch.dns, d.gen, false
		}
		// As a mode switch does, the new tunnel goes through the
		// gateways in use unless the user chose others, and the user is
		// there to see a failure.
		via := tg
		if !ch.entry {
			via.Entry = st.Entry
		}
		if !ch.exit {
			via.Exit = st.Exit
		}
		d.log.Info("settings changed: replacing the tunnel", "mode", via.Mode, "entry", via.Entry, "exit", via.Exit)
		d.startLocked(tg, via, control.StateConnecting, "", false)
		return false, 0, true
	case control.StateConnecting, control.StateReconnecting:
		if !ch.tunnel && !ch.routes && !ch.dns {
			return false, 0, false
		}
		reason := ""
		if st.State == control.StateReconnecting {
			reason = "the settings changed"
		}
		d.log.Info("settings changed: starting the attempt over", "state", st.State)
		d.startLocked(tg, tg, st.State, reason, d.retry)
		return false, 0, true
	}
	if !ch.tunnel {
		return false, 0, false
	}
	d.target = tg
	if ch.mode {
		d.setStatusLocked(func(st *control.Status) { st.Mode = tg.Mode })
	}
	return false, 0, true
}

// reapply gives the tunnel of gen the routes and DNS of the settings now
// stored, in place. It waits for op, so it never runs beside a bringUp or
// a teardown; if gen is past by then, whoever moved it on reads the new
// settings itself. It gets a time of its own, since a request cancelled
// half way would leave the routes half changed.
//
// The routes are set again when either changes, since they take the
// resolvers into the tunnel.
//
// Should the routes or DNS fail, the tunnel is brought up again from
// scratch, with retries, as after a network change: a kill switch keeps
// blocking meanwhile, and a tunnel whose routes or DNS are half what they
// should be does not stay behind a status that says Connected.
func (d *Daemon) reapply(ctx context.Context, gen uint64, ch change) error {
	d.op.Lock()
	defer d.op.Unlock()
	d.mu.Lock()
	cur, s, doc := d.cur, d.settings, d.doc
	current := d.gen == gen && cur != nil
	d.mu.Unlock()
	if !current {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), applyTimeout)
	defer cancel()
	addrs, _, exitID := cur.Info()
	d.mu.Lock()
	servers := slices.Clone(d.resolving)
	d.mu.Unlock()
	var err error
	if ch.dns {
		servers, err = resolvers(s, doc, exitID)
	}
	// New resolvers need their routes into the tunnel before DNS points
	// at them, whether or not the rest of the routes changed.
	var tunneled []netip.Addr
	if err == nil {
		tunneled, err = d.setRoutes(ctx, s, addrs, doc, servers)
	}
	if err == nil && ch.dns {
		if err = d.setDNS(ctx, servers); err == nil {
			d.dropResolvers(ctx, s, addrs, doc, tunneled)
		}
	}
	if err == nil {
		d.log.Info("settings applied to the tunnel", "routes", ch.routes, "dns", ch.dns)
		return nil
	}
	err = fmt.Errorf("applying the settings to the tunnel: %w", err)
	d.mu.Lock()
	if d.gen == gen {
		d.log.Warn("reconnecting", "reason", err)
		d.startLocked(d.target, d.target, control.StateReconnecting, err.Error(), true)
	}
	d.mu.Unlock()
	return err
}

// applyTimeout bounds reapply's changes.
const applyTimeout = 10 * time.Second
