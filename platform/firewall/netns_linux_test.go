//go:build linux

package firewall

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/platform/netns"
	"github.com/mixvpn/mixvpn/platform/netns/netnstest"
)

// These tests run the firewall in namespaces they make, never in the
// host's: each one builds a client namespace and a peer joined by a veth
// pair, and only ever sends to the peer.

var (
	clientAddrs = []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24"), netip.MustParsePrefix("fd77::1/64")}
	peerAddrs   = []netip.Prefix{netip.MustParsePrefix("10.77.0.2/24"), netip.MustParsePrefix("fd77::2/64")}
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft from the nftables package (make deps installs it)")
	}
}

// newLab makes a lab whose namespaces are removed when the test ends,
// pass or fail.
func newLab(t *testing.T) *netns.Lab {
	t.Helper()
	lab := netnstest.Lab(t, "mvfw")
	return lab
}

func listTable(t *testing.T, h *netns.Host) string {
	t.Helper()
	out, err := h.Output("nft", "list", "table", "inet", TableName)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

func hasTable(t *testing.T, h *netns.Host) bool {
	t.Helper()
	out, err := h.Output("nft", "list", "tables")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return strings.Contains(out, "table inet "+TableName)
}

// pings reports whether an echo to dst from h gets an answer. It tries a
// few times, a second each, because a fresh veth may lose the first IPv6
// packet while neighbour discovery starts.
func pings(h *netns.Host, dst netip.Addr) bool {
	for range 5 {
		if h.Run("ping", "-n", "-c", "1", "-W", "1", dst.String()) == nil {
			return true
		}
	}
	return false
}

// blocked reports whether two echoes to dst from h both go unanswered.
// Tests check that dst answers before and after, so silence in between is
// the firewall's doing.
func blocked(h *netns.Host, dst netip.Addr) bool {
	return h.Run("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", dst.String()) != nil
}

func TestRenderAcceptedByNft(t *testing.T) {
	needRoot(t)
	lab := newLab(t)
	h, err := lab.AddHost("nft")
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range []Policy{{}, fullPolicy(), {AllowLAN: true, AllowDHCP: true}} {
		text, err := Render(p)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "lockdown.nft")
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := h.Output("nft", "-c", "-f", file); err != nil {
			t.Fatalf("policy %d: nft -c rejects the rendered file: %v\n%s\n%s", i, err, out, text)
		}
		// Loading it over an existing table must replace, not add to, it.
		for range 2 {
			if out, err := h.Output("nft", "-f", file); err != nil {
				t.Fatalf("policy %d: nft -f: %v\n%s", i, err, out)
			}
		}
		body := text[strings.Index(text, "table inet mixvpn {"):]
		if got := listTable(t, h); strings.TrimSpace(got) != strings.TrimSpace(body) {
			t.Fatalf("policy %d: nft lists\n%s\nwant\n%s", i, got, body)
		}
	}
}

// Apply over netlink and `nft -f` of Render must install the same rules;
// nft decodes both from the kernel, so equal listings mean equal rules.
func TestApplyEquivalentToRender(t *testing.T) {
	needRoot(t)
	lab := newLab(t)
	viaGo, err := lab.AddHost("go")
	if err != nil {
		t.Fatal(err)
	}
	viaNft, err := lab.AddHost("nft")
	if err != nil {
		t.Fatal(err)
	}
	fw, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range []Policy{{}, fullPolicy(), {Interface: "wg0", AllowLAN: true}} {
		if err := viaGo.Do(func() error { return fw.Apply(t.Context(), p) }); err != nil {
			t.Fatalf("policy %d: %v", i, err)
		}
		text, err := Render(p)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), "lockdown.nft")
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := viaNft.Output("nft", "-f", file); err != nil {
			t.Fatalf("nft -f: %v\n%s", err, out)
		}
		if a, b := listTable(t, viaGo), listTable(t, viaNft); a != b {
			t.Fatalf("policy %d: Apply installed\n%s\nnft -f installed\n%s", i, a, b)
		}
	}
}

func TestApplyBlocksAndRemoveRestores(t *testing.T) {
	needRoot(t)
	lab := newLab(t)
	client, err := lab.AddHost("c")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := lab.AddHost("p")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := lab.Connect(client, clientAddrs, peer, peerAddrs); err != nil {
		t.Fatal(err)
	}
	peer4, peer6 := peerAddrs[0].Addr(), peerAddrs[1].Addr()

	// The peer plays the entry gateway on UDP 51820.
	var gw *net.UDPConn
	if err := peer.Do(func() (err error) {
		gw, err = net.ListenUDP("udp", &net.UDPAddr{Port: 51820})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	dial := func(port int) (c *net.UDPConn, err error) {
		err = client.Do(func() error {
			c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(peer4, uint16(port))))
			return err
		})
		return c, err
	}
	// reaches sends one datagram from the client to the peer's port and
	// reports whether the gateway socket received it.
	reaches := func(port int) bool {
		c, err := dial(port)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("hello")); err != nil {
			return false // the output chain's drop shows as EPERM
		}
		gw.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 16)
		n, _, err := gw.ReadFromUDP(buf)
		return err == nil && string(buf[:n]) == "hello"
	}

	if !pings(client, peer4) || !pings(client, peer6) {
		t.Fatal("the peer does not answer before any firewall")
	}

	fw, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	apply := func(p Policy) {
		t.Helper()
		if err := client.Do(func() error { return fw.Apply(t.Context(), p) }); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { client.Do(fw.Remove) })

	tunnel := Policy{
		Interface: "mvtun0",
		Endpoints: []Endpoint{{Addr: netip.AddrPortFrom(peer4, 51820), Proto: UDP}},
	}
	apply(tunnel)
	if !blocked(client, peer4) || !blocked(client, peer6) {
		t.Fatal("ping to a non-allowed address passes the firewall")
	}
	if !reaches(51820) {
		t.Fatal("the allowed endpoint is blocked")
	}
	if reaches(51821) {
		t.Fatal("a port next to the allowed endpoint passes")
	}

	// Switching to a policy that allows the LAN opens it, and switching
	// back closes it again.
	lanPolicy := tunnel
	lanPolicy.AllowLAN = true
	lanPolicy.LAN = []netip.Prefix{clientAddrs[0].Masked(), clientAddrs[1].Masked()}
	apply(lanPolicy)
	if !pings(client, peer4) || !pings(client, peer6) {
		t.Fatal("LAN blocked although allowed")
	}
	apply(tunnel)
	if !blocked(client, peer4) {
		t.Fatal("LAN still open after switching back")
	}
	if n := strings.Count(listTable(t, client), "chain output"); n != 1 {
		t.Fatalf("%d output chains after replacing the policy", n)
	}

	if err := client.Do(fw.Remove); err != nil {
		t.Fatal(err)
	}
	if hasTable(t, client) {
		t.Fatal("table left after Remove")
	}
	if !pings(client, peer4) || !pings(client, peer6) {
		t.Fatal("peer unreachable after Remove")
	}
	if err := client.Do(fw.Remove); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}
