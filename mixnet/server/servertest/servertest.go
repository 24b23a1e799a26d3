// Package servertest runs a whole mixnet in process on loopback for tests:
// a directory authority, an entry, mix layers and an exit whose "internet"
// reflects every IP packet back to its sender.
package servertest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/gateway"
	"github.com/mixvpn/mixvpn/mixnet/server"
)

// Options shape the network. Zero values take the defaults.
type Options struct {
	// MixesPerLayer is how many mixes each of the three layers has;
	// default 1.
	MixesPerLayer int
	// Epoch is the key epoch's length; default an hour.
	Epoch time.Duration
	// Echo makes the exit's device answer every IP packet by swapping its
	// addresses and ports; otherwise packets go to Network.Outbound.
	Echo bool
	// Peers, if set, gives the entry and the exit WireGuard registries
	// that add peers to what it returns for the gateway's ID.
	Peers func(id string) gateway.WireGuardPeers
	// DescriptorTTL is how long the directory lists a node that stopped
	// publishing (nodes publish every second); default 2 minutes.
	DescriptorTTL time.Duration
	// ExitDNS are the resolvers the exit advertises; none by default.
	ExitDNS []netip.Addr
}

// Network is a running test network.
type Network struct {
	// DirURL and AuthKey name the directory and its pinned key.
	DirURL  string
	AuthKey ed25519.PublicKey
	// Nodes by ID: "entry", "mix1a"…, "exit".
	Nodes map[string]*server.Node
	// Outbound receives what the exit writes to its device, without Echo.
	Outbound chan []byte

	stops   map[string]context.CancelFunc
	mu      sync.Mutex
	cleanup []func()
	wg      sync.WaitGroup
	errs    chan error
}

