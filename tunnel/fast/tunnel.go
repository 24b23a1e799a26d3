// Package fast is Fast mode's data plane: two WireGuard hops in one process,
// an inner tunnel to the exit gateway carried inside an outer tunnel to the
// entry gateway. The entry sees who the client is but only sealed datagrams
// to the exit; the exit sees where the traffic goes but only the entry as its
// source.
//
// Two wireguard-go devices do the work. The inner (exit) device reads and
// writes the user-facing tun.Device. Its datagrams do not go to a socket: they
// go through a link that is at once the inner device's conn.Bind and the outer
// (entry) device's tun.Device, which wraps each datagram in an IP/UDP header
// from the client's entry-tunnel address to the exit endpoint, straight into
// the outer device's buffers, and unwraps the way back. The outer device sends
// to the entry over an ordinary UDP socket, and only the exit endpoint is in
// its allowed IPs. The entry gateway routes the inner datagrams to the exit in
// its kernel, translating the source to its own address.
//
// A *Tunnel has the lifecycle the daemon drives for every kind of tunnel:
//
//	Up(ctx context.Context) error
//	Close() error
//	Stats() Stats
//
// The daemon declares that interface where it uses it, beside the anonymous
// (mixnet) tunnel; the user-facing device is handed over in New.
package fast

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// ErrClosed is returned by Up on a Tunnel that was closed.
var ErrClosed = errors.New("fast: tunnel closed")

// handshakePoll is how often Up looks for the hops' handshakes.
const handshakePoll = 5 * time.Millisecond

// Stats are a Tunnel's counters.
type Stats struct {
	// BytesIn and BytesOut count the WireGuard traffic of the inner hop:
	// what the user's packets cost, as received from and sent to the exit.
	BytesIn, BytesOut uint64
	// Entry and Exit are the two hops in detail.
	Entry, Exit HopStats
	// LinkDrops counts packets from the entry that were not inner
	// datagrams for the client, or arrived while the exit hop was down.
	LinkDrops uint64
}

// HopStats are one hop's counters, as its WireGuard device keeps them.
type HopStats struct {
	// Endpoint is where the hop's gateway is reached now.
	Endpoint netip.AddrPort
	// RxBytes and TxBytes count the hop's WireGuard datagrams.
	RxBytes, TxBytes uint64
	// LastHandshake is when the hop last completed a handshake; zero if never.
	LastHandshake time.Time
}

// Tunnel is a Fast-mode tunnel: New configures it, Up starts it and Close
// ends it.
type Tunnel struct {
	cfg Config
	log *slog.Logger
	dev tun.Device

	// join builds what carries the inner device's datagrams through the
	// outer device. Tests replace it to measure other designs.
	join func(cfg *Config) (tun.Device, conn.Bind, *link, error)

	mu           sync.Mutex
	up, closed   bool
	outer, inner *device.Device
	link         *link
}

// New checks cfg and returns a Tunnel that will carry dev's packets. The
// Tunnel owns dev from now on and closes it in Close. dev's MTU must not
// exceed cfg.MTU (DefaultMTU when unset), so that no layer fragments.
func New(cfg Config, dev tun.Device) (*Tunnel, error) {
	if dev == nil {
		return nil, errors.New("fast: no user-facing device")
	}
	c, err := cfg.normalise()
	if err != nil {
		return nil, fmt.Errorf("fast: config: %w", err)
	}
	mtu, err := dev.MTU()
	if err != nil {
		return nil, fmt.Errorf("fast: read device MTU: %w", err)
	}
	if mtu > c.MTU {
		return nil, fmt.Errorf("fast: device MTU %d exceeds the tunnel MTU %d; set the device's MTU to %d", mtu, c.MTU, c.MTU)
	}
	return &Tunnel{cfg: c, log: c.Logger, dev: dev, join: joinDirect}, nil
}

// joinDirect is the link design: the outer device's tun and the inner
// device's bind are two faces of one in-memory link.
func joinDirect(cfg *Config) (tun.Device, conn.Bind, *link, error) {
	l := newLink(cfg.EntryAddrs, cfg.OuterMTU())
	return l.tunDevice(), l.bind(), l, nil
}

// Up starts both hops and waits for both handshakes, the outer one first
// since the inner one travels inside it. ctx bounds only that wait: if it
// ends first, Up returns its error but the hops keep trying (WireGuard
// retries for about 90 s) until Close. Up may be called once.
func (t *Tunnel) Up(ctx context.Context) error {
	if err := t.start(ctx); err != nil {
		return err
	}
	start := time.Now()
	var entryAt time.Duration
	tick := time.NewTicker(handshakePoll)
	defer tick.Stop()
	for {
		s, ok := t.stats()
		if !ok {
			return ErrClosed
		}
		if entryAt == 0 && !s.Entry.LastHandshake.IsZero() {
			entryAt = time.Since(start)
		}
		if !s.Exit.LastHandshake.IsZero() && !s.Entry.LastHandshake.IsZero() {
			t.log.Info("fast tunnel up", "entry", t.cfg.Entry.Endpoint, "exit", t.cfg.Exit.Endpoint,
				"entry_handshake", entryAt, "both_handshakes", time.Since(start))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fast: waiting for handshakes (entry done: %v): %w", entryAt != 0, ctx.Err())
		case <-tick.C:
		}
	}
}

