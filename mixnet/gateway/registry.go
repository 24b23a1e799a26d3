package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/register"
)

// WireGuardPeers is the gateway's WireGuard server as the registry sees it.
// The real one configures a device through wgctrl; tests use a map.
type WireGuardPeers interface {
	AddPeer(key [32]byte, allowed []netip.Prefix) error
	RemovePeer(key [32]byte) error
	// LastHandshake is the zero time if the peer never completed one.
	LastHandshake(key [32]byte) (time.Time, error)
}

// RegistryConfig configures a Registry.
type RegistryConfig struct {
	Peers WireGuardPeers
	// Prefix4 and Prefix6 are the clients' inner address pools.
	Prefix4, Prefix6 netip.Prefix
	// ServerKey and Endpoint are what clients configure as their peer.
	ServerKey [32]byte
	Endpoint  netip.AddrPort
	// TTL removes a registration with no handshake for this long;
	// default 3 minutes.
	TTL time.Duration
	// MaxPeers bounds registrations; default 4096.
	MaxPeers int
	// Authorize checks a request's credential; nil accepts all (the
	// local network; paid access plugs in here).
	Authorize func(credential []byte) error
	Logger    *slog.Logger
	Now       func() time.Time
}

// Registry hands out WireGuard peer slots on a gateway.
type Registry struct {
	cfg RegistryConfig
	log *slog.Logger

	mu    sync.Mutex
	pool  *pool
	peers map[[32]byte]*registration
}

type registration struct {
	v4, v6 netip.Addr
	since  time.Time
}

// NewRegistry builds a registry.
func NewRegistry(cfg RegistryConfig) (*Registry, error) {
	if cfg.Peers == nil || !cfg.Prefix4.Addr().Is4() || !cfg.Prefix6.Addr().Is6() || !cfg.Endpoint.IsValid() {
		return nil, errors.New("gateway: registry needs peers, an IPv4 and an IPv6 pool and an endpoint")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = 3 * time.Minute
	}
	if cfg.MaxPeers <= 0 {
		cfg.MaxPeers = 4096
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Registry{cfg: cfg, log: cfg.Logger, pool: newPool(cfg.Prefix4, cfg.Prefix6), peers: make(map[[32]byte]*registration)}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r, nil
}

// Handle answers one registration request (a control message). It always
// returns a response; refusals carry their reason.
func (r *Registry) Handle(raw []byte) []byte {
	resp := r.handle(raw)
	resp.Version = register.Version
	b, err := register.Marshal(resp)
	if err != nil {
		b, _ = register.Marshal(register.Response{Version: register.Version, Error: "internal error"})
	}
	return b
}

func (r *Registry) handle(raw []byte) register.Response {
	req, err := register.ParseRequest(raw)
	if err != nil {
		return register.Response{Error: err.Error()}
	}
	if r.cfg.Authorize != nil {
		if err := r.cfg.Authorize(req.Credential); err != nil {
			return register.Response{Error: "not authorized: " + err.Error()}
		}
	}
	key := [32]byte(req.PublicKey)
	r.mu.Lock()
	defer r.mu.Unlock()
	reg := r.peers[key]
	if reg == nil {
		if len(r.peers) >= r.cfg.MaxPeers {
			return register.Response{Error: "gateway full"}
		}
		v4, v6, err := r.pool.take()
		if err != nil {
			return register.Response{Error: err.Error()}
		}
		allowed := []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)}
		if err := r.cfg.Peers.AddPeer(key, allowed); err != nil {
			r.pool.give(v4, v6)
			r.log.Error("add WireGuard peer", "err", err)
			return register.Response{Error: "cannot add peer"}
		}
		reg = &registration{v4: v4, v6: v6}
		r.peers[key] = reg
		r.log.Info("registered", "v4", v4)
	}
	reg.since = r.cfg.Now()
	return register.Response{
		Addr4: reg.v4, Addr6: reg.v6, ServerKey: r.cfg.ServerKey[:],
		Endpoint: r.cfg.Endpoint.String(), ExpiresIn: int(r.cfg.TTL / time.Second),
	}
}

// Expire removes registrations whose last handshake (or, if none, the
// registration itself) is older than TTL. It returns how many it removed.
func (r *Registry) Expire() (int, error) {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	removed := 0
	var errs []error
	for key, reg := range r.peers {
		last, err := r.cfg.Peers.LastHandshake(key)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if last.Before(reg.since) {
			last = reg.since
		}
		if now.Sub(last) <= r.cfg.TTL {
			continue
		}
		if err := r.cfg.Peers.RemovePeer(key); err != nil {
			errs = append(errs, fmt.Errorf("gateway: remove peer: %w", err))
			continue
		}
		r.pool.give(reg.v4, reg.v6)
		delete(r.peers, key)
		removed++
	}
	return removed, errors.Join(errs...)
}

// Len is the number of registrations.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.peers)
}
