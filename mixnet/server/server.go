// Package server assembles one mixnet node from its parts: identity and
// link keys, the Sphinx key ring, the directory (published to and fetched
// from), the link listener, the mesh of outbound links, the packet
// pipeline and, for gateways, the entry's client links or the exit's
// session service. The operating system's part, the exit's packet device,
// comes from the caller.
package server

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/gateway"
	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/mixnet/mesh"
	"github.com/mixvpn/mixvpn/mixnet/node"
	"github.com/mixvpn/mixvpn/mixnet/replay"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// Config describes one node.
type Config struct {
	ID      string
	Role    directory.Role
	Layer   int
	Country string
	// Listen is the link listener's address; Advertise what the directory
	// tells others (default Listen).
	Listen, Advertise string
	// DataDir holds the node's keys (mode 0600).
	DataDir string
	// DirectoryURL and DirectoryKey name the authority and pin its key.
	DirectoryURL string
	DirectoryKey ed25519.PublicKey
	Epochs       directory.Epochs
	// PublishInterval and RefreshInterval pace descriptor uploads and
	// document fetches; defaults 30 s and 10 s.
	PublishInterval, RefreshInterval time.Duration
	// MetricsListen serves Prometheus metrics at /metrics if set.
	MetricsListen string
	// ExitDevice and the prefixes are required for the exit role.
	ExitDevice       gateway.PacketDevice
	Prefix4, Prefix6 netip.Prefix
	// WireGuard, if set, is published in the descriptor, and Registry
	// answers clients' registration requests (Fast mode).
	WireGuard *directory.WireGuard
	Registry  *gateway.Registry
	// DNS (exits only) are resolvers that the exit's clients reach through
	// it, published in the descriptor so that clients whose user named
	// none resolve through the exit and not through their local network.
	DNS []netip.Addr
	// Ready, if set, is called once the node listens and has published.
	Ready func()
	// OnDocument, if set, is called with every new verified directory
	// document the node fetches, after the node routes by it; an entry's
	// forward filter follows the exits with it. It runs on the directory
	// follower, so it must return quickly.
	OnDocument func(*directory.Document)
	Logger     *slog.Logger
}

// Node is a running node's handle, for tests and the local network.
type Node struct {
	Pipeline *node.Node
	Mesh     *mesh.Mesh
	Entry    *gateway.Entry
	Exit     *gateway.Exit
	Address  sphinx.Address
	LinkKey  link.KeyPair

	role     directory.Role
	registry *gateway.Registry
}

