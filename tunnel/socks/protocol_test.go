package socks

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"testing"
)

func TestReadGreeting(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     []byte
		noAuth bool
		err    error
	}{
		{"no auth", []byte{5, 1, 0}, true, nil},
		{"no auth among others", []byte{5, 3, 2, 1, 0}, true, nil},
		{"password only", []byte{5, 1, 2}, false, nil},
		{"SOCKS4", []byte{4, 1, 0}, false, ErrVersion},
		{"empty list", []byte{5, 0}, false, ErrMessage},
		{"short list", []byte{5, 3, 0}, false, io.ErrUnexpectedEOF},
		{"nothing", nil, false, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noAuth, err := readGreeting(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.err) || noAuth != tc.noAuth {
				t.Fatalf("got %v, %v; want %v, %v", noAuth, err, tc.noAuth, tc.err)
			}
		})
	}
}

func TestReadRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want Request
		err  error
	}{
		{"IPv4", []byte{5, 1, 0, 1, 192, 0, 2, 1, 0, 80}, Request{CmdConnect, Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 80}}, nil},
		{"IPv6", append(append([]byte{5, 1, 0, 4}, netip.MustParseAddr("2001:db8::1").AsSlice()...), 1, 187),
			Request{CmdConnect, Addr{IP: netip.MustParseAddr("2001:db8::1"), Port: 443}}, nil},
		{"name", append(append([]byte{5, 1, 0, 3, 20}, "internet.mixvpn.test"...), 0, 80),
			Request{CmdConnect, Addr{Name: "internet.mixvpn.test", Port: 80}}, nil},
		{"address literal as a name", append(append([]byte{5, 1, 0, 3, 9}, "192.0.2.7"...), 0, 7),
			Request{CmdConnect, Addr{IP: netip.MustParseAddr("192.0.2.7"), Port: 7}}, nil},
		{"UDP associate parses", []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}, Request{CmdUDPAssociate, Addr{IP: netip.IPv4Unspecified()}}, nil},
		{"name with a colon", append(append([]byte{5, 1, 0, 3, 6}, "a.b:99"...), 0, 80), Request{Command: CmdConnect}, ErrName},
		{"name with a zone", append(append([]byte{5, 1, 0, 3, 9}, "fe80::1%1"...), 0, 80), Request{Command: CmdConnect}, ErrName},
		{"empty name", []byte{5, 1, 0, 3, 0, 0, 80}, Request{Command: CmdConnect}, ErrName},
		{"unknown address type", []byte{5, 1, 0, 2, 1, 2, 3, 4, 0, 80}, Request{Command: CmdConnect}, ErrAddressType},
		{"wrong version", []byte{4, 1, 0, 1, 1, 2, 3, 4, 0, 80}, Request{}, ErrVersion},
		{"reserved set", []byte{5, 1, 1, 1, 1, 2, 3, 4, 0, 80}, Request{}, ErrMessage},
		{"short address", []byte{5, 1, 0, 1, 1, 2}, Request{Command: CmdConnect}, io.ErrUnexpectedEOF},
		{"no port", []byte{5, 1, 0, 1, 1, 2, 3, 4}, Request{Command: CmdConnect, Dest: Addr{IP: netip.MustParseAddr("1.2.3.4")}}, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readRequest(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v, %v", got, err, tc.want, tc.err)
			}
			if err != nil {
				return
			}
			// What parses re-encodes to a request that parses the same.
			again, err := readRequest(bytes.NewReader(appendRequest(nil, got)))
			if err != nil || again != got {
				t.Fatalf("re-encoded: %+v, %v", again, err)
			}
		})
	}
}

func TestAddrString(t *testing.T) {
	for a, want := range map[Addr]string{
		{Name: "internet.mixvpn.test", Port: 80}:            "internet.mixvpn.test:80",
		{IP: netip.MustParseAddr("192.0.2.1"), Port: 7}:     "192.0.2.1:7",
		{IP: netip.MustParseAddr("2001:db8::1"), Port: 443}: "[2001:db8::1]:443",
	} {
		if got := a.String(); got != want {
			t.Errorf("%+v: %q, want %q", a, got, want)
		}
	}
}

