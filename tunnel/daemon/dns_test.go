package daemon

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestResolvers(t *testing.T) {
	doc := &directory.Document{Nodes: []directory.Descriptor{
		{ID: "entry1", Role: directory.RoleEntry},
		{ID: "exit1", Role: directory.RoleExit, DNS: addrs("192.0.2.80", "2001:db8::80")},
		{ID: "exit6", Role: directory.RoleExit, DNS: addrs("2001:db8::80")},
		{ID: "bare", Role: directory.RoleExit},
	}}
	v6 := control.Settings{IPv6: true}
	v4only := control.Settings{IPv6: false}
	own := control.Settings{IPv6: true, DNSServers: addrs("9.9.9.9")}
	for _, c := range []struct {
		name    string
		s       control.Settings
		exit    string
		want    []netip.Addr
		wantErr string
	}{
		{"the user's first", own, "exit1", addrs("9.9.9.9"), ""},
		{"the user's even where the exit has none", own, "bare", addrs("9.9.9.9"), ""},
		{"else the exit's", v6, "exit1", addrs("192.0.2.80", "2001:db8::80"), ""},
		{"IPv4 alone without ipv6", v4only, "exit1", addrs("192.0.2.80"), ""},
		{"none from a bare exit", v6, "bare", nil, "no DNS server: set dns_servers or choose an exit that provides one"},
		{"none from an unknown exit", v6, "gone", nil, "no DNS server: set dns_servers or choose an exit that provides one"},
		{"none from an entry", v6, "entry1", nil, "no DNS server"},
		{"none when only IPv6 and ipv6 is off", v4only, "exit6", nil, "ipv6 is off"},
	} {
		got, err := resolvers(c.s, doc, c.exit)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: %v, %v; want an error saying %q", c.name, got, err, c.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, %v; want %v", c.name, got, err, c.want)
		}
	}
	if _, err := resolvers(v6, nil, "exit1"); err == nil {
		t.Error("resolvers without a document")
	}
}

// steps records, in order, what the platform was told.
type steps struct {
	mu   sync.Mutex
	seen []string
}

func (s *steps) add(step string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, step)
}

func (s *steps) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

// failingRouter fails to set routes into a tunnel while fail is on, and
// does everything else as the fake does.
type failingRouter struct {
	*router.Fake
	fail  atomic.Bool
	steps *steps
}

func (f *failingRouter) Set(ctx context.Context, cfg router.Config) error {
	if f.fail.Load() && len(cfg.Addresses) > 0 {
		return errors.New("netlink said no")
	}
	if len(cfg.Addresses) == 0 {
		f.steps.add("routes removed")
	}
	return f.Fake.Set(ctx, cfg)
}

// failingDNS fails Set while fail is on, after taking part of it, as a
// resolved that took the servers but not the domains would.
type failingDNS struct {
	dns.Fake
	fail     atomic.Bool
	restores atomic.Int32
	steps    *steps
}

func (f *failingDNS) Set(ctx context.Context, cfg dns.Config) error {
	if err := f.Fake.Set(ctx, cfg); err != nil {
		return err
	}
	if f.fail.Load() {
		return errors.New("resolved said no")
	}
	return nil
}

func (f *failingDNS) Restore() error {
	f.restores.Add(1)
	f.steps.add("DNS restored")
	return f.Fake.Restore()
}

// dnsRig is a daemon on doc with fake platform and tunnels.
type dnsRig struct {
	d      *Daemon
	rt     *failingRouter
	dc     *failingDNS
	fw     *firewall.Fake
	net    *fakeNet
	steps  *steps
	events <-chan control.Event
}

