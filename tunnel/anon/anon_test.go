package anon

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
)

// TestTunnelCarriesDevicePackets runs a device's packets through a whole
// in-process mixnet whose internet reflects them, and checks that each
// comes back to the device byte for byte.
func TestTunnelCarriesDevicePackets(t *testing.T) {
	n := servertest.Start(t, servertest.Options{Echo: true})
	dev := tuntest.NewChannelTUN()
	tn, err := New(Config{Connect: client.ConnectConfig{
		DirectoryURL: n.DirURL, DirectoryKey: n.AuthKey,
		Client: client.Config{Rate: 300, MeanDelay: 2 * time.Millisecond},
	}}, dev.TUN())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := tn.Up(ctx); err != nil {
		t.Fatal(err)
	}
	defer tn.Close()
	v4, v6 := tn.Addrs()
	if !v4.Is4() || !v6.Is6() {
		t.Fatalf("addresses %v %v", v4, v6)
	}
	remote := netip.MustParseAddr("192.0.2.9")
	const count = 30
	for i := range count {
		p := make([]byte, 28+200)
		p[0], p[9] = 0x45, 17
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		copy(p[12:], v4.AsSlice())
		copy(p[16:], remote.AsSlice())
		binary.BigEndian.PutUint32(p[28:], uint32(i))
		dev.Outbound <- p
	}
	seen := map[uint32]bool{}
	for len(seen) < count {
		select {
		case p := <-dev.Inbound:
			if !bytes.Equal(p[12:16], remote.AsSlice()) || !bytes.Equal(p[16:20], v4.AsSlice()) {
				t.Fatalf("packet from %v to %v", p[12:16], p[16:20])
			}
			seen[binary.BigEndian.Uint32(p[28:])] = true
		case <-ctx.Done():
			t.Fatalf("%d of %d packets came back", len(seen), count)
		}
	}
	// The device write returns before the counter moves.
	st := tn.Stats()
	for deadline := time.Now().Add(2 * time.Second); st.PacketsIn < count && time.Now().Before(deadline); st = tn.Stats() {
		time.Sleep(time.Millisecond)
	}
	if st.PacketsOut != count || st.PacketsIn != count || st.Exit != "exit" || st.LoopsSent == 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Config{}, tuntest.NewChannelTUN().TUN()); err == nil {
		t.Fatal("a tunnel without a directory")
	}
	if _, err := New(Config{Connect: client.ConnectConfig{DirectoryURL: "http://x", DirectoryKey: make([]byte, 32)}}, nil); err == nil {
		t.Fatal("a tunnel without a device")
	}
}
