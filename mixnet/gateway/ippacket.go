package gateway

import (
	"errors"
	"net/netip"
)

var errNotIP = errors.New("gateway: not an IPv4 or IPv6 packet")

// ipAddrs returns an IP packet's source and destination addresses.
func ipAddrs(pkt []byte) (src, dst netip.Addr, err error) {
	if len(pkt) < 1 {
		return src, dst, errNotIP
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return src, dst, errNotIP
		}
		return netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20])), nil
	case 6:
		if len(pkt) < 40 {
			return src, dst, errNotIP
		}
		return netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40])), nil
	}
	return src, dst, errNotIP
}
