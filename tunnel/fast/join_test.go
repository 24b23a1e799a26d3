package fast

import (
	"context"
	"net/netip"
	"testing"
	"time"

	mixgateway "github.com/mixvpn/mixvpn/mixnet/gateway"
	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
)

type nopPeers struct{}

func (nopPeers) AddPeer([32]byte, []netip.Prefix) error    { return nil }
func (nopPeers) RemovePeer([32]byte) error                 { return nil }
func (nopPeers) LastHandshake([32]byte) (time.Time, error) { return time.Time{}, nil }

func TestJoinRegistersAndBuildsConfig(t *testing.T) {
	n := servertest.Start(t, servertest.Options{Peers: func(string) mixgateway.WireGuardPeers { return nopPeers{} }})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, j, err := Join(ctx, JoinConfig{DirectoryURL: n.DirURL, DirectoryKey: n.AuthKey})
	if err != nil {
		t.Fatal(err)
	}
	if j.EntryID != "entry" || j.ExitID != "exit" {
		t.Fatalf("joined %+v", j)
	}
	if _, err := cfg.normalise(); err != nil {
		t.Fatalf("config from Join does not validate: %v", err)
	}
	if cfg.PrivateKeyEntry == cfg.PrivateKeyExit || cfg.Entry.PublicKey == cfg.Exit.PublicKey {
		t.Fatal("the two hops share keys")
	}
	if len(cfg.InnerAddrs) != 2 || !cfg.InnerAddrs[0].Addr().Is4() || !cfg.InnerAddrs[1].Addr().Is6() {
		t.Fatalf("inner addresses %v", cfg.InnerAddrs)
	}
	if _, _, err := Join(ctx, JoinConfig{DirectoryURL: n.DirURL, DirectoryKey: n.AuthKey, Exit: "ZZ"}); err == nil {
		t.Fatal("joined an exit in a country with none")
	}
}
