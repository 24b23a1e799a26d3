package tunnel

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/tuntest"
)

func readOne(t *testing.T, l *Lease) ([]byte, error) {
	t.Helper()
	bufs := [][]byte{make([]byte, 2048)}
	sizes := []int{0}
	type res struct {
		p   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		n, err := l.Read(bufs, sizes, 4)
		if n == 1 {
			ch <- res{bytes.Clone(bufs[0][4 : 4+sizes[0]]), err}
			return
		}
		ch <- res{nil, err}
	}()
	select {
	case r := <-ch:
		return r.p, r.err
	case <-time.After(5 * time.Second):
		t.Fatal("read blocked")
		return nil, nil
	}
}

// Addresses of the tests' packets: the holder's own, and the far end.
var (
	mine   = netip.MustParseAddr("100.64.0.2")
	remote = netip.MustParseAddr("198.51.100.80")
)

// packet is an IP packet from the lease holder's address, carrying tag.
func packet(tag string) []byte {
	p := tuntest.Ping(remote, mine)
	return append(p[:len(p):len(p)], tag...)
}

// leaseFor takes a lease that may send from mine.
func leaseFor(s *Shared) *Lease {
	l := s.Lease()
	l.Allow([]netip.Addr{mine})
	return l
}

func TestLeasesTakeTurns(t *testing.T) {
	ch := tuntest.NewChannelTUN()
	s := NewShared(ch.TUN())
	defer s.Close()

	// Without a lease, packets are dropped, not queued for the next one.
	ch.Outbound <- packet("early")
	deadline := time.Now().Add(5 * time.Second)
	for s.Dropped() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("packet without a lease was not dropped")
		}
		time.Sleep(time.Millisecond)
	}

	a := leaseFor(s)
	ch.Outbound <- packet("for a")
	if p, err := readOne(t, a); err != nil || !bytes.Equal(p, packet("for a")) {
		t.Fatalf("lease a read %q, %v", p, err)
	}
	// The channel device's Write waits for its reader.
	werr := make(chan error, 1)
	go func() {
		_, err := a.Write([][]byte{[]byte("xxxxreply")}, 4)
		werr <- err
	}()
	if got := <-ch.Inbound; string(got) != "reply" {
		t.Fatalf("device got %q", got)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}

	// A new lease ends the old one: its reads and writes fail, and the
	// device keeps working for the new holder.
	b := leaseFor(s)
	if _, err := readOne(t, a); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("old lease read: %v", err)
	}
	if _, err := a.Write([][]byte{[]byte("xxxxlate")}, 4); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("old lease write: %v", err)
	}
	ch.Outbound <- packet("for b")
	if p, err := readOne(t, b); err != nil || !bytes.Equal(p, packet("for b")) {
		t.Fatalf("lease b read %q, %v", p, err)
	}
	b.Close()
	if _, err := readOne(t, b); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("closed lease read: %v", err)
	}
	c := leaseFor(s)
	ch.Outbound <- packet("for c")
	if p, err := readOne(t, c); err != nil || !bytes.Equal(p, packet("for c")) {
		t.Fatalf("lease c read %q, %v", p, err)
	}
	if name, err := c.Name(); err != nil || name == "" {
		t.Fatalf("name %q %v", name, err)
	}
}

func TestCloseEndsLease(t *testing.T) {
	ch := tuntest.NewChannelTUN()
	s := NewShared(ch.TUN())
	l := s.Lease()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := readOne(t, l); err == nil {
		t.Fatal("lease of a closed device still reads")
	}
}
