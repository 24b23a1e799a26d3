package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

// These tests drive the daemon with fakes all round: the platform's
// fakes, a network monitor the test fires, tunnels that come up at once
// (or fail) and count what the test says, and clocks the test sets. The
// watcher's own ticks are an hour apart, so checks happen when a test
// calls d.check, never behind its back.

// fakeTunnel is a tunnel whose progress counters the test sets.
type fakeTunnel struct {
	tg target
	// entry and exit are the gateways it reports: tg's, or entry1 and
	// exit1 for a choice the daemon left to the tunnel.
	entry, exit string
	sent, heard atomic.Uint64
	closed      atomic.Bool
	// carried: the daemon let it carry packets, which it must do only
	// once the routes (and with them the addresses) are set.
	carried atomic.Bool
}

func (f *fakeTunnel) Up(context.Context) error { return nil }
func (f *fakeTunnel) Carry()                   { f.carried.Store(true) }
func (f *fakeTunnel) Close() error             { f.closed.Store(true); return nil }
func (f *fakeTunnel) Info() ([]netip.Prefix, string, string) {
	return []netip.Prefix{netip.MustParsePrefix("10.64.0.2/32"), netip.MustParsePrefix("fd64::2/128")}, f.entry, f.exit
}
func (f *fakeTunnel) Stats() control.Stats {
	return control.Stats{Mode: f.tg.Mode, BytesOut: f.sent.Load(), BytesIn: f.heard.Load()}
}
func (f *fakeTunnel) Progress() (uint64, uint64) { return f.sent.Load(), f.heard.Load() }

// fakeNet opens fakeTunnels, failing the next fail attempts and every
// attempt through a gateway that is down. The next hold attempts wait
// until they are cancelled, saying on held that they are waiting. It
// records the target of every attempt.
type fakeNet struct {
	mu       sync.Mutex
	fail     int
	hold     int
	held     chan struct{}
	down     map[string]bool
	tunnels  []*fakeTunnel
	attempts []target
}

func (n *fakeNet) open(ctx context.Context, tg target, doc *directory.Document, _ control.Settings) (modeTunnel, error) {
	n.mu.Lock()
	if n.hold > 0 {
		n.hold--
		held := n.held
		n.mu.Unlock()
		held <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	defer n.mu.Unlock()
	n.attempts = append(n.attempts, tg)
	if n.fail > 0 {
		n.fail--
		return nil, errors.New("entry1 did not answer")
	}
	if n.down[tg.Entry] || n.down[tg.Exit] {
		return nil, errors.New("gateway down")
	}
	// Like the real tunnels, a choice the daemon passes on unresolved
	// is the tunnel's to make.
	id := func(want, def string) string {
		if doc.ByID(want) != nil {
			return want
		}
		return def
	}
	t := &fakeTunnel{tg: tg, entry: id(tg.Entry, "entry1"), exit: id(tg.Exit, "exit1")}
	n.tunnels = append(n.tunnels, t)
	return t, nil
}

// setDown takes gateway id down (attempts through it fail) or brings it
// back.
func (n *fakeNet) setDown(id string, down bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.down == nil {
		n.down = map[string]bool{}
	}
	n.down[id] = down
}

// tried is the targets of the attempts made so far.
func (n *fakeNet) tried() []target {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]target(nil), n.attempts...)
}

// setHold makes the next k attempts wait until cancelled; each sends on
// the channel returned once it waits.
func (n *fakeNet) setHold(k int) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.hold, n.held = k, make(chan struct{}, k)
	return n.held
}

func (n *fakeNet) setFail(k int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.fail = k
}

func (n *fakeNet) opened() []*fakeTunnel {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*fakeTunnel(nil), n.tunnels...)
}

// fakeClock is a pair of clocks the test moves.
type fakeClock struct {
	mu   sync.Mutex
	wall time.Time
	mono time.Duration
}

func (c *fakeClock) now() (time.Time, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wall, c.mono
}

// advance moves the wall clock by wall and the monotonic one by mono.
func (c *fakeClock) advance(wall, mono time.Duration) (time.Time, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wall, c.mono = c.wall.Add(wall), c.mono+mono
	return c.wall, c.mono
}

