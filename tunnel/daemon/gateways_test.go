package daemon

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

// gatewayDoc has an entry that answers, one that refuses, four that
// never answer, one on the LAN and two exits.
var gatewayDoc = &directory.Document{Nodes: []directory.Descriptor{
	{ID: "entry1", Role: directory.RoleEntry, Country: "DE", Address: "192.0.2.11:1789"},
	{ID: "entry2", Role: directory.RoleEntry, Address: "192.0.2.12:1789"},
	{ID: "entry3", Role: directory.RoleEntry, Address: "192.0.2.13:1789"},
	{ID: "entry4", Role: directory.RoleEntry, Address: "192.0.2.14:1789"},
	{ID: "entry5", Role: directory.RoleEntry, Address: "192.0.2.15:1789"},
	{ID: "entry6", Role: directory.RoleEntry, Address: "192.0.2.16:1789"},
	{ID: "lan", Role: directory.RoleEntry, Address: "10.1.2.3:1789"},
	{ID: "exit1", Role: directory.RoleExit, Country: "CH", Address: "192.0.2.51:1789"},
	{ID: "exit2", Role: directory.RoleExit, Address: "192.0.2.52:1789"},
}}

// fakeDialer stands in for the marked dialer: entry1 and the LAN entry
// accept, entry2 refuses, the rest never answer. It records every dial.
type fakeDialer struct {
	mu     sync.Mutex
	dialed []string
}

func (f *fakeDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	f.mu.Lock()
	f.dialed = append(f.dialed, addr)
	f.mu.Unlock()
	switch addr {
	case "192.0.2.11:1789", "10.1.2.3:1789":
		time.Sleep(2 * time.Millisecond)
		a, b := net.Pipe()
		b.Close()
		return a, nil
	case "192.0.2.12:1789":
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("connection refused")}
	}
	<-ctx.Done()
	return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
}

func (f *fakeDialer) addrs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(slices.Values(f.dialed))
}

// degradedTunnel is a fake tunnel whose loops report loss.
type degradedTunnel struct{ *fakeTunnel }

func (degradedTunnel) Health() client.Health { return client.Health{ReturnRate: 0.5, Degraded: true} }

