package server_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/gateway"
	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/mixnet/node"
	"github.com/mixvpn/mixvpn/mixnet/register"
	"github.com/mixvpn/mixvpn/mixnet/server"
	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
	"github.com/mixvpn/mixvpn/mixnet/session"
	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

func freeAddr(t *testing.T) string {
	addr, err := servertest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func hop(t *testing.T, doc *directory.Document, id string, delay time.Duration) sphinx.Hop {
	d := doc.ByID(id)
	k, err := d.SphinxKey(doc.Epoch)
	if err != nil {
		t.Fatal(err)
	}
	return sphinx.Hop{Address: d.MixAddress(), Key: k, Delay: delay}
}

func TestPacketsCrossEntryMixesExitAndRepliesReturn(t *testing.T) {
	tn := servertest.Start(t, servertest.Options{})
	fetch := &directory.Fetcher{URL: tn.DirURL, Key: tn.AuthKey}
	doc, err := fetch.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	forward := []sphinx.Hop{hop(t, doc, "entry", 0), hop(t, doc, "mix1a", time.Millisecond), hop(t, doc, "mix2a", 2*time.Millisecond), hop(t, doc, "mix3a", time.Millisecond), hop(t, doc, "exit", 0)}
	reply := []sphinx.Hop{hop(t, doc, "mix1a", time.Millisecond), hop(t, doc, "mix2a", time.Millisecond), hop(t, doc, "mix3a", time.Millisecond), hop(t, doc, "entry", 0)}

	clientKey, _ := link.GenerateKey()
	me := gateway.ClientAddress(clientKey.Public)
	deliveries := make(chan []byte, 100)
	entry := doc.ByID("entry")
	c, err := link.Dial(context.Background(), entry.Address, entry.LinkPublicKey(), link.Config{Static: clientKey, Handler: func(_ *link.Conn, ft link.FrameType, body []byte) {
		if ft == link.FramePacket {
			deliveries <- bytes.Clone(body)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const n = 40
	kept := map[sphinx.MessageID]*sphinx.SURBKeys{}
	var first []byte
	for i := range n {
		id := sphinx.MessageID{byte(i), 0xaa}
		surb, keys, err := sphinx.NewSURB(nil, reply, me, id)
		if err != nil {
			t.Fatal(err)
		}
		kept[id] = keys
		var b session.Builder
		b.Reset(make([]byte, session.MaxMessageSize), session.ID{byte(i), 1})
		b.Control(session.RecordOpen, uint32(i))
		b.SURB(surb)
		pkt, err := sphinx.NewPacket(nil, forward, sphinx.Address{}, sphinx.MessageID{}, b.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = bytes.Clone(pkt)
		}
		if err := c.Send(pkt); err != nil {
			t.Fatal(err)
		}
	}
	// Every session's Opened comes back through mixes and the entry.
	opened := map[uint32]netip.Addr{}
	timeout := time.After(15 * time.Second)
	for len(opened) < n {
		select {
		case body := <-deliveries:
			id, block, err := gateway.ParseDelivery(body)
			if err != nil {
				t.Fatal(err)
			}
			msg, err := kept[id].OpenReply(block)
			if err != nil {
				t.Fatalf("reply %x: %v", id[:2], err)
			}
			session.Parse(msg, func(r session.Record) error {
				if r.Type == session.RecordOpened {
					seq, v4, _ := r.Opened()
					opened[seq] = v4
				}
				return nil
			})
		case <-timeout:
			t.Fatalf("only %d of %d sessions answered", len(opened), n)
		}
	}
	exit := tn.Nodes["exit"].Exit
	if s := exit.Stats(); s.Sessions != n || s.RepliesSent != n {
		t.Fatalf("exit stats %+v", s)
	}
	// A replayed packet is dropped at the entry, and no new session appears.
	c.Send(first)
	drops := tn.Nodes["entry"].Pipeline.Metrics().Drops.WithLabelValues(node.DropReplay)
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(drops) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("replay not dropped at the entry")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := exit.Stats(); s.Sessions != n {
		t.Fatalf("%d sessions after the replay", s.Sessions)
	}
}

// fakePeers stands in for the WireGuard server.
type fakePeers struct{ added chan [32]byte }

func (f *fakePeers) AddPeer(k [32]byte, _ []netip.Prefix) error { f.added <- k; return nil }
func (f *fakePeers) RemovePeer([32]byte) error                  { return nil }
func (f *fakePeers) LastHandshake([32]byte) (time.Time, error)  { return time.Time{}, nil }

// A client registers its WireGuard key over an authenticated link with a
// control frame and gets its inner addresses back.
func TestRegistrationOverLink(t *testing.T) {
	peers := &fakePeers{added: make(chan [32]byte, 1)}
	reg, err := gateway.NewRegistry(gateway.RegistryConfig{Peers: peers,
		Prefix4: netip.MustParsePrefix("10.70.0.0/24"), Prefix6: netip.MustParsePrefix("fd00:70::/64"),
		ServerKey: [32]byte{7}, Endpoint: netip.MustParseAddrPort("127.0.0.1:51820")})
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	epochs := directory.Epochs{Genesis: time.Now().Add(-time.Minute), Length: time.Hour}
	auth, _ := directory.NewAuthority(directory.AuthorityConfig{Key: priv, Epochs: epochs})
	srv := httptest.NewServer(auth.Handler())
	defer srv.Close()
	n, run, err := server.Build(server.Config{ID: "entry", Role: directory.RoleEntry, Listen: freeAddr(t), DataDir: t.TempDir(),
		DirectoryURL: srv.URL, DirectoryKey: pub, Epochs: epochs, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); run(ctx) }()
	defer func() { cancel(); <-done }()
	doc, err := (&directory.Fetcher{URL: srv.URL, Key: pub}).Fetch(ctx)
	for i := 0; err == nil && len(doc.Nodes) == 0 && i < 100; i++ {
		time.Sleep(20 * time.Millisecond)
		doc, err = (&directory.Fetcher{URL: srv.URL, Key: pub}).Fetch(ctx)
	}
	if err != nil || len(doc.Nodes) != 1 {
		t.Fatalf("directory: %v", err)
	}
	answers := make(chan []byte, 1)
	ck, _ := link.GenerateKey()
	c, err := link.Dial(ctx, doc.Nodes[0].Address, n.LinkKey.Public, link.Config{Static: ck, Handler: func(_ *link.Conn, ft link.FrameType, body []byte) {
		if ft == link.FrameControl {
			answers <- bytes.Clone(body)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wgKey := [32]byte{0xc1}
	req, _ := register.Marshal(register.Request{Version: register.Version, PublicKey: wgKey[:]})
	c.SendControl(req)
	var raw []byte
	select {
	case raw = <-answers:
	case <-time.After(5 * time.Second):
		t.Fatal("no registration answer")
	}
	resp, err := register.ParseResponse(raw)
	if err != nil || resp.Error != "" || resp.Addr4 != netip.MustParseAddr("10.70.0.2") {
		t.Fatalf("response %+v %v", resp, err)
	}
	if got := <-peers.added; got != wgKey {
		t.Fatal("the WireGuard server was not given the client's key")
	}
}
