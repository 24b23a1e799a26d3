package daemon

import (
	"slices"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

func TestChooseGateway(t *testing.T) {
	const now = time.Hour
	first := func(int) int { return 0 }
	last := func(n int) int { return n - 1 }
	cases := []struct {
		name   string
		role   directory.Role
		want   string
		failed failures
		ok     []string // any of these
	}{
		{"any", directory.RoleEntry, "", failures{}, []string{"entry1", "entry2", "entry3"}},
		{"any, one failed", directory.RoleEntry, "", failures{"entry1": now - time.Minute}, []string{"entry2", "entry3"}},
		{"any, failed long ago", directory.RoleEntry, "", failures{"entry1": now - avoidFor, "entry2": now, "entry3": now}, []string{"entry1"}},
		{"all failed: the longest ago", directory.RoleEntry, "", failures{"entry1": now - time.Second, "entry2": now - time.Minute, "entry3": now}, []string{"entry2"}},
		{"pinned by ID, failed", directory.RoleEntry, "entry2", failures{"entry2": now}, []string{"entry2"}},
		{"country", directory.RoleEntry, "de", failures{}, []string{"entry1", "entry2"}},
		{"country, one failed", directory.RoleEntry, "DE", failures{"entry2": now}, []string{"entry1"}},
		{"country, all failed", directory.RoleEntry, "DE", failures{"entry1": now, "entry2": now - time.Second}, []string{"entry2"}},
		{"country, the only one failed", directory.RoleEntry, "CH", failures{"entry3": now}, []string{"entry3"}},
		{"exit, one failed", directory.RoleExit, "", failures{"exit1": now}, []string{"exit2"}},
		{"country with none: for the tunnel to refuse", directory.RoleEntry, "FR", failures{}, []string{"FR"}},
		{"unknown ID: for the tunnel to refuse", directory.RoleEntry, "nowhere", failures{}, []string{"nowhere"}},
	}
	for _, c := range cases {
		for _, pick := range []func(int) int{first, last} {
			got := c.failed.choose(multiDoc, c.role, c.want, now, pick, nil)
			found := false
			for _, ok := range c.ok {
				found = found || got == ok
			}
			if !found {
				t.Errorf("%s: chose %q, want one of %v", c.name, got, c.ok)
			}
		}
	}
}

// With no dns_servers, an exit that provides no resolver the tunnel can
// use is passed over while the choice allows another; if none does, the
// choice is made among them all, for the attempt to fail naming one.
func TestChooseExitWithDNS(t *testing.T) {
	const now = time.Hour
	doc := &directory.Document{Nodes: []directory.Descriptor{
		{ID: "entry1", Role: directory.RoleEntry, Country: "DE"},
		{ID: "bare", Role: directory.RoleExit, Country: "DE"},
		{ID: "v6only", Role: directory.RoleExit, Country: "DE", DNS: addrs("2001:db8::80")},
		{ID: "dns", Role: directory.RoleExit, Country: "DE", DNS: addrs("10.64.0.1")},
		{ID: "bareCH", Role: directory.RoleExit, Country: "CH"},
	}}
	v4only := control.Settings{}
	own := control.Settings{DNSServers: addrs("9.9.9.9")}
	cases := []struct {
		name   string
		s      control.Settings
		want   string
		failed failures
		ok     []string // any of these
	}{
		{"any: the one with DNS", v4only, "", failures{}, []string{"dns"}},
		{"country: the one with DNS", v4only, "de", failures{}, []string{"dns"}},
		{"with DNS though it failed", v4only, "", failures{"dns": now}, []string{"dns"}},
		{"IPv6 resolvers with ipv6 on", control.Settings{IPv6: true}, "", failures{"dns": now}, []string{"v6only"}},
		{"the user's DNS: any", own, "", failures{"dns": now}, []string{"bare", "v6only", "bareCH"}},
		{"none in the country: one of them, to fail", v4only, "CH", failures{}, []string{"bareCH"}},
		{"pinned by ID, without DNS", v4only, "bare", failures{}, []string{"bare"}},
	}
	for _, c := range cases {
		for _, pick := range []func(int) int{func(int) int { return 0 }, func(n int) int { return n - 1 }} {
			got := c.failed.choose(doc, directory.RoleExit, c.want, now, pick, usableExit(c.s, doc))
			if !slices.Contains(c.ok, got) {
				t.Errorf("%s: chose %q, want one of %v", c.name, got, c.ok)
			}
		}
	}
}

func TestFailuresExpire(t *testing.T) {
	f := failures{}
	f.add(0, "entry1", "")
	f.add(time.Minute, "entry2")
	if len(f) != 2 {
		t.Fatalf("failures %v", f)
	}
	f.add(avoidFor, "exit1")
	if _, ok := f["entry1"]; ok || len(f) != 2 {
		t.Fatalf("failures after avoidFor %v", f)
	}
	f.forget("entry2", "exit1")
	if len(f) != 0 {
		t.Fatalf("failures after forgetting %v", f)
	}
}
