//go:build linux

package netns

import (
	"errors"
	"fmt"
	"runtime"

	vnetns "github.com/vishvananda/netns"
)

// Do runs f on an OS thread switched into h's namespace, for work that
// needs the namespace from inside this process (netlink, nftables,
// sockets). Sockets and devices f opens stay in that namespace, whichever
// thread later uses them.
func (h *Host) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := vnetns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		target, err := vnetns.GetFromName(h.NS)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := vnetns.Set(target); err != nil {
			errc <- fmt.Errorf("netns: enter %s: %w", h.NS, err)
			return
		}
		ferr := f()
		if err := vnetns.Set(orig); err != nil {
			// The thread stays locked, so the runtime discards it
			// instead of running other goroutines in the wrong namespace.
			errc <- errors.Join(ferr, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
