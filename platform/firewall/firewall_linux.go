//go:build linux

package firewall

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// nftFirewall talks to nftables over netlink. Every operation opens its
// socket anew, in the network namespace of the calling thread.
type nftFirewall struct {
	log *slog.Logger
}

// New returns the nftables firewall. It changes nothing until Apply.
func New(opts Options) (Firewall, error) {
	f := &nftFirewall{log: opts.Logger}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	return f, nil
}

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

// Apply sends deleting the old table and adding the new one as one
// netlink batch, which the kernel commits as one transaction.
func (f *nftFirewall) Apply(ctx context.Context, p Policy) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("firewall: apply: %w", err)
	}
	if err := p.Validate(); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("firewall: nftables: %w", err)
	}
	t := table()
	// Adding first makes the delete valid whether or not a table exists.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	hooks := map[string]*nftables.ChainHook{
		"input":   nftables.ChainHookInput,
		"output":  nftables.ChainHookOutput,
		"forward": nftables.ChainHookForward,
	}
	drop := nftables.ChainPolicyDrop
	for _, ch := range ruleset(p) {
		nc := c.AddChain(&nftables.Chain{
			Name:     ch.name,
			Table:    t,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  hooks[ch.name],
			Priority: nftables.ChainPriorityFilter,
			Policy:   &drop,
		})
		for _, r := range ch.rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: nc, Exprs: r.exprs()})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: install table inet %s: %w", TableName, err)
	}
	f.log.Info("firewall applied", "interface", p.Interface, "endpoints", len(p.Endpoints), "allow_lan", p.AllowLAN, "allow_dhcp", p.AllowDHCP)
	return nil
}

// Remove adds and deletes the table in one batch, so that it succeeds
// whether or not the table is there.
func (f *nftFirewall) Remove() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("firewall: nftables: %w", err)
	}
	c.AddTable(table())
	c.DelTable(table())
	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: delete table inet %s: %w", TableName, err)
	}
	f.log.Info("firewall removed")
	return nil
}

// exprs encodes r the way nft itself does, so that `nft list` shows the
// same text Render writes.
func (r rule) exprs() []expr.Any {
	var e []expr.Any
	cmp := func(data []byte) {
		e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data})
	}
	meta := func(k expr.MetaKey, data []byte) {
		e = append(e, &expr.Meta{Key: k, Register: 1})
		cmp(data)
	}
	load := func(base expr.PayloadBase, off, n uint32) {
		e = append(e, &expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n})
	}
	if r.iifLo {
		meta(expr.MetaKeyIIF, binaryutil.NativeEndian.PutUint32(1)) // loopback is ifindex 1 in every namespace
	}
	if r.oifLo {
		meta(expr.MetaKeyOIF, binaryutil.NativeEndian.PutUint32(1))
	}
	if r.iifname != "" {
		meta(expr.MetaKeyIIFNAME, ifname(r.iifname))
	}
	if r.oifname != "" {
		meta(expr.MetaKeyOIFNAME, ifname(r.oifname))
	}
	if r.established {
		e = append(e,
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
				Xor:  binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		)
	}
	for _, a := range []struct {
		p   netip.Prefix
		dst bool
	}{{r.src, false}, {r.dst, true}} {
		if !a.p.IsValid() {
			continue
		}
		ip := a.p.Addr().AsSlice()
		off := uint32(12) // IPv4 source
		if a.p.Addr().Is6() {
			meta(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV6})
			off = 8
		} else {
			meta(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV4})
		}
		if a.dst {
			off += uint32(len(ip))
		}
		bits := a.p.Bits()
		if bits%8 == 0 {
			load(expr.PayloadBaseNetworkHeader, off, uint32(bits/8))
			cmp(ip[:bits/8])
			continue
		}
		load(expr.PayloadBaseNetworkHeader, off, uint32(len(ip)))
		mask := make([]byte, len(ip))
		for i := range bits {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(ip)), Mask: mask, Xor: make([]byte, len(ip))})
		cmp(ip)
	}
	if r.l4 != 0 {
		meta(expr.MetaKeyL4PROTO, []byte{r.l4})
	}
	if r.sport != 0 {
		load(expr.PayloadBaseTransportHeader, 0, 2)
		cmp(binary.BigEndian.AppendUint16(nil, r.sport))
	}
	if r.dport != 0 {
		load(expr.PayloadBaseTransportHeader, 2, 2)
		cmp(binary.BigEndian.AppendUint16(nil, r.dport))
	}
	if r.icmp6 >= 0 {
		load(expr.PayloadBaseTransportHeader, 0, 1)
		cmp([]byte{uint8(r.icmp6)})
	}
	return append(e, &expr.Verdict{Kind: expr.VerdictAccept})
}

// ifname pads a name to IFNAMSIZ as the kernel compares whole buffers.
func ifname(s string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, s)
	return b
}
