package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/session"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// PacketDevice is where the exit's IP traffic goes: a TUN device in
// production (tun.Device satisfies it), a channel pair in tests.
type PacketDevice interface {
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	BatchSize() int
}

// Router sends a Sphinx packet to the node with the given address and must
// not keep pkt after it returns.
type Router interface {
	Route(next sphinx.Address, pkt []byte) error
}

// ExitConfig configures an Exit.
type ExitConfig struct {
	// Device carries IP packets to and from the internet.
	Device PacketDevice
	// Router sends reply packets to their first hop.
	Router Router
	// Prefix4 and Prefix6 are the pools sessions get inner addresses from;
	// the first host address of each is the exit's own.
	Prefix4, Prefix6 netip.Prefix
	// MaxSessions bounds live sessions; default 1024.
	MaxSessions int
	// MaxSURBs bounds one session's reply-block stock; default 1000.
	MaxSURBs int
	// MaxQueued bounds one session's bytes waiting for a reply block;
	// default 1 MiB.
	MaxQueued int
	// IdleTimeout expires a session with no traffic; default 60 s.
	IdleTimeout time.Duration
	// FlushDelay is how long a part-filled reply waits for more data;
	// default 2 ms.
	FlushDelay time.Duration
	// ReorderHold is the longest a client's IP packet waits for earlier
	// ones before going out (see session.Sequencer), so that uploads
	// reach the internet in order; default 100 ms, about seven of the
	// default mean per-mix delays. Negative sends packets as they arrive.
	ReorderHold time.Duration
	// Offset is the headroom the device needs in front of each packet;
	// default 16 (a Linux TUN with offloads needs at least 10).
	Offset int
	// Register answers Fast-mode registrations that come through the
	// mixnet (Registry.Handle); nil refuses them.
	Register func(req []byte) []byte
	Logger   *slog.Logger
	Now      func() time.Time
}

// ExitStats counts what an exit did.
type ExitStats struct {
	Sessions, PacketsOut, PacketsIn, RepliesSent, Dropped, Spoofed, NoSURB uint64
}

// Exit serves anonymous sessions. Its Final method is the node.Handler of
// an exit node; Run moves packets to and from the device.
type Exit struct {
	cfg  ExitConfig
	log  *slog.Logger
	wake chan struct{}

	mu       sync.Mutex
	sessions map[session.ID]*exitSession
	byAddr   map[netip.Addr]*exitSession
	pool     *pool

	stats struct {
		packetsOut, packetsIn, replies, dropped, spoofed, noSURB atomic.Uint64
	}
}

type exitSession struct {
	id     session.ID
	v4, v6 netip.Addr

	mu       sync.Mutex
	surbs    [][]byte
	flushed  uint32   // seq of the last Flush obeyed
	queue    [][]byte // IP packets waiting for a reply
	queued   int      // bytes in queue
	offset   int      // bytes of queue[0] already sent
	control  []pendingControl
	oldest   time.Time
	lastSeen time.Time
	packetID uint16
	reasm    session.Reassembler
	order    session.Sequencer
}

type pendingControl struct {
	typ session.RecordType
	seq uint32
}

