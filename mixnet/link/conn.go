package link

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flynn/noise"
)

// Errors a Conn reports.
var (
	ErrQueueFull = errors.New("link: send queue full")
	ErrClosed    = errors.New("link: connection closed")
	ErrHandshake = errors.New("link: handshake failed")
	ErrRefused   = errors.New("link: peer refused")
)

var suite = noise.NewCipherSuite(noise.DH25519, noise.CipherChaChaPoly, noise.HashBLAKE2s)

const (
	prologue         = "mixvpn-link-v1"
	maxHandshakeSize = 256
)

// Config configures one side of a link.
type Config struct {
	// Static is this side's Noise key.
	Static KeyPair
	// HandshakeTimeout bounds the whole handshake; default 5 s.
	HandshakeTimeout time.Duration
	// KeepAlive sends a dummy frame after this long without sending;
	// default 10 s.
	KeepAlive time.Duration
	// IdleTimeout closes a link that received nothing for this long (or
	// up to an eighth longer); default 3 × KeepAlive.
	IdleTimeout time.Duration
	// QueueSize bounds frames waiting to be written; default 1024.
	QueueSize int
	// MaxPace is the highest rate, in frames per second, at which this
	// side paces its sends when the peer asks with a FramePace frame;
	// requests above it get MaxPace. Zero ignores pace requests.
	MaxPace float64
	// Handler receives every packet and control frame, in order, from the
	// connection's reader goroutine. body is valid only during the call.
	Handler func(c *Conn, t FrameType, body []byte)
	Logger  *slog.Logger
}

func (c *Config) withDefaults() Config {
	cfg := *c
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 5 * time.Second
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 3 * cfg.KeepAlive
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = 1024
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg
}

// Stats counts a connection's frames.
type Stats struct {
	FramesIn, FramesOut, DummiesOut, DroppedFull uint64
}

// Conn is one established link. Send and SendControl never block; a
// writer goroutine encrypts and writes in batches.
type Conn struct {
	cfg  Config
	nc   net.Conn
	peer [32]byte
	send *noise.CipherState
	recv *noise.CipherState

	queue chan *[PlainSize]byte
	pool  sync.Pool

	closeOnce sync.Once
	done      chan struct{}
	err       atomic.Pointer[error]

	framesIn, framesOut, dummies, full atomic.Uint64

	pace    atomic.Uint64 // math.Float64bits of the paced rate; 0 unpaced
	paceSet chan struct{} // wakes the writer when pacing starts
}

// Dial connects to addr and authenticates it as the holder of peerKey.
func Dial(ctx context.Context, addr string, peerKey [32]byte, cfg Config) (*Conn, error) {
	return DialWith(ctx, nil, addr, peerKey, cfg)
}

// DialWith is Dial over the connection dial opens to addr (a plain TCP
// dial if nil). The dial hook is where OS code tunes the socket, such as
// a client's mark that keeps the link out of its own tunnel, without
// this package knowing the OS.
func DialWith(ctx context.Context, dial func(ctx context.Context, addr string) (net.Conn, error), addr string, peerKey [32]byte, cfg Config) (*Conn, error) {
	if dial == nil {
		var d net.Dialer
		dial = func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	nc, err := dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("link: dial %s: %w", addr, err)
	}
	c, err := Client(ctx, nc, peerKey, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

// Client runs the initiator's handshake on nc and starts the link.
func Client(ctx context.Context, nc net.Conn, peerKey [32]byte, cfg Config) (*Conn, error) {
	cfg = cfg.withDefaults()
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:   suite,
		Random:        rand.Reader,
		Pattern:       noise.HandshakeIK,
		Initiator:     true,
		Prologue:      []byte(prologue),
		StaticKeypair: noise.DHKey{Private: cfg.Static.Private[:], Public: cfg.Static.Public[:]},
		PeerStatic:    peerKey[:],
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	stop := deadline(ctx, nc, cfg.HandshakeTimeout)
	defer stop()
	msg, _, _, err := hs.WriteMessage(nil, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	if err := writeHandshake(nc, msg); err != nil {
		return nil, err
	}
	resp, err := readHandshake(nc)
	if err != nil {
		return nil, err
	}
	_, send, recv, err := hs.ReadMessage(nil, resp)
	if err != nil {
		return nil, fmt.Errorf("%w: responder is not the expected key: %v", ErrHandshake, err)
	}
	// Clear the handshake deadline before the link's own loops set theirs.
	stop()
	return start(nc, cfg, peerKey, send, recv), nil
}

// Server runs the responder's handshake on nc. authorize, if not nil, sees
// the initiator's static key and may refuse it.
func Server(ctx context.Context, nc net.Conn, cfg Config, authorize func(peer [32]byte) error) (*Conn, error) {
	cfg = cfg.withDefaults()
	hs, err := noise.NewHandshakeState(noise.Config{
		CipherSuite:   suite,
		Random:        rand.Reader,
		Pattern:       noise.HandshakeIK,
		Prologue:      []byte(prologue),
		StaticKeypair: noise.DHKey{Private: cfg.Static.Private[:], Public: cfg.Static.Public[:]},
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	stop := deadline(ctx, nc, cfg.HandshakeTimeout)
	defer stop()
	req, err := readHandshake(nc)
	if err != nil {
		return nil, err
	}
	if _, _, _, err := hs.ReadMessage(nil, req); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	var peer [32]byte
	copy(peer[:], hs.PeerStatic())
	if authorize != nil {
		if err := authorize(peer); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRefused, err)
		}
	}
	msg, recv, send, err := hs.WriteMessage(nil, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHandshake, err)
	}
	if err := writeHandshake(nc, msg); err != nil {
		return nil, err
	}
	stop()
	return start(nc, cfg, peer, send, recv), nil
}

// deadline bounds the handshake by timeout and by ctx. stop is idempotent:
// it runs once the handshake is done (before the link's loops start and
// set their own deadlines) and again, harmlessly, on the way out.
func deadline(ctx context.Context, nc net.Conn, timeout time.Duration) (stop func()) {
	nc.SetDeadline(time.Now().Add(timeout))
	cancel := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			nc.SetDeadline(time.Time{})
		})
	}
}

