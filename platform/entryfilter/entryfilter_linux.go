//go:build linux

package entryfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Set names: one per address family, each of address . port.
const (
	set4 = "exits4"
	set6 = "exits6"
)

// 32-bit registers for the port after a 4-byte and after a 16-byte
// address (NFT_REG32_01 and NFT_REG32_04), as nft itself lays out a
// concatenation that starts in register 1.
const (
	regPortAfter4  = 9
	regPortAfter16 = 12
)

// Filter is an installed filter. Its netlink socket was opened in the
// network namespace Install ran in, and every later change goes there,
// whichever thread makes it.
type Filter struct {
	cfg  Config
	log  *slog.Logger
	conn *nftables.Conn

	mu      sync.Mutex
	table   *nftables.Table
	sets    [2]*nftables.Set // IPv4, IPv6
	current []netip.AddrPort // what the sets hold, normalised
	closed  bool
}

// Install replaces any table of the same name with a filter that allows
// only cfg.Static, until SetExits adds the directory's exits. It fails
// closed: clients reach no exit before the first document.
func Install(cfg Config) (*Filter, error) {
	if cfg.Interface == "" || len(cfg.Interface) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("entryfilter: interface name %q is empty or too long", cfg.Interface)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("entryfilter: nftables: %w", err)
	}
	f := &Filter{cfg: cfg, log: log, conn: c, table: &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}}
	f.sets[0] = &nftables.Set{Table: f.table, Name: set4, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)}
	f.sets[1] = &nftables.Set{Table: f.table, Name: set6, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)}

	// Adding first makes the delete valid whether or not an old table (a
	// crashed gateway's) is there; all of it is one transaction.
	c.AddTable(f.table)
	c.DelTable(f.table)
	c.AddTable(f.table)
	for _, s := range f.sets {
		if err := c.AddSet(s, nil); err != nil {
			c.CloseLasting()
			return nil, fmt.Errorf("entryfilter: set %s: %w", s.Name, err)
		}
	}
	accept := nftables.ChainPolicyAccept
	chain := func(name string, hook *nftables.ChainHook) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: f.table, Type: nftables.ChainTypeFilter,
			Hooknum: hook, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	}
	fwd, in := chain("forward", nftables.ChainHookForward), chain("input", nftables.ChainHookInput)
	for _, r := range f.forwardRules() {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: fwd, Exprs: r})
	}
	for _, r := range f.inputRules() {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: in, Exprs: r})
	}
	static := normalise(cfg.Static)
	if err := f.fill(static); err != nil {
		c.CloseLasting()
		return nil, err
	}
	if err := c.Flush(); err != nil {
		c.CloseLasting()
		return nil, fmt.Errorf("entryfilter: install table inet %s: %w", TableName, err)
	}
	f.current = static
	log.Info("entry forward filter installed", "interface", cfg.Interface, "static_exits", len(static))
	return f, nil
}

// SetExits makes the allowed endpoints eps (the directory's exits) and
// the static ones, replacing the sets' contents in one transaction. An
// unchanged list costs nothing, so it may be called with every document.
func (f *Filter) SetExits(eps []netip.AddrPort) error {
	want := normalise(append(slices.Clone(f.cfg.Static), eps...))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return errors.New("entryfilter: closed")
	}
	if slices.Equal(want, f.current) {
		return nil
	}
	for _, s := range f.sets {
		f.conn.FlushSet(s)
	}
	if err := f.fill(want); err != nil {
		return err
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("entryfilter: update exits: %w", err)
	}
	f.log.Info("entry forward filter: allowed exits changed", "exits", want)
	f.current = want
	return nil
}

// Exits returns the endpoints the filter allows now.
func (f *Filter) Exits() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.current)
}

// fill queues adding eps to the sets; the caller flushes.
func (f *Filter) fill(eps []netip.AddrPort) error {
	var elems [2][]nftables.SetElement
	for _, ep := range eps {
		fam := 0
		if ep.Addr().Is6() {
			fam = 1
		}
		// A concatenation pads each field to a 4-byte register.
		key := binary.BigEndian.AppendUint16(ep.Addr().AsSlice(), ep.Port())
		elems[fam] = append(elems[fam], nftables.SetElement{Key: append(key, 0, 0)})
	}
	for i, s := range f.sets {
		if len(elems[i]) == 0 {
			continue
		}
		if err := f.conn.SetAddElements(s, elems[i]); err != nil {
			return fmt.Errorf("entryfilter: set %s: %w", s.Name, err)
		}
	}
	return nil
}

// forwardRules: the clients' UDP to an allowed endpoint passes, the rest
// from them is dropped; towards them only replies pass.
func (f *Filter) forwardRules() [][]expr.Any {
	iif, oif := ifname(expr.MetaKeyIIFNAME, f.cfg.Interface), ifname(expr.MetaKeyOIFNAME, f.cfg.Interface)
	toExit := func(proto byte, set *nftables.Set, addrOff, addrLen, portReg uint32) []expr.Any {
		return slices.Concat(iif, meta(expr.MetaKeyNFPROTO, proto), meta(expr.MetaKeyL4PROTO, unix.IPPROTO_UDP), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: addrOff, Len: addrLen},
			&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
			&expr.Verdict{Kind: expr.VerdictAccept},
		})
	}
	return [][]expr.Any{
		toExit(unix.NFPROTO_IPV4, f.sets[0], 16, 4, regPortAfter4),
		toExit(unix.NFPROTO_IPV6, f.sets[1], 24, 16, regPortAfter16),
		slices.Concat(iif, counterDrop()),
		slices.Concat(oif, []expr.Any{
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
				Xor:  binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}),
		slices.Concat(oif, counterDrop()),
	}
}

// inputRules: clients may ping the gateway's tunnel address; its services
// (metrics, links, anything else listening) are not theirs to reach.
func (f *Filter) inputRules() [][]expr.Any {
	iif := ifname(expr.MetaKeyIIFNAME, f.cfg.Interface)
	accept := []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}
	return [][]expr.Any{
		slices.Concat(iif, meta(expr.MetaKeyL4PROTO, unix.IPPROTO_ICMP), accept),
		slices.Concat(iif, meta(expr.MetaKeyL4PROTO, unix.IPPROTO_ICMPV6), accept),
		slices.Concat(iif, counterDrop()),
	}
}

func meta(key expr.MetaKey, v byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{v}}}
}

// ifname matches an interface name; the kernel compares whole IFNAMSIZ
// buffers, so the name is padded.
func ifname(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b}}
}

func counterDrop() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
}

// Close removes the table. The gateway's clients then forward nothing
// through the filter's rules; whatever else the host's firewall says
// applies.
func (f *Filter) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	defer f.conn.CloseLasting()
	f.conn.DelTable(f.table)
	if err := f.conn.Flush(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("entryfilter: remove table: %w", err)
	}
	return nil
}