// LoadOrCreateIdentity reads the ed25519 identity from path or creates it
// with mode 0600.
func LoadOrCreateIdentity(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("server: key directory: %w", err)
		}
		enc := base64.StdEncoding.EncodeToString(key.Seed()) + "\n"
		if err := os.WriteFile(path, []byte(enc), 0o600); err != nil {
			return nil, fmt.Errorf("server: write identity: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("server: read identity: %w", err)
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("server: identity file %s is not a base64 ed25519 seed", path)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// keyCache serves the key ring's active keys to the pipeline without
// touching the disk per packet.
type keyCache struct {
	ring *directory.KeyRing
	keys atomic.Pointer[[]node.EpochKey]
}

func (k *keyCache) refresh() error {
	active, err := k.ring.Active()
	if err != nil {
		return err
	}
	keys := make([]node.EpochKey, len(active))
	for i, a := range active {
		keys[i] = node.EpochKey{Epoch: a.Epoch, Key: a.Key}
	}
	k.keys.Store(&keys)
	return nil
}

// UnwrapKeys returns the cached keys.
func (k *keyCache) UnwrapKeys() []node.EpochKey { return *k.keys.Load() }

// Run starts the node and serves until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	n, start, err := Build(cfg)
	if err != nil {
		return err
	}
	_ = n
	return start(ctx)
}

// Build assembles the node; the returned function runs it until ctx ends.
func Build(cfg Config) (*Node, func(context.Context) error, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("node", cfg.ID)
	if cfg.Advertise == "" {
		cfg.Advertise = cfg.Listen
	}
	// The directory would refuse the descriptor at every publication;
	// better to say so once, at start.
	if err := directory.CheckResolvers(cfg.Role, cfg.DNS); err != nil {
		return nil, nil, fmt.Errorf("server: %w", err)
	}
	if cfg.PublishInterval <= 0 {
		cfg.PublishInterval = 30 * time.Second
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 10 * time.Second
	}
	identity, err := LoadOrCreateIdentity(filepath.Join(cfg.DataDir, "identity.key"))
	if err != nil {
		return nil, nil, err
	}
	linkKey, err := link.LoadOrCreateKey(filepath.Join(cfg.DataDir, "link.key"))
	if err != nil {
		return nil, nil, err
	}
	keys := &keyCache{ring: &directory.KeyRing{Dir: filepath.Join(cfg.DataDir, "sphinx"), Epochs: cfg.Epochs}}
	if err := keys.refresh(); err != nil {
		return nil, nil, err
	}
	self := (&directory.Descriptor{IdentityKey: identity.Public().(ed25519.PublicKey)}).MixAddress()
	refresh := make(chan struct{}, 1)
	m := mesh.New(mesh.Config{Link: link.Config{Static: linkKey, Logger: log}, Self: self, Logger: log, OnUnknown: func() {
		select {
		case refresh <- struct{}{}:
		default:
		}
	}})

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "mixnode_directory_nodes", Help: "Nodes in the directory document this node routes by.",
	}, func() float64 {
		if d := m.Document(); d != nil {
			return float64(len(d.Nodes))
		}
		return 0
	}))
	n := &Node{Mesh: m, Address: self, LinkKey: linkKey, role: cfg.Role, registry: cfg.Registry}
	var handler node.Handler
	switch cfg.Role {
	case directory.RoleEntry:
		n.Entry = gateway.NewEntry(gateway.EntryConfig{Logger: log})
		handler = n.Entry
	case directory.RoleExit:
		ecfg := gateway.ExitConfig{Device: cfg.ExitDevice, Router: m, Prefix4: cfg.Prefix4, Prefix6: cfg.Prefix6, Logger: log}
		if cfg.Registry != nil {
			ecfg.Register = cfg.Registry.Handle
		}
		n.Exit, err = gateway.NewExit(ecfg)
		if err != nil {
			return nil, nil, err
		}
		handler = n.Exit
		registerExitMetrics(reg, n.Exit)
	case directory.RoleMix:
	default:
		return nil, nil, fmt.Errorf("server: unknown role %q", cfg.Role)
	}
	replays, err := replay.New(replay.Config{})
	if err != nil {
		return nil, nil, err
	}
	n.Pipeline, err = node.New(node.Config{
		Keys:       keys,
		Replay:     replays,
		Router:     m,
		Handler:    handler,
		Registerer: reg,
		Logger:     log,
	})
	if err != nil {
		return nil, nil, err
	}

	fetcher := &directory.Fetcher{URL: cfg.DirectoryURL, Key: cfg.DirectoryKey}
	publisher := &directory.PublisherConfig{
		URL:      cfg.DirectoryURL,
		Identity: identity,
		Interval: cfg.PublishInterval,
		Logger:   log,
		Describe: func() (*directory.Descriptor, error) {
			pub, err := keys.ring.Public()
			if err != nil {
				return nil, err
			}
			return &directory.Descriptor{
				ID: cfg.ID, Role: cfg.Role, Layer: cfg.Layer, Country: cfg.Country,
				Address: cfg.Advertise, LinkKey: linkKey.Public[:], SphinxKeys: pub, WireGuard: cfg.WireGuard,
				DNS: cfg.DNS,
			}, nil
		},
	}

	run := func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return fmt.Errorf("server: listen: %w", err)
		}
		var wg sync.WaitGroup
		errc := make(chan error, 8)
		goRun := func(name string, f func(context.Context) error) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := f(ctx); err != nil && ctx.Err() == nil {
					errc <- fmt.Errorf("%s: %w", name, err)
				}
			}()
		}
		goRun("mesh", m.Run)
		goRun("pipeline", n.Pipeline.Run)
		if n.Exit != nil {
			goRun("exit", n.Exit.Run)
		}
		goRun("links", func(ctx context.Context) error {
			return link.Serve(ctx, ln, link.ListenerConfig{
				Config:    link.Config{Static: linkKey, Logger: log, Handler: n.onFrame, MaxPace: maxPace(cfg.Role)},
				Authorize: n.authorize(cfg.Role),
				OnConn:    n.onConn,
			})
		})
		if cfg.Registry != nil {
			goRun("registry", func(ctx context.Context) error {
				for {
					select {
					case <-ctx.Done():
						return nil
					case <-time.After(30 * time.Second):
					}
					if n, err := cfg.Registry.Expire(); err != nil {
						log.Warn("registration expiry", "err", err)
					} else if n > 0 {
						log.Info("registrations expired", "count", n)
					}
				}
			})
		}
		if cfg.MetricsListen != "" {
			goRun("metrics", func(ctx context.Context) error { return serveMetrics(ctx, cfg.MetricsListen, reg) })
		}
		// Publish first, then keep the directory and keys fresh.
		if err := publisher.Publish(ctx); err != nil {
			log.Warn("first publish failed; retrying", "err", err)
		}
		goRun("publisher", publisher.Run)
		goRun("directory", func(ctx context.Context) error {
			return follow(ctx, fetcher, m, keys, cfg.RefreshInterval, refresh, cfg.OnDocument, log)
		})
		log.Info("node running", "role", cfg.Role, "layer", cfg.Layer, "listen", cfg.Listen)
		if cfg.Ready != nil {
			cfg.Ready()
		}
		var runErr error
		select {
		case <-ctx.Done():
		case runErr = <-errc:
			cancel()
		}
		wg.Wait()
		return runErr
	}
	return n, run, nil
}

