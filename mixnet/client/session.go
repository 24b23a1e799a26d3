package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/session"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// SessionConfig configures sessions. Zero values take the defaults.
type SessionConfig struct {
	// SURBTarget is the reply-block stock the client keeps at the exit;
	// default 200: a second of replies at the default rate, so a
	// download does not stall for a round trip waiting for SURBs.
	SURBTarget int
	// RetryInterval is how long a control record (Open, Close) waits for
	// its answer before it is sent again; default 1 s, about ten mean
	// round trips.
	RetryInterval time.Duration
	// KeepAlive sends SURBs to an otherwise idle exit this often, so it
	// does not expire the session (it does after 60 s) and so reply
	// blocks lost on the way are made up; default 20 s.
	KeepAlive time.Duration
	// MaxQueued bounds bytes of IP packets waiting to be sent; default
	// 1 MiB.
	MaxQueued int
	// InboxSize bounds received IP packets waiting for ReadPacket;
	// default 1024. Beyond it packets are dropped, as a full NIC would.
	InboxSize int
	// CloseTimeout bounds how long Close waits for the exit; default 5 s.
	CloseTimeout time.Duration
	// ReorderHold is the longest a received IP packet waits for earlier
	// ones, so that the stream reaches TCP in order (see
	// session.Sequencer); default seven mean per-mix delays, which covers
	// the spread of three delays but for about one packet in 10^4.
	// Negative delivers packets as they arrive.
	ReorderHold time.Duration
}

func (c *SessionConfig) setDefaults() {
	if c.SURBTarget <= 0 {
		c.SURBTarget = 200
	}
	if c.RetryInterval <= 0 {
		c.RetryInterval = time.Second
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 20 * time.Second
	}
	if c.MaxQueued <= 0 {
		c.MaxQueued = 1 << 20
	}
	if c.InboxSize <= 0 {
		c.InboxSize = 1024
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = 5 * time.Second
	}
}

// reorderHoldPerDelay is ReorderHold's default in mean per-mix delays.
const reorderHoldPerDelay = 7

// Errors of a session.
var (
	ErrSessionExists = errors.New("client: a session is already open")
	ErrQueueFull     = errors.New("client: session send queue full")
	ErrSessionClosed = errors.New("client: session closed")
)

// Session is a tunnel through the mixnet to one exit: IP packets written
// go out in forward messages, and the exit's answers come back in the
// reply blocks those messages carry.
type Session struct {
	c      *Client
	cfg    SessionConfig
	id     session.ID
	exitID string
	wake   chan struct{}
	opened chan struct{}
	closed chan struct{} // the exit answered Close
	stop   chan struct{}
	done   chan struct{}
	in     chan []byte

	mu       sync.Mutex
	isOpen   bool
	isClosed bool
	v4, v6   netip.Addr
	queue    [][]byte
	queued   int
	offset   int
	packetID uint16
	control  []pendingControl
	seq      uint32
	surbs    surbBudget
	// surbsFirst tells that the last message put SURBs before data.
	surbsFirst bool
	lastSent   time.Time
	reasm      session.Reassembler
	order      session.Sequencer
	release    *time.Timer // runs order.Release when a held packet is due
	dropped    uint64
}

type pendingControl struct {
	typ  session.RecordType
	seq  uint32
	last time.Time
}

