//go:build linux

package wgserver

import (
	"crypto/rand"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/mixvpn/mixvpn/platform/netns"
)

// The server needs its own network namespace, so the test runs itself
// again inside one (a helper process) and checks what it reports.
func TestServerInNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace and a TUN device")
	}
	if _, err := exec.LookPath("wg"); err != nil {
		t.Skip("needs wg from wireguard-tools (make deps installs it)")
	}
	lab, err := netns.NewLab("mvw")
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	h, err := lab.AddHost("gw")
	if err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(t.Context(), os.Args[0], "-test.run=^TestHelperServer$", "-test.v")
	cmd.Env = append(os.Environ(), "MIXVPN_WGSERVER_HELPER=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("helper: %v\n%s", err, out)
	}
}

func TestHelperServer(t *testing.T) {
	if os.Getenv("MIXVPN_WGSERVER_HELPER") != "1" {
		t.Skip("runs only inside TestServerInNamespace")
	}
	var priv [32]byte
	rand.Read(priv[:])
	s, err := Start(Config{Name: "mvwgtest", PrivateKey: priv, ListenPort: 51999, Addrs: []netip.Prefix{netip.MustParsePrefix("10.70.0.1/24")}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	peer := [32]byte{1, 2, 3}
	if err := s.AddPeer(peer, []netip.Prefix{netip.MustParsePrefix("10.70.0.2/32")}); err != nil {
		t.Fatal(err)
	}
	// The stock tool sees our device and peer.
	out, err := exec.Command("wg", "show", "mvwgtest", "dump").CombinedOutput()
	if err != nil {
		t.Fatalf("wg show: %v %s", err, out)
	}
	if !strings.Contains(string(out), "51999") || !strings.Contains(string(out), "10.70.0.2/32") {
		t.Fatalf("wg show lacks port or peer:\n%s", out)
	}
	if hs, err := s.LastHandshake(peer); err != nil || !hs.IsZero() {
		t.Fatalf("handshake %v %v", hs, err)
	}
	if err := s.RemovePeer(peer); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LastHandshake(peer); err != ErrNoPeer {
		t.Fatalf("removed peer: %v", err)
	}
}
