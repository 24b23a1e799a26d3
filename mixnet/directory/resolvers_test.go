package directory

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// CheckResolvers is the one rule for a node's resolvers, which the
// directory, mixnode's configuration and server.Build all apply.
func TestCheckResolvers(t *testing.T) {
	good := netip.MustParseAddr("198.51.100.80")
	for _, c := range []struct {
		name  string
		role  Role
		addrs []netip.Addr
		want  string // "" for no error, else a part of the message
	}{
		{"an exit without", RoleExit, nil, ""},
		{"an entry without", RoleEntry, nil, ""},
		{"a mix without", RoleMix, []netip.Addr{}, ""},
		{"an exit with one", RoleExit, []netip.Addr{good}, ""},
		{"an exit with the most", RoleExit, slices.Repeat([]netip.Addr{good}, MaxDNS), ""},
		{"an entry with one", RoleEntry, []netip.Addr{good}, "only an exit"},
		{"a mix with one", RoleMix, []netip.Addr{good}, "only an exit"},
		{"too many", RoleExit, slices.Repeat([]netip.Addr{good}, MaxDNS+1), "at most"},
		{"a loopback one", RoleExit, []netip.Addr{good, netip.MustParseAddr("::1")}, "not reachable through a tunnel"},
		{"an empty one", RoleExit, []netip.Addr{{}}, "empty address"},
	} {
		err := CheckResolvers(c.role, c.addrs)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}
