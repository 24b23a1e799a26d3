package fast

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Keys from wg(8)'s examples, valid base64 of 32 bytes.
const (
	keyA = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
	keyB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
	keyC = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
	keyD = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA="
	keyE = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
)

const entryConf = `# Entry gateway, as a provider hands it out.
[Interface]
PrivateKey = ` + keyA + `
Address = 10.64.0.2/32, fc00:64::2/128
DNS = 10.64.0.1
MTU = 1420

[Peer]
PublicKey = ` + keyB + `
AllowedIPs = 0.0.0.0/0, ::/0
Endpoint = 198.51.100.1:51820
PersistentKeepalive = 25
`

const exitConf = `[interface]
privatekey = ` + keyC + `
address = 10.99.0.2
address = fd00:99::2/128
dns = 10.99.0.1, fd00:99::1, example.internal
PostUp = echo never run   # hooks are ignored
Table = off

[PEER]
PublicKey = ` + keyD + `
PresharedKey = ` + keyE + `
Endpoint = 203.0.113.9:443
AllowedIPs = 0.0.0.0/0
AllowedIPs = ::/0
`

func TestParseWgQuick(t *testing.T) {
	q, err := ParseWgQuick(strings.NewReader(exitConf))
	if err != nil {
		t.Fatal(err)
	}
	if q.PrivateKey != mustKey(t, keyC) {
		t.Error("private key")
	}
	wantAddrs := []netip.Prefix{netip.MustParsePrefix("10.99.0.2/32"), netip.MustParsePrefix("fd00:99::2/128")}
	if !equalPrefixes(q.Addresses, wantAddrs) {
		t.Errorf("addresses %v", q.Addresses)
	}
	if len(q.DNS) != 2 || q.DNS[1] != netip.MustParseAddr("fd00:99::1") || len(q.DNSSearch) != 1 || q.DNSSearch[0] != "example.internal" {
		t.Errorf("DNS %v search %v", q.DNS, q.DNSSearch)
	}
	if len(q.Peers) != 1 {
		t.Fatalf("%d peers", len(q.Peers))
	}
	p := q.Peers[0]
	if p.PublicKey != mustKey(t, keyD) || p.PresharedKey != mustKey(t, keyE) || p.Endpoint != "203.0.113.9:443" {
		t.Errorf("peer %+v", p)
	}
	if !equalPrefixes(p.AllowedIPs, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}) {
		t.Errorf("allowed IPs %v", p.AllowedIPs)
	}

	e, err := ParseWgQuick(strings.NewReader(entryConf))
	if err != nil {
		t.Fatal(err)
	}
	if e.MTU != 1420 || e.Peers[0].PersistentKeepalive != 25*time.Second {
		t.Errorf("entry MTU %d keepalive %v", e.MTU, e.Peers[0].PersistentKeepalive)
	}
}

func TestParseWgQuickErrors(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		line       int
		key        string
	}{
		{"key outside section", "PrivateKey = " + keyA, 1, "PrivateKey"},
		{"unknown section", "[Interface]\nPrivateKey = " + keyA + "\n[Peers]\n", 3, ""},
		{"no equals", "[Interface]\nPrivateKey " + keyA + "\n", 2, ""},
		{"bad key", "[Interface]\nPrivateKey = abc\n", 2, "PrivateKey"},
		{"short key", "[Interface]\nPrivateKey = AAAA\n", 2, "PrivateKey"},
		{"bad address", "[Interface]\nPrivateKey = " + keyA + "\nAddress = 10.0.0.300/32\n", 3, "Address"},
		{"bad DNS", "[Interface]\nPrivateKey = " + keyA + "\nDNS = not a name!\n", 3, "DNS"},
		{"bad MTU", "[Interface]\nPrivateKey = " + keyA + "\nMTU = 12\n", 3, "MTU"},
		{"MTU not a number", "[Interface]\nPrivateKey = " + keyA + "\nMTU = big\n", 3, "MTU"},
		{"unknown key", "[Interface]\nPrivateKey = " + keyA + "\nColour = blue\n", 3, "Colour"},
		{"second interface", "[Interface]\nPrivateKey = " + keyA + "\n[Interface]\n", 3, ""},
		{"twice", "[Interface]\nPrivateKey = " + keyA + "\nPrivateKey = " + keyA + "\n", 3, "PrivateKey"},
		{"endpoint without port", "[Interface]\nPrivateKey = " + keyA + "\n[Peer]\nPublicKey = " + keyB + "\nEndpoint = 1.2.3.4\n", 5, "Endpoint"},
		{"endpoint port 0", "[Interface]\nPrivateKey = " + keyA + "\n[Peer]\nPublicKey = " + keyB + "\nEndpoint = 1.2.3.4:0\n", 5, "Endpoint"},
		{"bad allowed IP", "[Interface]\nPrivateKey = " + keyA + "\n[Peer]\nAllowedIPs = ::/129\n", 4, "AllowedIPs"},
		{"bad keepalive", "[Interface]\nPrivateKey = " + keyA + "\n[Peer]\nPersistentKeepalive = 70000\n", 4, "PersistentKeepalive"},
		{"peer without key", "[Interface]\nPrivateKey = " + keyA + "\n[Peer]\nEndpoint = 1.2.3.4:5\n", 0, "PublicKey"},
		{"no private key", "[Interface]\nAddress = 10.0.0.1\n", 0, "PrivateKey"},
		{"no interface", "# nothing\n", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseWgQuick(strings.NewReader(tc.conf))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			if pe.Line != tc.line || pe.Key != tc.key {
				t.Errorf("error at line %d key %q, want line %d key %q: %v", pe.Line, pe.Key, tc.line, tc.key, err)
			}
			if strings.Contains(err.Error(), keyA) {
				t.Errorf("error repeats the private key: %v", err)
			}
			t.Log(err)
		})
	}
	big := strings.NewReader("[Interface]\n" + strings.Repeat("#", maxWgQuickSize))
	if _, err := ParseWgQuick(big); err == nil {
		t.Error("accepted a file over the size limit")
	}
}

