// Package anon is Anonymous mode's data plane: IP packets read from a TUN
// device travel through the mixnet in a session with an exit gateway, and
// the exit's answers, carried back in reply blocks, are written to the
// device. The device's packets never decide when anything is sent: the
// client's Poisson stream does, so an observer of the client's link sees
// the same fixed-size packets at the same rate whatever the user does.
//
// A *Tunnel has the lifecycle the daemon drives for every kind of tunnel:
// Up, Close and Stats, like tunnel/fast.
package anon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/platform/linksock"
)

// DefaultMTU is the device MTU Anonymous mode expects: the same as Fast
// mode's, so one device serves both and switching modes does not change
// what applications see.
const DefaultMTU = 1340

// offset is the headroom kept before each packet in device buffers; Linux
// TUN devices with offloads need room for a virtio-net header.
const offset = 16

// Config configures a Tunnel.
type Config struct {
	// Connect says how to join the mixnet. Unless it sets DialLink, the
	// link to the entry is dialed by linksock, which gives its segments
	// one length and its ACKs the entry's rate rather than the
	// daemon's load.
	Connect client.ConnectConfig
	// Mark is the socket mark (SO_MARK) of that default link, so that
	// policy routing sends it around the tunnel it carries; zero marks
	// nothing. A DialLink of the caller's own marks as it sees fit.
	Mark   uint32
	Logger *slog.Logger
}

// Stats are a Tunnel's counters.
type Stats struct {
	client.Stats
	// PacketsIn and PacketsOut count IP packets written to and read from
	// the device; BytesIn and BytesOut their bytes.
	PacketsIn, PacketsOut, BytesIn, BytesOut uint64
	// Dropped counts packets read from the device that did not fit the
	// session's queue (the mixnet's rate is the bottleneck).
	Dropped uint64
	// SURBStock estimates the reply blocks the exit holds for the
	// session: those sent (SURBsMade) less those a reply came back on
	// (RepliesReceived). Blocks the exit dropped, expired or was told to
	// flush still count, so it is an upper bound.
	SURBStock uint64
	// Entry and Exit are the gateways in use; V4 and V6 the inner
	// addresses the exit assigned.
	Entry, Exit string
	V4, V6      netip.Addr
}

// Tunnel carries a device's packets through the mixnet.
type Tunnel struct {
	cfg Config
	log *slog.Logger
	dev tun.Device

	mu     sync.Mutex
	conn   *client.Conn
	sess   *client.Session
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed bool

	in, out, bytesIn, bytesOut, dropped atomic.Uint64
}

// New returns a Tunnel for dev. The Tunnel owns dev from now on and closes
// it in Close; the daemon hands each tunnel a lease of its one device
// (tunnel.Shared), so closing a lease leaves the interface up.
func New(cfg Config, dev tun.Device) (*Tunnel, error) {
	if dev == nil {
		return nil, errors.New("anon: no device")
	}
	if cfg.Connect.DirectoryURL == "" || len(cfg.Connect.DirectoryKey) == 0 {
		return nil, errors.New("anon: no directory URL or key")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Connect.Logger == nil {
		cfg.Connect.Logger = log
	}
	if cfg.Connect.DialLink == nil {
		cfg.Connect.DialLink = linksock.Config{Record: link.FrameSize, Mark: cfg.Mark, Logger: log}.Dial
	}
	return &Tunnel{cfg: cfg, log: log, dev: dev}, nil
}

// Up joins the mixnet, opens a session with the exit and starts moving
// packets. It returns once the exit has assigned the session's addresses.
func (t *Tunnel) Up(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.New("anon: tunnel closed")
	}
	if t.conn != nil {
		return errors.New("anon: tunnel already up")
	}
	conn, err := client.Connect(ctx, t.cfg.Connect)
	if err != nil {
		return fmt.Errorf("anon: %w", err)
	}
	sess, err := conn.OpenSession(ctx)
	if err != nil {
		conn.Close()
		return fmt.Errorf("anon: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	t.conn, t.sess, t.cancel = conn, sess, cancel
	t.wg.Go(func() { t.readDevice(runCtx) })
	t.wg.Go(func() { t.writeDevice(runCtx) })
	v4, v6 := sess.Addrs()
	t.log.Info("anonymous tunnel up", "entry", conn.Entry(), "exit", conn.Exit(), "v4", v4, "v6", v6)
	return nil
}

// Addrs are the inner addresses the exit assigned, once Up returned.
func (t *Tunnel) Addrs() (v4, v6 netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sess == nil {
		return netip.Addr{}, netip.Addr{}
	}
	return t.sess.Addrs()
}

// Health is what the client's loops say about the network.
func (t *Tunnel) Health() client.Health {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conn == nil {
		return client.Health{ReturnRate: 1}
	}
	return t.conn.Health()
}

// readDevice moves packets from the device into the session. A packet the
// session cannot queue is dropped, as a full link would: TCP backs off.
func (t *Tunnel) readDevice(ctx context.Context) {
	n := t.dev.BatchSize()
	bufs := make([][]byte, n)
	sizes := make([]int, n)
	for i := range bufs {
		bufs[i] = make([]byte, offset+65535)
	}
	for ctx.Err() == nil {
		k, err := t.dev.Read(bufs, sizes, offset)
		for i := range k {
			p := bufs[i][offset : offset+sizes[i]]
			if err := t.sess.WritePacket(p); err != nil {
				t.dropped.Add(1)
				continue
			}
			t.out.Add(1)
			t.bytesOut.Add(uint64(len(p)))
		}
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, tun.ErrTooManySegments) {
				t.log.Warn("device read failed; anonymous tunnel stops reading", "err", err)
				return
			}
		}
	}
}

// writeDevice writes the exit's packets to the device.
func (t *Tunnel) writeDevice(ctx context.Context) {
	buf := make([]byte, offset+65535)
	bufs := [][]byte{nil}
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-t.sess.Packets():
			if len(p) > len(buf)-offset {
				continue
			}
			n := copy(buf[offset:], p)
			bufs[0] = buf[:offset+n]
			if _, err := t.dev.Write(bufs, offset); err != nil {
				t.log.Debug("device write failed", "err", err)
				continue
			}
			t.in.Add(1)
			t.bytesIn.Add(uint64(n))
		}
	}
}

// Close ends the session (telling the exit, briefly), leaves the mixnet
// and stops moving packets. The device stays open.
func (t *Tunnel) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if t.conn == nil {
		return t.dev.Close()
	}
	err := t.sess.Close()
	t.cancel()
	t.dev.Close() // unblocks readDevice
	t.wg.Wait()
	t.conn.Close()
	return err
}

// Stats returns the tunnel's counters.
func (t *Tunnel) Stats() Stats {
	t.mu.Lock()
	conn, sess := t.conn, t.sess
	t.mu.Unlock()
	s := Stats{
		PacketsIn: t.in.Load(), PacketsOut: t.out.Load(), BytesIn: t.bytesIn.Load(), BytesOut: t.bytesOut.Load(),
		Dropped: t.dropped.Load(),
	}
	if conn != nil {
		s.Stats = conn.Stats()
		s.Entry, s.Exit = conn.Entry(), conn.Exit()
		if s.SURBsMade > s.RepliesReceived {
			s.SURBStock = s.SURBsMade - s.RepliesReceived
		}
	}
	if sess != nil {
		s.V4, s.V6 = sess.Addrs()
	}
	return s
}
