package fast

import (
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/register"
)

// JoinConfig says which network and gateways a Fast-mode tunnel uses.
type JoinConfig struct {
	// DirectoryURL and DirectoryKey name the directory and pin its key.
	DirectoryURL string
	DirectoryKey ed25519.PublicKey
	// Entry and Exit choose the gateways: an ID, a country code or empty.
	Entry, Exit string
	// Document, if set, is a verified document to choose from instead of
	// fetching one.
	Document *directory.Document
	// Credential goes with both registrations (paid access).
	Credential []byte
	// HTTPClient fetches the directory; nil uses a plain one.
	HTTPClient *http.Client
	// DialLink, if set, opens the TCP connection to the entry that the
	// registration goes over (client.RegisterConfig.DialLink): the daemon
	// marks it, so that registering while another tunnel is up goes
	// around that tunnel.
	DialLink func(ctx context.Context, addr string) (net.Conn, error)
	Logger   *slog.Logger
}

// Joined is what Join learned besides the tunnel's Config.
type Joined struct {
	EntryID, ExitID string
}

// Join fetches the directory, picks the gateways, makes two fresh WireGuard
// keys and registers one with each gateway, and returns the Config for New.
func Join(ctx context.Context, jc JoinConfig) (Config, Joined, error) {
	doc := jc.Document
	if doc == nil {
		var err error
		f := &directory.Fetcher{URL: jc.DirectoryURL, Key: jc.DirectoryKey, Client: jc.HTTPClient}
		if doc, err = f.Fetch(ctx); err != nil {
			return Config{}, Joined{}, fmt.Errorf("fast: directory: %w", err)
		}
	}
	entry, err := doc.PickGateway(directory.RoleEntry, jc.Entry, mrand.IntN)
	if err != nil {
		return Config{}, Joined{}, fmt.Errorf("fast: %w", err)
	}
	exit, err := doc.PickGateway(directory.RoleExit, jc.Exit, mrand.IntN)
	if err != nil {
		return Config{}, Joined{}, fmt.Errorf("fast: %w", err)
	}
	if entry.WireGuard == nil || exit.WireGuard == nil {
		return Config{}, Joined{}, fmt.Errorf("fast: gateway %s or %s runs no WireGuard server", entry.ID, exit.ID)
	}
	var keys [2]Key
	var pubs [2][]byte
	for i := range keys {
		k, err := ecdh.X25519().GenerateKey(rand.Reader)
		if err != nil {
			return Config{}, Joined{}, fmt.Errorf("fast: key: %w", err)
		}
		keys[i], pubs[i] = Key(k.Bytes()), k.PublicKey().Bytes()
	}
	er, xr, err := client.Register(ctx, client.RegisterConfig{
		Epoch: doc.Epoch, Entry: entry, Exit: exit,
		EntryRequest: register.Request{Version: register.Version, PublicKey: pubs[0], Credential: jc.Credential},
		ExitRequest:  register.Request{Version: register.Version, PublicKey: pubs[1], Credential: jc.Credential},
		DialLink:     jc.DialLink,
	})
	if err != nil {
		return Config{}, Joined{}, fmt.Errorf("fast: %w", err)
	}
	hop := func(r *register.Response) (Hop, error) {
		ep, err := netip.ParseAddrPort(r.Endpoint)
		if err != nil {
			return Hop{}, fmt.Errorf("fast: endpoint %q: %w", r.Endpoint, err)
		}
		return Hop{PublicKey: Key(r.ServerKey), Endpoint: ep}, nil
	}
	cfg := Config{
		PrivateKeyEntry: keys[0], PrivateKeyExit: keys[1],
		EntryAddrs: []netip.Prefix{netip.PrefixFrom(er.Addr4, 32), netip.PrefixFrom(er.Addr6, 128)},
		InnerAddrs: []netip.Prefix{netip.PrefixFrom(xr.Addr4, 32), netip.PrefixFrom(xr.Addr6, 128)},
		Logger:     jc.Logger,
	}
	if cfg.Entry, err = hop(er); err != nil {
		return Config{}, Joined{}, err
	}
	if cfg.Exit, err = hop(xr); err != nil {
		return Config{}, Joined{}, err
	}
	return cfg, Joined{EntryID: entry.ID, ExitID: exit.ID}, nil
}