func TestConfigFromWgQuick(t *testing.T) {
	c, err := ConfigFromWgQuick(strings.NewReader(entryConf), strings.NewReader(exitConf))
	if err != nil {
		t.Fatal(err)
	}
	if c.PrivateKeyEntry != mustKey(t, keyA) || c.PrivateKeyExit != mustKey(t, keyC) {
		t.Error("private keys")
	}
	if c.Entry.Endpoint != netip.MustParseAddrPort("198.51.100.1:51820") || c.Exit.Endpoint != netip.MustParseAddrPort("203.0.113.9:443") {
		t.Errorf("endpoints %v %v", c.Entry.Endpoint, c.Exit.Endpoint)
	}
	if c.Exit.PresharedKey != mustKey(t, keyE) || c.Entry.PersistentKeepalive != 25*time.Second {
		t.Error("hop options")
	}
	if c.MTU != 1420-HopOverhead {
		t.Errorf("MTU %d, want %d", c.MTU, 1420-HopOverhead)
	}
	if len(c.EntryAddrs) != 2 || len(c.InnerAddrs) != 2 || len(c.DNS) != 2 || c.DNS[0] != netip.MustParseAddr("10.99.0.1") {
		t.Errorf("addresses %v %v DNS %v", c.EntryAddrs, c.InnerAddrs, c.DNS)
	}
	if _, err := New(c, &fakeTUN{mtu: c.MTU}); err != nil {
		t.Errorf("New rejects the chained config: %v", err)
	}

	// The same file twice shares a key, which would link the hops.
	if _, err := ConfigFromWgQuick(strings.NewReader(entryConf), strings.NewReader(entryConf)); err == nil {
		t.Error("chained a config with itself")
	}
	named := strings.Replace(exitConf, "203.0.113.9:443", "vpn.example.com:443", 1)
	if _, err := ConfigFromWgQuick(strings.NewReader(entryConf), strings.NewReader(named)); err == nil || !strings.Contains(err.Error(), "resolve") {
		t.Errorf("host name endpoint: %v", err)
	}
	twoPeers := exitConf + "[Peer]\nPublicKey = " + keyB + "\n"
	if _, err := ConfigFromWgQuick(strings.NewReader(entryConf), strings.NewReader(twoPeers)); err == nil {
		t.Error("accepted an exit with two peers")
	}
}

func TestConfigFromWgQuickFiles(t *testing.T) {
	dir := t.TempDir()
	entry, exit := filepath.Join(dir, "entry.conf"), filepath.Join(dir, "exit.conf")
	if err := os.WriteFile(entry, []byte(entryConf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exit, []byte(exitConf), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ConfigFromWgQuickFiles(entry, exit); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(exit, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ConfigFromWgQuickFiles(entry, exit); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("world-readable key file: %v", err)
	}
}

func mustKey(t *testing.T, s string) Key {
	t.Helper()
	k, err := ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func equalPrefixes(a, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// FuzzParseWgQuick holds the parser to its contract on any input: an error
// that is a *ParseError, or a config that meets the invariants it promises.
func FuzzParseWgQuick(f *testing.F) {
	f.Add([]byte(entryConf))
	f.Add([]byte(exitConf))
	f.Fuzz(func(t *testing.T, data []byte) {
		q, err := ParseWgQuick(strings.NewReader(string(data)))
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *ParseError", err)
			}
			return
		}
		if q.PrivateKey.IsZero() {
			t.Fatal("accepted without a private key")
		}
		if q.MTU != 0 && (q.MTU < minMTU || q.MTU > maxMTU+HopOverhead) {
			t.Fatalf("accepted MTU %d", q.MTU)
		}
		for _, a := range q.Addresses {
			if !a.IsValid() {
				t.Fatal("accepted an invalid address")
			}
		}
		for _, p := range q.Peers {
			if p.PublicKey.IsZero() {
				t.Fatal("accepted a peer without a key")
			}
			for _, a := range p.AllowedIPs {
				if !a.IsValid() || a != a.Masked() {
					t.Fatalf("allowed IP %v not valid and masked", a)
				}
			}
		}
	})
}