// fakeProbes stands in for the marked dialer: entries take connections
// unless refused; it records every dial.
type fakeProbes struct {
	mu      sync.Mutex
	refused map[string]bool
	dialed  []string
}

func (p *fakeProbes) dial(_ context.Context, network, addr string) (net.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialed = append(p.dialed, addr)
	if p.refused[addr] {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("connect: connection refused")}
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

// refuse makes dials to addr fail, as to an entry that is gone.
func (p *fakeProbes) refuse(addr string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.refused == nil {
		p.refused = map[string]bool{}
	}
	p.refused[addr] = true
}

func (p *fakeProbes) dials() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.dialed...)
}

type rig struct {
	d      *Daemon
	rt     *router.Fake
	fw     *firewall.Fake
	dc     *dns.Fake
	mon    *router.FakeMonitor
	net    *fakeNet
	probes *fakeProbes
	clk    *fakeClock
	events <-chan control.Event
	dir    string
	// done has what Run returned, unless ended took it.
	done  chan error
	ended bool
}

// testDoc's exit advertises a resolver, which the daemon uses when the
// settings name none.
var testDoc = &directory.Document{Nodes: []directory.Descriptor{
	{ID: "entry1", Role: directory.RoleEntry, Address: "192.0.2.11:1789"},
	{ID: "exit1", Role: directory.RoleExit, Address: "192.0.2.51:1789", DNS: []netip.Addr{netip.MustParseAddr("192.0.2.80")}},
}}

// newRig runs a daemon on testDoc with its files in dir (a fresh one if
// empty) and settings preset there, stopping it when the test ends.
func newRig(t *testing.T, dir, settings string, opts ...func(*Config)) *rig {
	t.Helper()
	return newRigOn(t, testDoc, dir, settings, opts...)
}

