package server_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/server"
	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
)

// An exit's resolvers reach clients in the signed document, so that a
// client whose user named none can resolve through the exit.
func TestExitPublishesDNS(t *testing.T) {
	want := []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8::53")}
	tn := servertest.Start(t, servertest.Options{ExitDNS: want})
	doc, err := (&directory.Fetcher{URL: tn.DirURL, Key: tn.AuthKey}).Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := doc.ByID("exit").DNS; !slices.Equal(got, want) {
		t.Fatalf("exit's DNS in the document %v, want %v", got, want)
	}
	if got := doc.ByID("entry").DNS; got != nil {
		t.Fatalf("entry's DNS in the document %v", got)
	}
}

// Only an exit may advertise resolvers: the directory would refuse any
// other node's descriptor at every publication, so Build refuses at once.
func TestOnlyExitsAdvertiseDNS(t *testing.T) {
	_, _, err := server.Build(server.Config{ID: "entry", Role: directory.RoleEntry, Listen: freeAddr(t), DataDir: t.TempDir(),
		DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53")}})
	if err == nil || !strings.Contains(err.Error(), "only an exit") {
		t.Fatalf("an entry with DNS resolvers: %v", err)
	}
}
