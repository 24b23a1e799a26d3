package client

import (
	"crypto/ecdh"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/schedule"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// Node is one mixnet node as a path needs it.
type Node struct {
	// ID is the node's directory identifier.
	ID string
	// Address names the node in Sphinx routing information.
	Address sphinx.Address
	// Key is the node's Sphinx key for the current key epoch.
	Key *ecdh.PublicKey
}

// Topology is what the client routes over: its entry gateway, the nodes of
// each of the three mix layers and the exit gateways.
type Topology struct {
	Entry  Node
	Layers [directory.Layers][]Node
	Exits  []Node
}

func (t *Topology) validate() error {
	if t.Entry.Key == nil {
		return errors.New("client: topology has no entry key")
	}
	for i, l := range t.Layers {
		if len(l) == 0 {
			return fmt.Errorf("client: topology has no mix in layer %d", i+1)
		}
	}
	if len(t.Exits) == 0 {
		return errors.New("client: topology has no exit")
	}
	return nil
}

// exit finds an exit by id.
func (t *Topology) exit(id string) (Node, bool) {
	for _, n := range t.Exits {
		if n.ID == id {
			return n, true
		}
	}
	return Node{}, false
}

// TopologyFromDocument takes the entry entryID, every mix and every exit
// of doc with their Sphinx keys for the document's epoch. Nodes without a
// key for that epoch are left out; a layer left empty is an error.
func TopologyFromDocument(doc *directory.Document, entryID string) (Topology, error) {
	var t Topology
	node := func(d *directory.Descriptor) (Node, error) {
		k, err := d.SphinxKey(doc.Epoch)
		if err != nil {
			return Node{}, fmt.Errorf("client: node %s: %w", d.ID, err)
		}
		return Node{ID: d.ID, Address: d.MixAddress(), Key: k}, nil
	}
	e := doc.ByID(entryID)
	if e == nil || e.Role != directory.RoleEntry {
		return t, fmt.Errorf("client: %q is not an entry gateway in epoch %d", entryID, doc.Epoch)
	}
	var err error
	if t.Entry, err = node(e); err != nil {
		return t, err
	}
	for l := range t.Layers {
		for _, d := range doc.NodesOf(directory.RoleMix, l+1) {
			if n, err := node(d); err == nil {
				t.Layers[l] = append(t.Layers[l], n)
			}
		}
	}
	for _, d := range doc.NodesOf(directory.RoleExit, 0) {
		if n, err := node(d); err == nil {
			t.Exits = append(t.Exits, n)
		}
	}
	return t, t.validate()
}

// forwardPath is entry (no delay), one random mix per layer with
// exponential delays, and exit. Mixes in avoid are skipped while their
// layer has another.
func (t *Topology) forwardPath(rng *rand.Rand, mean time.Duration, exit Node, avoid map[string]bool) []sphinx.Hop {
	path := make([]sphinx.Hop, 0, directory.Layers+2)
	path = append(path, sphinx.Hop{Address: t.Entry.Address, Key: t.Entry.Key})
	path, _ = t.appendMixes(path, rng, mean, avoid, "")
	return append(path, sphinx.Hop{Address: exit.Address, Key: exit.Key})
}

// replyPath is one random mix per layer and then the entry, which delivers
// to the client; it also returns the mixes chosen. A non-empty via is
// taken in its layer even if avoided: that is how a loop probes a suspect
// mix.
func (t *Topology) replyPath(rng *rand.Rand, mean time.Duration, avoid map[string]bool, via string) ([]sphinx.Hop, [directory.Layers]string) {
	path := make([]sphinx.Hop, 0, directory.Layers+2)
	path, ids := t.appendMixes(path, rng, mean, avoid, via)
	return append(path, sphinx.Hop{Address: t.Entry.Address, Key: t.Entry.Key}), ids
}

func (t *Topology) appendMixes(path []sphinx.Hop, rng *rand.Rand, mean time.Duration, avoid map[string]bool, via string) ([]sphinx.Hop, [directory.Layers]string) {
	var ids [directory.Layers]string
	for l, layer := range t.Layers {
		n, ok := nodeByID(layer, via)
		if !ok {
			n = pickNode(layer, rng, avoid)
		}
		ids[l] = n.ID
		path = append(path, sphinx.Hop{Address: n.Address, Key: n.Key, Delay: schedule.ExpDelay(rng, mean)})
	}
	return path, ids
}

// nodeByID finds id in layer; an empty id is in none.
func nodeByID(layer []Node, id string) (Node, bool) {
	if id == "" {
		return Node{}, false
	}
	for _, n := range layer {
		if n.ID == id {
			return n, true
		}
	}
	return Node{}, false
}

// pickNode picks a random node of layer outside avoid, or any node of it if
// all are avoided: a path through a suspect mix beats no path.
func pickNode(layer []Node, rng *rand.Rand, avoid map[string]bool) Node {
	if len(avoid) > 0 {
		ok := 0
		for _, n := range layer {
			if !avoid[n.ID] {
				ok++
			}
		}
		if ok > 0 {
			k := rng.IntN(ok)
			for _, n := range layer {
				if avoid[n.ID] {
					continue
				}
				if k == 0 {
					return n
				}
				k--
			}
		}
	}
	return layer[rng.IntN(len(layer))]
}

// hasMix reports whether id is a mix of t.
func (t *Topology) hasMix(id string) bool {
	for _, l := range t.Layers {
		if _, ok := nodeByID(l, id); ok {
			return true
		}
	}
	return false
}

// fingerprint identifies a topology's nodes and keys, so an unchanged
// directory does not throw away prepared packets.
func (t *Topology) fingerprint() string {
	var b strings.Builder
	add := func(n Node) {
		b.WriteString(n.ID)
		if n.Key != nil {
			b.Write(n.Key.Bytes())
		}
		b.WriteByte(0)
	}
	add(t.Entry)
	for _, l := range t.Layers {
		for _, n := range l {
			add(n)
		}
		b.WriteByte(1)
	}
	for _, n := range t.Exits {
		add(n)
	}
	return b.String()
}

// newRand returns a generator seeded from crypto/rand, for one goroutine's
// delays and node choices.
func newRand() *rand.Rand {
	var seed [32]byte
	cryptoRead(seed[:])
	return rand.New(rand.NewChaCha8(seed))
}
