// Package daemon is mixvpnd's core: the tunnel state machine behind the
// control API. It owns one TUN device for its whole life (tunnel.Shared),
// brings Fast and Anonymous tunnels up on leases of it, and points routes,
// DNS and the firewall at whichever is current, so that switching modes
// never takes the interface down and nothing leaves outside the tunnel.
//
// It also keeps the tunnel up: a tunnel that stops hearing back, a
// network that changes under it and a machine that wakes from sleep make
// it reconnect, with backoff, while the kill switch keeps blocking; and
// what the user last asked for is kept on disk, so a daemon that crashed
// or was restarted comes back connected if it was.
package daemon

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

// Version is the daemon's version, reported by GetStatus.
const Version = "0.1.0"

// connectTimeout bounds one attempt to bring a tunnel up.
const connectTimeout = 30 * time.Second

// Config configures a Daemon.
type Config struct {
	// Device is the TUN device; the daemon owns and closes it.
	Device tun.Device
	// DirectoryURL and DirectoryKey name the network and pin its key.
	// The URL is http or https and names the directory by IP address,
	// since the firewall and the routes must let the daemon reach it
	// before any DNS can; the port defaults to the scheme's.
	DirectoryURL string
	DirectoryKey ed25519.PublicKey
	// SystemSettings is the settings file IT presets (read only);
	// Settings is the daemon's own, written on every change.
	SystemSettings, Settings string
	// State is where the daemon keeps what the user last asked for
	// (connected or not, mode, gateways), mode 0600, so that after a
	// crash, a restart or a reboot it comes back to it. Empty keeps it
	// in memory only.
	State string
	// LockdownRuleset is where the daemon writes, while lockdown is on,
	// the nft script of the policy in force (firewall.Render), for a
	// unit that loads it at boot before any network comes up; it removes
	// the file when lockdown goes off. Empty writes none.
	LockdownRuleset string
	// Router, DNS and Firewall are the platform; the fakes serve tests.
	Router   router.Router
	DNS      dns.Configurator
	Firewall firewall.Firewall
	// Monitor reports changes of the network, after which a connected
	// tunnel reconnects. Nil leaves the tunnel's own health and the
	// clocks to notice.
	Monitor router.Monitor
	// Sleep reports resumes from sleep as the system announces them,
	// after which a connected tunnel reconnects as when the clocks show
	// a sleep. Nil (or one that fails) leaves the clocks to notice.
	Sleep SleepNotifier
	// Reconnect tunes how a dead tunnel is noticed and brought back.
	Reconnect ReconnectConfig
	Logger    *slog.Logger
}

// Daemon is the tunnel state machine.
type Daemon struct {
	cfg    Config
	rc     ReconnectConfig
	log    *slog.Logger
	shared *tunnel.Shared
	ifname string
	// dir is the one directory client: a Fetcher, which falls back to
	// the last good document while the directory is briefly unreachable.
	dir directory.Source
	// dirEP is where the directory listens, reached around the tunnel.
	dirEP netip.AddrPort
	// mark is the socket mark of the daemon's own traffic (the router's
	// FwMark) and dial opens its connections with it; a test may put
	// others there before Run. web is the HTTP client over dial.
	mark uint32
	dial dialFunc
	web  *http.Client
	// open builds tunnels and clock reads the time: newTunnel and the
	// system clock, unless a test put doubles there before Run.
	open  openFunc
	clock clock
	// prevWall and prevMono are the clocks at the last check, and
	// wokeWall the wall clock when a wake-up was last acted on; only
	// check and resumed touch them, from the watcher (or a test in its
	// place).
	prevWall time.Time
	prevMono time.Duration
	wokeWall time.Time

	// op serialises bringing tunnels up and taking them down.
	op sync.Mutex
	// fwMu serialises firewall changes, so that the last one applied is
	// always computed from the latest state.
	fwMu sync.Mutex
	// stateMu serialises writes of the target file, for the same reason.
	stateMu sync.Mutex
	// loops are the connection attempts running.
	loops sync.WaitGroup
	// ready is closed once Run has prepared the platform: attempts that
	// a request started earlier wait for it.
	ready chan struct{}

	mu       sync.Mutex
	status   control.Status
	settings control.Settings
	target   target
	// gen counts changes of course (connect, switch, reconnect,
	// disconnect); an attempt whose gen is past gives up, and cancelGen
	// stops it.
	gen       uint64
	cancelGen context.CancelFunc
	subs      map[chan control.Event]struct{}
	cur       modeTunnel
	live      liveness
	doc       *directory.Document // last fetched, for the kill switch's endpoints
	dnsOn     bool
	// resolving is what the system's DNS may point at while dnsOn: the
	// servers last set, and those of a Set under way or that failed half
	// way. The routes keep them all in the tunnel.
	resolving []netip.Addr

	// genCtx is gen's context, ended with it: a probe of the entry made
	// for gen's tunnel says nothing about the next.
	genCtx context.Context
	// failed is the gateways to pass over when choosing: a choice of
	// any gateway, or of a country, leaves room to stay away from one
	// that just failed.
	failed failures

	// retry is whether gen's attempt retries its failures, so that one
	// started over for new settings keeps doing so.
	retry bool

	// restart is closed, and restartErr set, once the system's DNS can
	// be set or restored only by a new process (dns.ErrNeedsRestart):
	// Run then stops the daemon and returns restartErr.
	restart    chan struct{}
	restartErr error
}