// start creates, configures and brings up both devices and asks the inner
// one for a handshake, which pulls the outer one's along.
func (t *Tunnel) start(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.closed:
		return ErrClosed
	case t.up:
		return errors.New("fast: tunnel already up")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fast: up: %w", err)
	}
	t.up = true
	linkTUN, linkBind, l, err := t.join(&t.cfg)
	if err != nil {
		return fmt.Errorf("fast: join hops: %w", err)
	}
	t.link = l
	outerBind := t.cfg.Outer
	if outerBind == nil {
		outerBind = conn.NewDefaultBind()
	}
	t.outer = device.NewDevice(linkTUN, outerBind, wgLogger(t.log, "entry"))
	t.inner = device.NewDevice(t.dev, linkBind, wgLogger(t.log, "exit"))

	entry := t.cfg.Entry
	exitIP := t.cfg.Exit.Endpoint.Addr()
	entry.AllowedIPs = []netip.Prefix{netip.PrefixFrom(exitIP, exitIP.BitLen())}
	if err := t.outer.IpcSet(uapi(t.cfg.PrivateKeyEntry, t.cfg.FwMark, &entry)); err != nil {
		return fmt.Errorf("fast: configure entry hop: %w", err)
	}
	if err := t.inner.IpcSet(uapi(t.cfg.PrivateKeyExit, 0, &t.cfg.Exit)); err != nil {
		return fmt.Errorf("fast: configure exit hop: %w", err)
	}
	if err := t.outer.Up(); err != nil {
		return fmt.Errorf("fast: bring up entry hop: %w", err)
	}
	if err := t.inner.Up(); err != nil {
		return fmt.Errorf("fast: bring up exit hop: %w", err)
	}
	if p := t.inner.LookupPeer(device.NoisePublicKey(t.cfg.Exit.PublicKey)); p != nil {
		p.SendKeepalive()
	}
	return nil
}

// Close stops both hops and closes the user-facing device and the outer
// socket. It is safe to call more than once.
func (t *Tunnel) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	// The inner device first, so nothing is sent into a closing link.
	if t.inner != nil {
		t.inner.Close()
	} else if err := t.dev.Close(); err != nil {
		return fmt.Errorf("fast: close device: %w", err)
	}
	if t.outer != nil {
		t.outer.Close()
	}
	return nil
}

// Stats returns the tunnel's counters; all zero before Up and after Close.
func (t *Tunnel) Stats() Stats {
	s, _ := t.stats()
	return s
}

func (t *Tunnel) stats() (Stats, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var s Stats
	if t.closed || t.inner == nil {
		return s, !t.closed
	}
	s.Entry = hopStats(t.outer)
	s.Exit = hopStats(t.inner)
	s.BytesIn, s.BytesOut = s.Exit.RxBytes, s.Exit.TxBytes
	if t.link != nil {
		s.LinkDrops = t.link.drops.Load()
	}
	return s, true
}

// hopStats reads the one peer of d through the UAPI, the only way
// wireguard-go exposes its counters.
func hopStats(d *device.Device) HopStats {
	var h HopStats
	get, err := d.IpcGet()
	if err != nil {
		return h
	}
	var sec, nsec int64
	sc := bufio.NewScanner(strings.NewReader(get))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "endpoint":
			h.Endpoint, _ = netip.ParseAddrPort(v)
		case "rx_bytes":
			h.RxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			h.TxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if sec != 0 || nsec != 0 {
		h.LastHandshake = time.Unix(sec, nsec)
	}
	return h
}

// uapi renders one device with one peer in wireguard-go's configuration
// protocol.
func uapi(priv Key, fwmark uint32, hop *Hop) string {
	var b strings.Builder
	fmt.Fprintf(&b, "private_key=%s\n", hex.EncodeToString(priv[:]))
	if fwmark != 0 {
		fmt.Fprintf(&b, "fwmark=%d\n", fwmark)
	}
	b.WriteString("replace_peers=true\n")
	fmt.Fprintf(&b, "public_key=%s\n", hex.EncodeToString(hop.PublicKey[:]))
	if !hop.PresharedKey.IsZero() {
		fmt.Fprintf(&b, "preshared_key=%s\n", hex.EncodeToString(hop.PresharedKey[:]))
	}
	fmt.Fprintf(&b, "endpoint=%s\n", hop.Endpoint)
	fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(hop.PersistentKeepalive/time.Second))
	b.WriteString("replace_allowed_ips=true\n")
	for _, p := range hop.AllowedIPs {
		fmt.Fprintf(&b, "allowed_ip=%s\n", p.Masked())
	}
	return b.String()
}

// wgLogger passes a device's logs to l, formatting only what l keeps.
func wgLogger(l *slog.Logger, hop string) *device.Logger {
	l = l.With("hop", hop)
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelError) {
				l.Error(fmt.Sprintf(format, args...))
			}
		},
	}
}
