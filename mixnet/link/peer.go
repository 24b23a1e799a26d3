package link

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// PeerConfig configures a Peer.
type PeerConfig struct {
	Config
	// Addr and Key name the remote side.
	Addr string
	Key  [32]byte
	// MinBackoff and MaxBackoff bound the wait between reconnect attempts;
	// defaults 100 ms and 10 s. Each wait is jittered.
	MinBackoff, MaxBackoff time.Duration
	// OnUp is called with each new connection, for example to send a
	// registration; it may be nil.
	OnUp func(c *Conn)
	// Dial, if set, opens the connection to Addr instead of a plain TCP
	// dial, and the handshake runs on what it returns. It is where OS code
	// tunes the socket (a client's link shapes its segments and ACKs
	// there) without this package knowing the OS.
	Dial func(ctx context.Context, addr string) (net.Conn, error)
}

// Peer keeps one outbound link up: it dials, redials with exponential
// backoff when the link drops, and queues packets (bounded) while down.
type Peer struct {
	cfg PeerConfig
	log *slog.Logger

	mu      sync.Mutex
	conn    *Conn
	pending []heldFrame
	ready   chan struct{} // closed and replaced whenever conn changes

	dropped, reconnects atomic.Uint64
}

// NewPeer builds a Peer; Run keeps it connected.
func NewPeer(cfg PeerConfig) *Peer {
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	cfg.Config = cfg.Config.withDefaults()
	return &Peer{cfg: cfg, log: cfg.Logger, ready: make(chan struct{})}
}

// Send sends a packet now if the link is up, or queues it (up to
// QueueSize, and for at most maxHeld) until it is. It copies pkt and never
// blocks.
func (p *Peer) Send(pkt []byte) error {
	p.mu.Lock()
	c := p.conn
	p.mu.Unlock()
	if c != nil {
		if err := c.Send(pkt); !errors.Is(err, ErrClosed) {
			return err
		}
	}
	return p.hold(pkt, c)
}

// hold queues pkt while the link is down; stale is the link Send found
// closed, if any.
func (p *Peer) hold(pkt []byte, stale *Conn) error {
	if len(pkt) != BodySize {
		return ErrFrameSize
	}
	p.mu.Lock()
	if c := p.conn; c != nil && c != stale {
		p.mu.Unlock()
		return c.Send(pkt) // a new link came up meanwhile
	}
	defer p.mu.Unlock()
	if len(p.pending) >= p.cfg.QueueSize {
		p.dropped.Add(1)
		return ErrQueueFull
	}
	p.pending = append(p.pending, heldFrame{append([]byte(nil), pkt...), time.Now()})
	return nil
}

// Conn returns the current link, or nil while down.
func (p *Peer) Conn() *Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conn
}

// Up returns a channel closed on the next change of link.
func (p *Peer) Up() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ready
}

// Reconnects counts links made after the first.
func (p *Peer) Reconnects() uint64 { return p.reconnects.Load() }

// Run dials and redials until ctx ends.
func (p *Peer) Run(ctx context.Context) error {
	backoff := p.cfg.MinBackoff
	first := true
	for ctx.Err() == nil {
		c, err := p.dial(ctx)
		if err != nil {
			p.log.Debug("link dial failed", "addr", p.cfg.Addr, "err", err, "retry", backoff)
			wait := backoff/2 + rand.N(backoff/2+1)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			backoff = min(2*backoff, p.cfg.MaxBackoff)
			continue
		}
		if !first {
			p.reconnects.Add(1)
		}
		first = false
		backoff = p.cfg.MinBackoff
		if p.cfg.OnUp != nil {
			p.cfg.OnUp(c)
		}
		p.setConn(c)
		select {
		case <-ctx.Done():
			c.Close()
		case <-c.Done():
			p.log.Info("link down, reconnecting", "addr", p.cfg.Addr, "err", c.Err())
		}
		p.setConn(nil)
	}
	return nil
}

// dial makes one link to the remote side, through cfg.Dial if set.
func (p *Peer) dial(ctx context.Context) (*Conn, error) {
	return DialWith(ctx, p.cfg.Dial, p.cfg.Addr, p.cfg.Key, p.cfg.Config)
}

func (p *Peer) setConn(c *Conn) {
	p.mu.Lock()
	p.conn = c
	pending := p.pending
	p.pending = nil
	close(p.ready)
	p.ready = make(chan struct{})
	p.mu.Unlock()
	if c == nil {
		return
	}
	for _, h := range pending {
		if time.Since(h.at) > maxHeld {
			p.dropped.Add(1)
			continue
		}
		if c.Send(h.pkt) != nil {
			p.dropped.Add(1)
		}
	}
}

// maxHeld is how long a packet queued while the link is down stays worth
// sending. Later it is past any mix's lateness bound, its sender has given
// up on it (TCP resent, and the client may have dropped the keys of the
// reply blocks it carries), and sending it would let an observer link it:
// a mix back after a minute would otherwise get a burst of stale packets,
// whose stale reply blocks an exit uses newest first, for replies the
// client cannot open.
const maxHeld = 2 * time.Second

// heldFrame is a packet queued while the link is down.
type heldFrame struct {
	pkt []byte
	at  time.Time
}