// New builds a daemon. It loads the settings and what the user last asked
// for; Run starts it.
func New(cfg Config) (*Daemon, error) {
	if cfg.Device == nil || cfg.Router == nil || cfg.DNS == nil || cfg.Firewall == nil {
		return nil, errors.New("daemon: device, router, DNS and firewall are required")
	}
	if cfg.DirectoryURL == "" || len(cfg.DirectoryKey) != ed25519.PublicKeySize {
		return nil, errors.New("daemon: directory URL and key are required")
	}
	dirEP, err := directoryEndpoint(cfg.DirectoryURL)
	if err != nil {
		return nil, err
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
	// What to come back to is decided here, before the control API can
	// take a request that would change it.
	tg, err := loadTarget(cfg.State)
	if err != nil {
		log.Warn("forgetting the last connection", "err", err)
		tg = target{}
	}
	if !tg.Connected && s.AutoConnect {
		tg = target{Connected: true, Mode: s.Mode, Entry: s.Entry, Exit: s.Exit}
	}
	if tg.Mode == control.ModeUnspecified {
		tg.Mode = s.Mode
	}
	d := &Daemon{cfg: cfg, rc: cfg.Reconnect.withDefaults(), log: log, ifname: name, settings: s, target: tg,
		subs: map[chan control.Event]struct{}{}, failed: failures{}, clock: newSystemClock(), ready: make(chan struct{}),
		restart: make(chan struct{}), dirEP: dirEP, mark: router.FwMark}
	d.dial, d.web = d.markedDial, d.newHTTPClient()
	d.dir = &directory.Fetcher{URL: cfg.DirectoryURL, Key: cfg.DirectoryKey, Client: d.web}
	d.open = d.newTunnel
	d.status = control.Status{State: control.StateDisconnected, Mode: s.Mode, Since: time.Now(), DaemonVersion: Version}
	return d, nil
}

// Run starts the data plane and comes back to what the user last asked
// for: connected (after a crash, a restart or a reboot) or, with
// auto-connect, connected anyway. It runs until ctx ends; then it takes
// the tunnel down and restores the system, except that lockdown's
// blocking rules stay, and remembers whether the tunnel was meant to be
// up for the next start.
//
// It stops in the same way, and returns an error wrapping
// dns.ErrNeedsRestart, when the system's DNS can be set or restored only
// by a new process: systemd starts one (Restart=always), which comes
// back connected if the tunnel was meant to be up.
func (d *Daemon) Run(ctx context.Context) error {
	d.shared = tunnel.NewShared(d.cfg.Device)
	defer d.shared.Close()
	if err := d.cfg.Router.Up(ctx); err != nil {
		return fmt.Errorf("daemon: router: %w", err)
	}
	defer d.cfg.Router.Close()
	// Undo what a crashed daemon left: the original resolv.conf comes
	// back from its backup. Failing that is no reason not to start; the
	// next Restore tries again. Unless only a new process can do it.
	if err := d.cfg.DNS.Restore(); d.needsRestart(err) {
		return d.restartError()
	} else if err != nil {
		d.log.Warn("restoring the DNS a crashed run left", "err", err)
	}
	d.mu.Lock()
	tg := d.target
	d.mu.Unlock()
	// The kill switch goes up before anything connects, so a crashed
	// daemon's tunnel leaks nothing while this one comes back.
	if err := d.syncFirewall(tg.Connected); err != nil {
		return err
	}
	close(d.ready)
	d.mu.Lock()
	if d.gen == 0 && tg.Connected {
		// Nobody asked for anything yet: come back as before.
		d.log.Info("connecting as when last stopped", "mode", tg.Mode, "entry", tg.Entry, "exit", tg.Exit)
		d.startLocked(tg, tg, control.StateConnecting, "", true)
	}
	d.mu.Unlock()
	watchCtx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		d.watch(watchCtx)
	}()
	select {
	case <-ctx.Done():
	case <-d.restart:
	}
	stopWatching()
	<-watched
	d.shutdown()
	return d.restartError()
}

