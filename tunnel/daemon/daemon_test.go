package daemon

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

func waitState(t *testing.T, events <-chan control.Event, want control.State) control.Status {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Status.State == control.StateError && want != control.StateError {
				t.Fatalf("error: %s", ev.Status.Error)
			}
			if ev.Status.State == want {
				return ev.Status
			}
		case <-timeout:
			t.Fatalf("never reached %v", want)
		}
	}
}

// The daemon connects in Anonymous mode on an in-process network: the kill
// switch goes up first and allows only the directory and the entries,
// routes and DNS point at the tunnel, and disconnecting undoes them.
func TestConnectAnonymousAndDisconnect(t *testing.T) {
	n := servertest.Start(t, servertest.Options{Echo: true})
	rt, dc, fw := &router.Fake{}, &dns.Fake{}, &firewall.Fake{}
	dir := t.TempDir()
	sys := filepath.Join(dir, "system.json")
	os.WriteFile(sys, []byte(`{"dns_servers": ["192.0.2.53"], "mean_delay_ms": 2}`), 0o644)
	own := filepath.Join(dir, "own.json")
	ch := tuntest.NewChannelTUN()
	d, err := New(Config{Device: ch.TUN(), DirectoryURL: n.DirURL, DirectoryKey: n.AuthKey, SystemSettings: sys, Settings: own,
		Router: rt, DNS: dc, Firewall: fw})
	if err != nil {
		t.Fatal(err)
	}
	if s := d.Settings(); len(s.DNSServers) != 1 || s.MeanDelay != 2*time.Millisecond || !s.KillSwitch {
		t.Fatalf("settings from the system file: %+v", s)
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
	st := waitState(t, events, control.StateConnected)
	if st.Mode != control.ModeAnonymous || st.Entry != "entry" || st.Exit != "exit" {
		t.Fatalf("status %+v", st)
	}
	pol, on := fw.Active()
	if !on || pol.Interface == "" || len(pol.Endpoints) == 0 {
		t.Fatalf("kill switch %+v %v", pol, on)
	}
	entry := netip.MustParseAddrPort(n.Nodes["entry"].Mesh.Document().ByID("entry").Address)
	allowed := map[netip.AddrPort]bool{}
	for _, e := range pol.Endpoints {
		allowed[e.Addr] = true
	}
	if !allowed[entry] || len(allowed) != 2 { // the directory and the entry's link
		t.Fatalf("kill switch allows %v", allowed)
	}
	rc, ok := rt.Current()
	if !ok || len(rc.Addresses) != 2 || !rc.RouteIPv4 || !netip.MustParsePrefix("100.64.0.0/16").Contains(rc.Addresses[0].Addr()) {
		t.Fatalf("routes %+v", rc)
	}
	if c, ok := dc.Current(); !ok || c.Servers[0] != netip.MustParseAddr("192.0.2.53") {
		t.Fatalf("DNS %+v", c)
	}
	// A device packet makes it through the mixnet and back.
	v4 := rc.Addresses[0].Addr().As4()
	p := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 253, 0, 0, v4[0], v4[1], v4[2], v4[3], 192, 0, 2, 1}
	ch.Outbound <- p
	select {
	case back := <-ch.Inbound:
		if netip.AddrFrom4([4]byte(back[12:16])) != netip.MustParseAddr("192.0.2.1") {
			t.Fatalf("answer %v", back)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("no answer through the tunnel")
	}
	// The watcher reads a real tunnel's progress as it does a fake's: a
	// check an hour after another, with loops returned in between, finds
	// the tunnel alive. The loops must have returned since the first
	// check, not merely been sent: loops in flight at it and none back by
	// the next would be an hour's silence, rightly judged dead.
	d.checkAlive(time.Hour)
	heard := d.Stats().LoopsReturned
	deadline := time.Now().Add(20 * time.Second)
	for d.Stats().LoopsReturned == heard {
		if time.Now().After(deadline) {
			t.Fatalf("no loop returned in 20 s: %+v", d.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.checkAlive(2 * time.Hour)
	if st := d.Status(); st.State != control.StateConnected {
		t.Fatalf("a live anonymous tunnel was judged: %+v", st)
	}
	// Loops are a small share of a Poisson stream, so a short run may
	// have sent none; real packets and reply blocks it must have.
	if s := d.Stats(); s.Mode != control.ModeAnonymous || s.BytesOut == 0 || s.RealPackets == 0 || s.SURBsMade == 0 ||
		s.SURBsUsed == 0 || s.SURBStock != s.SURBsMade-s.SURBsUsed {
		t.Fatalf("stats %+v", s)
	}

	// Settings persist atomically and validate.
	s := d.Settings()
	s.AllowLAN = true
	if err := d.SetSettings(ctx, s); err != nil {
		t.Fatal(err)
	}
	if got, err := loadSettings(sys, own); err != nil || !got.AllowLAN {
		t.Fatalf("stored settings %+v %v", got, err)
	}
	s.MixRate = -1
	if err := d.SetSettings(ctx, s); err == nil {
		t.Fatal("a negative rate was stored")
	}

	if err := d.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if d.Status().State != control.StateDisconnected {
		t.Fatalf("status %+v", d.Status())
	}
	if rc, _ := rt.Current(); len(rc.Addresses) != 0 || rc.RouteIPv4 {
		t.Fatalf("routes after disconnect %+v", rc)
	}
	if _, on := dc.Current(); on {
		t.Fatal("DNS not restored")
	}
	if _, on := fw.Active(); on {
		t.Fatal("kill switch left on without lockdown")
	}
}

func TestBrokenSettingsFileIsNamed(t *testing.T) {
	p := filepath.Join(t.TempDir(), "s.json")
	os.WriteFile(p, []byte(`{"mix_rate": "fast"}`), 0o644)
	if _, err := loadSettings(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("error %v does not name the file", err)
	}
}