// NewExit builds an exit.
func NewExit(cfg ExitConfig) (*Exit, error) {
	if cfg.Device == nil || cfg.Router == nil {
		return nil, errors.New("gateway: exit needs a Device and a Router")
	}
	if !cfg.Prefix4.Addr().Is4() || !cfg.Prefix6.Addr().Is6() || cfg.Prefix4.Bits() > 30 || cfg.Prefix6.Bits() > 126 {
		return nil, fmt.Errorf("gateway: exit prefixes %v and %v must be an IPv4 and an IPv6 pool", cfg.Prefix4, cfg.Prefix6)
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 1024
	}
	if cfg.MaxSURBs <= 0 {
		cfg.MaxSURBs = 1000
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = 1 << 20
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = time.Minute
	}
	if cfg.FlushDelay <= 0 {
		cfg.FlushDelay = 2 * time.Millisecond
	}
	if cfg.ReorderHold == 0 {
		cfg.ReorderHold = 100 * time.Millisecond
	}
	if cfg.Offset <= 0 {
		cfg.Offset = 16
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	e := &Exit{
		cfg:      cfg,
		log:      cfg.Logger,
		wake:     make(chan struct{}, 1),
		sessions: make(map[session.ID]*exitSession),
		byAddr:   make(map[netip.Addr]*exitSession),
		pool:     newPool(cfg.Prefix4, cfg.Prefix6),
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	return e, nil
}

// Stats returns the exit's counters.
func (e *Exit) Stats() ExitStats {
	e.mu.Lock()
	n := len(e.sessions)
	e.mu.Unlock()
	return ExitStats{
		Sessions:    uint64(n),
		PacketsOut:  e.stats.packetsOut.Load(),
		PacketsIn:   e.stats.packetsIn.Load(),
		RepliesSent: e.stats.replies.Load(),
		Dropped:     e.stats.dropped.Load(),
		Spoofed:     e.stats.spoofed.Load(),
		NoSURB:      e.stats.noSURB.Load(),
	}
}

// Deliver refuses: an exit has no clients behind it.
func (e *Exit) Deliver(sphinx.Address, sphinx.MessageID, []byte) error {
	return errors.New("gateway: exit does not deliver to clients")
}

// Final takes one session message from the mixnet. Drop cover carries a
// message that is not a session message and is dropped quietly.
func (e *Exit) Final(_ sphinx.Address, _ sphinx.MessageID, msg []byte) error {
	if len(msg) == 0 || msg[0] != session.Version {
		return nil // drop cover: nothing to do, by design
	}
	if isRegistration(msg) {
		return e.register(msg)
	}
	now := e.cfg.Now()
	var s *exitSession
	var out [][]byte
	id, err := session.Parse(msg, func(r session.Record) error {
		if s == nil {
			var err error
			if s, err = e.session(idOf(msg), r.Type == session.RecordOpen); err != nil {
				return err
			}
			s.mu.Lock()
			s.lastSeen = now
		}
		switch r.Type {
		case session.RecordOpen:
			s.control = append(s.control, pendingControl{session.RecordOpened, r.Seq()})
		case session.RecordClose:
			s.control = append(s.control, pendingControl{session.RecordClosed, r.Seq()})
		case session.RecordFlush:
			// A resent Flush must not throw away the SURBs that came
			// after the first.
			if seq := r.Seq(); seq > s.flushed {
				s.flushed = seq
				clear(s.surbs)
				s.surbs = s.surbs[:0]
			}
			s.control = append(s.control, pendingControl{session.RecordAck, r.Seq()})
		case session.RecordSURB:
			if len(s.surbs) < e.cfg.MaxSURBs {
				s.surbs = append(s.surbs, append([]byte(nil), r.Body...))
			}
		case session.RecordFragment:
			p, off, total, data := r.Fragment()
			pkt, err := s.reasm.Add(p, off, total, data, now)
			if err != nil {
				e.stats.dropped.Add(1)
				return nil
			}
			if pkt != nil {
				if s.order.Hold < 0 {
					out = e.outgoing(out, s, pkt)
				} else {
					s.order.Add(p, pkt, now, func(b []byte) { out = e.outgoing(out, s, b) })
				}
			}
		}
		return nil
	})
	if s != nil {
		s.reasm.Expire(now.Add(-e.cfg.IdleTimeout))
		s.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("gateway: session %x: %w", id[:4], err)
	}
	if s == nil {
		return nil
	}
	e.writeOut(out)
	e.kick()
	return nil
}

// isRegistration reports whether msg's first record is a registration.
func isRegistration(msg []byte) bool {
	return len(msg) > session.HeaderSize && session.RecordType(msg[session.HeaderSize]) == session.RecordRegister
}

// register answers a registration in the reply block that came with it.
func (e *Exit) register(msg []byte) error {
	var req, surb []byte
	id, err := session.Parse(msg, func(r session.Record) error {
		switch r.Type {
		case session.RecordRegister:
			req = r.Body
		case session.RecordSURB:
			surb = r.Body
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("gateway: registration: %w", err)
	}
	if surb == nil {
		return errors.New("gateway: registration without a reply block")
	}
	if e.cfg.Register == nil {
		return errors.New("gateway: this exit takes no registrations")
	}
	resp := e.cfg.Register(req)
	var b session.Builder
	b.Reset(make([]byte, session.MaxMessageSize), id)
	if err := b.Blob(session.RecordRegistered, resp); err != nil {
		return fmt.Errorf("gateway: registration answer: %w", err)
	}
	first, pkt, err := sphinx.NewReply(surb, b.Bytes())
	if err == nil {
		err = e.cfg.Router.Route(first, pkt)
	}
	if err != nil {
		return fmt.Errorf("gateway: registration answer: %w", err)
	}
	e.stats.replies.Add(1)
	return nil
}

func idOf(msg []byte) session.ID { return session.ID(msg[1:session.HeaderSize]) }

// session finds or, for an Open, creates a session.
func (e *Exit) session(id session.ID, create bool) (*exitSession, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s := e.sessions[id]; s != nil {
		return s, nil
	}
	if !create {
		return nil, fmt.Errorf("gateway: unknown session %x", id[:4])
	}
	if len(e.sessions) >= e.cfg.MaxSessions {
		return nil, fmt.Errorf("gateway: session limit of %d reached", e.cfg.MaxSessions)
	}
	v4, v6, err := e.pool.take()
	if err != nil {
		return nil, err
	}
	s := &exitSession{id: id, v4: v4, v6: v6, lastSeen: e.cfg.Now()}
	s.order.Hold = e.cfg.ReorderHold
	e.sessions[id] = s
	e.byAddr[v4] = s
	e.byAddr[v6] = s
	e.log.Info("session opened", "v4", v4, "v6", v6)
	return s, nil
}

// outgoing appends a copy of a session's IP packet, with the device's
// headroom in front, to bufs, unless its source is not the session's own
// address. Called with s.mu.
func (e *Exit) outgoing(bufs [][]byte, s *exitSession, p []byte) [][]byte {
	src, _, err := ipAddrs(p)
	if err != nil || (src != s.v4 && src != s.v6) {
		e.stats.spoofed.Add(1)
		return bufs
	}
	b := make([]byte, e.cfg.Offset+len(p))
	copy(b[e.cfg.Offset:], p)
	return append(bufs, b)
}

// writeOut sends packets made by outgoing to the device.
func (e *Exit) writeOut(bufs [][]byte) {
	if len(bufs) == 0 {
		return
	}
	off := e.cfg.Offset
	if _, err := e.cfg.Device.Write(bufs, off); err != nil {
		e.stats.dropped.Add(uint64(len(bufs)))
		e.log.Debug("device write failed", "err", err)
		return
	}
	e.stats.packetsOut.Add(uint64(len(bufs)))
}

func (e *Exit) kick() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run reads answers from the device and sends replies until ctx ends.
//
// It wakes only when there is something to do: data or SURBs arrived
// (kick), or a part-filled reply or a held upload falls due. A free-running
// flush ticker would wake an idle exit 500 times a second, each wake-up a
// context switch that costs more than the flush.
func (e *Exit) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- e.readDevice(ctx) }()
	due := time.NewTimer(time.Hour)
	due.Stop()
	defer due.Stop()
	expire := time.NewTicker(e.cfg.IdleTimeout / 4)
	defer expire.Stop()
	var f flusher
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if ctx.Err() != nil {
				return nil
			}
			return err
		case <-e.wake:
		case <-due.C:
		case <-expire.C:
			e.expire()
		}
		if next, ok := e.flush(&f); ok {
			due.Reset(max(next.Sub(e.cfg.Now()), 0))
		} else {
			due.Stop()
		}
	}
}

