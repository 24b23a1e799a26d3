package socks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/proxy"
)

// echoServer is a TCP server on loopback that echoes what it reads.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln
}

// startServer serves d on a loopback listener until the test ends.
func startServer(t *testing.T, cfg ServerConfig) (*Server, string) {
	t.Helper()
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return s, ln.Addr().String()
}

// recordingDialer dials loopback for every request and remembers the
// addresses it was asked for, unresolved.
type recordingDialer struct {
	to string
	mu sync.Mutex
	// asked are the addresses requested.
	asked []string
}

func (d *recordingDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	d.mu.Lock()
	d.asked = append(d.asked, network+" "+address)
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", d.to)
}

// roundTrip sends msg over c and reads it back.
func roundTrip(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echoed bytes differ")
	}
}

// TestServerConnect: a standard SOCKS5 client connects by address and by
// name; the name reaches the dialer as it was given, never resolved here.
func TestServerConnect(t *testing.T) {
	echo := echoServer(t)
	d := &recordingDialer{to: echo.Addr().String()}
	s, addr := startServer(t, ServerConfig{Dialer: d})
	pd, err := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("mixnet "), 10000)
	for _, dest := range []string{"192.0.2.1:7", "[2001:db8::7]:7", "no-such-name.invalid:7"} {
		c, err := pd.(proxy.ContextDialer).DialContext(context.Background(), "tcp", dest)
		if err != nil {
			t.Fatalf("%s: %v", dest, err)
		}
		roundTrip(t, c, msg)
		c.Close()
	}
	want := []string{"tcp 192.0.2.1:7", "tcp [2001:db8::7]:7", "tcp no-such-name.invalid:7"}
	d.mu.Lock()
	got := fmt.Sprint(d.asked)
	d.mu.Unlock()
	if got != fmt.Sprint(want) {
		t.Fatalf("dialer asked for %s, want %v", got, want)
	}
	// The counters move once the relays have finished.
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Active != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := s.Stats()
	if st.Connected != 3 || st.Failed != 0 || st.Active != 0 || st.BytesUp != uint64(3*len(msg)) || st.BytesDown != uint64(3*len(msg)) {
		t.Fatalf("stats %+v", st)
	}
}