// needsRestart reports whether err, from setting or restoring the
// system's DNS, is one that only a new process gets past
// (dns.ErrNeedsRestart). If so it has Run stop the daemon as on a stop,
// keeping the target so that the next process comes back to it.
func (d *Daemon) needsRestart(err error) bool {
	if !errors.Is(err, dns.ErrNeedsRestart) {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.restartErr == nil {
		d.log.Error("stopping: only a new daemon can set the system's DNS; systemd starts one, which reconnects if the tunnel was meant to be up", "err", err)
		d.restartErr = fmt.Errorf("daemon: %w", err)
		close(d.restart)
	}
	return true
}

// restartError is the error Run returns: restartErr, or nil.
func (d *Daemon) restartError() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.restartErr
}

// shutdown takes the tunnel down when the daemon stops, but keeps the
// target: stopping the daemon is not the user disconnecting.
//
// A stop for a new process (restartErr) that will reconnect keeps the
// kill switch up, as while connected: systemd starts that process at
// once, and until it is up nothing must leave in the clear. Lockdown
// keeps its own rules (and boot ruleset) as on any stop.
func (d *Daemon) shutdown() {
	d.mu.Lock()
	gen, _ := d.supersedeLocked()
	d.cancelGen()
	d.setStatusLocked(func(st *control.Status) { st.State = control.StateDisconnecting })
	meantUp := d.restartErr != nil && d.target.Connected && !d.settings.Lockdown
	d.mu.Unlock()
	d.loops.Wait()
	d.teardown(context.Background(), meantUp)
	d.setStatusIf(gen, func(st *control.Status) { st.State, st.Error = control.StateDisconnected, "" })
}

// Status is the tunnel's state.
func (d *Daemon) Status() control.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

// setStatusLocked changes the status and tells the subscribers. Called
// with mu.
func (d *Daemon) setStatusLocked(f func(s *control.Status)) {
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
	d.log.Info("state", "state", ev.Status.State, "mode", ev.Status.Mode, "entry", ev.Status.Entry, "exit", ev.Status.Exit, "error", ev.Status.Error)
}

// setStatusIf changes the status unless gen is past, and tells whether
// it did.
func (d *Daemon) setStatusIf(gen uint64, f func(s *control.Status)) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen != gen {
		return false
	}
	d.setStatusLocked(f)
	return true
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
// once the state is Connecting; the outcome comes as events. A failure is
// final (StateError), since the user is there to see it; the daemon
// retries by itself only a tunnel that was up.
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
	d.start(target{Connected: true, Mode: mode, Entry: entry, Exit: exit}, control.StateConnecting, "", false)
	d.persistTarget()
	return nil
}

// SetMode switches the live tunnel to mode, or records it for the next
// connection. Either way it becomes the settings' mode.
func (d *Daemon) SetMode(ctx context.Context, mode control.Mode) error {
	d.mu.Lock()
	d.settings.Mode = mode
	s := d.settings
	st, tg := d.status, d.target
	tg.Mode = mode
	switch {
	case st.State != control.StateConnected && st.State != control.StateConnecting && st.State != control.StateReconnecting:
		d.target.Mode = mode
		d.setStatusLocked(func(st *control.Status) { st.Mode = mode })
	case st.State == control.StateReconnecting && st.Mode != mode:
		// A tunnel that was being brought back keeps being retried, in
		// the new mode.
		d.startLocked(tg, tg, control.StateConnecting, "", true)
	case st.Mode != mode:
		// A live switch keeps the gateways in use, though the user's
		// choice (a country, or any) stays what is remembered; the user
		// is there to see a failure.
		via := tg
		if st.State == control.StateConnected {
			via.Entry, via.Exit = st.Entry, st.Exit
		}
		d.startLocked(tg, via, control.StateConnecting, "", false)
	}
	d.mu.Unlock()
	d.persistTarget()
	if d.cfg.Settings != "" {
		if err := saveSettings(d.cfg.Settings, s); err != nil {
			return err
		}
	}
	return nil
}

