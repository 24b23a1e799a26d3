// Package tunnel is the daemon's data plane: one TUN device for the whole
// session, leased in turn to the Fast (tunnel/fast) or Anonymous
// (tunnel/anon) tunnel, so that switching modes never takes the interface
// down and no packet slips past both.
package tunnel

import (
	"errors"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// Shared reads one device on behalf of whichever lease is current. Packets
// read while no lease is current are dropped: while the daemon switches
// modes, nothing goes out unencrypted, it goes nowhere. A lease passes on
// only packets from the addresses its holder was given (Lease.Allow);
// TCP segments from any other source, left over from an earlier tunnel,
// are answered with a reset so their applications reconnect.
type Shared struct {
	dev tun.Device

	mu      sync.Mutex
	current *Lease
	dropped uint64
	done    chan struct{}

	refused atomic.Uint64
	resets  atomic.Uint64
}

type batch struct {
	bufs  [][]byte
	sizes []int
	n     int
	back  chan *batch
}

// NewShared starts reading dev. Close stops it and closes dev.
func NewShared(dev tun.Device) *Shared {
	s := &Shared{dev: dev, done: make(chan struct{})}
	go s.read()
	return s
}

// read is the device's only reader. Batches cycle between it and the
// current lease through two buffers, so nothing is allocated per packet.
func (s *Shared) read() {
	defer close(s.done)
	size := s.dev.BatchSize()
	back := make(chan *batch, 2)
	for range 2 {
		b := &batch{bufs: make([][]byte, size), sizes: make([]int, size), back: back}
		for i := range b.bufs {
			b.bufs[i] = make([]byte, readOffset+65535)
		}
		back <- b
	}
	for {
		b := <-back
		n, err := s.dev.Read(b.bufs, b.sizes, readOffset)
		if err != nil && !errors.Is(err, tun.ErrTooManySegments) {
			s.mu.Lock()
			if l := s.current; l != nil {
				l.fail(err)
			}
			s.mu.Unlock()
			return
		}
		b.n = n
		s.mu.Lock()
		l := s.current
		if l == nil {
			s.dropped += uint64(n)
		}
		s.mu.Unlock()
		if l == nil || !l.deliver(b) {
			back <- b
		}
	}
}

// readOffset is the headroom the reader keeps before each packet; leases
// copy packets to the offset their reader asks for.
const readOffset = 16

// Lease gives the device to a new holder and takes it from the previous
// one, whose Read then fails with os.ErrClosed.
func (s *Shared) Lease() *Lease {
	l := &Lease{s: s, in: make(chan *batch, 1), closed: make(chan struct{}), events: make(chan tun.Event, 1)}
	l.events <- tun.EventUp
	s.mu.Lock()
	old := s.current
	s.current = l
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return l
}

// Release takes the device from any holder: packets are dropped until the
// next Lease.
func (s *Shared) Release() {
	s.mu.Lock()
	old := s.current
	s.current = nil
	s.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

// Dropped counts packets read while no lease was current.
func (s *Shared) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Refused counts packets a lease would not pass on because their source
// was not one of its addresses, and Resets the TCP resets sent for them.
func (s *Shared) Refused() (refused, resets uint64) { return s.refused.Load(), s.resets.Load() }

// Device is the underlying device, for its name and MTU.
func (s *Shared) Device() tun.Device { return s.dev }

// Close closes the device, which ends every lease.
func (s *Shared) Close() error {
	s.Release()
	err := s.dev.Close()
	<-s.done
	return err
}

// Lease is one holder's view of a Shared device: a tun.Device whose Close
// ends the lease, not the device.
type Lease struct {
	s      *Shared
	in     chan *batch
	events chan tun.Event
	// allow is what the holder may send from; nil passes nothing, so a
	// tunnel still coming up cannot be handed packets of the last one.
	allow atomic.Pointer[sources]
	// rst is where resets are built; only Read uses it, and a lease has
	// one reader.
	rst [1][]byte

	mu       sync.Mutex
	closed   chan struct{}
	isClosed bool
	err      error
}

var _ tun.Device = (*Lease)(nil)

func (l *Lease) deliver(b *batch) bool {
	select {
	case l.in <- b:
		return true
	case <-l.closed:
		return false
	}
}

func (l *Lease) fail(err error) {
	l.mu.Lock()
	l.err = err
	l.mu.Unlock()
	l.Close()
}

// Read returns the next packets read from the device. A reader that asks
// for fewer than BatchSize packets, or offers a buffer too small for one,
// loses the rest of the batch, as a full device queue would drop them.
func (l *Lease) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	var b *batch
	select {
	case b = <-l.in:
	case <-l.closed:
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			return 0, l.err
		}
		return 0, os.ErrClosed
	}
	allow := l.allow.Load()
	n := 0
	for i := range b.n {
		p := b.bufs[i][readOffset : readOffset+b.sizes[i]]
		if !allow.owns(p) {
			l.refuse(p, allow != nil)
			continue
		}
		if n == len(bufs) || len(bufs[n])-offset < len(p) {
			continue
		}
		sizes[n] = copy(bufs[n][offset:], p)
		n++
	}
	b.back <- b
	return n, nil
}

// Allow sets the addresses the holder may send from: its inner addresses,
// once it has them. Until then it is handed nothing.
func (l *Lease) Allow(addrs []netip.Addr) { l.allow.Store(newSources(addrs)) }

// refuse drops p and, with reset, answers a TCP segment with a reset
// written straight back into the device. One reset per refused segment,
// never more, so a local application cannot make the lease write more
// than it reads. A lease without addresses yet resets nothing: a
// reconnect in the same mode may well get the same addresses back, and
// its connections should live on.
func (l *Lease) refuse(p []byte, reset bool) {
	l.s.refused.Add(1)
	if !reset {
		return
	}
	if l.rst[0] == nil {
		l.rst[0] = make([]byte, readOffset+maxReset)
	}
	if n := resetFor(p, l.rst[0], readOffset); n > 0 {
		if _, err := l.s.dev.Write([][]byte{l.rst[0][:readOffset+n]}, readOffset); err == nil {
			l.s.resets.Add(1)
		}
	}
}

// Write writes packets to the device while the lease is current.
func (l *Lease) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-l.closed:
		return 0, os.ErrClosed
	default:
	}
	return l.s.dev.Write(bufs, offset)
}

// Close ends the lease; the device stays open.
func (l *Lease) Close() error {
	l.mu.Lock()
	if l.isClosed {
		l.mu.Unlock()
		return nil
	}
	l.isClosed = true
	close(l.closed)
	close(l.events)
	l.mu.Unlock()
	l.s.mu.Lock()
	if l.s.current == l {
		l.s.current = nil
	}
	l.s.mu.Unlock()
	// A batch waiting in the channel goes back to the reader.
	select {
	case b := <-l.in:
		b.back <- b
	default:
	}
	return nil
}

// File is nil: a lease has no file of its own.
func (l *Lease) File() *os.File { return nil }

// MTU is the device's MTU.
func (l *Lease) MTU() (int, error) { return l.s.dev.MTU() }

// Name is the device's name.
func (l *Lease) Name() (string, error) { return l.s.dev.Name() }

// Events reports EventUp once; the daemon owns the device's state.
func (l *Lease) Events() <-chan tun.Event { return l.events }

// BatchSize is the device's batch size.
func (l *Lease) BatchSize() int { return l.s.dev.BatchSize() }
