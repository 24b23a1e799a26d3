//go:build linux

package router

import (
	"context"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/platform/netns/netnstest"
)

// The monitor runs in a namespace of its own with a veth that carries the
// default routes, as a laptop's wifi would, next to links that carry none
// (a container's veth) and one it is told to ignore (the TUN). Only the
// first may count, and only when its default route really changes.
func TestMonitorSeesTheDefaultRouteLink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	lab := netnstest.Lab(t, "mvmon")
	client, err := lab.AddHost("c")
	if err != nil {
		t.Fatal(err)
	}
	peer, err := lab.AddHost("p")
	if err != nil {
		t.Fatal(err)
	}
	uplink, _, err := lab.Connect(client, []netip.Prefix{netip.MustParsePrefix("10.79.0.1/24"), netip.MustParsePrefix("fd79::1/64")},
		peer, []netip.Prefix{netip.MustParsePrefix("10.79.0.2/24"), netip.MustParsePrefix("fd79::2/64")})
	if err != nil {
		t.Fatal(err)
	}
	ip := func(args ...string) {
		t.Helper()
		if out, err := client.Output("ip", args...); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ip("route", "add", "default", "via", "10.79.0.2")
	ip("link", "add", "ctr0", "type", "veth", "peer", "name", "ctr1")
	ip("link", "add", "mvtun0", "type", "veth", "peer", "name", "mvtun1")
	ip("link", "set", "mvtun1", "up")
	ip("link", "set", "mvtun0", "up")
	ip("route", "add", "default", "dev", "mvtun0", "metric", "500")

	mon, err := NewMonitor(MonitorOptions{Ignore: []string{"mvtun0"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var changes <-chan Change
	if err := client.Do(func() (err error) {
		changes, err = mon.Changes(ctx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	next := func() Change {
		t.Helper()
		select {
		case c, ok := <-changes:
			if !ok {
				t.Fatal("changes closed early")
			}
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no change reported")
		}
		panic("unreachable")
	}

	// Noise first: none of it may be reported, so the first change seen
	// must be the uplink's.
	ip("link", "set", "ctr1", "up")
	ip("link", "set", "ctr0", "up")
	ip("link", "set", "ctr0", "down")
	ip("link", "set", "mvtun0", "down")
	ip("link", "set", "mvtun0", "up")
	ip("route", "add", "default", "dev", "mvtun0", "metric", "500")
	ip("route", "add", "default", "via", "10.79.0.2", "metric", "100") // the same way out again
	ip("link", "set", uplink, "down")
	if c := next(); !strings.Contains(c.Reason, uplink) {
		t.Fatalf("first change %q is not the uplink %s's", c.Reason, uplink)
	}
	// Drain what the uplink going down left (its IPv6 routes go too).
	for {
		select {
		case <-changes:
			continue
		default:
		}
		break
	}
	ip("link", "set", uplink, "up")
	ip("route", "add", "default", "via", "10.79.0.2")
	for {
		c := next()
		if strings.Contains(c.Reason, "IPv4 default route via "+uplink+" added") {
			break
		}
		if !strings.Contains(c.Reason, uplink) {
			t.Fatalf("change %q is not the uplink %s's", c.Reason, uplink)
		}
	}

	cancel()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-changes:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("changes not closed after ctx ended")
		}
	}
}
