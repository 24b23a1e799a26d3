package tunnel

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// tcpSegment builds an IP/TCP packet from src:40000 to dst:80 with the
// given flags, sequence numbers and payload length.
func tcpSegment(src, dst netip.Addr, flags header.TCPFlags, seq, ack uint32, payload int) []byte {
	ipLen := header.IPv4MinimumSize
	if src.Is6() {
		ipLen = header.IPv6MinimumSize
	}
	p := make([]byte, ipLen+header.TCPMinimumSize+payload)
	s, d := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	if src.Is4() {
		header.IPv4(p).Encode(&header.IPv4Fields{TotalLength: uint16(len(p)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: s, DstAddr: d})
	} else {
		header.IPv6(p).Encode(&header.IPv6Fields{PayloadLength: uint16(len(p) - ipLen), TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: s, DstAddr: d})
	}
	header.TCP(p[ipLen:]).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: seq, AckNum: ack, DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1000})
	return p
}

// checkReset parses r as the reset answering a segment from src to dst
// and returns its TCP header, failing on a bad address, port or checksum.
func checkReset(t *testing.T, r []byte, src, dst netip.Addr) header.TCP {
	t.Helper()
	var tcp header.TCP
	var from, to tcpip.Address
	if src.Is4() {
		ip := header.IPv4(r)
		if !ip.IsValid(len(r)) || !ip.IsChecksumValid() || ip.TransportProtocol() != header.TCPProtocolNumber {
			t.Fatalf("bad IPv4 header in reset % x", r)
		}
		from, to, tcp = ip.SourceAddress(), ip.DestinationAddress(), header.TCP(ip.Payload())
	} else {
		ip := header.IPv6(r)
		if !ip.IsValid(len(r)) || ip.TransportProtocol() != header.TCPProtocolNumber {
			t.Fatalf("bad IPv6 header in reset % x", r)
		}
		from, to, tcp = ip.SourceAddress(), ip.DestinationAddress(), header.TCP(ip.Payload())
	}
	if f, _ := netip.AddrFromSlice(from.AsSlice()); f != dst {
		t.Fatalf("reset from %v, want from %v", from, dst)
	}
	if to, _ := netip.AddrFromSlice(to.AsSlice()); to != src {
		t.Fatalf("reset to %v, want to %v", to, src)
	}
	if tcp.SourcePort() != 80 || tcp.DestinationPort() != 40000 {
		t.Fatalf("reset ports %d → %d", tcp.SourcePort(), tcp.DestinationPort())
	}
	if !tcp.IsChecksumValid(from, to, 0, 0) {
		t.Fatal("reset's TCP checksum is wrong")
	}
	return tcp
}

func TestSourcesOwns(t *testing.T) {
	v6 := netip.MustParseAddr("fd00::2")
	s := newSources([]netip.Addr{mine, v6, {}})
	for _, c := range []struct {
		p    []byte
		want bool
	}{
		{tuntest.Ping(remote, mine), true},
		{tcpSegment(v6, netip.MustParseAddr("fd00::80"), header.TCPFlagAck, 1, 1, 0), true},
		{tuntest.Ping(remote, netip.MustParseAddr("10.151.0.2")), false},
		{tcpSegment(netip.MustParseAddr("fd00::3"), v6, header.TCPFlagAck, 1, 1, 0), false},
		{tuntest.Ping(remote, mine)[:12], false},
		{nil, false},
		{[]byte{0x50, 0, 0, 0}, false},
	} {
		if got := s.owns(c.p); got != c.want {
			t.Errorf("owns(% x…) = %v", c.p[:min(len(c.p), 16)], got)
		}
	}
	var none *sources
	if none.owns(tuntest.Ping(remote, mine)) {
		t.Error("no sources still own a packet")
	}
}