// OpenSession opens a session with the configured exit (or a random one)
// and returns once the exit has answered with the session's addresses.
// Open is resent every RetryInterval until then. Run must be running.
func (c *Client) OpenSession(ctx context.Context) (*Session, error) {
	select {
	case <-c.started:
	case <-ctx.Done():
		return nil, fmt.Errorf("client: open session: %w", ctx.Err())
	}
	t := c.Topology()
	exitID := c.cfg.Exit
	if exitID == "" {
		exitID = t.Exits[mrand.IntN(len(t.Exits))].ID
	}
	s := &Session{
		c: c, cfg: c.cfg.Session, exitID: exitID,
		wake: make(chan struct{}, 1), opened: make(chan struct{}), closed: make(chan struct{}),
		stop: make(chan struct{}), done: make(chan struct{}), in: make(chan []byte, c.cfg.Session.InboxSize),
		surbs: surbBudget{target: c.cfg.Session.SURBTarget},
	}
	cryptoRead(s.id[:])
	s.order.Hold = s.cfg.ReorderHold
	s.release = time.AfterFunc(time.Hour, s.releaseHeld)
	s.release.Stop()
	s.seq = 1
	s.control = []pendingControl{{typ: session.RecordOpen, seq: 1}}
	c.mu.Lock()
	if c.sess != nil {
		c.mu.Unlock()
		return nil, ErrSessionExists
	}
	c.sess = s
	c.mu.Unlock()
	c.sessions.Go(func() { defer close(s.done); s.pack(c.runCtx) })
	select {
	case <-s.opened:
		return s, nil
	case <-ctx.Done():
		s.shutdown()
		return nil, fmt.Errorf("client: open session with %s: %w", exitID, ctx.Err())
	case <-c.runCtx.Done():
		s.shutdown()
		return nil, fmt.Errorf("client: open session with %s: %w", exitID, ErrSessionClosed)
	}
}

// Exit is the ID of the session's exit.
func (s *Session) Exit() string { return s.exitID }

// Addrs are the session's inner addresses, as the exit assigned them.
func (s *Session) Addrs() (v4, v6 netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v4, s.v6
}

// Dropped counts received IP packets dropped because the inbox was full.
func (s *Session) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// WritePacket queues one IP packet (copied) for the exit. Packets are
// bundled into messages and fragmented across them when large.
func (s *Session) WritePacket(ip []byte) error {
	if len(ip) == 0 || len(ip) > session.MaxIPPacket {
		return fmt.Errorf("client: IP packet of %d bytes", len(ip))
	}
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()
		return ErrSessionClosed
	}
	if s.queued+len(ip) > s.cfg.MaxQueued {
		s.mu.Unlock()
		return ErrQueueFull
	}
	s.queue = append(s.queue, bytes.Clone(ip))
	s.queued += len(ip)
	s.mu.Unlock()
	s.kick()
	return nil
}

// Packets delivers the IP packets the exit sends back, reassembled.
func (s *Session) Packets() <-chan []byte { return s.in }

// ReadPacket returns the next IP packet from the exit.
func (s *Session) ReadPacket(ctx context.Context) ([]byte, error) {
	select {
	case p := <-s.in:
		return p, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.done:
		return nil, ErrSessionClosed
	}
}

// Close asks the exit to end the session, waits up to CloseTimeout for its
// answer, and stops the session.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()
		return nil
	}
	s.isClosed = true
	s.seq++
	s.control = append(s.control, pendingControl{typ: session.RecordClose, seq: s.seq})
	s.mu.Unlock()
	s.kick()
	var err error
	t := time.NewTimer(s.cfg.CloseTimeout)
	defer t.Stop()
	select {
	case <-s.closed:
	case <-s.done:
	case <-t.C:
		err = fmt.Errorf("client: exit %s did not answer Close", s.exitID)
	}
	s.shutdown()
	return err
}

// flushSURBs has the exit forget its reply blocks and sends it fresh ones,
// routed around the mixes now avoided.
func (s *Session) flushSURBs() {
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()
		return
	}
	s.seq++
	s.control = append(s.control, pendingControl{typ: session.RecordFlush, seq: s.seq})
	s.surbs.flushed()
	s.mu.Unlock()
	s.kick()
}

func (s *Session) shutdown() {
	s.release.Stop()
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.c.mu.Lock()
	if s.c.sess == s {
		s.c.sess = nil
	}
	s.c.mu.Unlock()
}

func (s *Session) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pack builds forward messages and hands them, as Sphinx packets, to the
// sender, one at a time: while the sender is busy, written packets
// accumulate and go out bundled.
func (s *Session) pack(ctx context.Context) {
	rng := newRand()
	buf := make([]byte, session.MaxMessageSize)
	tick := time.NewTicker(s.cfg.RetryInterval / 4)
	defer tick.Stop()
	for {
		pkt, err := s.next(buf, rng, time.Now())
		if err != nil {
			s.c.log.Warn("session message", "err", err)
		}
		if pkt != nil {
			select {
			case s.c.real <- pkt:
				continue
			case <-ctx.Done():
				return
			case <-s.stop:
				return
			}
		}
		select {
		case <-s.wake:
		case <-tick.C:
		case <-ctx.Done():
			return
		case <-s.stop:
			return
		}
	}
}

