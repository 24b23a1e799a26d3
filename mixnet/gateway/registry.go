package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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
	// Store, if set, keeps the registrations across restarts of the
	// gateway. A gateway that forgets its clients leaves their tunnels
	// dead, since WireGuard has no way to tell a client its peer is
	// gone; one that remembers takes their next handshake, and a
	// transfer in flight resumes by itself.
	Store  RegistrationStore
	Logger *slog.Logger
	Now    func() time.Time
}

// RegistrationStore keeps a registry's registrations. The registry saves
// the whole list whenever it gains or loses one, and loads it once, when
// it starts.
type RegistrationStore interface {
	Load() ([]Registration, error)
	Save([]Registration) error
}

// Registration is one client's slot, as a RegistrationStore keeps it.
type Registration struct {
	PublicKey    [32]byte
	Addr4, Addr6 netip.Addr
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
	if err := r.restore(); err != nil {
		return nil, err
	}
	return r, nil
}

// restore gives back the stored registrations their addresses and their
// places on the WireGuard server. Each gets a fresh TTL: the server is
// new, so no client has a handshake with it yet. An unreadable store, or
// an entry that no longer fits the pools, loses only what it held: those
// clients register again when they next connect, and the gateway starts.
func (r *Registry) restore() error {
	if r.cfg.Store == nil {
		return nil
	}
	stored, err := r.cfg.Store.Load()
	if err != nil {
		r.log.Warn("registrations not restored", "err", err)
		return nil
	}
	now := r.cfg.Now()
	for _, s := range stored {
		if _, dup := r.peers[s.PublicKey]; dup || len(r.peers) >= r.cfg.MaxPeers || !r.pool.claim(s.Addr4, s.Addr6) {
			r.log.Warn("stored registration dropped: duplicate, over the limit or outside the pools", "v4", s.Addr4)
			continue
		}
		allowed := []netip.Prefix{netip.PrefixFrom(s.Addr4, 32), netip.PrefixFrom(s.Addr6, 128)}
		if err := r.cfg.Peers.AddPeer(s.PublicKey, allowed); err != nil {
			return fmt.Errorf("gateway: restore WireGuard peer: %w", err)
		}
		r.peers[s.PublicKey] = &registration{v4: s.Addr4, v6: s.Addr6, since: now}
	}
	if len(r.peers) > 0 {
		r.log.Info("registrations restored", "count", len(r.peers))
	}
	if len(r.peers) != len(stored) {
		r.save()
	}
	return nil
}

// save writes every registration to the store; the caller holds r.mu or
// owns r alone. A failure is logged, not returned: the client's tunnel
// works now, and only a restart before the next successful save loses
// its slot.
func (r *Registry) save() {
	if r.cfg.Store == nil {
		return
	}
	all := make([]Registration, 0, len(r.peers))
	for key, reg := range r.peers {
		all = append(all, Registration{PublicKey: key, Addr4: reg.v4, Addr6: reg.v6})
	}
	slices.SortFunc(all, func(a, b Registration) int { return a.Addr4.Compare(b.Addr4) })
	if err := r.cfg.Store.Save(all); err != nil {
		r.log.Error("saving registrations", "err", err)
	}
}

// claim takes a pair restored from a store out of the pool, if it is a
// pair the pool could have handed out (the same host number in both
// prefixes, neither the network, the gateway's own nor the broadcast
// address) and is free.
func (p *pool) claim(a4, a6 netip.Addr) bool {
	if !a4.Is4() || !p.v4.Contains(a4) || !p.v6.Contains(a6) {
		return false
	}
	b, base := a4.As4(), p.v4.Addr().As4()
	h := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) -
		(uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3]))
	if h < 2 || h > p.hosts || addHost(p.v6.Addr(), h) != a6 || p.used[a4] || p.used[a6] {
		return false
	}
	p.used[a4], p.used[a6] = true, true
	return true
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
		r.save()
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
	if removed > 0 {
		r.save()
	}
	return removed, errors.Join(errs...)
}

// Len is the number of registrations.
func (r *Registry) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.peers)
}

// FileStore is a RegistrationStore in one JSON file, replaced atomically
// on every save and readable by its owner alone: it says which keys use
// the gateway, and from which inner address.
type FileStore struct {
	Path string
}

// storedFile is FileStore's format.
type storedFile struct {
	Version       int           `json:"version"`
	Registrations []storedEntry `json:"registrations"`
}

type storedEntry struct {
	PublicKey []byte     `json:"public_key"`
	Addr4     netip.Addr `json:"addr4"`
	Addr6     netip.Addr `json:"addr6"`
}

// Load reads the file; a missing file holds no registrations.
func (s FileStore) Load() ([]Registration, error) {
	raw, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("gateway: read registrations: %w", err)
	}
	var f storedFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("gateway: registrations file %s: %w", s.Path, err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("gateway: registrations file %s has version %d, want 1", s.Path, f.Version)
	}
	out := make([]Registration, 0, len(f.Registrations))
	for _, r := range f.Registrations {
		if len(r.PublicKey) != 32 {
			return nil, fmt.Errorf("gateway: registrations file %s: a key of %d bytes", s.Path, len(r.PublicKey))
		}
		out = append(out, Registration{PublicKey: [32]byte(r.PublicKey), Addr4: r.Addr4, Addr6: r.Addr6})
	}
	return out, nil
}

// Save replaces the file with regs.
func (s FileStore) Save(regs []Registration) error {
	f := storedFile{Version: 1, Registrations: make([]storedEntry, len(regs))}
	for i, r := range regs {
		f.Registrations[i] = storedEntry{PublicKey: r.PublicKey[:], Addr4: r.Addr4, Addr6: r.Addr6}
	}
	raw, err := json.Marshal(f)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.Path), ".registrations-*")
	if err != nil {
		return fmt.Errorf("gateway: save registrations: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(raw)
	if err := errors.Join(werr, tmp.Sync(), tmp.Close()); err != nil {
		return fmt.Errorf("gateway: save registrations: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.Path); err != nil {
		return fmt.Errorf("gateway: save registrations: %w", err)
	}
	return nil
}

// MemoryStore is a RegistrationStore in memory, a test double that
// outlives the registries built on it as a file outlives a process.
type MemoryStore struct {
	mu    sync.Mutex
	regs  []Registration
	saves int
}

// Load returns what was saved last.
func (m *MemoryStore) Load() ([]Registration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.regs), nil
}

// Save keeps regs.
func (m *MemoryStore) Save(regs []Registration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.regs = slices.Clone(regs)
	m.saves++
	return nil
}

// Saves counts the saves so far.
func (m *MemoryStore) Saves() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.saves
}
