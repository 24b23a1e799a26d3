package tunnel

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// sources are the inner addresses a lease's holder was given: the only
// ones it may send from. Every mode gets its own addresses from its exit,
// so a packet from any other source belongs to a connection of an
// earlier tunnel. Sending it would show the new exit (and the server at
// the far end) a flow that started under the old identity, linking the
// two: an anonymous session to the Fast-mode client it was before.
type sources struct {
	v4 [][4]byte
	v6 [][16]byte
}

func newSources(addrs []netip.Addr) *sources {
	s := &sources{}
	for _, a := range addrs {
		switch {
		case a.Is4() || a.Is4In6():
			s.v4 = append(s.v4, a.Unmap().As4())
		case a.Is6():
			s.v6 = append(s.v6, a.As16())
		}
	}
	return s
}

// owns says whether the IP packet p is from one of the addresses.
func (s *sources) owns(p []byte) bool {
	if s == nil || len(p) == 0 {
		return false
	}
	switch p[0] >> 4 {
	case 4:
		if len(p) < header.IPv4MinimumSize {
			return false
		}
		src := [4]byte(p[12:16])
		for _, a := range s.v4 {
			if a == src {
				return true
			}
		}
	case 6:
		if len(p) < header.IPv6MinimumSize {
			return false
		}
		src := [16]byte(p[8:24])
		for _, a := range s.v6 {
			if a == src {
				return true
			}
		}
	}
	return false
}

// maxReset is the longest reset resetFor builds: IPv6 and TCP headers.
const maxReset = header.IPv6MinimumSize + header.TCPMinimumSize

// resetFor builds, at buf[off:], the TCP reset a host answers a segment
// for a connection it does not know with (RFC 9293 §3.10.7.1), addressed
// back to p's sender, and returns its length; 0 if p is not a TCP segment
// that may be answered (a reset itself, a fragment, or malformed). The
// application then fails at once and connects again from the new
// address, instead of retransmitting into nothing for minutes.
func resetFor(p []byte, buf []byte, off int) int {
	var (
		ipLen         int
		src, dst      tcpip.Address
		tcpOff, total int
	)
	switch {
	case len(p) >= header.IPv4MinimumSize && p[0]>>4 == 4:
		ip := header.IPv4(p)
		ihl := int(ip.HeaderLength())
		total = int(ip.TotalLength())
		if ip.TransportProtocol() != header.TCPProtocolNumber || ihl < header.IPv4MinimumSize || total > len(p) || total < ihl ||
			ip.FragmentOffset() != 0 || ip.More() {
			return 0
		}
		ipLen, tcpOff, src, dst = header.IPv4MinimumSize, ihl, ip.SourceAddress(), ip.DestinationAddress()
	case len(p) >= header.IPv6MinimumSize && p[0]>>4 == 6:
		ip := header.IPv6(p)
		total = header.IPv6MinimumSize + int(ip.PayloadLength())
		// Only a TCP header right after the fixed header: extension
		// headers are rare on a client's own connections, and a packet
		// that goes unanswered is still never sent.
		if ip.TransportProtocol() != header.TCPProtocolNumber || total > len(p) {
			return 0
		}
		ipLen, tcpOff, src, dst = header.IPv6MinimumSize, header.IPv6MinimumSize, ip.SourceAddress(), ip.DestinationAddress()
	default:
		return 0
	}
	if total-tcpOff < header.TCPMinimumSize {
		return 0
	}
	seg := header.TCP(p[tcpOff:total])
	dataOff := int(seg.DataOffset())
	if dataOff < header.TCPMinimumSize || dataOff > len(seg) || seg.Flags().Contains(header.TCPFlagRst) {
		return 0
	}
	f := header.TCPFields{SrcPort: seg.DestinationPort(), DstPort: seg.SourcePort(), DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagRst}
	if seg.Flags().Contains(header.TCPFlagAck) {
		f.SeqNum = seg.AckNumber()
	} else {
		segLen := uint32(len(seg) - dataOff)
		if seg.Flags().Contains(header.TCPFlagSyn) {
			segLen++
		}
		if seg.Flags().Contains(header.TCPFlagFin) {
			segLen++
		}
		f.AckNum = seg.SequenceNumber() + segLen
		f.Flags |= header.TCPFlagAck
	}
	n := ipLen + header.TCPMinimumSize
	if len(buf) < off+n {
		return 0
	}
	out := buf[off : off+n]
	clear(out)
	// The reset comes from the far end, as the network would send it.
	if ipLen == header.IPv4MinimumSize {
		ip := header.IPv4(out)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(n), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: dst, DstAddr: src})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(out).Encode(&header.IPv6Fields{PayloadLength: header.TCPMinimumSize, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: dst, DstAddr: src})
	}
	tcp := header.TCP(out[ipLen:])
	tcp.Encode(&f)
	tcp.SetChecksum(^tcp.CalculateChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, dst, src, header.TCPMinimumSize)))
	return n
}
