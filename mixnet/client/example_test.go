package client_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
)

// An application talks to the internet through the mixnet: it joins the
// network, opens a session with an exit and exchanges IP packets. Here the
// network runs in process and its "internet" reflects every packet.
func ExampleConnect() {
	net, err := servertest.New(servertest.Options{Echo: true})
	if err != nil {
		log.Fatal(err)
	}
	defer net.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := client.Connect(ctx, client.ConnectConfig{
		DirectoryURL: net.DirURL,
		DirectoryKey: net.AuthKey, // pinned: an unsigned document is refused
		Client:       client.Config{MeanDelay: 5 * time.Millisecond},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	s, err := conn.OpenSession(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()
	v4, _ := s.Addrs()
	fmt.Println("exit assigned an address:", v4.IsValid())

	// An IPv4 packet with no payload from our inner address.
	remote := netip.MustParseAddr("192.0.2.1")
	pkt := []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 253, 0, 0}
	pkt = append(append(pkt, v4.AsSlice()...), remote.AsSlice()...)
	if err := s.WritePacket(pkt); err != nil {
		log.Fatal(err)
	}
	back, err := s.ReadPacket(ctx)
	if err != nil {
		log.Fatal(err)
	}
	from, _ := netip.AddrFromSlice(back[12:16])
	fmt.Println("answer from:", from)
	// Output:
	// exit assigned an address: true
	// answer from: 192.0.2.1
}