func (e *Exit) readDevice(ctx context.Context) error {
	n := e.cfg.Device.BatchSize()
	off := e.cfg.Offset
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, off+session.MaxIPPacket)
	}
	sizes := make([]int, n)
	for ctx.Err() == nil {
		count, err := e.cfg.Device.Read(bufs, sizes, off)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("gateway: read device: %w", err)
		}
		for i := range count {
			e.fromDevice(bufs[i][off : off+sizes[i]])
		}
		if count > 0 {
			e.kick()
		}
	}
	return nil
}

// fromDevice queues an answer for the session that owns its destination.
func (e *Exit) fromDevice(pkt []byte) {
	_, dst, err := ipAddrs(pkt)
	if err != nil {
		return
	}
	e.mu.Lock()
	s := e.byAddr[dst]
	e.mu.Unlock()
	if s == nil {
		e.stats.dropped.Add(1)
		return
	}
	e.stats.packetsIn.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queued+len(pkt) > e.cfg.MaxQueued {
		e.stats.dropped.Add(1)
		return
	}
	if len(s.queue) == 0 {
		s.oldest = e.cfg.Now()
	}
	s.queue = append(s.queue, append([]byte(nil), pkt...))
	s.queued += len(pkt)
}

func (e *Exit) expire() {
	cutoff := e.cfg.Now().Add(-e.cfg.IdleTimeout)
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, s := range e.sessions {
		s.mu.Lock()
		idle := s.lastSeen.Before(cutoff)
		s.mu.Unlock()
		if idle {
			e.remove(id, s)
		}
	}
}