// newRigOn is newRig on doc.
func newRigOn(t *testing.T, doc *directory.Document, dir, settings string, opts ...func(*Config)) *rig {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	if settings != "" {
		if err := os.WriteFile(filepath.Join(dir, "system.json"), []byte(settings), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := &rig{rt: &router.Fake{}, fw: &firewall.Fake{}, dc: &dns.Fake{}, mon: &router.FakeMonitor{}, net: &fakeNet{}, probes: &fakeProbes{},
		clk: &fakeClock{wall: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}, dir: dir}
	cfg := Config{
		Device: tuntest.NewChannelTUN().TUN(), DirectoryURL: "http://192.0.2.2:8080", DirectoryKey: make([]byte, 32),
		SystemSettings: filepath.Join(dir, "system.json"), Settings: filepath.Join(dir, "settings.json"),
		State: filepath.Join(dir, "state.json"), LockdownRuleset: filepath.Join(dir, "lockdown.nft"),
		Router: r.rt, DNS: r.dc, Firewall: r.fw, Monitor: r.mon,
		Reconnect: ReconnectConfig{CheckInterval: time.Hour, DeadAfter: 20 * time.Second, Settle: time.Millisecond, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond},
	}
	for _, o := range opts {
		o(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d.dir = directory.Static{Doc: doc}
	d.open = r.net.open
	d.dial = r.probes.dial
	d.clock = r.clk
	r.d = d
	var stop func()
	r.events, stop = d.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	r.done = make(chan error, 1)
	go func() { r.done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if !r.ended {
			if err := <-r.done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
		stop()
	})
	return r
}

// end waits for Run to return by itself and returns what it did.
func (r *rig) end(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.ended = true
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("Run did not return; status %+v", r.d.Status())
		return nil
	}
}

// watching waits until the watcher listens to the monitor, which Run
// starts after it has decided whether to connect.
func (r *rig) watching(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !r.mon.Watched() {
		if time.Now().After(deadline) {
			t.Fatal("the daemon never watched the network")
		}
		time.Sleep(time.Millisecond)
	}
}

// until waits for a status that satisfies ok and returns it.
func (r *rig) until(t *testing.T, what string, ok func(control.Status) bool) control.Status {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-r.events:
			if ok(ev.Status) {
				return ev.Status
			}
		case <-timeout:
			t.Fatalf("never %s; status %+v", what, r.d.Status())
		}
	}
}

func (r *rig) untilState(t *testing.T, want control.State) control.Status {
	t.Helper()
	return r.until(t, want.String(), func(s control.Status) bool {
		if s.State == control.StateError && want != control.StateError {
			t.Fatalf("error: %s", s.Error)
		}
		return s.State == want
	})
}

// connect connects in fast mode and returns the tunnel.
func (r *rig) connect(t *testing.T) *fakeTunnel {
	t.Helper()
	if err := r.d.Connect(t.Context(), control.ModeFast, "", ""); err != nil {
		t.Fatal(err)
	}
	r.untilState(t, control.StateConnected)
	ts := r.net.opened()
	last := ts[len(ts)-1]
	if _, routed := r.rt.Current(); !routed || !last.carried.Load() {
		t.Fatalf("connected with routes set %v, tunnel carrying %v", routed, last.carried.Load())
	}
	return last
}

// killSwitchStayedOn checks that the firewall was never removed since
// removes were counted, and is on now.
func (r *rig) killSwitchStayedOn(t *testing.T, removes int) {
	t.Helper()
	if n := r.fw.Removes(); n != removes {
		t.Fatalf("the kill switch came down %d times", n-removes)
	}
	if p, on := r.fw.Active(); !on || p.Interface == "" {
		t.Fatalf("kill switch %+v %v", p, on)
	}
}

func TestReconnectWhenTheNetworkChanges(t *testing.T) {
	r := newRig(t, "", `{"kill_switch": true}`)
	r.watching(t)
	first := r.connect(t)
	removes := r.fw.Removes()

	if !r.mon.Change("eth0 went down") {
		t.Fatal("the monitor's change was not taken")
	}
	st := r.untilState(t, control.StateReconnecting)
	if !strings.Contains(st.Error, "eth0 went down") || st.Mode != control.ModeFast {
		t.Fatalf("reconnecting status %+v", st)
	}
	r.untilState(t, control.StateConnected)
	ts := r.net.opened()
	if len(ts) != 2 || !first.closed.Load() || ts[1].closed.Load() || ts[1].tg.Mode != control.ModeFast {
		t.Fatalf("tunnels after reconnecting: %d, first closed %v", len(ts), first.closed.Load())
	}
	r.killSwitchStayedOn(t, removes)
	if rc, ok := r.rt.Current(); !ok || rc.Interface == "" || !rc.RouteIPv4 {
		t.Fatalf("routes after reconnecting %+v", rc)
	}
}

// Attempts that fail are retried, and a network change cuts the wait
// short: the wait here is an hour, so only the change can end it.
func TestReconnectRetriesUntilTheNetworkIsBack(t *testing.T) {
	r := newRig(t, "", `{"kill_switch": true}`)
	r.d.rc.RetryMin, r.d.rc.RetryMax = time.Hour, time.Hour
	r.watching(t)
	r.connect(t)
	removes := r.fw.Removes()

	r.net.setFail(1)
	r.mon.Change("eth0 went down")
	r.until(t, "told of a failed attempt", func(s control.Status) bool {
		return s.State == control.StateReconnecting && strings.Contains(s.Error, "attempt 1 failed: entry1 did not answer")
	})
	r.killSwitchStayedOn(t, removes)
	r.mon.Change("IPv4 default route via eth0 added")
	r.untilState(t, control.StateConnected)
	if n := len(r.net.opened()); n != 2 {
		t.Fatalf("%d tunnels opened, want 2", n)
	}
	r.killSwitchStayedOn(t, removes)
}

func TestReconnectWhenTheTunnelIsDead(t *testing.T) {
	r := newRig(t, "", `{"kill_switch": true}`)
	r.watching(t)
	tun := r.connect(t)
	removes := r.fw.Removes()
	minute := func() { r.d.check(r.clk.advance(time.Minute, time.Minute)) }
	// A reconnect would open a second tunnel: as long as there is one,
	// the daemon has judged nothing.
	judged := func() bool { return len(r.net.opened()) != 1 }
	minute()

	// Idle for an hour: nothing sent, nothing expected back.
	for range 60 {
		minute()
	}
	if judged() {
		t.Fatal("an idle tunnel was judged dead")
	}
	// Answered traffic is alive however long it lasts.
	for range 5 {
		tun.sent.Add(1000)
		tun.heard.Add(100)
		minute()
	}
	if judged() {
		t.Fatal("a live tunnel was judged dead")
	}
	if n := len(r.probes.dials()); n != 0 {
		t.Fatalf("the entry of a tunnel that was idle or answered was probed %d times", n)
	}
	// Sending into silence for DeadAfter is dead, though the entry
	// still takes connections when asked after ProbeAfter: the exit, or
	// the entry's WireGuard, may be what died.
	tun.sent.Add(1000)
	r.d.check(r.clk.advance(time.Second, time.Second))
	r.d.check(r.clk.advance(19*time.Second, 19*time.Second))
	r.probed(t, 1)
	if judged() {
		t.Fatal("judged dead before DeadAfter")
	}
	r.d.check(r.clk.advance(time.Second, time.Second))
	r.until(t, "reconnecting after 20 s of silence", func(s control.Status) bool {
		return s.State == control.StateReconnecting && strings.Contains(s.Error, "no answer for 20s")
	})
	r.untilState(t, control.StateConnected)
	if !tun.closed.Load() || len(r.net.opened()) != 2 {
		t.Fatal("the dead tunnel was not replaced")
	}
	r.killSwitchStayedOn(t, removes)
	if n := len(r.probes.dials()); n != 1 {
		t.Fatalf("the entry was probed %d times in one silence", n)
	}
}

// probed waits until the entries were probed n times.
func (r *rig) probed(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(r.probes.dials()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("probed %d times, want %d", len(r.probes.dials()), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// multiDoc has two entries in Germany, one in Switzerland and two exits.
var multiDoc = &directory.Document{Nodes: []directory.Descriptor{
	{ID: "entry1", Role: directory.RoleEntry, Country: "DE", Address: "192.0.2.11:1789"},
	{ID: "entry2", Role: directory.RoleEntry, Country: "DE", Address: "192.0.2.12:1789"},
	{ID: "entry3", Role: directory.RoleEntry, Country: "CH", Address: "192.0.2.13:1789"},
	{ID: "exit1", Role: directory.RoleExit, Country: "DE", Address: "192.0.2.51:1789"},
	{ID: "exit2", Role: directory.RoleExit, Country: "CH", Address: "192.0.2.52:1789"},
}}

// killEntry makes the entry id gone: attempts through it fail and its
// link port refuses connections.
func (r *rig) killEntry(id string) {
	r.net.setDown(id, true)
	r.probes.refuse(multiDoc.ByID(id).Address)
}

// silence has tun send without hearing back, with a check every 2 s
// (CheckInterval's default), for checks checks.
func (r *rig) silence(tun *fakeTunnel, checks int) {
	for range checks {
		tun.sent.Add(100)
		r.d.check(r.clk.advance(2*time.Second, 2*time.Second))
	}
}

// connectVia connects in fast mode through the user's choice of entry
// and returns the tunnel and the entry it went through.
func (r *rig) connectVia(t *testing.T, entry string) (*fakeTunnel, string) {
	t.Helper()
	if err := r.d.Connect(t.Context(), control.ModeFast, entry, ""); err != nil {
		t.Fatal(err)
	}
	st := r.untilState(t, control.StateConnected)
	ts := r.net.opened()
	return ts[len(ts)-1], st.Entry
}

// after is the attempts made since the first n.
func (r *rig) after(n int) []target { return r.net.tried()[n:] }

// An entry that is gone (its link port refuses) is noticed by probing it
// after ProbeAfter, long before DeadAfter, and the tunnel reconnects
// through another: with no entry pinned, never back through the dead one.
func TestDeadEntryNoticedByProbe(t *testing.T) {
	r := newRigOn(t, multiDoc, "", `{"kill_switch": true, "dns_servers": ["192.0.2.53"]}`)
	r.watching(t)
	tun, dead := r.connectVia(t, "")
	removes := r.fw.Removes()
	r.killEntry(dead)
	r.d.check(r.clk.advance(2*time.Second, 2*time.Second))
	r.silence(tun, 2) // the silence starts, and lasts 2 s
	if n := len(r.probes.dials()); n != 0 {
		t.Fatalf("probed after 2 s of silence: %d", n)
	}
	r.silence(tun, 1) // 4 s: ProbeAfter
	st := r.until(t, "reconnecting after the probe", func(s control.Status) bool { return s.State == control.StateReconnecting })
	if want := "no answer for 4s and its entry " + dead + " is unreachable"; !strings.Contains(st.Error, want) || !strings.Contains(st.Error, "refused") {
		t.Fatalf("reconnecting because %q, want %q", st.Error, want)
	}
	st = r.untilState(t, control.StateConnected)
	if st.Entry == dead {
		t.Fatalf("reconnected through %s, which is dead", dead)
	}
	for _, a := range r.after(1) {
		if a.Entry == dead {
			t.Fatalf("an attempt went through %s, which is dead: %+v", dead, r.net.tried())
		}
	}
	if !tun.closed.Load() {
		t.Fatal("the dead tunnel was not closed")
	}
	r.killSwitchStayedOn(t, removes)
}

// A tunnel that sends nothing, or is answered, is never probed however
// long it goes, even through an entry that would refuse.
func TestIdleTunnelIsNotProbed(t *testing.T) {
	r := newRigOn(t, multiDoc, "", `{"kill_switch": true, "dns_servers": ["192.0.2.53"]}`)
	r.watching(t)
	tun, entry := r.connectVia(t, "")
	r.probes.refuse(multiDoc.ByID(entry).Address)
	step := func() { r.d.check(r.clk.advance(2*time.Second, 2*time.Second)) }
	for range 1000 { // idle for over half an hour
		step()
	}
	for range 100 { // answered traffic
		tun.sent.Add(100)
		tun.heard.Add(100)
		step()
	}
	for range 100 { // answered within a check, with quiet checks between
		tun.sent.Add(100)
		step()
		tun.heard.Add(100)
		step()
		step()
	}
	// Sending into silence is probed: the one probe there is.
	r.silence(tun, 3)
	r.untilState(t, control.StateReconnecting)
	r.untilState(t, control.StateConnected)
	if d := r.probes.dials(); len(d) != 1 {
		t.Fatalf("probes %v, want only the one of the silence", d)
	}
	if n := len(r.net.opened()); n != 2 {
		t.Fatalf("%d tunnels opened, want 2", n)
	}
}

// An entry the user pinned by ID stays the entry, dead or not: attempts
// keep going to it until it is back.
func TestReconnectKeepsEntryPinnedByID(t *testing.T) {
	r := newRigOn(t, multiDoc, "", `{"kill_switch": true, "dns_servers": ["192.0.2.53"]}`)
	r.watching(t)
	tun, entry := r.connectVia(t, "entry2")
	if entry != "entry2" {
		t.Fatalf("connected through %s, not the pinned entry2", entry)
	}
	r.killEntry("entry2")
	r.d.check(r.clk.advance(2*time.Second, 2*time.Second))
	r.silence(tun, 3)
	r.untilState(t, control.StateReconnecting)
	deadline := time.Now().Add(10 * time.Second)
	for len(r.after(1)) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("attempts %+v", r.net.tried())
		}
		time.Sleep(time.Millisecond)
	}
	r.net.setDown("entry2", false)
	st := r.until(t, "connected again", func(s control.Status) bool { return s.State == control.StateConnected })
	if st.Entry != "entry2" {
		t.Fatalf("reconnected through %s, not the pinned entry2", st.Entry)
	}
	for _, a := range r.after(1) {
		if a.Entry != "entry2" {
			t.Fatalf("an attempt went through %s, not the pinned entry2: %+v", a.Entry, r.net.tried())
		}
	}
}

// With an entry pinned by country, a dead one gives way to another in
// that country, never to one elsewhere; with all of them dead, attempts
// stay in the country.
func TestReconnectStaysInPinnedCountry(t *testing.T) {
	r := newRigOn(t, multiDoc, "", `{"kill_switch": true, "dns_servers": ["192.0.2.53"]}`)
	r.watching(t)
	tun, dead := r.connectVia(t, "de")
	other := map[string]string{"entry1": "entry2", "entry2": "entry1"}[dead]
	if other == "" {
		t.Fatalf("connected through %s, not in DE", dead)
	}
	r.killEntry(dead)
	r.d.check(r.clk.advance(2*time.Second, 2*time.Second))
	r.silence(tun, 3)
	r.untilState(t, control.StateReconnecting)
	if st := r.untilState(t, control.StateConnected); st.Entry != other {
		t.Fatalf("reconnected through %s, want %s", st.Entry, other)
	}
	for _, a := range r.after(1) {
		if a.Entry != other {
			t.Fatalf("an attempt went through %s, want %s: %+v", a.Entry, other, r.net.tried())
		}
	}

	// Both German entries dead: the attempts go round them, not abroad.
	before := len(r.net.tried())
	tun = r.net.opened()[len(r.net.opened())-1]
	r.killEntry(other)
	r.silence(tun, 3)
	r.untilState(t, control.StateReconnecting)
	deadline := time.Now().Add(10 * time.Second)
	for len(r.after(before)) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("attempts %+v", r.net.tried())
		}
		time.Sleep(time.Millisecond)
	}
	for _, a := range r.after(before) {
		if a.Entry != "entry1" && a.Entry != "entry2" {
			t.Fatalf("an attempt went through %s, outside DE: %+v", a.Entry, r.net.tried())
		}
	}
}

