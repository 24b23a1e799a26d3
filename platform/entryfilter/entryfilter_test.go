package entryfilter

import (
	"net/netip"
	"slices"
	"testing"
)

func TestNormaliseSortsUnmapsAndDropsDuplicates(t *testing.T) {
	in := []netip.AddrPort{
		netip.MustParseAddrPort("[fd00::1]:51820"),
		netip.MustParseAddrPort("[::ffff:198.51.100.52]:51820"),
		netip.MustParseAddrPort("198.51.100.51:51820"),
		netip.MustParseAddrPort("198.51.100.52:51820"),
		netip.MustParseAddrPort("198.51.100.51:0"), // no port: no endpoint
		{},
	}
	want := []netip.AddrPort{
		netip.MustParseAddrPort("198.51.100.51:51820"),
		netip.MustParseAddrPort("198.51.100.52:51820"),
		netip.MustParseAddrPort("[fd00::1]:51820"),
	}
	if got := normalise(in); !slices.Equal(got, want) {
		t.Fatalf("normalise = %v, want %v", got, want)
	}
}
