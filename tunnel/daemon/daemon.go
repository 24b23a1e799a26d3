// Package daemon is mixvpnd's core: the tunnel state machine behind the
// control API. It owns one TUN device for its whole life (tunnel.Shared),
// brings Fast and Anonymous tunnels up on leases of it, and points routes,
// DNS and the firewall at whichever is current, so that switching modes
// never takes the interface down and nothing leaves outside the tunnel.
package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel"
	"github.com/mixvpn/mixvpn/tunnel/anon"
	"github.com/mixvpn/mixvpn/tunnel/control"
	"github.com/mixvpn/mixvpn/tunnel/fast"
)

// Version is the daemon's version, reported by GetStatus.
const Version = "0.1.0"

// Config configures a Daemon.
type Config struct {
	// Device is the TUN device; the daemon owns and closes it.
	Device tun.Device
	// DirectoryURL and DirectoryKey name the network and pin its key.
	DirectoryURL string
	DirectoryKey ed25519.PublicKey
	// SystemSettings is the settings file IT presets (read only);
	// Settings is the daemon's own, written on every change.
	SystemSettings, Settings string
	// Router, DNS and Firewall are the platform; the fakes serve tests.
	Router   router.Router
	DNS      dns.Configurator
	Firewall firewall.Firewall
	Logger   *slog.Logger
}

// Daemon is the tunnel state machine.
type Daemon struct {
	cfg    Config
	log    *slog.Logger
	shared *tunnel.Shared
	ifname string
	// fetcher is the one directory client: it falls back to the last
	// good document while the directory is briefly unreachable.
	fetcher *directory.Fetcher

	// op serialises connects, switches and disconnects.
	op sync.Mutex

	mu       sync.Mutex
	status   control.Status
	settings control.Settings
	subs     map[chan control.Event]struct{}
	cur      modeTunnel
	fastT    *fast.Tunnel
	anonT    *anon.Tunnel
	dnsOn    bool
}

// New builds a daemon. It loads the settings; Run starts it.
func New(cfg Config) (*Daemon, error) {
	if cfg.Device == nil || cfg.Router == nil || cfg.DNS == nil || cfg.Firewall == nil {
		return nil, errors.New("daemon: device, router, DNS and firewall are required")
	}
	if cfg.DirectoryURL == "" || len(cfg.DirectoryKey) != ed25519.PublicKeySize {
		return nil, errors.New("daemon: directory URL and key are required")
	}
	s, err := loadSettings(cfg.SystemSettings, cfg.Settings)
	if err != nil {
		return nil, err
	}
	name, err := cfg.Device.Name()
	if err != nil {
		return nil, fmt.Errorf("daemon: device name: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Daemon{cfg: cfg, log: log, ifname: name, settings: s, subs: map[chan control.Event]struct{}{},
		fetcher: &directory.Fetcher{URL: cfg.DirectoryURL, Key: cfg.DirectoryKey}}
	d.status = control.Status{State: control.StateDisconnected, Mode: s.Mode, Since: time.Now(), DaemonVersion: Version}
	return d, nil
}

// Run starts the data plane, applies lockdown and auto-connect, and runs
// until ctx ends; then it disconnects and restores the system, except
// that lockdown's blocking rules stay.
func (d *Daemon) Run(ctx context.Context) error {
	d.shared = tunnel.NewShared(d.cfg.Device)
	defer d.shared.Close()
	if err := d.cfg.Router.Up(ctx); err != nil {
		return fmt.Errorf("daemon: router: %w", err)
	}
	defer d.cfg.Router.Close()
	d.cfg.DNS.Restore() // undo what a crashed daemon left
	s := d.Settings()
	if s.Lockdown {
		if err := d.applyFirewall(nil); err != nil {
			return err
		}
	} else {
		d.cfg.Firewall.Remove() // a crashed daemon's kill switch
	}
	if s.AutoConnect {
		if err := d.Connect(ctx, s.Mode, s.Entry, s.Exit); err != nil {
			d.log.Warn("auto-connect failed", "err", err)
		}
	}
	<-ctx.Done()
	d.Disconnect(context.Background())
	if !d.Settings().Lockdown {
		d.cfg.Firewall.Remove()
	}
	return nil
}

// Status is the tunnel's state.
func (d *Daemon) Status() control.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

func (d *Daemon) setStatus(f func(s *control.Status)) {
	d.mu.Lock()
	before := d.status
	f(&d.status)
	if d.status.State != before.State {
		d.status.Since = time.Now()
	}
	ev := control.Event{Status: d.status, Time: time.Now()}
	for ch := range d.subs {
		select {
		case ch <- ev:
		default: // a slow watcher misses a step, never blocks the daemon
		}
	}
	d.mu.Unlock()
	d.log.Info("state", "state", ev.Status.State, "mode", ev.Status.Mode, "entry", ev.Status.Entry, "exit", ev.Status.Exit, "error", ev.Status.Error)
}

// Subscribe streams status changes.
func (d *Daemon) Subscribe() (<-chan control.Event, func()) {
	ch := make(chan control.Event, 16)
	d.mu.Lock()
	d.subs[ch] = struct{}{}
	d.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			d.mu.Lock()
			delete(d.subs, ch)
			d.mu.Unlock()
		})
	}
}

