package dns

import (
	"context"
	"net/netip"
	"strings"
	"testing"
)

func testConfig() Config {
	return Config{
		Servers:   []netip.Addr{netip.MustParseAddr("10.64.0.1"), netip.MustParseAddr("fd64::1")},
		Domains:   []string{"corp.example", "example.org"},
		Interface: "lo",
	}
}

func TestValidate(t *testing.T) {
	if err := testConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"no servers":      {Interface: "lo"},
		"invalid server":  {Servers: []netip.Addr{{}}, Interface: "lo"},
		"no interface":    {Servers: testConfig().Servers},
		"newline in name": {Servers: testConfig().Servers, Interface: "lo", Domains: []string{"a\nnameserver 6.6.6.6"}},
		"space in name":   {Servers: testConfig().Servers, Interface: "lo", Domains: []string{"a b"}},
		"empty domain":    {Servers: testConfig().Servers, Interface: "lo", Domains: []string{""}},
		"too long":        {Servers: testConfig().Servers, Interface: "lo", Domains: []string{strings.Repeat("a", 254)}},
	} {
		if c.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestResolvConfText(t *testing.T) {
	cfg := testConfig()
	cfg.Servers = append(cfg.Servers, netip.MustParseAddr("::ffff:192.0.2.53"))
	got := string(resolvConf(cfg, "/etc/resolv.conf.mixvpn-backup"))
	for _, want := range []string{
		"nameserver 10.64.0.1\nnameserver fd64::1\nnameserver 192.0.2.53\n",
		"search corp.example example.org\n",
		"/etc/resolv.conf.mixvpn-backup",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
		if !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "nameserver ") && !strings.HasPrefix(line, "search ") {
			t.Errorf("unexpected line %q", line)
		}
	}
}

func TestFake(t *testing.T) {
	var f Fake
	var c Configurator = &f
	if err := c.Set(context.Background(), Config{}); err == nil {
		t.Fatal("invalid config accepted")
	}
	if err := c.Set(context.Background(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got, ok := f.Current(); !ok || got.Servers[0] != testConfig().Servers[0] || f.Sets() != 1 {
		t.Fatalf("current %+v %v", got, ok)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Current(); ok {
		t.Fatal("still set after Restore")
	}
}