// FreeAddr returns a free TCP address on loopback.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// Start runs a network until the test ends; see New.
func Start(t testing.TB, o Options) *Network {
	t.Helper()
	n, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// New starts a network and returns once every node sees the whole
// document. Close stops it.
func New(o Options) (_ *Network, err error) {
	if o.MixesPerLayer <= 0 {
		o.MixesPerLayer = 1
	}
	if o.Epoch <= 0 {
		o.Epoch = time.Hour
	}
	epochs := directory.Epochs{Genesis: time.Now().Add(-time.Minute), Length: o.Epoch}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	auth, err := directory.NewAuthority(directory.AuthorityConfig{Key: priv, Epochs: epochs, DescriptorTTL: o.DescriptorTTL})
	if err != nil {
		return nil, err
	}
	srv := httptest.NewServer(auth.Handler())
	n := &Network{DirURL: srv.URL, AuthKey: pub, Nodes: map[string]*server.Node{}, Outbound: make(chan []byte, 1024),
		stops: map[string]context.CancelFunc{}, errs: make(chan error, 64)}
	n.cleanup = append(n.cleanup, srv.Close)
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	type spec struct {
		id    string
		role  directory.Role
		layer int
	}
	specs := []spec{{"entry", directory.RoleEntry, 0}}
	for l := 1; l <= directory.Layers; l++ {
		for m := range o.MixesPerLayer {
			specs = append(specs, spec{fmt.Sprintf("mix%d%c", l, 'a'+m), directory.RoleMix, l})
		}
	}
	specs = append(specs, spec{"exit", directory.RoleExit, 0})
	for _, s := range specs {
		addr, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "servertest-"+s.id)
		if err != nil {
			return nil, err
		}
		n.cleanup = append(n.cleanup, func() { os.RemoveAll(dir) })
		cfg := server.Config{
			ID: s.id, Role: s.role, Layer: s.layer, Listen: addr, DataDir: dir,
			DirectoryURL: srv.URL, DirectoryKey: pub, Epochs: epochs,
			PublishInterval: time.Second, RefreshInterval: 200 * time.Millisecond, Logger: log.With("node", s.id),
		}
		if o.Peers != nil && s.role != directory.RoleMix {
			reg, err := gateway.NewRegistry(gateway.RegistryConfig{Peers: o.Peers(s.id),
				Prefix4: netip.MustParsePrefix("10.70.0.0/24"), Prefix6: netip.MustParsePrefix("fd00:70::/64"),
				ServerKey: [32]byte(bytes.Repeat([]byte{byte(len(s.id))}, 32)), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(51820+len(s.id)))})
			if err != nil {
				return nil, err
			}
			cfg.Registry = reg
			cfg.WireGuard = &directory.WireGuard{PublicKey: bytes.Repeat([]byte{byte(len(s.id))}, 32), Endpoint: fmt.Sprintf("127.0.0.1:%d", 51820+len(s.id))}
		}
		ctx, cancel := context.WithCancel(context.Background())
		if s.role == directory.RoleExit {
			dev := tuntest.NewChannelTUN()
			n.wg.Go(func() { n.internet(ctx, dev, o.Echo) })
			cfg.ExitDevice = dev.TUN()
			cfg.Prefix4 = netip.MustParsePrefix("100.64.0.0/16")
			cfg.Prefix6 = netip.MustParsePrefix("fd00:64::/64")
			cfg.DNS = o.ExitDNS
		}
		n.mu.Lock()
		n.stops[s.id] = cancel
		n.mu.Unlock()
		node, run, err := server.Build(cfg)
		if err != nil {
			return nil, fmt.Errorf("servertest: %s: %w", s.id, err)
		}
		n.Nodes[s.id] = node
		n.wg.Go(func() {
			if err := run(ctx); err != nil && ctx.Err() == nil {
				select {
				case n.errs <- fmt.Errorf("servertest: %s: %w", s.id, err):
				default:
				}
			}
		})
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, node := range n.Nodes {
		for {
			if d := node.Mesh.Document(); d != nil && len(d.Nodes) == len(specs) {
				break
			}
			if time.Now().After(deadline) {
				return nil, errors.New("servertest: nodes never saw the full document")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return n, nil
}

// Close stops every node and reports the first error a node ended with.
func (n *Network) Close() error {
	n.mu.Lock()
	for _, stop := range n.stops {
		stop()
	}
	n.stops = map[string]context.CancelFunc{}
	n.mu.Unlock()
	n.wg.Wait()
	for _, f := range n.cleanup {
		f()
	}
	select {
	case err := <-n.errs:
		return err
	default:
		return nil
	}
}

// Stop kills one node, as a crash would: its links drop and it stops
// publishing, so it leaves the document when its descriptor expires.
func (n *Network) Stop(id string) {
	n.mu.Lock()
	stop := n.stops[id]
	delete(n.stops, id)
	n.mu.Unlock()
	if stop != nil {
		stop()
	}
}

func (n *Network) internet(ctx context.Context, dev *tuntest.ChannelTUN, echo bool) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-dev.Inbound:
			if !echo {
				select {
				case n.Outbound <- p:
				default:
				}
				continue
			}
			if Reflect(p) {
				select {
				case dev.Outbound <- p:
				case <-ctx.Done():
					return
				}
			}
		}
	}
}

// Reflect turns an IPv4 or IPv6 packet into its own answer in place by
// swapping source and destination addresses and, for TCP and UDP, ports.
// Swapping keeps every checksum valid. It reports false for anything else.
func Reflect(p []byte) bool {
	var a, b, l4 int
	var proto byte
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		ihl := int(p[0]&0xf) * 4
		a, b, l4, proto = 12, 16, ihl, p[9]
		for i := range 4 {
			p[a+i], p[b+i] = p[b+i], p[a+i]
		}
	case len(p) >= 40 && p[0]>>4 == 6:
		a, b, l4, proto = 8, 24, 40, p[6]
		for i := range 16 {
			p[a+i], p[b+i] = p[b+i], p[a+i]
		}
	default:
		return false
	}
	if (proto == 6 || proto == 17) && len(p) >= l4+4 {
		p[l4], p[l4+1], p[l4+2], p[l4+3] = p[l4+2], p[l4+3], p[l4], p[l4+1]
	}
	return true
}
