package socks

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
)

// The wire format of RFC 1928: method negotiation without
// authentication, requests, replies and UDP ASSOCIATE's datagrams.
const (
	version5     = 0x05
	methodNoAuth = 0x00
	methodNone   = 0xff

	atypIPv4   = 0x01
	atypDomain = 0x03
	atypIPv6   = 0x04
)

// Command is what a request asks for.
type Command byte

// Commands of RFC 1928.
const (
	CmdConnect      Command = 0x01
	CmdBind         Command = 0x02
	CmdUDPAssociate Command = 0x03
)

// Reply is the code a server answers a request with.
type Reply byte

// Reply codes of RFC 1928.
const (
	ReplySucceeded           Reply = 0x00
	ReplyGeneralFailure      Reply = 0x01
	ReplyNotAllowed          Reply = 0x02
	ReplyNetworkUnreachable  Reply = 0x03
	ReplyHostUnreachable     Reply = 0x04
	ReplyConnectionRefused   Reply = 0x05
	ReplyTTLExpired          Reply = 0x06
	ReplyCommandNotSupported Reply = 0x07
	ReplyAddressNotSupported Reply = 0x08
)

// Errors of malformed or unsupported client messages.
var (
	ErrVersion     = errors.New("socks: not SOCKS version 5")
	ErrNoMethod    = errors.New("socks: the client offers no method but \"no authentication\"")
	ErrAddressType = errors.New("socks: unknown address type")
	ErrName        = errors.New("socks: invalid domain name")
	ErrMessage     = errors.New("socks: malformed message")
)

// Addr is a request's destination. Exactly one of Name and IP is set: a
// name is passed on as it came, never resolved on this side of the tunnel.
type Addr struct {
	Name string
	IP   netip.Addr
	Port uint16
}

// String is host:port, the form net.Dial takes.
func (a Addr) String() string {
	host := a.Name
	if a.IP.IsValid() {
		host = a.IP.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(int(a.Port)))
}

// Request is a client's request after the method negotiation.
type Request struct {
	Command Command
	Dest    Addr
}

// readGreeting reads the client's method selection message and reports
// whether it offers "no authentication", the only method served.
func readGreeting(r io.Reader) (bool, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return false, fmt.Errorf("socks: greeting: %w", err)
	}
	if hdr[0] != version5 {
		return false, fmt.Errorf("%w: version %d", ErrVersion, hdr[0])
	}
	if hdr[1] == 0 {
		return false, fmt.Errorf("%w: empty method list", ErrMessage)
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(r, methods); err != nil {
		return false, fmt.Errorf("socks: greeting methods: %w", err)
	}
	for _, m := range methods {
		if m == methodNoAuth {
			return true, nil
		}
	}
	return false, nil
}

// readRequest reads one request. An error wrapping ErrAddressType or
// ErrName is answered with ReplyAddressNotSupported; others close the
// connection, since the stream can no longer be trusted to be in step.
func readRequest(r io.Reader) (Request, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Request{}, fmt.Errorf("socks: request: %w", err)
	}
	if hdr[0] != version5 {
		return Request{}, fmt.Errorf("%w: request version %d", ErrVersion, hdr[0])
	}
	if hdr[2] != 0 {
		return Request{}, fmt.Errorf("%w: reserved byte %#x", ErrMessage, hdr[2])
	}
	req := Request{Command: Command(hdr[1])}
	var err error
	req.Dest, err = readAddr(r, hdr[3])
	return req, err
}