// Connect starts connecting in mode (the settings' when zero) and returns
// once the state is Connecting; the outcome comes as events.
func (d *Daemon) Connect(ctx context.Context, mode control.Mode, entry, exit string) error {
	s := d.Settings()
	if mode == control.ModeUnspecified {
		mode = s.Mode
	}
	if entry == "" {
		entry = s.Entry
	}
	if exit == "" {
		exit = s.Exit
	}
	d.setStatus(func(st *control.Status) {
		st.State, st.Mode, st.Entry, st.Exit, st.Error = control.StateConnecting, mode, entry, exit, ""
	})
	go d.bringUp(mode, entry, exit)
	return nil
}

// SetMode switches the live tunnel to mode, or records it for the next
// connection.
func (d *Daemon) SetMode(ctx context.Context, mode control.Mode) error {
	st := d.Status()
	if st.State != control.StateConnected && st.State != control.StateConnecting {
		d.mu.Lock()
		d.status.Mode = mode
		d.settings.Mode = mode
		d.mu.Unlock()
		return nil
	}
	if st.Mode == mode {
		return nil
	}
	return d.Connect(ctx, mode, st.Entry, st.Exit)
}

// bringUp builds the tunnel of mode on a new lease of the device and then
// moves routes and DNS to it. The old tunnel, if any, loses the device
// the moment the new lease is taken, so packets in between are dropped
// inside the TUN, never sent in the clear; the kill switch blocks
// everything else while this runs.
func (d *Daemon) bringUp(mode control.Mode, entry, exit string) {
	d.op.Lock()
	defer d.op.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := d.Settings()
	fail := func(err error) {
		d.log.Warn("connect failed", "err", err)
		d.setStatus(func(st *control.Status) { st.State, st.Error = control.StateError, err.Error() })
	}
	doc, err := d.fetcher.Fetch(ctx)
	if err != nil {
		fail(fmt.Errorf("cannot reach the directory: %w", err))
		return
	}
	bypass := d.bypass(doc)
	if s.KillSwitch || s.Lockdown {
		if err := d.applyFirewall(bypass); err != nil {
			fail(err)
			return
		}
	}
	t, describe, err := d.newTunnel(ctx, mode, doc, entry, exit, s)
	if err != nil {
		fail(err)
		return
	}
	if err := t.Up(ctx); err != nil {
		t.Close()
		fail(err)
		return
	}
	addrs, entryID, exitID := describe()
	d.mu.Lock()
	old := d.cur
	d.cur = t
	d.fastT, _ = t.(*fast.Tunnel)
	d.anonT, _ = t.(*anon.Tunnel)
	d.mu.Unlock()
	if old != nil {
		old.Close()
	}
	rc := router.Config{Interface: d.ifname, Addresses: addrs, RouteIPv4: true, RouteIPv6: s.IPv6, Bypass: bypass}
	if s.AllowLAN {
		rc.AllowLAN = firewall.DefaultLAN()
	}
	if err := d.cfg.Router.Set(ctx, rc); err != nil {
		fail(fmt.Errorf("routes: %w", err))
		return
	}
	if len(s.DNSServers) > 0 {
		if err := d.cfg.DNS.Set(ctx, dns.Config{Servers: s.DNSServers, Interface: d.ifname}); err != nil {
			fail(fmt.Errorf("DNS: %w", err))
			return
		}
		d.mu.Lock()
		d.dnsOn = true
		d.mu.Unlock()
	}
	d.setStatus(func(st *control.Status) {
		st.State, st.Mode, st.Entry, st.Exit, st.Error = control.StateConnected, mode, entryID, exitID, ""
	})
}