// An attempt that fails puts its gateways among those to avoid: the next
// attempt goes through others.
func TestReconnectAvoidsGatewaysThatFailed(t *testing.T) {
	r := newRigOn(t, multiDoc, "", `{"kill_switch": true, "dns_servers": ["192.0.2.53"]}`)
	r.watching(t)
	r.connectVia(t, "")
	r.net.setFail(1)
	r.mon.Change("eth0 went down")
	r.untilState(t, control.StateConnected)
	tried := r.net.tried()
	if len(tried) != 3 {
		t.Fatalf("attempts %+v, want 3", tried)
	}
	if failed, next := tried[1], tried[2]; next.Entry == failed.Entry || next.Exit == failed.Exit {
		t.Fatalf("after an attempt through %s and %s failed, the next went through %s and %s", failed.Entry, failed.Exit, next.Entry, next.Exit)
	}
}

func TestReconnectAfterSleep(t *testing.T) {
	r := newRig(t, "", `{"kill_switch": true}`)
	r.watching(t)
	r.d.check(r.clk.advance(0, 0))
	// Disconnected, waking up changes nothing.
	r.d.check(r.clk.advance(time.Hour, 2*time.Second))
	if st := r.d.Status(); st.State != control.StateDisconnected {
		t.Fatalf("status after waking disconnected: %+v", st)
	}
	r.connect(t)
	// Clocks in step, however far they go: no sleep.
	r.d.check(r.clk.advance(time.Hour, time.Hour))
	if n := len(r.net.opened()); n != 1 {
		t.Fatalf("reconnected without a sleep: %d tunnels", n)
	}
	// The wall clock gained an hour on the monotonic one: the machine slept.
	r.d.check(r.clk.advance(time.Hour+2*time.Second, 2*time.Second))
	r.until(t, "reconnecting after a sleep", func(s control.Status) bool {
		return s.State == control.StateReconnecting && strings.Contains(s.Error, "woke up from about 1h0m0s of sleep")
	})
	r.untilState(t, control.StateConnected)
	if n := len(r.net.opened()); n != 2 {
		t.Fatalf("%d tunnels after waking, want 2", n)
	}
}

