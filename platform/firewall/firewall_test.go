package firewall

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func fullPolicy() Policy {
	return Policy{
		Interface: "mvtun0",
		Endpoints: []Endpoint{
			{Addr: netip.MustParseAddrPort("198.51.100.1:51820"), Proto: UDP},
			{Addr: netip.MustParseAddrPort("[2001:db8::1]:443"), Proto: TCP},
		},
		AllowLAN:  true,
		LAN:       []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("fe80::/10")},
		AllowDHCP: true,
	}
}

func TestRenderContents(t *testing.T) {
	full, err := Render(fullPolicy())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"table inet mixvpn\ndelete table inet mixvpn\ntable inet mixvpn {\n",
		"\tchain output {\n\t\ttype filter hook output priority filter; policy drop;\n\t\toif \"lo\" accept\n",
		"\t\tiif \"lo\" accept\n\t\tct state established,related accept\n",
		"\t\toifname \"mvtun0\" accept\n",
		"\t\tip daddr 198.51.100.1 udp dport 51820 accept\n",
		"\t\tip6 daddr 2001:db8::1 tcp dport 443 accept\n",
		"\t\tip daddr 192.168.0.0/16 accept\n",
		"\t\tip6 saddr fe80::/10 accept\n",
		"\t\tudp sport 68 udp dport 67 accept\n",
		"\t\tudp sport 547 udp dport 546 accept\n",
		"\t\ticmpv6 type nd-neighbor-solicit accept\n",
		"\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n",
	} {
		if !strings.Contains(full, want) {
			t.Errorf("rendered ruleset lacks %q:\n%s", want, full)
		}
	}

	// A bare lockdown lets nothing but loopback, replies and neighbour
	// discovery through.
	bare, err := Render(Policy{})
	if err != nil {
		t.Fatal(err)
	}
	for _, unwanted := range []string{"oifname", "daddr", "saddr", "sport", "dport"} {
		if strings.Contains(bare, unwanted) {
			t.Errorf("lockdown ruleset has %q:\n%s", unwanted, bare)
		}
	}

	// AllowLAN without prefixes means the default LAN ranges.
	lan, err := Render(Policy{AllowLAN: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range DefaultLAN() {
		if !strings.Contains(lan, "daddr "+p.String()) && !strings.Contains(lan, "daddr "+p.Addr().String()) {
			t.Errorf("default LAN %v missing:\n%s", p, lan)
		}
	}
}

func TestValidateRefuses(t *testing.T) {
	for name, p := range map[string]Policy{
		"quote in name":   {Interface: `tun"0`},
		"space in name":   {Interface: "tun 0"},
		"name too long":   {Interface: "abcdefghijklmnop"},
		"no port":         {Endpoints: []Endpoint{{Addr: netip.MustParseAddrPort("192.0.2.1:0"), Proto: UDP}}},
		"no address":      {Endpoints: []Endpoint{{Proto: UDP}}},
		"unknown proto":   {Endpoints: []Endpoint{{Addr: netip.MustParseAddrPort("192.0.2.1:1"), Proto: "sctp"}}},
		"invalid LAN net": {AllowLAN: true, LAN: []netip.Prefix{{}}},
	} {
		if err := p.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := Render(p); err == nil {
			t.Errorf("%s: rendered", name)
		}
	}
	if err := fullPolicy().Validate(); err != nil {
		t.Errorf("full policy refused: %v", err)
	}
}

func TestDefaultLANIsFresh(t *testing.T) {
	a := DefaultLAN()
	a[0] = netip.MustParsePrefix("0.0.0.0/0")
	if DefaultLAN()[0] == a[0] {
		t.Fatal("DefaultLAN shares its slice between callers")
	}
}

func TestFake(t *testing.T) {
	var f Fake
	var fw Firewall = &f
	if _, ok := f.Active(); ok {
		t.Fatal("active before Apply")
	}
	if err := fw.Apply(context.Background(), Policy{Interface: `bad"name`}); err == nil {
		t.Fatal("fake accepted an invalid policy")
	}
	if err := fw.Apply(context.Background(), fullPolicy()); err != nil {
		t.Fatal(err)
	}
	if p, ok := f.Active(); !ok || p.Interface != "mvtun0" {
		t.Fatalf("active %v %v", p, ok)
	}
	if err := fw.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.Active(); ok {
		t.Fatal("active after Remove")
	}
	if n := len(f.Applied()); n != 1 {
		t.Fatalf("%d policies recorded", n)
	}
	f.Err = errors.New("boom")
	if err := fw.Apply(context.Background(), Policy{}); err == nil {
		t.Fatal("Err not returned")
	}
}