// modeTunnel is a tunnel of either mode: tunnel/fast's or tunnel/anon's.
type modeTunnel interface {
	Up(ctx context.Context) error
	Close() error
}

// newTunnel builds the tunnel of mode on a new lease of the device; once it
// is up, describe tells its inner addresses and its gateways.
func (d *Daemon) newTunnel(ctx context.Context, mode control.Mode, doc *directory.Document, entry, exit string, s control.Settings) (modeTunnel, func() ([]netip.Prefix, string, string), error) {
	switch mode {
	case control.ModeFast:
		fc, joined, err := fast.Join(ctx, fast.JoinConfig{DirectoryURL: d.cfg.DirectoryURL, DirectoryKey: d.cfg.DirectoryKey, Document: doc, Entry: entry, Exit: exit, Logger: d.log})
		if err != nil {
			return nil, nil, err
		}
		fc.FwMark = router.FwMark
		t, err := fast.New(fc, d.shared.Lease())
		if err != nil {
			return nil, nil, err
		}
		return t, func() ([]netip.Prefix, string, string) { return fc.InnerAddrs, joined.EntryID, joined.ExitID }, nil
	case control.ModeAnonymous:
		t, err := anon.New(anon.Config{Logger: d.log, Connect: client.ConnectConfig{
			DirectoryURL: d.cfg.DirectoryURL, DirectoryKey: d.cfg.DirectoryKey, Document: doc, Entry: entry, Exit: exit,
			Client: client.Config{Rate: s.MixRate, LoopRate: s.LoopRate, MeanDelay: s.MeanDelay},
		}}, d.shared.Lease())
		if err != nil {
			return nil, nil, err
		}
		return t, func() ([]netip.Prefix, string, string) {
			v4, v6 := t.Addrs()
			st := t.Stats()
			return []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)}, st.Entry, st.Exit
		}, nil
	}
	return nil, nil, fmt.Errorf("unknown mode %v", mode)
}

// bypass lists what the daemon reaches around the tunnel: the directory
// and the entry gateways' link and WireGuard ports. Nothing else.
func (d *Daemon) bypass(doc *directory.Document) []netip.AddrPort {
	var out []netip.AddrPort
	if u, err := url.Parse(d.cfg.DirectoryURL); err == nil {
		if ap, err := netip.ParseAddrPort(u.Host); err == nil {
			out = append(out, ap)
		} else if ip, err := netip.ParseAddr(u.Hostname()); err == nil {
			out = append(out, netip.AddrPortFrom(ip, 80))
		}
	}
	for _, e := range doc.NodesOf(directory.RoleEntry, 0) {
		if ap, err := netip.ParseAddrPort(e.Address); err == nil {
			out = append(out, ap)
		}
		if e.WireGuard != nil {
			if ap, err := netip.ParseAddrPort(e.WireGuard.Endpoint); err == nil {
				out = append(out, ap)
			}
		}
	}
	return out
}