// next builds the next message, or returns nil if nothing is due.
func (s *Session) next(buf []byte, rng *mrand.Rand, now time.Time) ([]byte, error) {
	var b session.Builder
	surbs, ok := s.compose(&b, buf, now)
	if !ok {
		return nil, nil
	}
	pkt, err := s.seal(&b, surbs, rng)
	if err != nil {
		// compose counted the SURBs as sent; none went.
		s.mu.Lock()
		s.surbs.unsent(surbs)
		s.mu.Unlock()
		return nil, err
	}
	return pkt, nil
}

// seal adds surbs SURBs to b and wraps the message for the exit.
func (s *Session) seal(b *session.Builder, surbs int, rng *mrand.Rand) ([]byte, error) {
	for range surbs {
		surb, err := s.c.takeSURB(rng)
		if err != nil {
			return nil, err
		}
		if err := b.SURB(surb); err != nil {
			return nil, fmt.Errorf("client: add SURB: %w", err)
		}
	}
	r := s.c.route()
	exit, ok := r.exit(s.exitID)
	if !ok {
		return nil, fmt.Errorf("client: exit %s left the topology", s.exitID)
	}
	pkt, err := sphinx.NewPacket(nil, r.forwardPath(rng, s.c.cfg.MeanDelay, exit, r.avoid), exit.Address, sphinx.MessageID{}, b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("client: build session packet: %w", err)
	}
	return pkt, nil
}