// start supersedes whatever the daemon was doing and brings tg's tunnel
// up in the background, reporting state with reason. With retry,
// failures are retried with backoff until the tunnel is up or the user
// changes course.
func (d *Daemon) start(tg target, state control.State, reason string, retry bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.startLocked(tg, tg, state, reason, retry)
}

// startLocked is start, called with mu, bringing up via: tg, or tg
// through the gateways in use.
func (d *Daemon) startLocked(tg, via target, state control.State, reason string, retry bool) {
	gen, ctx := d.supersedeLocked()
	d.target = tg
	d.retry = retry
	d.setStatusLocked(func(st *control.Status) {
		st.State, st.Mode, st.Error = state, via.Mode, reason
		if state == control.StateConnecting {
			st.Entry, st.Exit = via.Entry, via.Exit
		}
	})
	d.loops.Go(func() { d.connectLoop(ctx, gen, via, retry) })
}

// supersedeLocked starts a new gen, stopping the attempt of the last.
// Called with mu.
func (d *Daemon) supersedeLocked() (uint64, context.Context) {
	d.gen++
	if d.cancelGen != nil {
		d.cancelGen()
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancelGen, d.genCtx = cancel, ctx
	return d.gen, ctx
}

// connectLoop brings tg's tunnel up; with retry it tries again after
// failures, waiting from RetryMin doubling to RetryMax, until it is up or
// ctx (its gen) ends.
func (d *Daemon) connectLoop(ctx context.Context, gen uint64, tg target, retry bool) {
	wait := d.rc.RetryMin
	for attempt := 1; ; attempt++ {
		err := d.bringUp(ctx, gen, tg, retry)
		if err == nil || ctx.Err() != nil {
			return
		}
		d.log.Warn("connect failed", "attempt", attempt, "err", err)
		if !retry {
			d.setStatusIf(gen, func(st *control.Status) { st.State, st.Error = control.StateError, err.Error() })
			return
		}
		d.setStatusIf(gen, func(st *control.Status) {
			st.State = control.StateReconnecting
			st.Error = fmt.Sprintf("attempt %d failed: %v; trying again within %v", attempt, err, wait)
		})
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
			wait = min(2*wait, d.rc.RetryMax)
		}
	}
}