func (d *Daemon) applyFirewall(bypass []netip.AddrPort) error {
	s := d.Settings()
	p := firewall.Policy{Interface: d.ifname, AllowLAN: s.AllowLAN, AllowDHCP: true}
	if s.AllowLAN {
		p.LAN = firewall.DefaultLAN()
	}
	for _, ap := range bypass {
		// The directory and links are TCP, WireGuard is UDP; the port
		// tells which, but allowing both costs nothing.
		p.Endpoints = append(p.Endpoints, firewall.Endpoint{Addr: ap, Proto: firewall.TCP}, firewall.Endpoint{Addr: ap, Proto: firewall.UDP})
	}
	if err := d.cfg.Firewall.Apply(context.Background(), p); err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	return nil
}

// Disconnect takes the tunnel down and restores routes and DNS. With
// lockdown on, the firewall keeps blocking.
func (d *Daemon) Disconnect(ctx context.Context) error {
	d.setStatus(func(st *control.Status) { st.State = control.StateDisconnecting })
	d.op.Lock()
	defer d.op.Unlock()
	d.mu.Lock()
	cur := d.cur
	d.cur, d.fastT, d.anonT = nil, nil, nil
	dnsOn := d.dnsOn
	d.dnsOn = false
	d.mu.Unlock()
	if cur != nil {
		cur.Close()
	}
	d.cfg.Router.Set(ctx, router.Config{Interface: d.ifname})
	if dnsOn {
		d.cfg.DNS.Restore()
	}
	s := d.Settings()
	if s.Lockdown {
		d.applyFirewall(nil)
	} else {
		d.cfg.Firewall.Remove()
	}
	d.setStatus(func(st *control.Status) { st.State, st.Error = control.StateDisconnected, "" })
	return nil
}

// Gateways lists the gateways in the directory.
func (d *Daemon) Gateways(ctx context.Context) ([]control.Gateway, error) {
	doc, err := d.fetcher.Fetch(ctx)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	var out []control.Gateway
	for _, role := range []directory.Role{directory.RoleEntry, directory.RoleExit} {
		for _, n := range doc.NodesOf(role, 0) {
			g := control.Gateway{ID: n.ID, Role: control.RoleEntry, Country: n.Country, Endpoint: n.Address, Health: control.HealthUp}
			if role == directory.RoleExit {
				g.Role = control.RoleExit
			}
			if role == directory.RoleEntry {
				start := time.Now()
				if c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", n.Address); err == nil {
					g.Latency = time.Since(start)
					c.Close()
				} else {
					g.Health = control.HealthDown
				}
			}
			out = append(out, g)
		}
	}
	return out, nil
}

// Settings returns the current settings.
func (d *Daemon) Settings() control.Settings {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.settings
}

// SetSettings stores s (validated by the control server) and applies what
// can change live: the firewall's lockdown and LAN rules.
func (d *Daemon) SetSettings(ctx context.Context, s control.Settings) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("%w: %v", control.ErrInvalid, err)
	}
	if d.cfg.Settings != "" {
		if err := saveSettings(d.cfg.Settings, s); err != nil {
			return err
		}
	}
	d.mu.Lock()
	d.settings = s
	connected := d.cur != nil
	d.mu.Unlock()
	if !connected {
		if s.Lockdown {
			return d.applyFirewall(nil)
		}
		d.cfg.Firewall.Remove()
	}
	return nil
}

// Stats returns the current tunnel's counters.
func (d *Daemon) Stats() control.Stats {
	d.mu.Lock()
	ft, at := d.fastT, d.anonT
	d.mu.Unlock()
	var s control.Stats
	switch {
	case ft != nil:
		fs := ft.Stats()
		s.BytesIn, s.BytesOut = fs.BytesIn, fs.BytesOut
	case at != nil:
		as := at.Stats()
		s.BytesIn, s.BytesOut = as.BytesIn, as.BytesOut
		s.Latency = as.LoopRTTMean
		s.RealPackets, s.CoverPackets = as.RealSent, as.CoverSent
		s.LoopsSent, s.LoopsReturned = as.LoopsSent, as.LoopsReturned
		s.SURBsMade = as.SURBsMade
	}
	return s
}