// A daemon that was connected when it died comes back connected, in the
// mode and with the gateways the user chose; one the user disconnected
// comes back disconnected.
func TestComesBackAfterCrash(t *testing.T) {
	dir := t.TempDir()
	a := newRig(t, dir, `{"kill_switch": true}`)
	if err := a.d.Connect(t.Context(), control.ModeAnonymous, "DE", ""); err != nil {
		t.Fatal(err)
	}
	a.untilState(t, control.StateConnected)
	if fi, err := os.Stat(filepath.Join(dir, "state.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", fi, err)
	}

	// A second daemon on the same files, as after kill -9 and a restart:
	// the first never got to stop.
	b := newRig(t, dir, "")
	b.untilState(t, control.StateConnected)
	// The choice of any exit comes to the tunnel as the daemon's pick,
	// testDoc's only exit; the country, which testDoc cannot meet, as it
	// was.
	ts := b.net.opened()
	if len(ts) != 1 || ts[0].tg != (target{Connected: true, Mode: control.ModeAnonymous, Entry: "DE", Exit: "exit1"}) {
		t.Fatalf("restored %+v", ts)
	}
	if tg, err := loadTarget(filepath.Join(dir, "state.json")); err != nil || tg != (target{Connected: true, Mode: control.ModeAnonymous, Entry: "DE"}) {
		t.Fatalf("remembered %+v %v", tg, err)
	}
	if _, on := b.fw.Active(); !on {
		t.Fatal("no kill switch while coming back")
	}
	if err := b.d.Disconnect(t.Context()); err != nil {
		t.Fatal(err)
	}

	c := newRig(t, dir, "")
	c.watching(t) // Run has decided by now
	if st := c.d.Status(); st.State != control.StateDisconnected || len(c.net.opened()) != 0 {
		t.Fatalf("after a disconnect the daemon came back %+v", st)
	}
	if _, on := c.fw.Active(); on {
		t.Fatal("kill switch on while disconnected, without lockdown")
	}
}