// bringUp builds the tunnel for tg on a new lease of the device and then
// moves routes and DNS to it. The old tunnel, if any, loses the device
// the moment the new lease is taken, so packets in between are dropped
// inside the TUN, never sent in the clear; the kill switch blocks
// everything else while this runs. retry is whether a failure will be
// tried again.
func (d *Daemon) bringUp(ctx context.Context, gen uint64, tg target, retry bool) error {
	select {
	case <-d.ready:
	case <-ctx.Done():
		return ctx.Err()
	}
	d.op.Lock()
	defer d.op.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	genCtx := ctx
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	s := d.Settings()
	doc, err := d.dir.Fetch(ctx)
	if err != nil {
		return fmt.Errorf("cannot reach the directory: %w", err)
	}
	// The gateways are chosen here rather than left to the tunnel's own
	// random pick, so that the attempt stays away from those that just
	// failed and, if it fails too, the daemon knows which to blame.
	_, now := d.clock.now()
	d.mu.Lock()
	d.doc = doc
	tg.Entry = d.failed.choose(doc, directory.RoleEntry, tg.Entry, now, mrand.IntN, nil)
	tg.Exit = d.failed.choose(doc, directory.RoleExit, tg.Exit, now, mrand.IntN, usableExit(s, doc))
	d.mu.Unlock()
	if err := d.syncFirewall(true); err != nil {
		return err
	}
	// An exit without DNS fails the attempt anyway: better before a
	// tunnel is built through it and registered with its gateways. A
	// choice that names no exit is the tunnel's to refuse, saying why.
	if x := doc.ByID(tg.Exit); x != nil && x.Role == directory.RoleExit {
		if _, err := resolvers(s, doc, tg.Exit); err != nil {
			return err
		}
	}
	// gatewaysFailed blames the chosen gateways for err, unless the
	// attempt was called off: that says nothing about them.
	gatewaysFailed := func(err error) error {
		if genCtx.Err() == nil {
			_, now := d.clock.now()
			d.mu.Lock()
			d.failed.add(now, tg.Entry, tg.Exit)
			d.mu.Unlock()
		}
		return err
	}
	t, err := d.open(ctx, tg, doc, s)
	if err != nil {
		return gatewaysFailed(err)
	}
	if err := t.Up(ctx); err != nil {
		t.Close()
		return gatewaysFailed(err)
	}
	addrs, entryID, exitID := t.Info()
	servers, err := resolvers(s, doc, exitID)
	if err != nil {
		t.Close()
		return err
	}
	sent, heard := t.Progress()
	d.mu.Lock()
	if d.gen != gen {
		d.mu.Unlock()
		t.Close()
		return context.Canceled
	}
	old := d.cur
	d.cur = t
	d.live = liveness{sent: sent, heard: heard}
	d.failed.forget(entryID, exitID)
	d.mu.Unlock()
	if old != nil {
		old.Close()
	}
	// A failure keeps the routes and DNS for a retry, and for whoever
	// called the attempt off, who sets or removes them in turn.
	tunneled, err := d.setRoutes(ctx, s, addrs, doc, servers)
	if err != nil {
		d.abandon(ctx, retry || genCtx.Err() != nil)
		return err
	}
	t.Carry()
	if err := d.setDNS(ctx, servers); err != nil {
		d.abandon(ctx, retry || genCtx.Err() != nil)
		return err
	}
	d.dropResolvers(ctx, s, addrs, doc, tunneled)
	d.setStatusIf(gen, func(st *control.Status) {
		st.State, st.Mode, st.Entry, st.Exit, st.Error = control.StateConnected, tg.Mode, entryID, exitID, ""
	})
	return nil
}

