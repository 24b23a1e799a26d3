package gateway

import (
	"errors"
	"net/netip"
)

// pool hands out pairs of inner addresses, the same host number in an IPv4
// and an IPv6 prefix, skipping the network address and the gateway's own
// first host. It is not safe for concurrent use; callers hold their lock.
type pool struct {
	v4, v6 netip.Prefix
	next   uint32
	hosts  uint32
	used   map[netip.Addr]bool
}

func newPool(v4, v6 netip.Prefix) *pool {
	return &pool{v4: v4.Masked(), v6: v6.Masked(), next: 2, hosts: uint32(1)<<(32-v4.Bits()) - 2, used: make(map[netip.Addr]bool)}
}

// take returns a free pair.
func (p *pool) take() (netip.Addr, netip.Addr, error) {
	for range p.hosts {
		h := p.next
		p.next++
		if p.next > p.hosts {
			p.next = 2
		}
		a4, a6 := addHost(p.v4.Addr(), h), addHost(p.v6.Addr(), h)
		if !p.used[a4] && !p.used[a6] {
			p.used[a4], p.used[a6] = true, true
			return a4, a6, nil
		}
	}
	return netip.Addr{}, netip.Addr{}, errors.New("gateway: address pool exhausted")
}

// give returns a pair to the pool.
func (p *pool) give(a4, a6 netip.Addr) {
	delete(p.used, a4)
	delete(p.used, a6)
}

func addHost(base netip.Addr, h uint32) netip.Addr {
	b := base.AsSlice()
	for i := len(b) - 1; i >= 0 && h > 0; i-- {
		sum := uint32(b[i]) + h&0xff
		b[i] = byte(sum)
		h = h>>8 + sum>>8
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