// newGatewayRig runs a daemon on gatewayDoc with fakeDialer's probes,
// the fake tunnels of open, and settings preset.
func newGatewayRig(t *testing.T, settings string, open openFunc) (*Daemon, *fakeDialer, *firewall.Fake) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "system.json"), []byte(settings), 0o644); err != nil {
		t.Fatal(err)
	}
	fw, fd := &firewall.Fake{}, &fakeDialer{}
	d, err := New(Config{
		Device: tuntest.NewChannelTUN().TUN(), DirectoryURL: "https://192.0.2.2", DirectoryKey: make([]byte, 32),
		SystemSettings: filepath.Join(dir, "system.json"), Settings: filepath.Join(dir, "settings.json"),
		Router: &router.Fake{}, DNS: &dns.Fake{}, Firewall: fw,
		Reconnect: ReconnectConfig{CheckInterval: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	d.dir = directory.Static{Doc: gatewayDoc}
	d.dial = fd.dial
	d.open = open
	d.clock = &fakeClock{wall: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	runDaemon(t, d)
	<-d.ready
	return d, fd, fw
}

// gatewaysByID lists the gateways, checking each appears once.
func gatewaysByID(t *testing.T, d *Daemon) map[string]control.Gateway {
	t.Helper()
	gs, err := d.Gateways(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]control.Gateway{}
	for _, g := range gs {
		if _, dup := out[g.ID]; dup {
			t.Fatalf("%s listed twice", g.ID)
		}
		out[g.ID] = g
	}
	if len(out) != len(gatewayDoc.Nodes) {
		t.Fatalf("listed %d gateways, the directory has %d", len(out), len(gatewayDoc.Nodes))
	}
	return out
}

func wantHealth(t *testing.T, gs map[string]control.Gateway, want map[string]control.Health) {
	t.Helper()
	for id, h := range want {
		if gs[id].Health != h {
			t.Errorf("%s is %v, want %v", id, gs[id].Health, h)
		}
		if (gs[id].Latency > 0) != (h == control.HealthUp && gs[id].Role == control.RoleEntry) {
			t.Errorf("%s (%v) has latency %v", id, gs[id].Health, gs[id].Latency)
		}
	}
}

// Disconnected without lockdown, every entry is probed, all at once: the
// four that never answer cost one probe timeout together, not four. No
// exit is probed, and none is called up without a measurement.
func TestGatewaysProbesEntriesAtOnce(t *testing.T) {
	d, fd, _ := newGatewayRig(t, `{"kill_switch": true}`, (&fakeNet{}).open)
	start := time.Now()
	gs := gatewaysByID(t, d)
	if took := time.Since(start); took > 2*probeTimeout {
		t.Errorf("listing took %v: the probes ran one after another", took)
	}
	wantHealth(t, gs, map[string]control.Health{
		"entry1": control.HealthUp, "lan": control.HealthUp, "entry2": control.HealthDown,
		"entry3": control.HealthDown, "entry4": control.HealthDown, "entry5": control.HealthDown, "entry6": control.HealthDown,
		"exit1": control.HealthUnknown, "exit2": control.HealthUnknown,
	})
	if g := gs["entry1"]; g.Role != control.RoleEntry || g.Country != "DE" || g.Endpoint != "192.0.2.11:1789" {
		t.Errorf("entry1 listed as %+v", g)
	}
	if g := gs["exit1"]; g.Role != control.RoleExit || g.Country != "CH" {
		t.Errorf("exit1 listed as %+v", g)
	}
	for _, a := range fd.addrs() {
		if a == "192.0.2.51:1789" || a == "192.0.2.52:1789" {
			t.Errorf("an exit was probed at %s", a)
		}
	}
}

// Under lockdown while disconnected the firewall lets through only the
// directory (and the LAN, here): the entries it blocks are unknown and
// not probed. Once connected, the entries are let through and probed, and
// the gateways in use are up because the tunnel crosses them.
func TestGatewaysUnderLockdown(t *testing.T) {
	d, fd, fw := newGatewayRig(t, `{"lockdown": true, "allow_lan": true, "dns_servers": ["192.0.2.53"]}`, (&fakeNet{}).open)
	if _, on := fw.Active(); !on {
		t.Fatal("lockdown is not blocking")
	}
	wantHealth(t, gatewaysByID(t, d), map[string]control.Health{
		"lan": control.HealthUp, "entry1": control.HealthUnknown, "entry2": control.HealthUnknown, "entry3": control.HealthUnknown,
		"exit1": control.HealthUnknown, "exit2": control.HealthUnknown,
	})
	if got := fd.addrs(); !slices.Equal(got, []string{"10.1.2.3:1789"}) {
		t.Fatalf("probed %v through lockdown", got)
	}

	events, stop := d.Subscribe()
	defer stop()
	if err := d.Connect(context.Background(), control.ModeFast, "entry1", "exit1"); err != nil {
		t.Fatal(err)
	}
	waitState(t, events, control.StateConnected)
	gs := gatewaysByID(t, d)
	wantHealth(t, gs, map[string]control.Health{
		"entry1": control.HealthUp, "entry2": control.HealthDown, "exit1": control.HealthUp, "exit2": control.HealthUnknown,
	})
	if gs["exit1"].Latency != 0 {
		t.Errorf("exit1 has a latency nobody measured: %v", gs["exit1"].Latency)
	}
}

// The gateways of an Anonymous tunnel whose loops are being lost are
// degraded, not up.
func TestGatewaysInUseFollowLoopHealth(t *testing.T) {
	open := func(ctx context.Context, tg target, doc *directory.Document, s control.Settings) (modeTunnel, error) {
		return degradedTunnel{&fakeTunnel{tg: tg, entry: "entry1", exit: "exit1"}}, nil
	}
	d, _, _ := newGatewayRig(t, `{"kill_switch": false, "dns_servers": ["192.0.2.53"]}`, open)
	events, stop := d.Subscribe()
	defer stop()
	if err := d.Connect(context.Background(), control.ModeAnonymous, "", ""); err != nil {
		t.Fatal(err)
	}
	waitState(t, events, control.StateConnected)
	gs := gatewaysByID(t, d)
	for _, id := range []string{"entry1", "exit1"} {
		if gs[id].Health != control.HealthDegraded {
			t.Errorf("%s in use is %v, want degraded", id, gs[id].Health)
		}
	}
	if gs["exit2"].Health != control.HealthUnknown {
		t.Errorf("exit2 is %v, want unknown", gs["exit2"].Health)
	}
}

// A caller that gives up gets an error, not entries marked down because
// their probes were cut short.
func TestGatewaysCancelled(t *testing.T) {
	d, _, _ := newGatewayRig(t, `{"kill_switch": false}`, (&fakeNet{}).open)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if gs, err := d.Gateways(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Gateways = %v, %v; want the deadline's error", gs, err)
	}
}

// runDaemon runs d until the test ends, when it stops it and checks that
// Run returned no error.
func runDaemon(t *testing.T, d *Daemon) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}
