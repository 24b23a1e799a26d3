// Package mesh connects a node to the rest of the network: it follows the
// directory document, keeps one link to each node it sends to (dialled on
// first use, redialled when it drops) and routes packets by Sphinx
// address. It is the Router that the node pipeline and the exit gateway
// send through.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// ErrUnknownNode is returned for an address not in the current document.
var ErrUnknownNode = errors.New("mesh: next hop not in the directory")

// Config configures a Mesh.
type Config struct {
	// Link is used for every outbound link (its Static key identifies us).
	Link link.Config
	// Self is this node's address; packets to it are refused (a loop).
	Self sphinx.Address
	// OnUnknown, if set, is told when a packet names a node the current
	// document lacks: the document may be older than the sender's.
	OnUnknown func()
	Logger    *slog.Logger
}

// Mesh routes packets to nodes of the current document.
type Mesh struct {
	cfg Config
	log *slog.Logger

	doc   atomic.Pointer[view]
	mu    sync.Mutex
	peers map[sphinx.Address]*peer
	ctx   context.Context
}

type view struct {
	doc    *directory.Document
	byAddr map[sphinx.Address]*directory.Descriptor
	byLink map[[32]byte]*directory.Descriptor
}

type peer struct {
	p      *link.Peer
	addr   string
	key    [32]byte
	cancel context.CancelFunc
}

// New builds a mesh. Run starts it; SetDocument feeds it topology.
func New(cfg Config) *Mesh {
	m := &Mesh{cfg: cfg, log: cfg.Logger, peers: make(map[sphinx.Address]*peer)}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	return m
}

// SetDocument installs a newly verified document. Links to nodes that left
// or changed address or key are closed.
func (m *Mesh) SetDocument(doc *directory.Document) {
	v := &view{doc: doc, byAddr: make(map[sphinx.Address]*directory.Descriptor), byLink: make(map[[32]byte]*directory.Descriptor)}
	for i := range doc.Nodes {
		d := &doc.Nodes[i]
		v.byAddr[d.MixAddress()] = d
		v.byLink[d.LinkPublicKey()] = d
	}
	m.doc.Store(v)
	m.mu.Lock()
	defer m.mu.Unlock()
	for addr, p := range m.peers {
		d := v.byAddr[addr]
		if d == nil || d.Address != p.addr || d.LinkPublicKey() != p.key {
			p.cancel()
			delete(m.peers, addr)
		}
	}
}

// Document returns the current document, or nil before the first.
func (m *Mesh) Document() *directory.Document {
	if v := m.doc.Load(); v != nil {
		return v.doc
	}
	return nil
}

// NodeByLinkKey finds the node whose link key is key.
func (m *Mesh) NodeByLinkKey(key [32]byte) *directory.Descriptor {
	if v := m.doc.Load(); v != nil {
		return v.byLink[key]
	}
	return nil
}

// Run lets links be made until ctx ends, then closes them all.
func (m *Mesh) Run(ctx context.Context) error {
	m.mu.Lock()
	m.ctx = ctx
	m.mu.Unlock()
	<-ctx.Done()
	m.mu.Lock()
	for addr, p := range m.peers {
		p.cancel()
		delete(m.peers, addr)
	}
	m.mu.Unlock()
	return nil
}

// Route sends pkt to the node with address next. It never blocks.
func (m *Mesh) Route(next sphinx.Address, pkt []byte) error {
	p, err := m.peer(next)
	if err != nil {
		return err
	}
	return p.p.Send(pkt)
}

func (m *Mesh) peer(addr sphinx.Address) (*peer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p := m.peers[addr]; p != nil {
		return p, nil
	}
	if addr == m.cfg.Self {
		return nil, fmt.Errorf("mesh: refusing to route to ourselves")
	}
	v := m.doc.Load()
	if v == nil || m.ctx == nil {
		return nil, fmt.Errorf("%w: no document yet", ErrUnknownNode)
	}
	d := v.byAddr[addr]
	if d == nil {
		if m.cfg.OnUnknown != nil {
			m.cfg.OnUnknown()
		}
		return nil, ErrUnknownNode
	}
	ctx, cancel := context.WithCancel(m.ctx)
	lp := link.NewPeer(link.PeerConfig{Config: m.cfg.Link, Addr: d.Address, Key: d.LinkPublicKey()})
	p := &peer{p: lp, addr: d.Address, key: d.LinkPublicKey(), cancel: cancel}
	m.peers[addr] = p
	m.log.Debug("link to node", "id", d.ID, "addr", d.Address)
	go lp.Run(ctx)
	return p, nil
}
