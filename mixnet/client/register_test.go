package client

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/gateway"
	"github.com/mixvpn/mixvpn/mixnet/register"
	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
)

// recordPeers is a WireGuard server that records the peers added.
type recordPeers struct{ added chan [32]byte }

func (p *recordPeers) AddPeer(k [32]byte, _ []netip.Prefix) error { p.added <- k; return nil }
func (p *recordPeers) RemovePeer([32]byte) error                  { return nil }
func (p *recordPeers) LastHandshake([32]byte) (time.Time, error)  { return time.Time{}, nil }

func TestRegisterWithEntryAndThroughItWithExit(t *testing.T) {
	peers := map[string]*recordPeers{"entry": {make(chan [32]byte, 1)}, "exit": {make(chan [32]byte, 1)}}
	n := servertest.Start(t, servertest.Options{Peers: func(id string) gateway.WireGuardPeers { return peers[id] }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	doc, err := (&directory.Fetcher{URL: n.DirURL, Key: n.AuthKey}).Fetch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	entryKey, exitKey := [32]byte{1, 2, 3}, [32]byte{4, 5, 6}
	start := time.Now()
	// The link to the entry goes through the caller's dial, where a
	// daemon marks it.
	var dialed []string
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		dialed = append(dialed, addr)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	er, xr, err := Register(ctx, RegisterConfig{
		Epoch: doc.Epoch, Entry: doc.ByID("entry"), Exit: doc.ByID("exit"),
		EntryRequest: register.Request{Version: register.Version, PublicKey: entryKey[:]},
		ExitRequest:  register.Request{Version: register.Version, PublicKey: exitKey[:]},
		DialLink:     dial,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(dialed) != 1 || dialed[0] != doc.ByID("entry").Address {
		t.Fatalf("dialed %v, want the entry alone", dialed)
	}
	t.Logf("registered with both gateways in %v", time.Since(start))
	if !er.Addr4.Is4() || !xr.Addr4.Is4() || er.ServerKey[0] == xr.ServerKey[0] {
		t.Fatalf("answers %+v %+v", er, xr)
	}
	if got := <-peers["entry"].added; got != entryKey {
		t.Fatal("entry added the wrong key")
	}
	if got := <-peers["exit"].added; got != exitKey {
		t.Fatal("exit added the wrong key")
	}
	// The exit learned of the client only through the entry: no link from
	// a client ever reached it.
	if s := n.Nodes["exit"].Exit.Stats(); s.Sessions != 0 {
		t.Fatalf("registration opened a session: %+v", s)
	}
}
