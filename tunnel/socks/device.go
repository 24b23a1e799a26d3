package socks

import (
	"os"
	"sync"

	"golang.zx2c4.com/wireguard/tun"
)

// deferredDevice is a tun.Device whose packets go to a device attached
// later. anon.Tunnel needs its device before Up, and the userspace stack
// needs the inner addresses that only Up learns from the exit; this lets
// the stack be made with them once the session is open. Until then reads
// wait and writes are dropped (nothing was sent, so nothing is answered).
type deferredDevice struct {
	mtu    int
	ready  chan struct{} // closed by attach
	closed chan struct{} // closed by Close
	events chan tun.Event

	mu       sync.Mutex
	dev      tun.Device
	isClosed bool
}

func newDeferredDevice(mtu int) *deferredDevice {
	return &deferredDevice{mtu: mtu, ready: make(chan struct{}), closed: make(chan struct{}), events: make(chan tun.Event)}
}

// attach hands the device over to dev. It reports false (and closes dev)
// if the device was closed meanwhile.
func (d *deferredDevice) attach(dev tun.Device) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.isClosed {
		dev.Close()
		return false
	}
	d.dev = dev
	close(d.ready)
	return true
}

func (d *deferredDevice) target() tun.Device {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dev
}

func (d *deferredDevice) File() *os.File { return nil }

func (d *deferredDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case <-d.ready:
		return d.target().Read(bufs, sizes, offset)
	case <-d.closed:
		return 0, os.ErrClosed
	}
}

func (d *deferredDevice) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-d.closed:
		return 0, os.ErrClosed
	case <-d.ready:
		return d.target().Write(bufs, offset)
	default:
		return len(bufs), nil
	}
}

func (d *deferredDevice) MTU() (int, error)        { return d.mtu, nil }
func (d *deferredDevice) Name() (string, error)    { return "socks", nil }
func (d *deferredDevice) Events() <-chan tun.Event { return d.events }

// BatchSize is the netstack's: one packet per call.
func (d *deferredDevice) BatchSize() int { return 1 }

// Close closes the attached device, draining it meanwhile: the netstack
// device hands packets over an unbuffered channel, and a sender left
// blocked on it when it closes would panic.
func (d *deferredDevice) Close() error {
	d.mu.Lock()
	if d.isClosed {
		d.mu.Unlock()
		return nil
	}
	d.isClosed = true
	close(d.closed)
	dev := d.dev
	d.mu.Unlock()
	if dev == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		bufs, sizes := [][]byte{make([]byte, 65535)}, []int{0}
		for {
			if _, err := dev.Read(bufs, sizes, 0); err != nil {
				return
			}
		}
	}()
	err := dev.Close()
	<-done
	return err
}
