package socks

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Dialer opens the connections clients ask for. Names reach it unresolved
// ("host:port"): resolving them is its business, on its side of the
// tunnel. *Front satisfies it; DialerFunc adapts a function, for tests.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// DialerFunc is a function that satisfies Dialer.
type DialerFunc func(ctx context.Context, network, address string) (net.Conn, error)

// DialContext calls f.
func (f DialerFunc) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return f(ctx, network, address)
}

// Defaults for ServerConfig.
const (
	// DefaultHandshakeTimeout bounds a client's greeting and request: a
	// local application sends both at once.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultDialTimeout bounds one CONNECT: through the mixnet a round
	// trip takes about 0.1 s, and a lost SYN is resent after a second.
	DefaultDialTimeout = 30 * time.Second
	// DefaultMaxConns bounds connections served at once; a browser keeps
	// a few dozen.
	DefaultMaxConns = 512
)

// ServerConfig configures a Server.
type ServerConfig struct {
	// Dialer opens the connections clients ask for.
	Dialer Dialer
	// Packets, if set, serves UDP ASSOCIATE; without it the command is
	// refused.
	Packets PacketListener
	// HandshakeTimeout, DialTimeout and MaxConns take the defaults above
	// when zero.
	HandshakeTimeout, DialTimeout time.Duration
	MaxConns                      int
	Logger                        *slog.Logger
}

// ServerStats counts what a server did.
type ServerStats struct {
	// Accepted counts client connections; Refused those turned away at
	// MaxConns; Connected the CONNECTs that succeeded; Failed those that
	// did not (a bad request or a failed dial).
	Accepted, Refused, Connected, Failed uint64
	// Active is connections open now.
	Active int64
	// BytesUp and BytesDown count bytes relayed from and to clients.
	BytesUp, BytesDown uint64
	// Associations counts UDP ASSOCIATE requests served; DatagramsUp and
	// DatagramsDown the datagrams relayed; DatagramsDropped those from
	// another sender, malformed, fragmented or undeliverable.
	Associations, DatagramsUp, DatagramsDown, DatagramsDropped uint64
}

// Server is a SOCKS5 server (RFC 1928) that serves CONNECT, and UDP
// ASSOCIATE if configured, without authentication: it is meant for a
// listener on loopback.
type Server struct {
	cfg ServerConfig
	log *slog.Logger

	accepted, refused, connected, failed, up, down       atomic.Uint64
	associations, datagramsUp, datagramsDown, udpDropped atomic.Uint64
	active                                               atomic.Int64
}

// NewServer builds a server; Serve runs it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Dialer == nil {
		return nil, errors.New("socks: no Dialer")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: log}, nil
}

// Stats returns the server's counters.
func (s *Server) Stats() ServerStats {
	return ServerStats{
		Accepted: s.accepted.Load(), Refused: s.refused.Load(), Connected: s.connected.Load(), Failed: s.failed.Load(),
		Active: s.active.Load(), BytesUp: s.up.Load(), BytesDown: s.down.Load(),
		Associations: s.associations.Load(), DatagramsUp: s.datagramsUp.Load(), DatagramsDown: s.datagramsDown.Load(),
		DatagramsDropped: s.udpDropped.Load(),
	}
}

// Serve accepts clients on ln until ctx ends or ln fails; then it closes
// ln and every connection and returns once they are all done. It returns
// nil when ctx ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors: wait for connections to end
				// rather than spin.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("socks: accept: %w", err)
		}
		backoff = 0
		s.accepted.Add(1)
		if s.active.Add(1) > int64(s.cfg.MaxConns) {
			s.active.Add(-1)
			s.refused.Add(1)
			c.Close()
			continue
		}
		wg.Go(func() {
			defer s.active.Add(-1)
			s.serveConn(ctx, c)
		})
	}
}

