//go:build !linux

package exitnat

import (
	"errors"
	"net/netip"

	"golang.zx2c4.com/wireguard/tun"
)

// Config describes the exit's device.
type Config struct {
	Name             string
	MTU              int
	Prefix4, Prefix6 netip.Prefix
	Extra            []netip.Prefix
}

// Device is the exit's TUN device.
type Device struct{ tun.Device }

// Open is not supported on this operating system yet.
func Open(Config) (*Device, error) {
	return nil, errors.New("exitnat: exit gateways run on Linux only for now")
}

// EnableForwarding is not supported on this operating system yet.
func EnableForwarding() error { return errors.New("exitnat: Linux only for now") }

// Masquerade is not supported on this operating system yet.
func Masquerade(string, ...netip.Prefix) error { return errors.New("exitnat: Linux only for now") }

// RemoveTable is not supported on this operating system yet.
func RemoveTable(string) error { return nil }