func TestAutoConnect(t *testing.T) {
	r := newRig(t, "", `{"auto_connect": true, "mode": "anonymous", "exit": "CH"}`)
	st := r.untilState(t, control.StateConnected)
	if ts := r.net.opened(); st.Mode != control.ModeAnonymous || len(ts) != 1 || ts[0].tg.Exit != "CH" {
		t.Fatalf("auto-connected %+v, tunnels %d", st, len(ts))
	}
}

// Lockdown keeps a kill switch up all the time, allowing only the
// directory while disconnected, and keeps the boot ruleset in step.
func TestLockdownBootRuleset(t *testing.T) {
	r := newRig(t, "", `{"lockdown": true, "kill_switch": false}`)
	r.watching(t)
	boot := filepath.Join(r.dir, "lockdown.nft")
	allows := func() map[netip.AddrPort]bool {
		t.Helper()
		p, on := r.fw.Active()
		if !on {
			t.Fatal("lockdown without a firewall")
		}
		want, err := firewall.Render(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(boot)
		if err != nil || string(got) != want {
			t.Fatalf("boot ruleset %v:\n%s\nwant\n%s", err, got, want)
		}
		if fi, _ := os.Stat(boot); fi.Mode().Perm() != 0o600 {
			t.Fatalf("boot ruleset mode %v", fi.Mode())
		}
		m := map[netip.AddrPort]bool{}
		for _, e := range p.Endpoints {
			m[e.Addr] = true
		}
		return m
	}
	dirAP, entryAP := netip.MustParseAddrPort("192.0.2.2:8080"), netip.MustParseAddrPort("192.0.2.11:1789")
	if a := allows(); len(a) != 1 || !a[dirAP] {
		t.Fatalf("disconnected lockdown allows %v", a)
	}
	r.connect(t)
	if a := allows(); len(a) != 2 || !a[dirAP] || !a[entryAP] {
		t.Fatalf("connected lockdown allows %v", a)
	}
	if err := r.d.Disconnect(t.Context()); err != nil {
		t.Fatal(err)
	}
	if a := allows(); len(a) != 1 {
		t.Fatalf("lockdown after disconnecting allows %v", a)
	}
	if r.fw.Removes() != 0 {
		t.Fatal("lockdown came down")
	}
	s := r.d.Settings()
	s.Lockdown = false
	if err := r.d.SetSettings(t.Context(), s); err != nil {
		t.Fatal(err)
	}
	if _, on := r.fw.Active(); on {
		t.Fatal("firewall on after lockdown went off, disconnected")
	}
	if _, err := os.Stat(boot); !os.IsNotExist(err) {
		t.Fatalf("boot ruleset left after lockdown went off: %v", err)
	}
}

func TestSetMode(t *testing.T) {
	r := newRig(t, "", "")
	r.watching(t)
	// Disconnected, the mode is recorded for the next connection.
	if err := r.d.SetMode(t.Context(), control.ModeAnonymous); err != nil {
		t.Fatal(err)
	}
	if st := r.d.Status(); st.State != control.StateDisconnected || st.Mode != control.ModeAnonymous || len(r.net.opened()) != 0 {
		t.Fatalf("after mode while disconnected: %+v", st)
	}
	if s, err := loadSettings(filepath.Join(r.dir, "settings.json")); err != nil || s.Mode != control.ModeAnonymous {
		t.Fatalf("stored mode %v %v", s.Mode, err)
	}
	if err := r.d.Connect(t.Context(), control.ModeUnspecified, "", ""); err != nil {
		t.Fatal(err)
	}
	if st := r.untilState(t, control.StateConnected); st.Mode != control.ModeAnonymous {
		t.Fatalf("connected in %v", st.Mode)
	}
	// Connected, it switches live, through the gateways in use, but
	// remembers the user's choice (any) for later connections.
	if err := r.d.SetMode(t.Context(), control.ModeFast); err != nil {
		t.Fatal(err)
	}
	st := r.until(t, "connected in fast mode", func(s control.Status) bool { return s.State == control.StateConnected && s.Mode == control.ModeFast })
	ts := r.net.opened()
	if len(ts) != 2 || !ts[0].closed.Load() || ts[1].tg != (target{Connected: true, Mode: control.ModeFast, Entry: "entry1", Exit: "exit1"}) {
		t.Fatalf("after switching: %+v, %d tunnels", st, len(ts))
	}
	if tg, err := loadTarget(filepath.Join(r.dir, "state.json")); err != nil || tg != (target{Connected: true, Mode: control.ModeFast}) {
		t.Fatalf("remembered %+v %v", tg, err)
	}
	if s := r.d.Stats(); s.Mode != control.ModeFast {
		t.Fatalf("stats of the fast tunnel %+v", s)
	}
}

func TestLiveness(t *testing.T) {
	var l liveness
	rc := ReconnectConfig{ProbeAfter: 4 * time.Second, DeadAfter: 20 * time.Second}
	const h = time.Hour
	steps := []struct {
		at          time.Duration
		sent, heard uint64
		want        verdict
	}{
		{0, 0, 0, fine},
		{h, 0, 0, fine},                // idle
		{h + time.Second, 10, 0, fine}, // sending: the clock starts
		{h + 3*time.Second, 20, 0, fine},
		{h + 5*time.Second, 30, 0, askEntry},
		{h + 7*time.Second, 40, 0, fine}, // asked already
		{h + 20*time.Second, 40, 0, fine},
		{h + 21*time.Second, 50, 0, dead},
		{h + 22*time.Second, 50, 5, fine}, // an answer: alive again
		{h + 23*time.Second, 60, 5, fine}, // a new silence
		{h + 27*time.Second, 60, 5, askEntry},
		{h + 28*time.Second, 60, 6, fine},
		{2 * h, 60, 6, fine}, // idle
	}
	for i, s := range steps {
		if _, got := l.observe(s.at, s.sent, s.heard, rc); got != s.want {
			t.Fatalf("step %d: verdict %v, want %v", i, got, s.want)
		}
	}
}

// A probe's failure counts only while the silence it was made in goes
// on.
func TestLivenessStillSilent(t *testing.T) {
	var l liveness
	rc := ReconnectConfig{ProbeAfter: 4 * time.Second, DeadAfter: 20 * time.Second}
	l.observe(0, 10, 0, rc)
	if _, v := l.observe(4*time.Second, 20, 0, rc); v != askEntry {
		t.Fatalf("verdict %v after 4 s of silence", v)
	}
	n := l.silence
	if !l.stillSilent(n, 0) {
		t.Fatal("not silent with nothing heard")
	}
	if l.stillSilent(n, 1) {
		t.Fatal("silent with an answer since the check")
	}
	l.observe(5*time.Second, 20, 1, rc)
	l.observe(6*time.Second, 30, 1, rc)
	if l.stillSilent(n, 1) {
		t.Fatal("an earlier silence taken for this one")
	}
}
