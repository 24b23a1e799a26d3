package router

import (
	"context"
	"net/netip"
	"testing"
)

func TestValidate(t *testing.T) {
	good := Config{
		Interface: "mvtun0",
		Addresses: []netip.Prefix{netip.MustParsePrefix("10.66.0.2/32")},
		Bypass:    []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:51820")},
		AllowLAN:  []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")},
		RouteIPv4: true,
		BlockIPv6: true,
		Tunnel:    []netip.Prefix{netip.MustParsePrefix("192.168.1.53/32"), netip.MustParsePrefix("fd00::53/128")},
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Config{
		"no interface":            {},
		"bad address":             {Interface: "x", Addresses: []netip.Prefix{{}}},
		"bad bypass":              {Interface: "x", Bypass: []netip.AddrPort{{}}},
		"bad LAN prefix":          {Interface: "x", AllowLAN: []netip.Prefix{{}}},
		"IPv6 routed and blocked": {Interface: "x", RouteIPv6: true, BlockIPv6: true},
		"bad tunnel prefix":       {Interface: "x", RouteIPv4: true, Tunnel: []netip.Prefix{{}}},
		// Nothing would take them into the TUN.
		"IPv4 tunneled, not routed": {Interface: "x", RouteIPv6: true, Tunnel: []netip.Prefix{netip.MustParsePrefix("10.64.0.1/32")}},
		"IPv6 tunneled, not routed": {Interface: "x", RouteIPv4: true, Tunnel: []netip.Prefix{netip.MustParsePrefix("fd00::53/128")}},
	} {
		if c.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestFakeLifecycle(t *testing.T) {
	var f Fake
	var r Router = &f
	ctx := context.Background()
	cfg := Config{Interface: "mvtun0", RouteIPv4: true}
	if err := r.Set(ctx, cfg); err == nil {
		t.Fatal("Set before Up accepted")
	}
	if err := r.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Set(ctx, Config{}); err == nil {
		t.Fatal("invalid config accepted")
	}
	if err := r.Set(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if got, ok := f.Current(); !ok || got.Interface != "mvtun0" || !got.RouteIPv4 {
		t.Fatalf("current %+v %v", got, ok)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Current(); ok || !f.Closed() {
		t.Fatal("still configured after Close")
	}
	if err := r.Up(ctx); err == nil {
		t.Fatal("Up after Close accepted")
	}
	if n := len(f.Configs()); n != 1 {
		t.Fatalf("%d configs recorded", n)
	}
}