func TestResetFor(t *testing.T) {
	stale4, stale6 := netip.MustParseAddr("10.151.0.2"), netip.MustParseAddr("fd00:6d77:51::2")
	dst4, dst6 := remote, netip.MustParseAddr("fd6d:7876::80")
	buf := make([]byte, readOffset+maxReset)
	for _, c := range []struct {
		name          string
		src, dst      netip.Addr
		flags         header.TCPFlags
		seq, ack      uint32
		payload       int
		wantFlags     header.TCPFlags
		wantSeq, wAck uint32
	}{
		// An established connection's data: the reset takes the
		// segment's ACK as its sequence number, which the sender accepts.
		{"data v4", stale4, dst4, header.TCPFlagAck | header.TCPFlagPsh, 1000, 5000, 100, header.TCPFlagRst, 5000, 0},
		{"data v6", stale6, dst6, header.TCPFlagAck, 7, 9, 0, header.TCPFlagRst, 9, 0},
		// A SYN has no ACK: the reset acknowledges it.
		{"syn", stale4, dst4, header.TCPFlagSyn, 41, 0, 0, header.TCPFlagRst | header.TCPFlagAck, 0, 42},
		{"fin with data", stale6, dst6, header.TCPFlagFin, 10, 0, 5, header.TCPFlagRst | header.TCPFlagAck, 0, 16},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := resetFor(tcpSegment(c.src, c.dst, c.flags, c.seq, c.ack, c.payload), buf, readOffset)
			if n == 0 {
				t.Fatal("no reset")
			}
			tcp := checkReset(t, buf[readOffset:readOffset+n], c.src, c.dst)
			if tcp.Flags() != c.wantFlags || tcp.SequenceNumber() != c.wantSeq || tcp.AckNumber() != c.wAck {
				t.Fatalf("reset %v seq %d ack %d, want %v seq %d ack %d", tcp.Flags(), tcp.SequenceNumber(), tcp.AckNumber(), c.wantFlags, c.wantSeq, c.wAck)
			}
		})
	}

	frag := tcpSegment(stale4, dst4, header.TCPFlagAck, 1, 1, 8)
	header.IPv4(frag).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	lying := tcpSegment(stale4, dst4, header.TCPFlagAck, 1, 1, 0)
	header.IPv4(lying).SetTotalLength(1500)
	for name, p := range map[string][]byte{
		"a reset":               tcpSegment(stale4, dst4, header.TCPFlagRst|header.TCPFlagAck, 1, 1, 0),
		"ICMP":                  tuntest.Ping(dst4, stale4),
		"a fragment":            frag,
		"a length past the end": lying,
		"truncated TCP":         tcpSegment(stale4, dst4, header.TCPFlagAck, 1, 1, 0)[:30],
		"not IP":                {0x10, 2, 3},
	} {
		if n := resetFor(p, buf, readOffset); n != 0 {
			t.Errorf("%s answered with a %d-byte reset", name, n)
		}
	}
	if n := resetFor(tcpSegment(stale6, dst6, header.TCPFlagAck, 1, 1, 0), buf[:readOffset+50], readOffset); n != 0 {
		t.Error("reset written past the buffer")
	}
}

// TestLeaseRefusesOtherSources: a new lease passes nothing until it has
// its addresses (and resets nothing), then only packets from them; a TCP segment from another
// address (a connection of the last tunnel) is answered with a reset
// into the device and never reaches the holder.
func TestLeaseRefusesOtherSources(t *testing.T) {
	ch := tuntest.NewChannelTUN()
	s := NewShared(ch.TUN())
	defer s.Close()
	l := s.Lease()
	stale := netip.MustParseAddr("10.151.0.2")

	// refused sends p and expects the holder's read to come back empty
	// and, if reset, a reset for p from src in the device.
	refused := func(p []byte, src netip.Addr, reset bool) header.TCP {
		t.Helper()
		got := make(chan []byte, 1)
		go func() {
			b, _ := readOne(t, l)
			got <- b
		}()
		ch.Outbound <- p
		var tcp header.TCP
		if reset {
			select {
			case r := <-ch.Inbound:
				tcp = checkReset(t, r, src, remote)
			case <-time.After(5 * time.Second):
				t.Fatal("no reset")
			}
		}
		if b := <-got; b != nil {
			t.Fatalf("the holder read % x", b)
		}
		return tcp
	}

	// Before Allow, every packet is refused, and none is reset: the
	// tunnel coming up may get the same addresses again.
	refused(tcpSegment(mine, remote, header.TCPFlagAck, 1, 2, 10), mine, false)

	l.Allow([]netip.Addr{mine})
	if tcp := refused(tcpSegment(stale, remote, header.TCPFlagAck|header.TCPFlagPsh, 100, 200, 10), stale, true); tcp.SequenceNumber() != 200 {
		t.Fatalf("reset seq %d, want the segment's ack 200", tcp.SequenceNumber())
	}
	refused(tuntest.Ping(remote, stale), stale, false) // dropped, unanswered
	ch.Outbound <- packet("mine")
	if p, err := readOne(t, l); err != nil || !bytes.Equal(p, packet("mine")) {
		t.Fatalf("read %q, %v: want the holder's own packet", p, err)
	}
	if refused, resets := s.Refused(); refused != 3 || resets != 1 {
		t.Fatalf("refused %d, resets %d; want 3 and 1", refused, resets)
	}
	select {
	case r := <-ch.Inbound:
		t.Fatalf("unexpected write to the device: % x", r)
	default:
	}
}

// FuzzLeaseFilter feeds the filter what a local application could write
// into the TUN: whatever it is, deciding its source and building a reset
// must not panic, and a reset built must be a valid one addressed back.
func FuzzLeaseFilter(f *testing.F) {
	buf := make([]byte, readOffset+maxReset)
	s := newSources([]netip.Addr{mine})
	f.Fuzz(func(t *testing.T, p []byte) {
		s.owns(p)
		n := resetFor(p, buf, readOffset)
		if n == 0 {
			return
		}
		r := buf[readOffset : readOffset+n]
		var ok bool
		switch r[0] >> 4 {
		case 4:
			ok = header.IPv4(r).IsValid(n) && header.IPv4(r).IsChecksumValid()
		case 6:
			ok = header.IPv6(r).IsValid(n)
		}
		if !ok || !header.TCP(r[n-header.TCPMinimumSize:]).Flags().Contains(header.TCPFlagRst) {
			t.Fatalf("invalid reset % x for % x", r, p)
		}
	})
}
