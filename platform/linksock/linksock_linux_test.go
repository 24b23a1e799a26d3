//go:build linux

package linksock

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mixvpn/mixvpn/mixnet/link"
	"github.com/mixvpn/mixvpn/platform/netns"
	"github.com/mixvpn/mixvpn/platform/netns/netnstest"
)

const record = 2430

// accepted listens on loopback, dials it with dial and returns both ends.
func accepted(t *testing.T, dial func(ctx context.Context, addr string) (net.Conn, error)) (client net.Conn, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client, err = dial(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	return client, sc.(*net.TCPConn)
}

func tcpInfo(t *testing.T, c net.Conn) (mss int, info *unix.TCPInfo) {
	t.Helper()
	tc, ok := c.(*net.TCPConn)
	if !ok {
		tc = c.(*polledConn).Conn.(*net.TCPConn)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	err = control(raw, func(fd int) error {
		var err error
		if mss, err = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_MAXSEG); err != nil {
			return err
		}
		info, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return mss, info
}

// TestBothDirectionsSendHalfFrames checks that a record is two full
// segments both ways (the SYN announces the size to the peer), and that
// the polled reads deliver the byte stream intact.
func TestBothDirectionsSendHalfFrames(t *testing.T) {
	c, s := accepted(t, Config{Record: record}.Dial)
	if mss, _ := tcpInfo(t, c); mss != record/2 {
		t.Errorf("client segments of %d bytes, want %d", mss, record/2)
	}
	if mss, _ := tcpInfo(t, s); mss != record/2 {
		t.Errorf("server segments of %d bytes, want %d", mss, record/2)
	}
	want := make([]byte, 300*record)
	for i := range want {
		want[i] = byte(i * 7)
	}
	go s.Write(want)
	got := make([]byte, len(want))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the stream arrived damaged")
	}
}

// TestAcksDoNotWaitForTheReader sends frames to a client that reads
// only every 100 ms, as a busy one would, and counts the ACKs that come
// back: one a frame, as if it kept up. A plain socket, for comparison,
// acknowledges when its reader gets round to it.
func TestAcksDoNotWaitForTheReader(t *testing.T) {
	const frames = 200
	acks := func(dial func(ctx context.Context, addr string) (net.Conn, error)) uint32 {
		c, s := accepted(t, dial)
		read := make(chan error, 1)
		go func() {
			buf := make([]byte, frames*record)
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for n := 0; n < len(buf); {
				time.Sleep(100 * time.Millisecond)
				k, err := c.Read(buf[n:])
				if err != nil {
					read <- err
					return
				}
				n += k
			}
			read <- nil
		}()
		_, before := tcpInfo(t, s)
		frame := make([]byte, record)
		for range frames {
			if _, err := s.Write(frame); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond) // one frame at a time on the wire
		}
		if err := <-read; err != nil {
			t.Fatal(err)
		}
		// The last ACK may still be delayed.
		var info *unix.TCPInfo
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, info = tcpInfo(t, s); info.Bytes_acked >= uint64(frames*record) {
				break
			}
		}
		if info.Bytes_acked < uint64(frames*record) {
			t.Fatalf("%d of %d bytes acknowledged", info.Bytes_acked, frames*record)
		}
		return info.Segs_in - before.Segs_in
	}
	shaped := acks(Config{Record: record}.Dial)
	plain := acks(func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
	t.Logf("ACKs for %d frames to a reader 100 ms behind: %d shaped, %d plain", frames, shaped, plain)
	if shaped < frames*9/10 || shaped > frames*11/10 {
		t.Errorf("%d ACKs for %d frames, want one a frame", shaped, frames)
	}
}

// TestReadEndsOnDeadlineAndClose: a Read waiting in ticks still answers
// the connection's read deadline and Close.
func TestReadEndsOnDeadlineAndClose(t *testing.T) {
	c, _ := accepted(t, Config{Record: record}.Dial)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := c.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read past the deadline: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("deadline of 50 ms ended the read after %v", d)
	}
	c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read on a closed connection: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end a waiting Read")
	}
}

