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
}

// Device is the exit's TUN device.
type Device struct{ tun.Device }

// Open is not supported on this operating system yet.
func Open(Config) (*Device, error) {
	return nil, errors.New("exitnat: exit gateways run on Linux only for now")
}
