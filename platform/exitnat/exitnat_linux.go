//go:build linux

// Package exitnat gives an exit gateway its way to the internet: a TUN
// device holding the sessions' address pools, routes for them, IP
// forwarding, and an nftables masquerade so that sessions' traffic leaves
// with the gateway's own address.
package exitnat

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// TableName is the nftables table the exit owns.
const TableName = "mixvpn_exit"

// Config describes the exit's device.
type Config struct {
	// Name of the TUN device; default "mvexit0".
	Name string
	// MTU of the device; default 1500.
	MTU int
	// Prefix4 and Prefix6 are the sessions' pools; the device takes the
	// first host address of each.
	Prefix4, Prefix6 netip.Prefix
	// Extra are further source prefixes to masquerade, such as the
	// gateway's WireGuard clients.
	Extra []netip.Prefix
}

// Device is the exit's TUN device with its NAT in place.
type Device struct {
	tun.Device
	name string
}

// Open creates the device, its addresses, forwarding and the masquerade.
func Open(cfg Config) (*Device, error) {
	if cfg.Name == "" {
		cfg.Name = "mvexit0"
	}
	if cfg.MTU <= 0 {
		cfg.MTU = 1500
	}
	dev, err := tun.CreateTUN(cfg.Name, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("exitnat: create TUN %s: %w", cfg.Name, err)
	}
	d := &Device{Device: dev, name: cfg.Name}
	if err := d.setup(cfg); err != nil {
		dev.Close()
		return nil, err
	}
	return d, nil
}

func (d *Device) setup(cfg Config) error {
	l, err := netlink.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("exitnat: find %s: %w", d.name, err)
	}
	for _, p := range []netip.Prefix{cfg.Prefix4, cfg.Prefix6} {
		host := p.Masked().Addr().Next()
		ipnet := &net.IPNet{IP: host.AsSlice(), Mask: net.CIDRMask(p.Bits(), host.BitLen())}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipnet, Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("exitnat: address %v: %w", ipnet, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("exitnat: up %s: %w", d.name, err)
	}
	if err := EnableForwarding(); err != nil {
		return err
	}
	return Masquerade(TableName, append([]netip.Prefix{cfg.Prefix4, cfg.Prefix6}, cfg.Extra...)...)
}

// EnableForwarding turns on IPv4 and IPv6 forwarding in this namespace.
func EnableForwarding() error {
	for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(f, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("exitnat: enable forwarding: %w", err)
		}
	}
	return nil
}

// Masquerade installs, atomically, a table of the given name that NATs the
// prefixes' traffic to the outgoing interface's address. RemoveTable
// takes it away.
func Masquerade(name string, prefixes ...netip.Prefix) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("exitnat: nftables: %w", err)
	}
	table := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	c.AddTable(table)
	c.FlushTable(table)
	chain := c.AddChain(&nftables.Chain{
		Name: "postrouting", Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	for _, p := range prefixes {
		c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: sourceIn(p, &expr.Masq{})})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("exitnat: install masquerade: %w", err)
	}
	return nil
}

// sourceIn matches packets whose source address lies in p, then runs then.
func sourceIn(p netip.Prefix, then expr.Any) []expr.Any {
	p = p.Masked()
	proto, offset := byte(unix.NFPROTO_IPV4), uint32(12)
	if p.Addr().Is6() {
		proto, offset = unix.NFPROTO_IPV6, 8
	}
	size := uint32(p.Addr().BitLen() / 8)
	mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: size, Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()},
		then,
	}
}

// RemoveTable deletes a table made by Masquerade.
func RemoveTable(name string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("exitnat: nftables: %w", err)
	}
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: name})
	if err := c.Flush(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("exitnat: remove table: %w", err)
	}
	return nil
}

// Close removes the NAT table and the device.
func (d *Device) Close() error {
	var errs []error
	if err := RemoveTable(TableName); err != nil {
		errs = append(errs, err)
	}
	if err := d.Device.Close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
