package daemon

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

var (
	tunnel4 = netip.MustParsePrefix("10.64.0.2/32")
	tunnel6 = netip.MustParsePrefix("fd64::2/128")
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// With ipv6 off, IPv6 is blocked, not left to the main table, whether
// the kill switch is on or not; the LAN rules still cover IPv6's.
func TestIPv6OffBlocksIPv6(t *testing.T) {
	for _, c := range []struct {
		settings   string
		routed     bool
		addrs      []netip.Prefix
		killSwitch bool
	}{
		{`{"kill_switch": false, "ipv6": false, "allow_lan": true}`, false, []netip.Prefix{tunnel4}, false},
		{`{"kill_switch": true, "ipv6": false, "allow_lan": true}`, false, []netip.Prefix{tunnel4}, true},
		{`{"kill_switch": false, "ipv6": true, "allow_lan": true}`, true, []netip.Prefix{tunnel4, tunnel6}, false},
	} {
		t.Run(c.settings, func(t *testing.T) {
			r := newRig(t, "", c.settings)
			r.watching(t)
			r.connect(t)
			rc, _ := r.rt.Current()
			if !rc.RouteIPv4 || rc.RouteIPv6 != c.routed || rc.BlockIPv6 == c.routed || !slices.Equal(rc.Addresses, c.addrs) {
				t.Fatalf("routes %+v", rc)
			}
			if !slices.Contains(rc.AllowLAN, netip.MustParsePrefix("fe80::/10")) || !slices.Contains(rc.AllowLAN, netip.MustParsePrefix("fc00::/7")) {
				t.Fatalf("IPv6 LAN not allowed: %v", rc.AllowLAN)
			}
			if _, on := r.fw.Active(); on != c.killSwitch {
				t.Fatalf("kill switch %v", on)
			}
		})
	}
}

// set changes the settings as f says, the way the control server does.
func (r *rig) set(t *testing.T, f func(s *control.Settings)) {
	t.Helper()
	s := r.d.Settings()
	f(&s)
	if err := r.d.SetSettings(t.Context(), s); err != nil {
		t.Fatal(err)
	}
}

// Settings that touch routes, DNS and the firewall change them on the
// tunnel that is up, without taking it down or lowering the kill switch;
// each touches only what it must.
func TestSetSettingsAppliesLive(t *testing.T) {
	r := newRig(t, "", `{"kill_switch": true}`)
	r.watching(t)
	tun := r.connect(t)
	removes := r.fw.Removes()
	since := len(r.rt.Configs())
	routes := func() router.Config { rc, _ := r.rt.Current(); return rc }
	dnsServers := func() []netip.Addr { c, _ := r.dc.Current(); return c.Servers }
	// same checks that the tunnel is the first and still up, and that the
	// routes and DNS were set routeSets and dnsSets times since.
	same := func(step string, routeSets, dnsSets int) {
		t.Helper()
		if st := r.d.Status(); st.State != control.StateConnected || len(r.net.opened()) != 1 || tun.closed.Load() {
			t.Fatalf("%s: status %+v, %d tunnels", step, st, len(r.net.opened()))
		}
		cfgs := r.rt.Configs()
		for _, rc := range cfgs[since:] {
			if len(rc.Addresses) == 0 || !rc.RouteIPv4 {
				t.Fatalf("%s: routes came down: %+v", step, rc)
			}
		}
		if n := len(cfgs) - since; n != routeSets {
			t.Fatalf("%s: routes set %d times, want %d", step, n, routeSets)
		}
		if n := r.dc.Sets() - 1; n != dnsSets { // the connection's own
			t.Fatalf("%s: DNS set %d times, want %d", step, n, dnsSets)
		}
	}

	r.set(t, func(s *control.Settings) { s.AllowLAN = true })
	same("allow_lan on", 1, 0)
	if rc := routes(); !slices.Equal(rc.AllowLAN, firewall.DefaultLAN()) {
		t.Fatalf("LAN routes %v", rc.AllowLAN)
	}
	if p, _ := r.fw.Active(); !p.AllowLAN {
		t.Fatal("the kill switch does not allow the LAN")
	}
	r.killSwitchStayedOn(t, removes)

	r.set(t, func(s *control.Settings) { s.IPv6 = false })
	same("ipv6 off", 2, 1)
	if rc := routes(); rc.RouteIPv6 || !rc.BlockIPv6 || !slices.Equal(rc.Addresses, []netip.Prefix{tunnel4}) || len(rc.AllowLAN) == 0 {
		t.Fatalf("routes with ipv6 off %+v", rc)
	}

	// New resolvers go into the tunnel before DNS points at them, and
	// the old ones leave it only once DNS no longer does.
	exit1DNS, own := prefixes("192.0.2.80/32"), prefixes("9.9.9.9/32")
	tunneled := func(step string, want ...[]netip.Prefix) {
		t.Helper()
		cfgs := r.rt.Configs()
		for i, w := range want {
			if got := cfgs[len(cfgs)-len(want)+i].Tunnel; !slices.Equal(got, w) {
				t.Fatalf("%s: routes set %d of %d into the tunnel %v, want %v", step, i+1, len(want), got, w)
			}
		}
	}
	tunneled("before", exit1DNS)
	r.set(t, func(s *control.Settings) { s.DNSServers = addrs("9.9.9.9") })
	same("dns_servers", 4, 2)
	if got := dnsServers(); !slices.Equal(got, addrs("9.9.9.9")) {
		t.Fatalf("DNS %v", got)
	}
	tunneled("dns_servers", slices.Concat(exit1DNS, own), own)
	r.set(t, func(s *control.Settings) { s.DNSServers = nil })
	same("dns_servers back to the exit's", 6, 3)
	if got := dnsServers(); !slices.Equal(got, testDoc.ByID("exit1").DNS) {
		t.Fatalf("DNS %v", got)
	}
	tunneled("dns_servers back to the exit's", slices.Concat(own, exit1DNS), exit1DNS)

	r.set(t, func(s *control.Settings) { s.IPv6 = true })
	same("ipv6 on", 7, 4)
	tunneled("ipv6 on", exit1DNS)
	if rc := routes(); !rc.RouteIPv6 || rc.BlockIPv6 || !slices.Equal(rc.Addresses, []netip.Prefix{tunnel4, tunnel6}) {
		t.Fatalf("routes with ipv6 on %+v", rc)
	}

	// The rates do not shape a Fast tunnel, and auto_connect matters at
	// start only.
	r.set(t, func(s *control.Settings) { s.MixRate, s.AutoConnect = 300, true })
	same("mix_rate in Fast mode", 7, 4)
	r.killSwitchStayedOn(t, removes)

	r.set(t, func(s *control.Settings) { s.KillSwitch = false })
	same("kill_switch off", 7, 4)
	if _, on := r.fw.Active(); on {
		t.Fatal("the kill switch stayed on")
	}
}

// Settings that shape the tunnel replace it, through the gateways in use
// for the choices that did not change, with the kill switch up
// throughout; the user's choice is what is remembered.
func TestSetSettingsReplacesTheTunnel(t *testing.T) {
	r := newRig(t, "", `{"kill_switch": true}`)
	r.watching(t)
	first := r.connect(t)
	removes := r.fw.Removes()
	replaced := func(step string, want target) {
		t.Helper()
		r.untilState(t, control.StateConnecting)
		r.untilState(t, control.StateConnected)
		ts := r.net.opened()
		last := ts[len(ts)-1]
		if last.tg != want || !ts[len(ts)-2].closed.Load() || last.closed.Load() {
			t.Fatalf("%s: tunnel for %+v, want %+v", step, last.tg, want)
		}
		r.killSwitchStayedOn(t, removes)
	}

	r.set(t, func(s *control.Settings) { s.Exit = "CH" })
	replaced("exit", target{Connected: true, Mode: control.ModeFast, Entry: "entry1", Exit: "CH"})
	if !first.closed.Load() {
		t.Fatal("the first tunnel was left open")
	}
	if tg, err := loadTarget(filepath.Join(r.dir, "state.json")); err != nil || tg != (target{Connected: true, Mode: control.ModeFast, Exit: "CH"}) {
		t.Fatalf("remembered %+v %v", tg, err)
	}

	r.set(t, func(s *control.Settings) { s.Mode = control.ModeAnonymous })
	replaced("mode", target{Connected: true, Mode: control.ModeAnonymous, Entry: "entry1", Exit: "exit1"})

	r.set(t, func(s *control.Settings) { s.MixRate = 300 })
	replaced("mix_rate in Anonymous mode", target{Connected: true, Mode: control.ModeAnonymous, Entry: "entry1", Exit: "exit1"})

	if tg, err := loadTarget(filepath.Join(r.dir, "state.json")); err != nil || tg != (target{Connected: true, Mode: control.ModeAnonymous, Exit: "CH"}) {
		t.Fatalf("remembered %+v %v", tg, err)
	}
	if n := len(r.net.opened()); n != 4 {
		t.Fatalf("%d tunnels, want 4", n)
	}

	// Disconnected, they are recorded for the next connection.
	if err := r.d.Disconnect(t.Context()); err != nil {
		t.Fatal(err)
	}
	r.set(t, func(s *control.Settings) { s.Mode, s.Entry = control.ModeFast, "DE" })
	if st := r.d.Status(); st.State != control.StateDisconnected || st.Mode != control.ModeFast || len(r.net.opened()) != 4 {
		t.Fatalf("after settings while disconnected: %+v, %d tunnels", st, len(r.net.opened()))
	}
	if tg, err := loadTarget(filepath.Join(r.dir, "state.json")); err != nil || tg != (target{Mode: control.ModeFast, Entry: "DE", Exit: "CH"}) {
		t.Fatalf("remembered %+v %v", tg, err)
	}
}

// An attempt under way read the settings when it began: one whose routes
// would change starts over, one that only the firewall concerns goes on.
func TestSetSettingsWhileConnecting(t *testing.T) {
	r := newRig(t, "", `{"kill_switch": true}`)
	r.watching(t)
	held := r.net.setHold(1)
	if err := r.d.Connect(t.Context(), control.ModeFast, "", ""); err != nil {
		t.Fatal(err)
	}
	<-held
	gen := func() uint64 {
		r.d.mu.Lock()
		defer r.d.mu.Unlock()
		return r.d.gen
	}
	before := gen()
	r.set(t, func(s *control.Settings) { s.Lockdown = true })
	if gen() != before {
		t.Fatal("a firewall setting started the attempt over")
	}
	r.set(t, func(s *control.Settings) { s.IPv6 = false })
	if gen() == before {
		t.Fatal("the attempt was not started over")
	}
	r.untilState(t, control.StateConnected)
	if rc, _ := r.rt.Current(); rc.RouteIPv6 || !rc.BlockIPv6 {
		t.Fatalf("connected with the old settings' routes %+v", rc)
	}
	if n := len(r.net.opened()); n != 1 {
		t.Fatalf("%d tunnels", n)
	}
}

// DNS the tunnel up cannot take is refused, and nothing changes; once
// disconnected, it is stored for the next connection (which will fail
// through that exit, and say why).
func TestSetSettingsRefusesDNSTheTunnelCannotTake(t *testing.T) {
	bare := &directory.Document{Nodes: []directory.Descriptor{
		{ID: "entry1", Role: directory.RoleEntry, Address: "192.0.2.11:1789"},
		{ID: "exit1", Role: directory.RoleExit, Address: "192.0.2.51:1789"},
	}}
	r := newDNSRig(t, `{"dns_servers": ["9.9.9.9"]}`, bare)
	if st := r.connect(t); st.State != control.StateConnected {
		t.Fatalf("status %+v", st)
	}
	s := r.d.Settings()
	s.DNSServers = nil
	err := r.d.SetSettings(context.Background(), s)
	if !errors.Is(err, control.ErrState) || !strings.Contains(err.Error(), "no DNS server") {
		t.Fatalf("emptying dns_servers through an exit without resolvers: %v", err)
	}
	if got := r.d.Settings().DNSServers; !slices.Equal(got, addrs("9.9.9.9")) {
		t.Fatalf("settings changed anyway: %v", got)
	}
	if got, err := loadSettings(r.d.cfg.SystemSettings, r.d.cfg.Settings); err != nil || !slices.Equal(got.DNSServers, addrs("9.9.9.9")) {
		t.Fatalf("stored settings %+v %v", got, err)
	}
	if c, _ := r.dc.Current(); !slices.Equal(c.Servers, addrs("9.9.9.9")) || r.d.Status().State != control.StateConnected {
		t.Fatalf("DNS %v, status %+v", c.Servers, r.d.Status())
	}
	if err := r.d.Disconnect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.d.SetSettings(context.Background(), s); err != nil {
		t.Fatalf("disconnected: %v", err)
	}
}

// Routes that cannot be changed in place make the daemon bring the
// tunnel up again from scratch, retrying, with the kill switch up.
func TestSetSettingsReconnectsWhenRoutesFail(t *testing.T) {
	r := newDNSRig(t, `{"kill_switch": true}`, testDoc)
	if st := r.connect(t); st.State != control.StateConnected {
		t.Fatalf("status %+v", st)
	}
	removes := r.fw.Removes()
	r.rt.fail.Store(true)
	s := r.d.Settings()
	s.AllowLAN = true
	if err := r.d.SetSettings(context.Background(), s); err == nil || !strings.Contains(err.Error(), "netlink said no") {
		t.Fatalf("SetSettings: %v", err)
	}
	if st := waitStates(t, r.events, control.StateReconnecting); !strings.Contains(st.Error, "applying the settings") {
		t.Fatalf("status %+v", st)
	}
	r.rt.fail.Store(false)
	waitStates(t, r.events, control.StateConnected)
	if rc, _ := r.rt.Current(); len(rc.AllowLAN) == 0 || len(rc.Addresses) == 0 {
		t.Fatalf("routes %+v", rc)
	}
	if n := r.fw.Removes(); n != removes {
		t.Fatal("the kill switch came down")
	}
	if !r.d.Settings().AllowLAN {
		t.Fatal("the setting was not kept")
	}
}