func TestWriteReply(t *testing.T) {
	var b bytes.Buffer
	writeReply(&b, ReplyHostUnreachable, netip.AddrPort{})
	if want := []byte{5, 4, 0, 1, 0, 0, 0, 0, 0, 0}; !bytes.Equal(b.Bytes(), want) {
		t.Fatalf("% x, want % x", b.Bytes(), want)
	}
	b.Reset()
	writeReply(&b, ReplySucceeded, netip.MustParseAddrPort("[fd00::5]:4000"))
	if b.Len() != 22 || b.Bytes()[3] != atypIPv6 {
		t.Fatalf("IPv6 reply % x", b.Bytes())
	}
}

// FuzzReadRequest: whatever a local client sends as its greeting and
// request parses or fails with an error, never panics, and a request that
// parses re-encodes to one that parses the same.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 192, 0, 2, 1, 0, 80})
	f.Add(append(append([]byte{5, 2, 0, 2, 5, 1, 0, 3, 20}, "internet.mixvpn.test"...), 0, 80))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		if _, err := readGreeting(r); err != nil {
			return
		}
		req, err := readRequest(r)
		if err != nil {
			return
		}
		if req.Dest.Name != "" && req.Dest.IP.IsValid() {
			t.Fatalf("both a name and an address: %+v", req)
		}
		if req.Dest.Name != "" && checkName([]byte(req.Dest.Name)) != nil {
			t.Fatalf("accepted a bad name %q", req.Dest.Name)
		}
		again, err := readRequest(bytes.NewReader(appendRequest(nil, req)))
		if err != nil || again != req {
			t.Fatalf("%+v re-encoded parses as %+v, %v", req, again, err)
		}
	})
}

func TestParseDatagram(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []byte
		dest    Addr
		payload string
		err     error
	}{
		{"IPv4", []byte{0, 0, 0, 1, 192, 0, 2, 1, 0, 7, 'h', 'i'}, Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 7}, "hi", nil},
		{"name", append(append([]byte{0, 0, 0, 3, 4}, "echo"...), 0, 7, 'x'), Addr{Name: "echo", Port: 7}, "x", nil},
		{"empty payload", []byte{0, 0, 0, 1, 192, 0, 2, 1, 0, 7}, Addr{IP: netip.MustParseAddr("192.0.2.1"), Port: 7}, "", nil},
		{"fragment", []byte{0, 0, 1, 1, 192, 0, 2, 1, 0, 7}, Addr{}, "", ErrFragment},
		{"reserved", []byte{0, 1, 0, 1, 192, 0, 2, 1, 0, 7}, Addr{}, "", ErrMessage},
		{"short", []byte{0, 0, 0}, Addr{}, "", ErrMessage},
		{"short address", []byte{0, 0, 0, 4, 1, 2}, Addr{}, "", io.ErrUnexpectedEOF},
		{"bad name", append([]byte{0, 0, 0, 3, 3}, "a b\x00\x07"...), Addr{}, "", ErrName},
		{"unknown type", []byte{0, 0, 0, 7, 1, 2, 3, 4, 0, 7}, Addr{}, "", ErrAddressType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest, payload, err := parseDatagram(tc.in)
			if !errors.Is(err, tc.err) || dest != tc.dest || string(payload) != tc.payload {
				t.Fatalf("got %+v %q %v; want %+v %q %v", dest, payload, err, tc.dest, tc.payload, tc.err)
			}
			if err != nil {
				return
			}
			d2, p2, err := parseDatagram(appendDatagram(nil, dest, payload))
			if err != nil || d2 != dest || !bytes.Equal(p2, payload) {
				t.Fatalf("re-encoded: %+v %q %v", d2, p2, err)
			}
		})
	}
}

// FuzzParseDatagram: whatever a local client sends to the UDP relay
// parses or fails with an error, never panics; what parses re-encodes to
// the same destination and payload.
func FuzzParseDatagram(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 192, 0, 2, 1, 0, 7, 'h', 'i'})
	f.Add(append(append([]byte{0, 0, 0, 3, 20}, "internet.mixvpn.test"...), 0, 53, 1, 2, 3))
	f.Fuzz(func(t *testing.T, in []byte) {
		dest, payload, err := parseDatagram(in)
		if err != nil {
			return
		}
		if len(payload) > len(in) {
			t.Fatalf("payload of %d bytes from a datagram of %d", len(payload), len(in))
		}
		d2, p2, err := parseDatagram(appendDatagram(nil, dest, payload))
		if err != nil || d2 != dest || !bytes.Equal(p2, payload) {
			t.Fatalf("%+v re-encoded parses as %+v, %v", dest, d2, err)
		}
	})
}
