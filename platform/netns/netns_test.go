//go:build linux

package netns

import (
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
)

func TestLabPingAcrossBridge(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	lab, err := NewLab("mvt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
		if left := Leftovers(lab.ID()); len(left) != 0 {
			t.Errorf("namespaces left: %v", left)
		}
	})
	hub, err := lab.AddHost("hub")
	if err != nil {
		t.Fatal(err)
	}
	if err := hub.Bridge(); err != nil {
		t.Fatal(err)
	}
	a, _ := lab.AddHost("a")
	b, _ := lab.AddHost("b")
	if _, err := lab.Attach(hub, a, []netip.Prefix{netip.MustParsePrefix("198.51.100.1/24"), netip.MustParsePrefix("fd00:5::1/64")}); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Attach(hub, b, []netip.Prefix{netip.MustParsePrefix("198.51.100.2/24"), netip.MustParsePrefix("fd00:5::2/64")}); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{"198.51.100.2", "fd00:5::2"} {
		out, err := a.Output("ping", "-c", "1", "-W", "2", dst)
		if err != nil {
			t.Fatalf("ping %s: %v %s", dst, err, out)
		}
		if !strings.Contains(out, "1 received") {
			t.Fatalf("ping %s: %s", dst, out)
		}
	}
}

func TestNotRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("runs only as an unprivileged user")
	}
	if _, err := NewLab("mvt"); !errors.Is(err, ErrNotRoot) {
		t.Fatalf("got %v", err)
	}
}