// remove forgets a session. Called with mu.
func (e *Exit) remove(id session.ID, s *exitSession) {
	delete(e.sessions, id)
	delete(e.byAddr, s.v4)
	delete(e.byAddr, s.v6)
	e.pool.give(s.v4, s.v6)
	e.log.Info("session closed", "v4", s.v4)
}

// flusher is the flush loop's memory, reused from one flush to the next.
type flusher struct {
	sessions []*exitSession
	buf      []byte
}

// flush sends every reply that is due: full bundles at once, part-filled
// ones after FlushDelay, control answers immediately. It returns when the
// next part-filled reply or held upload falls due, if any does.
func (e *Exit) flush(f *flusher) (next time.Time, ok bool) {
	e.mu.Lock()
	f.sessions = f.sessions[:0]
	for _, s := range e.sessions {
		f.sessions = append(f.sessions, s)
	}
	e.mu.Unlock()
	if f.buf == nil {
		f.buf = make([]byte, session.MaxMessageSize)
	}
	now := e.cfg.Now()
	later := func(t time.Time) {
		if !ok || t.Before(next) {
			next, ok = t, true
		}
	}
	for _, s := range f.sessions {
		e.releaseHeld(s, now)
		for e.flushOne(s, f.buf, now) {
		}
		s.mu.Lock()
		if t, held := s.order.Due(); held {
			later(t)
		}
		// Without a SURB nothing can go; the SURBs' arrival kicks a flush.
		if s.queued > 0 && len(s.surbs) > 0 {
			later(s.oldest.Add(e.cfg.FlushDelay))
		}
		s.mu.Unlock()
	}
	clear(f.sessions) // do not keep closed sessions alive
	return next, ok
}

// releaseHeld sends the packets of s that waited out a gap in the stream.
func (e *Exit) releaseHeld(s *exitSession, now time.Time) {
	var out [][]byte
	s.mu.Lock()
	if s.order.Held() > 0 {
		s.order.Release(now, func(b []byte) { out = e.outgoing(out, s, b) })
	}
	s.mu.Unlock()
	e.writeOut(out)
}

// flushOne sends at most one reply for s and reports whether it sent one.
func (e *Exit) flushOne(s *exitSession, buf []byte, now time.Time) bool {
	s.mu.Lock()
	due := len(s.control) > 0 || s.queued-s.offset >= session.MaxMessageSize-64 ||
		(s.queued > 0 && now.Sub(s.oldest) >= e.cfg.FlushDelay)
	if !due {
		s.mu.Unlock()
		return false
	}
	if len(s.surbs) == 0 {
		if s.queued > 0 || len(s.control) > 0 {
			e.stats.noSURB.Add(1)
		}
		s.mu.Unlock()
		return false
	}
	surb := s.surbs[len(s.surbs)-1]
	s.surbs = s.surbs[:len(s.surbs)-1]
	var b session.Builder
	b.Reset(buf, s.id)
	b.Status(uint16(min(len(s.surbs), 0xffff)))
	closing := false
	for _, c := range s.control {
		if c.typ == session.RecordOpened {
			b.Opened(c.seq, s.v4, s.v6)
		} else {
			b.Control(c.typ, c.seq)
			closing = closing || c.typ == session.RecordClosed
		}
	}
	s.control = s.control[:0]
	for len(s.queue) > 0 {
		p := s.queue[0]
		n := b.Fragment(s.packetID, p, s.offset)
		if n == 0 {
			break
		}
		s.offset += n
		if s.offset == len(p) {
			s.queue[0] = nil
			s.queue = s.queue[1:]
			s.queued -= len(p)
			s.offset = 0
			s.packetID++
		}
	}
	if s.queued > 0 {
		s.oldest = now
	}
	s.mu.Unlock()

	first, pkt, err := sphinx.NewReply(surb, b.Bytes())
	if err == nil {
		err = e.cfg.Router.Route(first, pkt)
	}
	if err != nil {
		e.stats.dropped.Add(1)
		e.log.Debug("reply failed", "err", err)
	} else {
		e.stats.replies.Add(1)
	}
	if closing {
		e.mu.Lock()
		e.remove(s.id, s)
		e.mu.Unlock()
		return false
	}
	return true
}
