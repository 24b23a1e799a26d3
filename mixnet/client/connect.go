package client

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/gateway"
	"github.com/mixvpn/mixvpn/mixnet/link"
)

// DefaultRefresh is how often Connect fetches the directory again.
const DefaultRefresh = 20 * time.Second

// ConnectConfig says how to join a network.
type ConnectConfig struct {
	// Client tunes the client; Connect fills in Uplink, Topology,
	// Address and Exit.
	Client Config
	// DirectoryURL is the directory authority; DirectoryKey is its pinned
	// ed25519 key: a document it did not sign is refused.
	DirectoryURL string
	DirectoryKey ed25519.PublicKey
	// Document, if set, is a verified document to start from instead of
	// fetching one; later ones are fetched.
	Document *directory.Document
	// Entry and Exit choose the gateways: a node ID, a country code, or
	// empty for any.
	Entry, Exit string
	// LinkKey is the client's link identity; zero makes a fresh one, so
	// that connections cannot be linked to each other.
	LinkKey link.KeyPair
	// Refresh is how often the directory is fetched again; default
	// DefaultRefresh.
	Refresh time.Duration
	// HTTPClient fetches the directory; nil uses http.DefaultClient.
	HTTPClient *http.Client
	// DialLink, if set, opens the TCP connection to the entry (see
	// link.PeerConfig.Dial): the OS code that shapes the link's segments
	// and ACKs lives with the caller, not here.
	DialLink func(ctx context.Context, addr string) (net.Conn, error)
	Logger   *slog.Logger
}

// Conn is a client joined to a network: it keeps its link to the entry
// gateway up and its topology current until Close.
type Conn struct {
	*Client
	entry  string
	exit   string
	peer   *link.Peer
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Connect fetches and verifies the directory, links to an entry gateway and
// starts the client's packet stream. It returns once the link is up; ctx
// bounds only that, Close ends the connection.
func Connect(ctx context.Context, cfg ConnectConfig) (*Conn, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	f := &directory.Fetcher{URL: cfg.DirectoryURL, Key: cfg.DirectoryKey, Client: cfg.HTTPClient}
	doc := cfg.Document
	if doc == nil {
		var err error
		if doc, err = f.Fetch(ctx); err != nil {
			return nil, fmt.Errorf("client: directory: %w", err)
		}
	}
	entry, err := doc.PickGateway(directory.RoleEntry, cfg.Entry, mrand.IntN)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	exit, err := doc.PickGateway(directory.RoleExit, cfg.Exit, mrand.IntN)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	topo, err := TopologyFromDocument(doc, entry.ID)
	if err != nil {
		return nil, err
	}
	key := cfg.LinkKey
	if key.Public == ([32]byte{}) {
		if key, err = link.GenerateKey(); err != nil {
			return nil, fmt.Errorf("client: link key: %w", err)
		}
	}
	c := &Conn{entry: entry.ID, exit: exit.ID}
	peer := link.NewPeer(link.PeerConfig{
		Config: link.Config{Static: key, Logger: log, Handler: func(_ *link.Conn, t link.FrameType, body []byte) {
			if t != link.FramePacket {
				return
			}
			id, block, err := gateway.ParseDelivery(body)
			if err != nil {
				log.Debug("bad delivery from entry", "err", err)
				return
			}
			c.HandleDelivery(id, block)
		}},
		Addr: entry.Address,
		Key:  entry.LinkPublicKey(),
		Dial: cfg.DialLink,
		OnUp: func(lc *link.Conn) {
			if down := downRate(cfg.Client); down > 0 {
				if err := lc.RequestPace(down); err != nil {
					log.Warn("asking the entry for a steady rate", "err", err)
				}
			}
		},
	})
	ccfg := cfg.Client
	ccfg.Uplink, ccfg.Topology, ccfg.Address, ccfg.Exit = peer, topo, gateway.ClientAddress(key.Public), exit.ID
	if ccfg.Logger == nil {
		ccfg.Logger = log
	}
	if c.Client, err = New(ccfg); err != nil {
		return nil, err
	}
	c.peer = peer
	up := peer.Up()
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Go(func() { peer.Run(runCtx) })
	select {
	case <-up:
	case <-ctx.Done():
		cancel()
		c.wg.Wait()
		return nil, fmt.Errorf("client: link to entry %s at %s: %w", entry.ID, entry.Address, ctx.Err())
	}
	c.wg.Go(func() { c.Run(runCtx) })
	c.wg.Go(func() { c.follow(runCtx, f, cfg.Refresh, log) })
	log.Info("joined the mixnet", "entry", entry.ID, "exit", exit.ID, "epoch", doc.Epoch)
	return c, nil
}

// follow keeps the topology at the directory's: new key epochs, mixes that
// left or joined.
func (c *Conn) follow(ctx context.Context, f *directory.Fetcher, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		doc, err := f.Fetch(ctx)
		if err != nil {
			log.Warn("directory refresh failed; keeping the current topology", "err", err)
			continue
		}
		topo, err := TopologyFromDocument(doc, c.entry)
		if err == nil {
			err = c.SetTopology(topo)
		}
		if err != nil {
			log.Warn("directory has no usable topology; keeping the current one", "err", err)
		}
	}
}

// Entry and Exit are the IDs of the gateways in use.
func (c *Conn) Entry() string { return c.entry }

// Exit is the ID of the exit gateway sessions use.
func (c *Conn) Exit() string { return c.exit }

// LinkUp reports whether the link to the entry is up now.
func (c *Conn) LinkUp() bool { return c.peer.Conn() != nil }

// Close stops the packet stream and drops the link.
func (c *Conn) Close() error {
	if c.cancel == nil {
		return errors.New("client: connection not started")
	}
	c.cancel()
	c.wg.Wait()
	return nil
}

// downRate is Config.DownRate with the defaults New would fill in.
func downRate(cfg Config) float64 {
	if cfg.DownRate != 0 {
		return cfg.DownRate
	}
	rate, loops := cmp.Or(cfg.Rate, DefaultRate), cmp.Or(cfg.LoopRate, DefaultLoopRate)
	return DownRatePerRate*rate + loops
}