// follow fetches the document and refreshes keys until ctx ends; it
// retries quickly until the first document arrives, and fetches early when
// kicked (a packet named a node we do not know yet), at most once a second.
// onDoc, if not nil, sees each new document; the fetcher's fallback to its
// last good one is not new.
func follow(ctx context.Context, f *directory.Fetcher, m *mesh.Mesh, keys *keyCache, every time.Duration, kick <-chan struct{}, onDoc func(*directory.Document), log *slog.Logger) error {
	last := time.Time{}
	var lastDoc *directory.Document
	for {
		wait := every
		if doc, err := f.Fetch(ctx); err != nil {
			log.Warn("directory fetch failed", "err", err)
			wait = min(every, 500*time.Millisecond)
		} else {
			m.SetDocument(doc)
			if onDoc != nil && doc != lastDoc {
				onDoc(doc)
			}
			lastDoc = doc
		}
		if err := keys.refresh(); err != nil {
			log.Error("key refresh failed", "err", err)
		}
		if m.Document() == nil {
			wait = min(wait, 200*time.Millisecond)
		}
		last = time.Now()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		case <-kick:
			if d := time.Until(last.Add(time.Second)); d > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(d):
				}
			}
		}
	}
}

// authorize admits nodes in the directory everywhere, and anyone else only
// at an entry gateway, as a client. Clients reach an exit only through
// the mixnet, registrations included, so an exit never learns a client's
// network address.
func (n *Node) authorize(role directory.Role) func([32]byte) error {
	return func(peer [32]byte) error {
		if n.Mesh.NodeByLinkKey(peer) != nil || role == directory.RoleEntry {
			return nil
		}
		return errors.New("not a node of the current directory")
	}
}

// onFrame takes frames from accepted links. Packets from nodes, and from
// clients at an entry, go into the pipeline; a client's packets at an exit
// are dropped (clients reach exits only through the mixnet). Control frames
// are registration requests, answered at an entry.
func (n *Node) onFrame(c *link.Conn, t link.FrameType, body []byte) {
	switch t {
	case link.FramePacket:
		if n.role == directory.RoleEntry || n.Mesh.NodeByLinkKey(c.PeerKey()) != nil {
			n.Pipeline.Receive(body)
		}
	case link.FrameControl:
		if n.registry != nil && n.role == directory.RoleEntry {
			c.SendControl(n.registry.Handle(body))
		}
	}
}

// MaxClientPace is the fastest steady rate, in frames per second, an entry
// sends to one client at when the client asks: about 39 Mbit/s of frames,
// so that no client can make its entry send much more than it could use.
const MaxClientPace = 2000

// maxPace is the link's MaxPace for a role: only entries pace, for their
// clients.
func maxPace(role directory.Role) float64 {
	if role == directory.RoleEntry {
		return MaxClientPace
	}
	return 0
}

// onConn registers a client's link at an entry, so that deliveries for
// the client go over it.
func (n *Node) onConn(c *link.Conn) {
	isNode := n.Mesh.NodeByLinkKey(c.PeerKey()) != nil
	if !isNode && n.Entry != nil {
		cl := &clientLink{c: c}
		detach := n.Entry.Attach(gateway.ClientAddress(c.PeerKey()), cl)
		go func() {
			<-c.Done()
			detach()
		}()
	}
}

// clientLink sends deliveries to a client over its link.
type clientLink struct {
	c *link.Conn
}

func (l *clientLink) Deliver(id sphinx.MessageID, block []byte) error {
	var body [link.BodySize]byte
	if err := gateway.EncodeDelivery(body[:], id, block); err != nil {
		return err
	}
	return l.c.Send(body[:])
}

// registerExitMetrics exports the exit's counters; NoSURB in particular
// tells an operator that clients' downloads wait for reply blocks.
func registerExitMetrics(reg prometheus.Registerer, e *gateway.Exit) {
	counter := func(name, help string, get func(gateway.ExitStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "mixnode_exit_" + name, Help: help},
			func() float64 { return float64(get(e.Stats())) })
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mixnode_exit_sessions", Help: "Live anonymous sessions."},
			func() float64 { return float64(e.Stats().Sessions) }),
		counter("packets_out_total", "IP packets sent to the internet.", func(s gateway.ExitStats) uint64 { return s.PacketsOut }),
		counter("packets_in_total", "IP packets from the internet for a session.", func(s gateway.ExitStats) uint64 { return s.PacketsIn }),
		counter("replies_total", "Reply packets sent on SURBs.", func(s gateway.ExitStats) uint64 { return s.RepliesSent }),
		counter("dropped_total", "IP packets dropped (queue full, no session, device errors).", func(s gateway.ExitStats) uint64 { return s.Dropped }),
		counter("spoofed_total", "IP packets refused for a source not the session's.", func(s gateway.ExitStats) uint64 { return s.Spoofed }),
		counter("no_surb_total", "Times a due reply waited because the session had no SURB.", func(s gateway.ExitStats) uint64 { return s.NoSURB }),
	)
}

func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