// readAddr reads an address of type atyp and its port.
func readAddr(r io.Reader, atyp byte) (Addr, error) {
	var a Addr
	var port [2]byte
	switch atyp {
	case atypIPv4:
		var b [4]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return a, fmt.Errorf("socks: IPv4 address: %w", err)
		}
		a.IP = netip.AddrFrom4(b)
	case atypIPv6:
		var b [16]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return a, fmt.Errorf("socks: IPv6 address: %w", err)
		}
		a.IP = netip.AddrFrom16(b)
	case atypDomain:
		var n [1]byte
		if _, err := io.ReadFull(r, n[:]); err != nil {
			return a, fmt.Errorf("socks: name length: %w", err)
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(r, name); err != nil {
			return a, fmt.Errorf("socks: name: %w", err)
		}
		// The port follows the name; read it even for a bad name so
		// that the reply goes out on a stream still in step.
		if _, err := io.ReadFull(r, port[:]); err != nil {
			return a, fmt.Errorf("socks: port: %w", err)
		}
		a.Port = binary.BigEndian.Uint16(port[:])
		// Some clients send an address literal as a name.
		if ip, err := netip.ParseAddr(string(name)); err == nil && ip.Zone() == "" {
			a.IP = ip.Unmap()
			return a, nil
		}
		if err := checkName(name); err != nil {
			return Addr{}, err
		}
		a.Name = string(name)
		return a, nil
	default:
		return a, fmt.Errorf("%w: %#x", ErrAddressType, atyp)
	}
	if _, err := io.ReadFull(r, port[:]); err != nil {
		return a, fmt.Errorf("socks: port: %w", err)
	}
	a.Port = binary.BigEndian.Uint16(port[:])
	return a, nil
}

// checkName accepts host names made of letters, digits, '-', '_' and
// dots: what DNS carries for hosts (clients send international names as
// punycode). Anything else, ':' or '%' or a control byte, could change
// the meaning of the host:port string the dialer parses.
func checkName(name []byte) error {
	if len(name) == 0 || len(name) > 253 || name[0] == '.' {
		return fmt.Errorf("%w: %q", ErrName, name)
	}
	for _, c := range name {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("%w: %q", ErrName, name)
		}
	}
	return nil
}

// appendAddr appends a's wire form: type, address, port.
func appendAddr(b []byte, a Addr) []byte {
	switch {
	case a.IP.Is4():
		b = append(b, atypIPv4)
		v4 := a.IP.As4()
		b = append(b, v4[:]...)
	case a.IP.Is6():
		b = append(b, atypIPv6)
		v6 := a.IP.As16()
		b = append(b, v6[:]...)
	case a.Name != "":
		b = append(b, atypDomain, byte(len(a.Name)))
		b = append(b, a.Name...)
	default:
		b = append(b, atypIPv4, 0, 0, 0, 0)
	}
	return binary.BigEndian.AppendUint16(b, a.Port)
}

// appendRequest appends a request's wire form; the tests and the fuzz
// target use it to check that what parses re-encodes to the same thing.
func appendRequest(b []byte, req Request) []byte {
	return appendAddr(append(b, version5, byte(req.Command), 0), req.Dest)
}

// writeReply answers a request; bound is the address the server used,
// or the zero address.
func writeReply(w io.Writer, rep Reply, bound netip.AddrPort) error {
	b := make([]byte, 0, 22)
	b = append(b, version5, byte(rep), 0)
	b = appendAddr(b, Addr{IP: bound.Addr().Unmap(), Port: bound.Port()})
	_, err := w.Write(b)
	return err
}

// ErrFragment: a datagram that is one fragment of several. Fragmentation
// is optional in RFC 1928 and no common client uses it; such datagrams
// are dropped.
var ErrFragment = errors.New("socks: fragmented datagram")

// datagramHeader is the longest header of a UDP ASSOCIATE datagram:
// RSV(2) FRAG ATYP, a 255-byte name with its length, and the port.
const datagramHeader = 4 + 1 + 255 + 2

// parseDatagram splits a datagram a client sent to the relay into its
// destination and payload; the payload aliases b.
func parseDatagram(b []byte) (Addr, []byte, error) {
	if len(b) < 4 {
		return Addr{}, nil, fmt.Errorf("%w: datagram of %d bytes", ErrMessage, len(b))
	}
	if b[0] != 0 || b[1] != 0 {
		return Addr{}, nil, fmt.Errorf("%w: reserved bytes %#x %#x", ErrMessage, b[0], b[1])
	}
	if b[2] != 0 {
		return Addr{}, nil, fmt.Errorf("%w: fragment %d", ErrFragment, b[2])
	}
	r := bytes.NewReader(b[4:])
	a, err := readAddr(r, b[3])
	if err != nil {
		return Addr{}, nil, err
	}
	return a, b[len(b)-r.Len():], nil
}

// appendDatagram appends a datagram for the client: the header naming
// where the payload came from, then the payload.
func appendDatagram(b []byte, from Addr, payload []byte) []byte {
	b = append(b, 0, 0, 0)
	return append(appendAddr(b, from), payload...)
}
