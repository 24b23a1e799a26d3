//go:build !linux

package entryfilter

import (
	"errors"
	"net/netip"
)

// Filter is the entry's forward filter; gateways run on Linux only for now.
type Filter struct{}

// Install is not supported on this operating system yet.
func Install(Config) (*Filter, error) {
	return nil, errors.New("entryfilter: entry gateways run on Linux only for now")
}

// SetExits is not supported on this operating system yet.
func (*Filter) SetExits([]netip.AddrPort) error { return errors.New("entryfilter: Linux only for now") }

// Exits returns nothing on this operating system.
func (*Filter) Exits() []netip.AddrPort { return nil }

// Close does nothing.
func (*Filter) Close() error { return nil }