func writeHandshake(nc net.Conn, msg []byte) error {
	buf := make([]byte, 2+len(msg))
	binary.BigEndian.PutUint16(buf, uint16(len(msg)))
	copy(buf[2:], msg)
	if _, err := nc.Write(buf); err != nil {
		return fmt.Errorf("%w: write: %v", ErrHandshake, err)
	}
	return nil
}

func readHandshake(nc net.Conn) ([]byte, error) {
	var n [2]byte
	if _, err := io.ReadFull(nc, n[:]); err != nil {
		return nil, fmt.Errorf("%w: read: %v", ErrHandshake, err)
	}
	size := int(binary.BigEndian.Uint16(n[:]))
	if size == 0 || size > maxHandshakeSize {
		return nil, fmt.Errorf("%w: message of %d bytes", ErrHandshake, size)
	}
	msg := make([]byte, size)
	if _, err := io.ReadFull(nc, msg); err != nil {
		return nil, fmt.Errorf("%w: read: %v", ErrHandshake, err)
	}
	return msg, nil
}

func start(nc net.Conn, cfg Config, peer [32]byte, send, recv *noise.CipherState) *Conn {
	c := &Conn{
		cfg:     cfg,
		nc:      nc,
		peer:    peer,
		send:    send,
		recv:    recv,
		queue:   make(chan *[PlainSize]byte, cfg.QueueSize),
		done:    make(chan struct{}),
		paceSet: make(chan struct{}, 1),
	}
	c.pool.New = func() any { return new([PlainSize]byte) }
	go c.writeLoop()
	go c.readLoop()
	return c
}

// PeerKey is the other side's static key, proven by the handshake.
func (c *Conn) PeerKey() [32]byte { return c.peer }