// TestServerDataWithRequest: bytes a client sends right behind its
// request (before the reply) are relayed, not lost in a buffer.
func TestServerDataWithRequest(t *testing.T) {
	echo := echoServer(t)
	_, addr := startServer(t, ServerConfig{Dialer: &recordingDialer{to: echo.Addr().String()}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("GET / HTTP/1.0\r\n\r\n")
	c.Write(append(appendRequest([]byte{5, 1, 0}, Request{CmdConnect, Addr{Name: "example.test", Port: 80}}), msg...))
	got := make([]byte, 2+10+len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if got[0] != 5 || got[1] != 0 || got[2] != 5 || got[3] != byte(ReplySucceeded) {
		t.Fatalf("method and reply % x", got[:12])
	}
	if !bytes.Equal(got[12:], msg) {
		t.Fatalf("relayed %q", got[12:])
	}
}

// TestServerHalfClose: a client that closes its sending side still gets
// the whole answer.
func TestServerHalfClose(t *testing.T) {
	// The remote reads everything, then answers with its length.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprintf(c, "read %d bytes", n)
	}()
	_, addr := startServer(t, ServerConfig{Dialer: &recordingDialer{to: ln.Addr().String()}})
	pd, _ := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	c, err := pd.Dial("tcp", "192.0.2.1:9")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(make([]byte, 100000))
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "read 100000 bytes" {
		t.Fatalf("%q, %v", got, err)
	}
}

// TestServerRefusals: what the server answers to what it does not serve
// and to dials that fail.
func TestServerRefusals(t *testing.T) {
	fail := func(err error) DialerFunc {
		return func(context.Context, string, string) (net.Conn, error) { return nil, err }
	}
	connect := appendRequest([]byte{5, 1, 0}, Request{CmdConnect, Addr{Name: "example.test", Port: 80}})
	for _, tc := range []struct {
		name   string
		dialer Dialer
		send   []byte
		want   []byte
	}{
		{"password only", fail(nil), []byte{5, 1, 2}, []byte{5, 0xff}},
		{"BIND", fail(nil), appendRequest([]byte{5, 1, 0}, Request{CmdBind, Addr{Name: "example.test", Port: 80}}), []byte{5, 0, 5, 7}},
		{"UDP associate", fail(nil), appendRequest([]byte{5, 1, 0}, Request{CmdUDPAssociate, Addr{}}), []byte{5, 0, 5, 7}},
		{"bad name", fail(nil), append([]byte{5, 1, 0, 5, 1, 0, 3, 4}, "a%b\x00\x00\x50"...), []byte{5, 0, 5, 8}},
		{"unknown address type", fail(nil), []byte{5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80}, []byte{5, 0, 5, 8}},
		{"refused", fail(&net.OpError{Op: "dial", Err: errors.New("connection was refused")}), connect, []byte{5, 0, 5, 5}},
		{"refused (syscall)", fail(syscall.ECONNREFUSED), connect, []byte{5, 0, 5, 5}},
		{"no route", fail(&net.OpError{Op: "dial", Err: errors.New("no route to host")}), connect, []byte{5, 0, 5, 4}},
		{"no such host", fail(&net.DNSError{Err: "no such host", Name: "example.test", IsNotFound: true}), connect, []byte{5, 0, 5, 4}},
		{"no DNS", fail(ErrNoDNS), connect, []byte{5, 0, 5, 4}},
		{"timeout", fail(context.DeadlineExceeded), connect, []byte{5, 0, 5, 6}},
		{"other", fail(errors.New("something")), connect, []byte{5, 0, 5, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, addr := startServer(t, ServerConfig{Dialer: tc.dialer})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(tc.send)
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.HasPrefix(got, tc.want) {
				t.Fatalf("answer % x, want % x…", got, tc.want)
			}
			deadline := time.Now().Add(5 * time.Second)
			for s.Stats().Failed != 1 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			if st := s.Stats(); st.Failed != 1 || st.Connected != 0 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestServerStops: ending Serve's context closes the listener and every
// relayed connection, and a client that never finishes its handshake is
// dropped after the timeout.
func TestServerStops(t *testing.T) {
	echo := echoServer(t)
	s, err := NewServer(ServerConfig{Dialer: &recordingDialer{to: echo.Addr().String()}, HandshakeTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()

	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatal("a silent client got an answer")
	}

	pd, _ := proxy.SOCKS5("tcp", ln.Addr().String(), nil, proxy.Direct)
	c, err := pd.Dial("tcp", "192.0.2.1:7")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip(t, c, []byte("before"))
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("a relayed connection outlived Serve")
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("the listener is still open")
	}
}

// TestServerMaxConns: connections beyond the limit are closed at once.
func TestServerMaxConns(t *testing.T) {
	echo := echoServer(t)
	s, addr := startServer(t, ServerConfig{Dialer: &recordingDialer{to: echo.Addr().String()}, MaxConns: 1})
	pd, _ := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	c, err := pd.Dial("tcp", "192.0.2.1:7")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := pd.Dial("tcp", "192.0.2.1:7"); err == nil {
		t.Fatal("a second connection was served")
	}
	roundTrip(t, c, []byte("still here"))
	if st := s.Stats(); st.Refused != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNewServerNeedsDialer(t *testing.T) {
	if _, err := NewServer(ServerConfig{}); err == nil {
		t.Fatal("a server without a dialer")
	}
}

// loopbackPackets is a PacketListener on this machine: sockets on
// loopback, and a table for names. It records the names looked up.
type loopbackPackets struct {
	names  map[string]netip.Addr
	mu     sync.Mutex
	lookup []string
}

func (l *loopbackPackets) ListenPacket(_ context.Context, network string) (net.PacketConn, error) {
	if network != "udp4" {
		return nil, fmt.Errorf("no %s here", network)
	}
	return net.ListenPacket("udp4", "127.0.0.1:0")
}

func (l *loopbackPackets) LookupNetIP(_ context.Context, name string) ([]netip.Addr, error) {
	l.mu.Lock()
	l.lookup = append(l.lookup, name)
	l.mu.Unlock()
	if a, ok := l.names[name]; ok {
		return []netip.Addr{a}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// udpEcho is a UDP echo server on loopback.
func udpEcho(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// udpAssociate asks server addr for a UDP association and returns the
// control connection and the relay's address.
func udpAssociate(t *testing.T, addr string) (net.Conn, netip.AddrPort) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(appendRequest([]byte{5, 1, 0}, Request{CmdUDPAssociate, Addr{IP: netip.IPv4Unspecified()}}))
	hdr := make([]byte, 2+4)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatal(err)
	}
	if hdr[3] != byte(ReplySucceeded) {
		t.Fatalf("UDP ASSOCIATE answered % x", hdr)
	}
	bound, err := readAddr(c, hdr[5])
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Time{})
	return c, netip.AddrPortFrom(bound.IP, bound.Port)
}

// TestServerUDPAssociate: datagrams by address and by name are relayed
// and answered with their source in the header; the name is looked up
// by the PacketListener; fragments and other senders are dropped; the
// relay closes with the control connection.
func TestServerUDPAssociate(t *testing.T) {
	echo := udpEcho(t)
	packets := &loopbackPackets{names: map[string]netip.Addr{"echo.test": echo.Addr()}}
	s, addr := startServer(t, ServerConfig{Dialer: &recordingDialer{}, Packets: packets})
	ctrl, relay := udpAssociate(t, addr)
	if !relay.Addr().IsLoopback() {
		t.Fatalf("relay on %v", relay)
	}
	uc, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(relay))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	exchange := func(dest Addr, payload string) {
		t.Helper()
		uc.Write(appendDatagram(nil, dest, []byte(payload)))
		uc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		n, err := uc.Read(buf)
		if err != nil {
			t.Fatalf("%s: %v", dest, err)
		}
		from, got, err := parseDatagram(buf[:n])
		if err != nil || string(got) != payload || from != (Addr{IP: echo.Addr(), Port: echo.Port()}) {
			t.Fatalf("answer from %+v: %q, %v", from, got, err)
		}
	}
	exchange(Addr{IP: echo.Addr(), Port: echo.Port()}, "by address")
	exchange(Addr{Name: "echo.test", Port: echo.Port()}, "by name")
	exchange(Addr{Name: "echo.test", Port: echo.Port()}, "by name, remembered")
	packets.mu.Lock()
	lookups := fmt.Sprint(packets.lookup)
	packets.mu.Unlock()
	if lookups != "[echo.test]" {
		t.Fatalf("lookups %v", lookups)
	}

	// A fragment, a datagram from another socket and an unknown name go
	// nowhere; the association still works after them.
	uc.Write(append([]byte{0, 0, 1}, appendAddr(nil, Addr{IP: echo.Addr(), Port: echo.Port()})...))
	other, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(relay))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.Write(appendDatagram(nil, Addr{IP: echo.Addr(), Port: echo.Port()}, []byte("not mine")))
	other.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := other.Read(make([]byte, 100)); err == nil {
		t.Fatal("a second sender got an answer through the relay")
	}
	uc.Write(appendDatagram(nil, Addr{Name: "nowhere.test", Port: 7}, []byte("lost")))
	exchange(Addr{IP: echo.Addr(), Port: echo.Port()}, "still here")
	// The counters move just after each datagram is sent on.
	st := s.Stats()
	for deadline := time.Now().Add(5 * time.Second); (st.DatagramsUp < 4 || st.DatagramsDown < 4) && time.Now().Before(deadline); st = s.Stats() {
		time.Sleep(5 * time.Millisecond)
	}
	if st.Associations != 1 || st.DatagramsUp != 4 || st.DatagramsDown != 4 || st.DatagramsDropped != 3 {
		t.Fatalf("stats %+v", st)
	}

	// Closing the control connection ends the association.
	ctrl.Close()
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Active != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	uc.Write(appendDatagram(nil, Addr{IP: echo.Addr(), Port: echo.Port()}, []byte("after close")))
	uc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := uc.Read(make([]byte, 100)); err == nil {
		t.Fatal("the relay outlived its control connection")
	}
}

// TestServerSlowDial: a dial that takes longer than the handshake timeout
// (a SYN lost in the mixnet is resent after a second) still connects.
func TestServerSlowDial(t *testing.T) {
	echo := echoServer(t)
	fast := &recordingDialer{to: echo.Addr().String()}
	slow := DialerFunc(func(ctx context.Context, network, address string) (net.Conn, error) {
		select {
		case <-time.After(600 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return fast.DialContext(ctx, network, address)
	})
	_, addr := startServer(t, ServerConfig{Dialer: slow, HandshakeTimeout: 200 * time.Millisecond})
	pd, _ := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	c, err := pd.Dial("tcp", "192.0.2.1:7")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(300 * time.Millisecond) // past the handshake timeout
	roundTrip(t, c, []byte("slow but there"))
}