// bypass lists what the daemon reaches around the tunnel: the directory
// and, once a document is known, the entry gateways' link and WireGuard
// ports. Nothing else.
func (d *Daemon) bypass(doc *directory.Document) []netip.AddrPort {
	out := []netip.AddrPort{d.dirEP}
	if doc == nil {
		return out
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

// syncFirewall makes the kill switch match the settings: on while the
// tunnel is meant to be up (allowing the directory and the entries), and
// with lockdown always (allowing only the directory while it is not), in
// which case the boot ruleset follows it; off otherwise.
func (d *Daemon) syncFirewall(meantUp bool) error {
	d.fwMu.Lock()
	defer d.fwMu.Unlock()
	d.mu.Lock()
	s, doc := d.settings, d.doc
	d.mu.Unlock()
	var err error
	if p, on := d.firewallPolicy(s, doc, meantUp); on {
		if err = d.cfg.Firewall.Apply(context.Background(), p); err != nil {
			err = fmt.Errorf("firewall: %w", err)
		} else if s.Lockdown && d.cfg.LockdownRuleset != "" {
			err = d.writeLockdown(p)
		}
	} else if rerr := d.cfg.Firewall.Remove(); rerr != nil {
		err = fmt.Errorf("firewall: %w", rerr)
	}
	if !s.Lockdown && d.cfg.LockdownRuleset != "" {
		if rerr := removeFile(d.cfg.LockdownRuleset); rerr != nil {
			err = errors.Join(err, fmt.Errorf("lockdown ruleset: %w", rerr))
		}
	}
	return err
}

// writeLockdown renders p for the boot unit.
func (d *Daemon) writeLockdown(p firewall.Policy) error {
	text, err := firewall.Render(p)
	if err != nil {
		return fmt.Errorf("lockdown ruleset: %w", err)
	}
	if err := writeIfChanged(d.cfg.LockdownRuleset, []byte(text), 0o600); err != nil {
		return fmt.Errorf("lockdown ruleset: %w", err)
	}
	return nil
}

// Disconnect takes the tunnel down and restores routes and DNS. With
// lockdown on, the firewall keeps blocking.
func (d *Daemon) Disconnect(ctx context.Context) error {
	d.mu.Lock()
	gen, _ := d.supersedeLocked()
	d.target.Connected = false
	d.setStatusLocked(func(st *control.Status) { st.State = control.StateDisconnecting })
	d.mu.Unlock()
	d.persistTarget()
	d.teardown(ctx, false)
	d.setStatusIf(gen, func(st *control.Status) { st.State, st.Error = control.StateDisconnected, "" })
	return nil
}

// teardown closes the tunnel, removes its routes and DNS and brings the
// firewall to what is left: lockdown's rules or none.
func (d *Daemon) teardown(ctx context.Context, meantUp bool) {
	d.op.Lock()
	defer d.op.Unlock()
	d.release(ctx)
	if err := d.syncFirewall(meantUp); err != nil {
		d.log.Warn("firewall", "err", err)
	}
}

// abandon undoes a bringUp that failed once its tunnel was current (the
// routes or DNS could not be set): a failed connection must not leave a
// tunnel carrying traffic behind a status that says it failed. The kill
// switch stays as it is, since the user still means to be connected.
//
// With keep (the attempt will be retried, or whoever called it off takes
// over) only the tunnel goes. The routes and DNS stay as they are, the
// dead tunnel's or this one's: they lead into the TUN, which nobody
// reads until the next tunnel takes it, so that traffic and lookups are
// dropped there meanwhile, as after any other failed attempt, instead of
// leaving in the clear (to the machine's own resolver, too) while the
// retry backs off, which without the kill switch nothing would stop. The
// next attempt sets them again; a disconnect removes them.
//
// Without keep the failure is final and the user sees it: the routes and
// DNS go too, so that the machine works without the tunnel. It gets a
// time of its own, as the attempt's may be what ran out. Called with op
// held.
func (d *Daemon) abandon(ctx context.Context, keep bool) {
	if keep {
		d.mu.Lock()
		cur := d.cur
		d.cur = nil
		d.mu.Unlock()
		if cur != nil {
			cur.Close()
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abandonTimeout)
	defer cancel()
	d.release(ctx)
}

// abandonTimeout bounds abandon's undoing.
const abandonTimeout = 5 * time.Second

// release closes the current tunnel and removes its routes and DNS.
// DNS goes first: while it still points at the tunnel's resolvers, their
// routes must lead into the TUN, not to whatever network has their
// addresses. So if DNS cannot be restored, dnsOn and resolving stay, for
// the next release (or Set) to try again, and so do the routes: the
// system may still name a resolver (an exit's private 10.64.0.1, say)
// that the main table would reach on the LAN in the clear, and the
// router has no routes for the resolvers alone. Lookups, and the rest,
// go into the TUN, where nobody reads them, until then. Only a stop for
// a new process (dns.ErrNeedsRestart), whose start restores the DNS,
// removes them anyway. Called with op held.
func (d *Daemon) release(ctx context.Context) {
	d.mu.Lock()
	cur := d.cur
	d.cur = nil
	dnsOn := d.dnsOn
	d.mu.Unlock()
	if cur != nil {
		cur.Close()
	}
	if dnsOn {
		if err := d.cfg.DNS.Restore(); err != nil && !d.needsRestart(err) {
			d.log.Error("restoring DNS; the routes stay, keeping its resolvers in the tunnel, until it can be restored", "err", err)
			return
		}
		d.mu.Lock()
		d.dnsOn, d.resolving = false, nil
		d.mu.Unlock()
	}
	if err := d.cfg.Router.Set(ctx, router.Config{Interface: d.ifname}); err != nil {
		d.log.Warn("removing routes", "err", err)
	}
}

// persistTarget writes the current target to Config.State.
func (d *Daemon) persistTarget() {
	if d.cfg.State == "" {
		return
	}
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	d.mu.Lock()
	tg := d.target
	d.mu.Unlock()
	if err := saveTarget(d.cfg.State, tg); err != nil {
		d.log.Warn("cannot remember the connection for the next start", "err", err)
	}
}

// Settings returns the current settings.
func (d *Daemon) Settings() control.Settings {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.settings
}

// Stats returns the current tunnel's counters.
func (d *Daemon) Stats() control.Stats {
	d.mu.Lock()
	cur := d.cur
	d.mu.Unlock()
	if cur == nil {
		return control.Stats{}
	}
	return cur.Stats()
}