// RemoteAddr is the other side's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Done is closed when the connection ends.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err is why the connection ended, once Done is closed.
func (c *Conn) Err() error {
	if p := c.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Stats returns the connection's counters.
func (c *Conn) Stats() Stats {
	return Stats{FramesIn: c.framesIn.Load(), FramesOut: c.framesOut.Load(), DummiesOut: c.dummies.Load(), DroppedFull: c.full.Load()}
}

// Send queues one packet (BodySize bytes). It copies pkt and never blocks.
func (c *Conn) Send(pkt []byte) error { return c.enqueue(FramePacket, pkt) }

// SendControl queues a control message of at most MaxControl bytes.
func (c *Conn) SendControl(msg []byte) error { return c.enqueue(FrameControl, msg) }

func (c *Conn) enqueue(t FrameType, body []byte) error {
	select {
	case <-c.done:
		return ErrClosed
	default:
	}
	buf := c.pool.Get().(*[PlainSize]byte)
	if err := EncodeFrame(buf[:], t, body); err != nil {
		c.pool.Put(buf)
		return err
	}
	select {
	case c.queue <- buf:
		return nil
	default:
		c.pool.Put(buf)
		c.full.Add(1)
		return ErrQueueFull
	}
}

// RequestPace asks the peer to send to this side at a steady Poisson rate
// of frames per second, with dummies filling the gaps, so that an observer
// of the link sees the rate and not the traffic. The peer caps the rate at
// its MaxPace.
func (c *Conn) RequestPace(rate float64) error {
	body, err := EncodePace(rate)
	if err != nil {
		return err
	}
	return c.enqueue(FramePace, body)
}

// Pace is the rate this side paces its sends at, or 0.
func (c *Conn) Pace() float64 { return math.Float64frombits(c.pace.Load()) }

func (c *Conn) setPace(body []byte) {
	rate, err := DecodePace(body)
	if err != nil || rate <= 0 || c.cfg.MaxPace <= 0 {
		return
	}
	c.pace.Store(math.Float64bits(min(rate, c.cfg.MaxPace)))
	select {
	case c.paceSet <- struct{}{}:
	default:
	}
}

// Close ends the connection.
func (c *Conn) Close() error {
	c.fail(ErrClosed)
	return nil
}

func (c *Conn) fail(err error) {
	c.closeOnce.Do(func() {
		c.err.Store(&err)
		close(c.done)
		c.nc.Close()
		if !errors.Is(err, ErrClosed) {
			c.cfg.Logger.Info("link closed", "peer", c.nc.RemoteAddr().String(), "reason", err)
		}
	})
}

// writeLoop encrypts queued frames and writes them, flushing when the
// queue runs dry, and sends a dummy when nothing was sent for KeepAlive.
func (c *Conn) writeLoop() {
	w := bufio.NewWriterSize(c.nc, 16*FrameSize)
	out := make([]byte, 0, FrameSize)
	var dummy [PlainSize]byte
	EncodeFrame(dummy[:], FrameDummy, nil)
	keep := time.NewTimer(c.cfg.KeepAlive)
	defer keep.Stop()
	write := func(plain []byte) bool {
		ct, err := c.send.Encrypt(out[:0], nil, plain)
		if err == nil {
			_, err = w.Write(ct)
		}
		if err != nil {
			c.fail(fmt.Errorf("link: write: %w", err))
			return false
		}
		c.framesOut.Add(1)
		return true
	}
	for {
		select {
		case <-c.done:
			return
		case buf := <-c.queue:
			ok := write(buf[:])
			c.pool.Put(buf)
			if !ok {
				return
			}
			// Drain what is already queued before one flush.
			for drained := false; !drained; {
				select {
				case buf := <-c.queue:
					ok := write(buf[:])
					c.pool.Put(buf)
					if !ok {
						return
					}
				default:
					drained = true
				}
			}
		case <-keep.C:
			if !write(dummy[:]) {
				return
			}
			c.dummies.Add(1)
		case <-c.paceSet:
			c.pacedWrites(w, write, dummy[:])
			return
		}
		if err := w.Flush(); err != nil {
			c.fail(fmt.Errorf("link: write: %w", err))
			return
		}
		keep.Reset(c.cfg.KeepAlive)
	}
}

// pacedWrites sends one frame at every tick of a Poisson process at the
// paced rate, the oldest queued frame or else a dummy, until the link
// ends. Ticks are kept on a schedule rather than slept one after another,
// so that time spent writing does not lower the rate; after a stall of
// more than a second the schedule restarts instead of bursting.
func (c *Conn) pacedWrites(w *bufio.Writer, write func([]byte) bool, dummy []byte) {
	rng := mrand.New(mrand.NewPCG(mrand.Uint64(), mrand.Uint64()))
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	next := time.Now()
	for {
		rate := c.Pace()
		next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
		now := time.Now()
		if d := next.Sub(now); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-c.done:
				return
			}
		} else if d < -time.Second {
			next = now
		}
		select {
		case buf := <-c.queue:
			ok := write(buf[:])
			c.pool.Put(buf)
			if !ok {
				return
			}
		default:
			if !write(dummy) {
				return
			}
			c.dummies.Add(1)
		}
		if err := w.Flush(); err != nil {
			c.fail(fmt.Errorf("link: write: %w", err))
			return
		}
	}
}

// readBatch is how many frames one read asks the kernel for.
const readBatch = 16

// readLoop reads whole frames, decrypts and hands them to the handler. It
// reads as much as the socket holds (up to readBatch frames) into one
// buffer and takes every whole frame from it in place.
func (c *Conn) readLoop() {
	buf := make([]byte, readBatch*FrameSize)
	plain := make([]byte, 0, PlainSize)
	have := 0
	// The idle deadline moves with received data, but at most every
	// eighth of IdleTimeout: arming a runtime timer per frame is not
	// free, and the link may then live up to an eighth longer when idle.
	step := c.cfg.IdleTimeout / 8
	var armed time.Time
	for {
		if now := time.Now(); now.Sub(armed) >= step {
			c.nc.SetReadDeadline(now.Add(c.cfg.IdleTimeout + step))
			armed = now
		}
		n, err := c.nc.Read(buf[have:])
		have += n
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = ErrClosed
			}
			c.fail(fmt.Errorf("link: read: %w", err))
			return
		}
		off := 0
		for ; have-off >= FrameSize; off += FrameSize {
			if !c.receive(buf[off:off+FrameSize], plain) {
				return
			}
		}
		have = copy(buf, buf[off:have])
	}
}

// receive decrypts one frame and acts on it; false ends the link.
func (c *Conn) receive(ct, plain []byte) bool {
	p, err := c.recv.Decrypt(plain[:0], nil, ct)
	if err != nil {
		c.fail(fmt.Errorf("link: frame does not decrypt: %w", err))
		return false
	}
	t, body, err := DecodeFrame(p)
	if err != nil {
		c.fail(err)
		return false
	}
	c.framesIn.Add(1)
	if t == FramePace {
		c.setPace(body)
		return true
	}
	if t != FrameDummy && c.cfg.Handler != nil {
		c.cfg.Handler(c, t, body)
	}
	return true
}