// serveConn runs one client: negotiation, request, dial, relay.
func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	// A client that vanishes mid-handshake or a Serve that ends must not
	// leave this goroutine behind.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	c.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	r := bufio.NewReaderSize(c, 512)
	req, ok := s.handshake(r, c)
	if !ok {
		s.failed.Add(1)
		return
	}
	if req.Command == CmdUDPAssociate {
		s.associate(ctx, c, r, req)
		return
	}
	// The dial has its own, longer bound; then the reply gets the
	// handshake's.
	c.SetDeadline(time.Time{})
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	remote, err := s.cfg.Dialer.DialContext(dctx, "tcp", req.Dest.String())
	cancel()
	c.SetWriteDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	if err != nil {
		s.failed.Add(1)
		// Destinations are the user's business: debug level only.
		s.log.Debug("connect failed", "dest", req.Dest.String(), "err", err)
		writeReply(c, replyFor(err), netip.AddrPort{})
		return
	}
	defer remote.Close()
	stopRemote := context.AfterFunc(ctx, func() { remote.Close() })
	defer stopRemote()
	var bound netip.AddrPort
	if a, ok := remote.LocalAddr().(*net.TCPAddr); ok {
		bound = a.AddrPort()
	}
	if err := writeReply(c, ReplySucceeded, bound); err != nil {
		s.failed.Add(1)
		return
	}
	s.connected.Add(1)
	c.SetDeadline(time.Time{})
	s.log.Debug("connected", "dest", req.Dest.String())
	// Whatever the client sent after its request is already buffered in
	// r: relay from r, not from c.
	relay(remote, r, c, &s.up, &s.down)
}

// handshake negotiates the method and reads the request, answering a bad
// one with its reply code. It reports false if the connection is done.
func (s *Server) handshake(r io.Reader, w io.Writer) (Request, bool) {
	noAuth, err := readGreeting(r)
	if err != nil {
		s.log.Debug("bad greeting", "err", err)
		return Request{}, false
	}
	if !noAuth {
		w.Write([]byte{version5, methodNone})
		s.log.Debug("client offers no usable method", "err", ErrNoMethod)
		return Request{}, false
	}
	if _, err := w.Write([]byte{version5, methodNoAuth}); err != nil {
		return Request{}, false
	}
	req, err := readRequest(r)
	if err != nil {
		if errors.Is(err, ErrAddressType) || errors.Is(err, ErrName) {
			writeReply(w, ReplyAddressNotSupported, netip.AddrPort{})
		}
		s.log.Debug("bad request", "err", err)
		return Request{}, false
	}
	if req.Command != CmdConnect && (req.Command != CmdUDPAssociate || s.cfg.Packets == nil) {
		writeReply(w, ReplyCommandNotSupported, netip.AddrPort{})
		s.log.Debug("unsupported command", "command", req.Command)
		return Request{}, false
	}
	return req, true
}

// halfCloser is a connection whose sending side closes alone, so that
// "no more data" can cross the proxy while answers still flow back.
type halfCloser interface {
	CloseWrite() error
}

// relay copies both ways until both directions have ended. fromClient
// holds the client's bytes (buffered past its request).
func relay(remote net.Conn, fromClient io.Reader, client net.Conn, up, down *atomic.Uint64) {
	var wg sync.WaitGroup
	pipe := func(dst net.Conn, src io.Reader, n *atomic.Uint64) {
		written, err := io.Copy(dst, src)
		n.Add(uint64(written))
		if hc, ok := dst.(halfCloser); ok && err == nil {
			hc.CloseWrite()
			return
		}
		// Without a half-close, or after an error, the other direction
		// has nothing left to wait for.
		remote.Close()
		client.Close()
	}
	wg.Go(func() { pipe(remote, fromClient, up) })
	pipe(client, remote, down)
	wg.Wait()
}

// replyFor maps a dial error to the reply code a client can act on.
func replyFor(err error) Reply {
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr), errors.Is(err, ErrNoDNS):
		return ReplyHostUnreachable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT), containsAny(err, "timed out"):
		return ReplyTTLExpired
	case errors.Is(err, syscall.ECONNREFUSED), containsAny(err, "refused"):
		return ReplyConnectionRefused
	case errors.Is(err, syscall.ENETUNREACH), containsAny(err, "network is unreachable"):
		return ReplyNetworkUnreachable
	case errors.Is(err, syscall.EHOSTUNREACH), containsAny(err, "host is unreachable", "no route"):
		return ReplyHostUnreachable
	case errors.Is(err, ErrNetwork):
		return ReplyNotAllowed
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ReplyTTLExpired
	}
	return ReplyGeneralFailure
}

// containsAny reports whether err's message has one of subs: the netstack
// reports its errors as text only.
func containsAny(err error, subs ...string) bool {
	msg := err.Error()
	for _, sub := range subs {
		if strings.Contains(msg, sub) {
			return true
		}
	}
	return false
}