// TestPeerDialsThroughIt runs a link over the shaped connection, through
// link.PeerConfig.Dial, and sends a packet each way.
func TestPeerDialsThroughIt(t *testing.T) {
	srvKey, err := link.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cliKey, err := link.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	atServer, atClient := make(chan []byte, 1), make(chan []byte, 1)
	keep := func(ch chan []byte) func(*link.Conn, link.FrameType, []byte) {
		return func(_ *link.Conn, ft link.FrameType, body []byte) {
			if ft == link.FramePacket {
				ch <- bytes.Clone(body)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		link.Serve(ctx, ln, link.ListenerConfig{
			Config: link.Config{Static: srvKey, Handler: keep(atServer)},
			OnConn: func(c *link.Conn) {
				context.AfterFunc(ctx, func() { c.Close() })
				c.Send(bytes.Repeat([]byte{2}, link.BodySize))
			},
		})
	}()
	p := link.NewPeer(link.PeerConfig{
		Config: link.Config{Static: cliKey, Handler: keep(atClient)},
		Addr:   ln.Addr().String(), Key: srvKey.Public,
		Dial: Config{Record: link.FrameSize}.Dial,
	})
	ran := make(chan struct{})
	go func() { defer close(ran); p.Run(ctx) }()
	defer func() { cancel(); <-ran; <-served }()
	if err := p.Send(bytes.Repeat([]byte{1}, link.BodySize)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ch   chan []byte
		want byte
	}{{atServer, 1}, {atClient, 2}} {
		select {
		case b := <-c.ch:
			if b[0] != c.want || b[len(b)-1] != c.want {
				t.Fatalf("packet %d arrived as %d…%d", c.want, b[0], b[len(b)-1])
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("packet %d never arrived", c.want)
		}
	}
}

// TestDialRefitsTheSegmentToThePath dials across a veth pair whose path
// or peer leaves less than the first guess: a 1200-byte MTU, where half
// a frame does not fit and a third does; and a client without TCP
// timestamps, where the guess left room for an option that never came.
// Either way Dial redials with a segment that divides a frame.
func TestDialRefitsTheSegmentToThePath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	for _, c := range []struct {
		name  string
		setup func(t *testing.T, client, server *netns.Host, clientIf, serverIf string)
		want  int
	}{
		{"MTU 1200", func(t *testing.T, client, server *netns.Host, clientIf, serverIf string) {
			for _, end := range []struct {
				h     *netns.Host
				iface string
			}{{client, clientIf}, {server, serverIf}} {
				if err := end.h.Run("ip", "link", "set", end.iface, "mtu", "1200"); err != nil {
					t.Fatal(err)
				}
			}
		}, record / 3},
		{"no timestamps", func(t *testing.T, client, _ *netns.Host, _, _ string) {
			if err := client.Run("sysctl", "-qw", "net.ipv4.tcp_timestamps=0"); err != nil {
				t.Fatal(err)
			}
		}, record / 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			lab := netnstest.Lab(t, "mvls")
			client, err := lab.AddHost("client")
			if err != nil {
				t.Fatal(err)
			}
			server, err := lab.AddHost("server")
			if err != nil {
				t.Fatal(err)
			}
			clientIf, serverIf, err := lab.Connect(client, []netip.Prefix{netip.MustParsePrefix("10.77.0.2/24")}, server, []netip.Prefix{netip.MustParsePrefix("10.77.0.1/24")})
			if err != nil {
				t.Fatal(err)
			}
			c.setup(t, client, server, clientIf, serverIf)
			var ln net.Listener
			if err := server.Do(func() (err error) {
				ln, err = net.Listen("tcp", "10.77.0.1:0")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			var nc net.Conn
			if err := client.Do(func() (err error) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				nc, err = Config{Record: record}.Dial(ctx, ln.Addr().String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if mss, _ := tcpInfo(t, nc); mss != c.want {
				t.Errorf("segments of %d bytes, want %d", mss, c.want)
			}
		})
	}
}
