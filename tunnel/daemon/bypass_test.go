package daemon

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

func TestDirectoryEndpoint(t *testing.T) {
	for _, c := range []struct{ url, want string }{
		{"http://192.0.2.2:8080", "192.0.2.2:8080"},
		{"http://192.0.2.2", "192.0.2.2:80"},
		{"https://192.0.2.2", "192.0.2.2:443"},
		{"https://192.0.2.2/dir", "192.0.2.2:443"},
		{"https://192.0.2.2:8443", "192.0.2.2:8443"},
		{"http://[2001:db8::2]", "[2001:db8::2]:80"},
		{"https://[2001:db8::2]:8443/", "[2001:db8::2]:8443"},
		{"http://[::ffff:192.0.2.2]:8080", "192.0.2.2:8080"},
	} {
		got, err := directoryEndpoint(c.url)
		if err != nil || got != netip.MustParseAddrPort(c.want) {
			t.Errorf("directoryEndpoint(%q) = %v, %v; want %s", c.url, got, err, c.want)
		}
	}
	for _, c := range []struct{ url, why string }{
		{"https://directory.example.org", "IP address"},
		{"http://localhost:8080", "IP address"},
		{"ftp://192.0.2.2", "http or https"},
		{"192.0.2.2:8080", "directory URL"},
		{"http://192.0.2.2:0", "port 0"},
		{"http://192.0.2.2:70000", "port"},
		{"http://[fe80::1%25eth0]:8080", "zone"},
	} {
		if got, err := directoryEndpoint(c.url); err == nil || !strings.Contains(err.Error(), c.why) {
			t.Errorf("directoryEndpoint(%q) = %v, %v; want an error saying %q", c.url, got, err, c.why)
		}
	}
}

// A directory named by host name never gets a daemon: it could be
// neither routed around the tunnel nor let through lockdown.
func TestNewRefusesDirectoryHostname(t *testing.T) {
	_, err := New(Config{Device: tuntest.NewChannelTUN().TUN(), DirectoryURL: "https://directory.example.org", DirectoryKey: make([]byte, 32),
		Router: &router.Fake{}, DNS: &dns.Fake{}, Firewall: &firewall.Fake{}})
	if err == nil || !strings.Contains(err.Error(), "directory.example.org") || !strings.Contains(err.Error(), "IP address") {
		t.Fatalf("New with a host name: %v", err)
	}
}

// An https directory without a port is bypassed and let through the
// firewall on 443, where it listens, not 80.
func TestHTTPSDirectoryBypassedOn443(t *testing.T) {
	d, err := New(Config{Device: tuntest.NewChannelTUN().TUN(), DirectoryURL: "https://192.0.2.2", DirectoryKey: make([]byte, 32),
		Router: &router.Fake{}, DNS: &dns.Fake{}, Firewall: &firewall.Fake{}})
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParseAddrPort("192.0.2.2:443")
	if got := d.bypass(nil); !slices.Equal(got, []netip.AddrPort{want}) {
		t.Errorf("bypass %v, want %v", got, want)
	}
	p, on := d.firewallPolicy(control.Settings{Lockdown: true}, nil, false)
	if !on || !slices.Contains(p.Endpoints, firewall.Endpoint{Addr: want, Proto: firewall.TCP}) {
		t.Errorf("lockdown policy %+v (on %v) does not let the directory through", p, on)
	}
	if !allowsTCP(p, "192.0.2.2:443") || allowsTCP(p, "192.0.2.2:80") {
		t.Error("allowsTCP disagrees with the policy")
	}
}

func TestAllowsTCP(t *testing.T) {
	p := firewall.Policy{Endpoints: []firewall.Endpoint{
		{Addr: netip.MustParseAddrPort("192.0.2.11:1789"), Proto: firewall.TCP},
		{Addr: netip.MustParseAddrPort("192.0.2.12:51820"), Proto: firewall.UDP},
	}}
	for addr, want := range map[string]bool{
		"192.0.2.11:1789":          true,
		"[::ffff:192.0.2.11]:1789": true,
		"192.0.2.11:1790":          false,
		"192.0.2.12:51820":         false, // UDP only
		"10.0.0.1:1789":            false,
		"entry.example.org:1789":   false,
	} {
		if got := allowsTCP(p, addr); got != want {
			t.Errorf("allowsTCP(%s) = %v", addr, got)
		}
	}
	p.AllowLAN = true
	if !allowsTCP(p, "10.0.0.1:1789") || allowsTCP(p, "198.51.100.1:1789") {
		t.Error("AllowLAN with the default LAN")
	}
}
