//go:build linux

package daemon

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/platform/netns/netnstest"
)

// The boot ruleset the daemon writes under lockdown is what
// mixvpn-lockdown.service loads before the network comes up: nft must
// accept it, and once loaded it must let through the directory (and,
// written while connected, the entry) and nothing else. It is loaded in
// a namespace of the test's own, never the host's.
func TestBootRulesetLoadsAndBlocks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft from the nftables package (make deps installs it)")
	}
	lab := netnstest.Lab(t, "mvld")
	client, err := lab.AddHost("c")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := lab.AddHost("p")
	if err != nil {
		t.Fatal(err)
	}
	// The peer is the directory (192.0.2.2:8080) and the entry
	// (192.0.2.11:1789) of the rig's document.
	if _, _, err := lab.Connect(client, []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")},
		peer, []netip.Prefix{netip.MustParsePrefix("192.0.2.2/24"), netip.MustParsePrefix("192.0.2.11/24")}); err != nil {
		t.Fatal(err)
	}
	var listeners []net.Listener
	for _, a := range []string{"192.0.2.2:8080", "192.0.2.2:8081", "192.0.2.11:1789"} {
		if err := peer.Do(func() error {
			l, err := net.Listen("tcp", a)
			listeners = append(listeners, l)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	var local net.Listener
	if err := client.Do(func() (err error) {
		local, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	listeners = append(listeners, local)
	t.Cleanup(func() {
		for _, l := range listeners {
			l.Close()
		}
	})
	reaches := func(addr string) bool {
		var c net.Conn
		err := client.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", addr, time.Second)
			return err
		})
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	for _, a := range []string{"192.0.2.2:8080", "192.0.2.2:8081", "192.0.2.11:1789"} {
		if !reaches(a) {
			t.Fatalf("%s unreachable before any ruleset", a)
		}
	}
	load := func(file string) {
		t.Helper()
		if out, err := client.Output("nft", "-c", "-f", file); err != nil {
			t.Fatalf("nft -c rejects the boot ruleset: %v\n%s", err, out)
		}
		if out, err := client.Output("nft", "-f", file); err != nil {
			t.Fatalf("nft -f: %v\n%s", err, out)
		}
	}

	r := newRig(t, "", `{"lockdown": true}`)
	r.watching(t)
	idle := filepath.Join(t.TempDir(), "idle.nft")
	copyFile(t, filepath.Join(r.dir, "lockdown.nft"), idle)
	r.connect(t)
	load(idle)
	switch {
	case !reaches("192.0.2.2:8080"):
		t.Fatal("the boot ruleset blocks the directory")
	case reaches("192.0.2.2:8081"):
		t.Fatal("the boot ruleset lets another port of the directory's host through")
	case reaches("192.0.2.11:1789"):
		t.Fatal("the boot ruleset of a disconnected daemon lets the entry through")
	case !reaches(local.Addr().String()):
		t.Fatal("the boot ruleset blocks loopback")
	case client.Run("ping", "-n", "-c", "1", "-W", "1", "192.0.2.2") == nil:
		t.Fatal("the boot ruleset lets ping through")
	}

	// Written while connected, it lets the entry through as well.
	load(filepath.Join(r.dir, "lockdown.nft"))
	if !reaches("192.0.2.11:1789") || !reaches("192.0.2.2:8080") || reaches("192.0.2.2:8081") {
		t.Fatal("the connected boot ruleset does not allow exactly the directory and the entry")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
