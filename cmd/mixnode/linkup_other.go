//go:build !linux

package main

import (
	"fmt"
	"net/netip"
	"runtime"
)

// linkUp fails: it configures the device over netlink, which only Linux
// has. The single-hop baseline never gets here elsewhere, since it runs
// inside a network namespace, which netns refuses to enter first.
func linkUp(name string, addr netip.Prefix) error {
	return fmt.Errorf("up %s: configuring a link is not supported on %s", name, runtime.GOOS)
}