// compose puts what is due into b (control records, queued data) and
// returns how many SURBs to add after it, which the caller takes from the
// pool outside the lock; false if nothing is due.
func (s *Session) compose(b *session.Builder, buf []byte, now time.Time) (surbs int, ok bool) {
	b.Reset(buf, s.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	due := false
	for i := range s.control {
		c := &s.control[i]
		if c.last.IsZero() || now.Sub(c.last) >= s.cfg.RetryInterval {
			b.Control(c.typ, c.seq)
			c.last = now
			due = true
		}
	}
	per := session.RecordHeaderSize + sphinx.SURBSize
	if !s.isOpen {
		// Until the exit knows the session, only Open goes out, with as
		// many SURBs as fit, since the exit drops anything else.
		if due {
			surbs = (len(buf) - b.Len()) / per
		}
	} else {
		// A download's upstream is a trickle of ACKs, which put the
		// fifth SURB of a message out of room (five take all but 36
		// bytes). So while the exit is owed a full message of SURBs and
		// only a trickle waits, every other message puts the SURBs
		// first and the data in what is left, which holds that data
		// back by one slot at most; uploads and bursts go first as ever.
		full := (len(buf) - b.Len()) / per
		s.surbsFirst = !s.surbsFirst && s.surbs.want() >= full && s.queued-s.offset <= len(buf)-b.Len()-(full-1)*per
		if s.surbsFirst {
			b.Limit(len(buf) - full*per)
		}
		for len(s.queue) > 0 {
			p := s.queue[0]
			n := b.Fragment(s.packetID, p, s.offset)
			if n == 0 {
				break
			}
			due = true
			s.offset += n
			if s.offset == len(p) {
				s.queue[0] = nil
				s.queue = s.queue[1:]
				s.queued -= len(p)
				s.offset = 0
				s.packetID++
			}
		}
		b.Limit(len(buf))
		surbs = s.surbs.take((len(buf) - b.Len()) / per)
		if now.Sub(s.lastSent) >= s.cfg.KeepAlive {
			extra := (len(buf)-b.Len())/per - surbs
			s.surbs.sent(extra)
			surbs += extra
		}
	}
	if !due && surbs == 0 {
		return 0, false
	}
	s.lastSent = now
	return surbs, true
}

// handle takes one opened reply.
func (s *Session) handle(msg []byte, now time.Time) {
	if len(msg) < session.HeaderSize || session.ID(msg[1:session.HeaderSize]) != s.id {
		return
	}
	var out [][]byte
	s.mu.Lock()
	s.surbs.replied()
	_, err := session.Parse(msg, func(r session.Record) error {
		switch r.Type {
		case session.RecordOpened:
			seq, v4, v6 := r.Opened()
			if s.answer(session.RecordOpen, seq) && !s.isOpen {
				s.v4, s.v6, s.isOpen = v4, v6, true
				close(s.opened)
			}
		case session.RecordClosed:
			if s.answer(session.RecordClose, r.Seq()) {
				close(s.closed)
			}
		case session.RecordAck:
			s.answer(0, r.Seq())
		case session.RecordStatus:
			s.surbs.status(int(r.Stock()))
		case session.RecordFragment:
			p, off, total, data := r.Fragment()
			pkt, err := s.reasm.Add(p, off, total, data, now)
			if err == nil && pkt != nil {
				if s.order.Hold < 0 {
					out = append(out, bytes.Clone(pkt))
				} else {
					s.order.Add(p, pkt, now, func(b []byte) { out = append(out, bytes.Clone(b)) })
				}
			}
		}
		return nil
	})
	s.reasm.Expire(now.Add(-s.cfg.KeepAlive))
	s.deliver(out)
	if due, ok := s.order.Due(); ok {
		s.release.Reset(due.Sub(now))
	}
	s.mu.Unlock()
	s.kick() // a SURB is owed: the packer may be idle
	if err != nil {
		s.c.log.Debug("bad reply message", "err", err)
	}
}

// releaseHeld gives up on a gap that a held packet has waited out.
func (s *Session) releaseHeld() {
	var out [][]byte
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.order.Release(now, func(b []byte) { out = append(out, bytes.Clone(b)) })
	s.deliver(out)
	if due, ok := s.order.Due(); ok {
		s.release.Reset(due.Sub(now))
	}
}

// deliver hands received IP packets to the reader, dropping what does not
// fit as a full NIC would. Called with mu.
func (s *Session) deliver(pkts [][]byte) {
	for _, p := range pkts {
		select {
		case s.in <- p:
		default:
			s.dropped++
		}
	}
}

// answer removes the pending control record seq (of type typ, or any type
// for 0) and reports whether it was pending. Called with mu.
func (s *Session) answer(typ session.RecordType, seq uint32) bool {
	for i, c := range s.control {
		if c.seq == seq && (typ == 0 || c.typ == typ) {
			s.control = append(s.control[:i], s.control[i+1:]...)
			return true
		}
	}
	return false
}

// surbBudget decides how many SURBs the next message carries, so that the
// exit's stock stays near target however fast a download spends it.
//
// The exit reports its stock in every reply, but a report is a return
// trip old, and a download spends a whole target in that time: steering
// by reports alone left the exit waiting while the client sent drop
// cover. So every reply, which cost the exit one SURB, is replaced
// (owed), and the reported stock only tops up what replacement cannot
// see: SURBs or replies lost on the way.
type surbBudget struct {
	target    int
	stock     int // last stock the exit reported
	sentSince int // SURBs sent since that report
	owed      int // replies received whose SURB is not yet replaced
}

// replied counts a reply: the exit spent a SURB on it. Bounded, since
// replacements held up for a while need no more than a target.
func (b *surbBudget) replied() { b.owed = min(b.owed+1, b.target) }

// status takes the stock the exit reported.
func (b *surbBudget) status(stock int) {
	b.stock, b.sentSince = stock, 0
	if stock >= 2*b.target {
		b.owed = 0 // plenty is there: what was owed was made up
	}
}

// flushed starts over after the exit was told to drop its stock.
func (b *surbBudget) flushed() { b.stock, b.sentSince, b.owed = 0, 0, 0 }

// want is how many SURBs the exit should be sent now.
func (b *surbBudget) want() int { return max(b.owed, b.target-b.stock-b.sentSince, 0) }

// take returns how many SURBs, at most fit, the next message carries,
// and counts them as sent.
func (b *surbBudget) take(fit int) int {
	n := min(b.want(), fit)
	b.sent(n)
	return n
}

// sent counts n SURBs sent.
func (b *surbBudget) sent(n int) {
	b.sentSince += n
	b.owed = max(0, b.owed-n)
}

// unsent takes back n SURBs counted as sent that did not go out.
func (b *surbBudget) unsent(n int) {
	b.sentSince = max(0, b.sentSince-n)
	b.owed = min(b.owed+n, b.target)
}