func newDNSRig(t *testing.T, settings string, doc *directory.Document) *dnsRig {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "system.json"), []byte(settings), 0o644); err != nil {
		t.Fatal(err)
	}
	st := &steps{}
	r := &dnsRig{rt: &failingRouter{Fake: &router.Fake{}, steps: st}, dc: &failingDNS{steps: st}, fw: &firewall.Fake{}, net: &fakeNet{}, steps: st}
	d, err := New(Config{
		Device: tuntest.NewChannelTUN().TUN(), DirectoryURL: "http://192.0.2.2:8080", DirectoryKey: make([]byte, 32),
		SystemSettings: filepath.Join(dir, "system.json"), Settings: filepath.Join(dir, "settings.json"),
		Router: r.rt, DNS: r.dc, Firewall: r.fw,
		Reconnect: ReconnectConfig{CheckInterval: time.Hour, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.dir = directory.Static{Doc: doc}
	d.open = r.net.open
	d.clock = &fakeClock{wall: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	r.d = d
	var stop func()
	r.events, stop = d.Subscribe()
	t.Cleanup(stop) // after runDaemon's cleanup has stopped Run
	runDaemon(t, d)
	return r
}

// connect asks for a Fast tunnel (the fake tunnels leave by exit1) and
// waits for the outcome, Connected or Error.
func (r *dnsRig) connect(t *testing.T) control.Status {
	t.Helper()
	if err := r.d.Connect(context.Background(), control.ModeFast, "", ""); err != nil {
		t.Fatal(err)
	}
	return waitStates(t, r.events, control.StateConnected, control.StateError)
}

// waitStates waits for one of states.
func waitStates(t *testing.T, events <-chan control.Event, states ...control.State) control.Status {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if slices.Contains(states, ev.Status.State) {
				return ev.Status
			}
		case <-timeout:
			t.Fatalf("never reached %v", states)
		}
	}
}

// With no dns_servers, the exit's resolvers are set, and routed into
// the tunnel ahead of the LAN, whose ranges an exit's resolver may share;
// they go when the tunnel does, DNS before the routes that keep its
// lookups in the tunnel.
func TestConnectUsesExitDNS(t *testing.T) {
	r := newDNSRig(t, `{"allow_lan": true}`, testDoc)
	if st := r.connect(t); st.State != control.StateConnected {
		t.Fatalf("status %+v", st)
	}
	c, ok := r.dc.Current()
	if !ok || !slices.Equal(c.Servers, testDoc.ByID("exit1").DNS) || c.Interface == "" {
		t.Fatalf("DNS %+v %v, want exit1's %v", c, ok, testDoc.ByID("exit1").DNS)
	}
	if rc, _ := r.rt.Current(); !slices.Equal(rc.Tunnel, prefixes("192.0.2.80/32")) || len(rc.AllowLAN) == 0 {
		t.Fatalf("routes %+v: the resolver is not routed into the tunnel", rc)
	}
	if err := r.d.Disconnect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, on := r.dc.Current(); on {
		t.Fatal("DNS not restored at disconnect")
	}
	if rc, _ := r.rt.Current(); len(rc.Tunnel) != 0 {
		t.Fatalf("routes after disconnect %+v", rc)
	}
	// The first restore is the one at start.
	if got := r.steps.all(); !slices.Equal(got, []string{"DNS restored", "DNS restored", "routes removed"}) {
		t.Fatalf("the platform was told %v, want DNS restored at start, then at disconnect before the routes were removed", got)
	}
}

// An exit that provides no resolver is passed over when the choice
// allows another, and one pinned fails the attempt before any tunnel is
// built through it.
func TestConnectPassesOverExitsWithoutDNS(t *testing.T) {
	doc := &directory.Document{Nodes: []directory.Descriptor{
		{ID: "entry1", Role: directory.RoleEntry, Address: "192.0.2.11:1789"},
		{ID: "bare", Role: directory.RoleExit, Address: "192.0.2.50:1789"},
		{ID: "exit1", Role: directory.RoleExit, Address: "192.0.2.51:1789", DNS: addrs("10.64.0.1")},
	}}
	r := newDNSRig(t, `{}`, doc)
	for range 10 {
		if st := r.connect(t); st.State != control.StateConnected || st.Exit != "exit1" {
			t.Fatalf("status %+v", st)
		}
		if err := r.d.Disconnect(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for _, tg := range r.net.tried() {
		if tg.Exit != "exit1" {
			t.Fatalf("a tunnel was tried through %q", tg.Exit)
		}
	}
	tried := len(r.net.tried())
	if err := r.d.Connect(context.Background(), control.ModeFast, "", "bare"); err != nil {
		t.Fatal(err)
	}
	st := waitStates(t, r.events, control.StateConnected, control.StateError)
	if st.State != control.StateError || !strings.Contains(st.Error, `no DNS server: set dns_servers or choose an exit that provides one (exit "bare" provides none)`) {
		t.Fatalf("status %+v", st)
	}
	if n := len(r.net.tried()); n != tried {
		t.Fatalf("%d tunnels tried through an exit without DNS", n-tried)
	}
}

// The user's dns_servers win over the exit's.
func TestConnectPrefersSettingsDNS(t *testing.T) {
	r := newDNSRig(t, `{"dns_servers": ["9.9.9.9"]}`, testDoc)
	if st := r.connect(t); st.State != control.StateConnected {
		t.Fatalf("status %+v", st)
	}
	if c, ok := r.dc.Current(); !ok || !slices.Equal(c.Servers, addrs("9.9.9.9")) {
		t.Fatalf("DNS %+v %v", c, ok)
	}
}

// With neither, connecting fails and says what to do, before any tunnel
// is built, and nothing of the tunnel is left behind: no routes, no DNS.
// The kill switch stays, since the user still means to be connected.
func TestConnectWithoutDNSFails(t *testing.T) {
	bare := &directory.Document{Nodes: []directory.Descriptor{
		{ID: "entry1", Role: directory.RoleEntry, Address: "192.0.2.11:1789"},
		{ID: "exit1", Role: directory.RoleExit, Address: "192.0.2.51:1789"},
	}}
	r := newDNSRig(t, `{}`, bare)
	st := r.connect(t)
	if st.State != control.StateError || !strings.Contains(st.Error, "no DNS server: set dns_servers or choose an exit that provides one") {
		t.Fatalf("status %+v", st)
	}
	r.wantNothingLeft(t)
	if n := len(r.net.tried()); n != 0 {
		t.Fatalf("%d tunnels tried through an exit without DNS", n)
	}
}

// A DNS that cannot be set, once the tunnel is current and routed, takes
// the tunnel down with it: the status says Error and nothing carries
// traffic behind it. DNS it set half way is restored.
func TestDNSFailureTearsDown(t *testing.T) {
	r := newDNSRig(t, `{}`, testDoc)
	r.dc.fail.Store(true)
	st := r.connect(t)
	if st.State != control.StateError || !strings.Contains(st.Error, "resolved said no") {
		t.Fatalf("status %+v", st)
	}
	r.wantNothingLeft(t)
	if r.dc.restores.Load() < 2 { // the one at start, and the undoing
		t.Fatalf("half-set DNS not restored (%d restores)", r.dc.restores.Load())
	}

	// And the next attempt, with DNS working again, connects.
	r.dc.fail.Store(false)
	if st := r.connect(t); st.State != control.StateConnected {
		t.Fatalf("status %+v", st)
	}
	if _, ok := r.dc.Current(); !ok {
		t.Fatal("no DNS")
	}
}

// Routes that cannot be set are the same.
func TestRoutesFailureTearsDown(t *testing.T) {
	r := newDNSRig(t, `{}`, testDoc)
	r.rt.fail.Store(true)
	st := r.connect(t)
	if st.State != control.StateError || !strings.Contains(st.Error, "netlink said no") {
		t.Fatalf("status %+v", st)
	}
	r.wantNothingLeft(t)
}

// A routes or DNS step that fails in an attempt that will be retried
// takes down only its tunnel: the routes and DNS stay in the tunnel, so
// that while the retry waits, traffic and lookups are dropped in the TUN
// rather than sent in the clear, which without the kill switch nothing
// would stop. The retry that works replaces them.
func TestRetriedAttemptKeepsRoutesAndDNS(t *testing.T) {
	for _, c := range []struct {
		name string
		fail func(r *dnsRig, on bool)
		err  string
	}{
		{"routes", func(r *dnsRig, on bool) { r.rt.fail.Store(on) }, "netlink said no"},
		{"DNS", func(r *dnsRig, on bool) { r.dc.fail.Store(on) }, "resolved said no"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newDNSRig(t, `{"kill_switch": false}`, testDoc)
			if st := r.connect(t); st.State != control.StateConnected {
				t.Fatalf("status %+v", st)
			}
			restores, since := r.dc.restores.Load(), len(r.rt.Configs())
			c.fail(r, true)
			r.d.networkChanged("test")
			for failed := 0; failed < 3; {
				st := waitStates(t, r.events, control.StateReconnecting, control.StateError, control.StateConnected)
				if st.State != control.StateReconnecting {
					t.Fatalf("status %+v", st)
				}
				if strings.Contains(st.Error, c.err) {
					failed++
				}
			}
			// Between attempts: no tunnel, but its routes and DNS.
			r.d.op.Lock()
			r.d.mu.Lock()
			cur := r.d.cur
			r.d.mu.Unlock()
			for i, tn := range r.net.opened() {
				if !tn.closed.Load() {
					t.Errorf("tunnel %d left open", i)
				}
			}
			rc, routed := r.rt.Current()
			dc, dnsOn := r.dc.Current()
			r.d.op.Unlock()
			if cur != nil {
				t.Error("a failed tunnel is still current")
			}
			for _, rc := range r.rt.Configs()[since:] {
				if len(rc.Addresses) == 0 || !rc.RouteIPv4 {
					t.Fatalf("the routes came down between attempts: %+v", rc)
				}
			}
			if !routed || len(rc.Addresses) == 0 || !slices.Equal(rc.Tunnel, prefixes("192.0.2.80/32")) {
				t.Errorf("routes between attempts %+v", rc)
			}
			if n := r.dc.restores.Load(); n != restores || !dnsOn || !slices.Equal(dc.Servers, addrs("192.0.2.80")) {
				t.Errorf("DNS between attempts %+v %v, restored %d times", dc, dnsOn, n-restores)
			}

			c.fail(r, false)
			waitStates(t, r.events, control.StateConnected)
			if rc, _ := r.rt.Current(); len(rc.Addresses) == 0 {
				t.Fatalf("routes %+v", rc)
			}
			if _, on := r.dc.Current(); !on {
				t.Fatal("no DNS")
			}
		})
	}
}

// wantNothingLeft checks that a failed connection left no tunnel, routes
// or DNS, and the kill switch on.
func (r *dnsRig) wantNothingLeft(t *testing.T) {
	t.Helper()
	for i, tn := range r.net.opened() {
		if !tn.closed.Load() {
			t.Errorf("tunnel %d left open", i)
		}
	}
	r.d.mu.Lock()
	cur := r.d.cur
	r.d.mu.Unlock()
	if cur != nil {
		t.Error("a tunnel is still current")
	}
	if rc, _ := r.rt.Current(); len(rc.Addresses) != 0 || rc.RouteIPv4 {
		t.Errorf("routes left %+v", rc)
	}
	if c, on := r.dc.Current(); on {
		t.Errorf("DNS left %+v", c)
	}
	if _, on := r.fw.Active(); !on {
		t.Error("the kill switch went off while the user means to be connected")
	}
}

// On the in-process network the exit's resolvers come through the real
// directory and an Anonymous tunnel to the daemon's DNS.
func TestConnectAnonymousUsesExitDNS(t *testing.T) {
	want := addrs("192.0.2.80")
	n := servertest.Start(t, servertest.Options{Echo: true, ExitDNS: want})
	dir := t.TempDir()
	sys := filepath.Join(dir, "system.json")
	if err := os.WriteFile(sys, []byte(`{"mean_delay_ms": 2}`), 0o644); err != nil {
		t.Fatal(err)
	}
	dc := &dns.Fake{}
	d, err := New(Config{Device: tuntest.NewChannelTUN().TUN(), DirectoryURL: n.DirURL, DirectoryKey: n.AuthKey,
		SystemSettings: sys, Settings: filepath.Join(dir, "own.json"),
		Router: &router.Fake{}, DNS: dc, Firewall: &firewall.Fake{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	events, stop := d.Subscribe()
	defer stop()
	if err := d.Connect(ctx, control.ModeAnonymous, "", ""); err != nil {
		t.Fatal(err)
	}
	if st := waitStates(t, events, control.StateConnected, control.StateError); st.State != control.StateConnected {
		t.Fatalf("status %+v", st)
	}
	if c, ok := dc.Current(); !ok || !slices.Equal(c.Servers, want) {
		t.Fatalf("DNS %+v %v, want the exit's %v", c, ok, want)
	}
}

// A Restore that fails keeps DNS counted as on and the resolvers' routes
// into the TUN: the system may still name the exit's resolver, which the
// main table would reach in the clear. The next release tries again and,
// once DNS is restored, removes the routes.
func TestFailedRestoreKeepsResolversInTheTunnel(t *testing.T) {
	r := newRig(t, "", "")
	r.watching(t)
	r.connect(t)
	up, _ := r.rt.Current()
	if len(up.Tunnel) == 0 {
		t.Fatalf("no resolver in the tunnel: %+v", up)
	}
	dnsOn := func() bool {
		r.d.mu.Lock()
		defer r.d.mu.Unlock()
		return r.d.dnsOn
	}

	r.dc.SetErr(errors.New("resolv.conf: device or resource busy"))
	if err := r.d.Disconnect(t.Context()); err != nil {
		t.Fatal(err)
	}
	now, _ := r.rt.Current()
	if !slices.Equal(now.Tunnel, up.Tunnel) || !now.RouteIPv4 {
		t.Fatalf("routes after a failed Restore %+v, want the resolvers %v kept in the tunnel", now, up.Tunnel)
	}
	if !dnsOn() {
		t.Fatal("DNS counted as restored")
	}
	if _, set := r.dc.Current(); !set {
		t.Fatal("the fake lost its DNS")
	}

	r.dc.SetErr(nil)
	if err := r.d.Disconnect(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, set := r.dc.Current(); set || dnsOn() {
		t.Fatalf("DNS not restored on the retry: set %v, dnsOn %v", set, dnsOn())
	}
	cfgs := r.rt.Configs()
	if last := cfgs[len(cfgs)-1]; len(last.Tunnel) != 0 || last.RouteIPv4 || len(last.Addresses) != 0 {
		t.Fatalf("routes left after DNS was restored: %+v", last)
	}
}
