package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mixvpn/mixvpn/mixnet/directory"
)

// The entry's filter allows the WireGuard endpoints of the document's
// exits, and nothing of its entries or mixes.
func TestExitEndpoints(t *testing.T) {
	doc := &directory.Document{Nodes: []directory.Descriptor{
		{ID: "entry1", Role: directory.RoleEntry, WireGuard: &directory.WireGuard{Endpoint: "198.51.100.11:51820"}},
		{ID: "mix1a", Role: directory.RoleMix, Layer: 1},
		{ID: "exit1", Role: directory.RoleExit, WireGuard: &directory.WireGuard{Endpoint: "198.51.100.51:51820"}},
		{ID: "exit2", Role: directory.RoleExit, WireGuard: &directory.WireGuard{Endpoint: "[fd6d:7876::52]:51821"}},
		{ID: "exit3", Role: directory.RoleExit}, // no Fast mode
	}}
	want := []netip.AddrPort{netip.MustParseAddrPort("198.51.100.51:51820"), netip.MustParseAddrPort("[fd6d:7876::52]:51821")}
	if got := exitEndpoints(doc); !slices.Equal(got, want) {
		t.Fatalf("exitEndpoints = %v, want %v", got, want)
	}
}

func TestExtraExitsConfig(t *testing.T) {
	dir := t.TempDir()
	base := `{"id":"entry1","role":"entry","listen":"198.51.100.11:1789","data_dir":"/tmp/x",
		"directory_url":"http://198.51.100.2:8080","directory_key":"AAAA","epoch_genesis":"2026-01-01T00:00:00Z","epoch_length":"1h",
		"wireguard":{"port":51820,"prefix4":"10.101.0.0/16","prefix6":"fd00:6d77:11::/64","extra_exits":EXTRA}}`
	load := func(role, extra string) (*nodeConfig, error) {
		body := strings.Replace(strings.Replace(base, "EXTRA", extra, 1), `"role":"entry"`, `"role":"`+role+`"`, 1)
		if role == "exit" {
			body = strings.Replace(body, `"wireguard"`, `"exit":{"prefix4":"100.64.0.0/16","prefix6":"fd00:6d76:1::/64"},"wireguard"`, 1)
		}
		p := filepath.Join(dir, "node.json")
		os.WriteFile(p, []byte(body), 0o600)
		return loadConfig(p, nil)
	}
	c, err := load("entry", `["198.51.100.60:51820", "[fd6d:7876::60]:51820"]`)
	if err != nil {
		t.Fatal(err)
	}
	if eps, err := c.WireGuard.extraExits(); err != nil || len(eps) != 2 || c.WireGuard.device() != "mvwg0" {
		t.Fatalf("extra exits %v %v, device %q", eps, err, c.WireGuard.device())
	}
	for name, extra := range map[string]string{"no port": `["198.51.100.60"]`, "port 0": `["198.51.100.60:0"]`, "a name": `["exit.example:51820"]`} {
		if _, err := load("entry", extra); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := load("exit", `["198.51.100.60:51820"]`); err == nil {
		t.Error("an exit accepted extra_exits")
	}
}
