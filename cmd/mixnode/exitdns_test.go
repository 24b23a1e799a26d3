package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// An exit's "dns" list is checked when the file loads, as the directory
// would check it in the descriptor, so that a mistake stops the node at
// start and not, quietly, at every publication.
func TestExitDNSConfig(t *testing.T) {
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "exit.json")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const dns = `"dns":["198.51.100.80","fd6d:7876::80"]`
	good := `{"id":"exit1","role":"exit","listen":"127.0.0.1:1789","data_dir":"/tmp/x",
		"directory_url":"http://127.0.0.1:8080","directory_key":"AAAA","epoch_genesis":"2026-01-01T00:00:00Z","epoch_length":"1h",
		"exit":{"prefix4":"100.64.0.0/16","prefix6":"fd00:6d76:1::/64",` + dns + `}}`
	c, err := loadConfig(write(good), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Exit.dns()
	want := []netip.Addr{netip.MustParseAddr("198.51.100.80"), netip.MustParseAddr("fd6d:7876::80")}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("exit.dns %v %v, want %v", got, err, want)
	}
	if _, err := loadConfig(write(strings.Replace(good, ","+dns, "", 1)), nil); err != nil {
		t.Fatalf("an exit without dns: %v", err)
	}
	for name, body := range map[string]string{
		"a name":      strings.Replace(good, dns, `"dns":["resolver.example"]`, 1),
		"loopback":    strings.Replace(good, dns, `"dns":["127.0.0.53"]`, 1),
		"link-local":  strings.Replace(good, dns, `"dns":["fe80::1"]`, 1),
		"too many":    strings.Replace(good, dns, `"dns":["192.0.2.1","192.0.2.2","192.0.2.3","192.0.2.4","192.0.2.5"]`, 1),
		"not an exit": strings.Replace(good, `"role":"exit"`, `"role":"entry"`, 1),
	} {
		if _, err := loadConfig(write(body), nil); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}
