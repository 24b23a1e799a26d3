package socks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// PacketListener is what UDP ASSOCIATE needs from the tunnel's side: a
// datagram socket per address family, and names resolved there too.
// *Front satisfies it.
type PacketListener interface {
	// ListenPacket opens an unconnected socket; network is "udp4" or
	// "udp6".
	ListenPacket(ctx context.Context, network string) (net.PacketConn, error)
	// LookupNetIP resolves a name on the tunnel's side.
	LookupNetIP(ctx context.Context, name string) ([]netip.Addr, error)
}

// maxNames bounds the names one association remembers.
const maxNames = 256

// association relays one client's datagrams: from its relay socket on
// loopback to sockets in the tunnel, and the answers back.
type association struct {
	s      *Server
	relay  *net.UDPConn
	peerIP netip.Addr // the control connection's client
	port   uint16     // the port the request named, or 0 for any

	mu     sync.Mutex
	client netip.AddrPort // locked on the first datagram
	socks  map[string]net.PacketConn
	names  map[string]netip.Addr
	wg     sync.WaitGroup
	closed bool
}

// associate serves UDP ASSOCIATE on control connection c until the client
// closes it or ctx ends, as RFC 1928 ties the association's life to it.
func (s *Server) associate(ctx context.Context, c net.Conn, rest io.Reader, req Request) {
	local, _ := c.LocalAddr().(*net.TCPAddr)
	remote, _ := c.RemoteAddr().(*net.TCPAddr)
	if local == nil || remote == nil {
		writeReply(c, ReplyGeneralFailure, netip.AddrPort{})
		s.failed.Add(1)
		return
	}
	// The relay listens where the client reached us: loopback for a
	// loopback listener, so nobody else can send through it.
	relay, err := net.ListenUDP("udp", &net.UDPAddr{IP: local.IP})
	if err != nil {
		s.log.Warn("UDP relay", "err", err)
		writeReply(c, ReplyGeneralFailure, netip.AddrPort{})
		s.failed.Add(1)
		return
	}
	a := &association{s: s, relay: relay, peerIP: remote.AddrPort().Addr().Unmap(), port: req.Dest.Port,
		socks: map[string]net.PacketConn{}, names: map[string]netip.Addr{}}
	defer a.close()
	if err := writeReply(c, ReplySucceeded, relay.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		s.failed.Add(1)
		return
	}
	s.associations.Add(1)
	c.SetDeadline(time.Time{})
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.wg.Go(func() { a.fromClient(actx) })
	// The association lasts while the control connection is open; the
	// client sends nothing more on it.
	io.Copy(io.Discard, rest)
}

func (a *association) close() {
	a.mu.Lock()
	a.closed = true
	socks := a.socks
	a.mu.Unlock()
	a.relay.Close()
	for _, pc := range socks {
		pc.Close()
	}
	a.wg.Wait()
}

// fromClient reads the client's datagrams from the relay socket and sends
// each payload on through the tunnel.
func (a *association) fromClient(ctx context.Context) {
	buf := make([]byte, 65535)
	for {
		n, from, err := a.relay.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		if !a.accept(from) {
			a.s.udpDropped.Add(1)
			continue
		}
		dest, payload, err := parseDatagram(buf[:n])
		if err != nil {
			a.s.udpDropped.Add(1)
			a.s.log.Debug("bad datagram", "err", err)
			continue
		}
		to, err := a.resolve(ctx, dest)
		if err != nil {
			a.s.udpDropped.Add(1)
			a.s.log.Debug("datagram destination", "dest", dest.String(), "err", err)
			continue
		}
		pc, err := a.socket(ctx, to.Addr())
		if err != nil {
			a.s.udpDropped.Add(1)
			a.s.log.Debug("tunnel socket", "err", err)
			continue
		}
		if _, err := pc.WriteTo(payload, net.UDPAddrFromAddrPort(to)); err != nil {
			a.s.udpDropped.Add(1)
			continue
		}
		a.s.datagramsUp.Add(1)
	}
}

// accept lets through datagrams from the control connection's host only,
// from the port the request named if it named one, and after the first
// from that same address: another local user cannot borrow the relay.
func (a *association) accept(from netip.AddrPort) bool {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client.IsValid() {
		return from == a.client
	}
	if from.Addr() != a.peerIP || a.port != 0 && from.Port() != a.port {
		return false
	}
	a.client = from
	return true
}

// resolve turns a destination into an address, looking names up through
// the tunnel once per association.
func (a *association) resolve(ctx context.Context, dest Addr) (netip.AddrPort, error) {
	if dest.IP.IsValid() {
		return netip.AddrPortFrom(dest.IP.Unmap(), dest.Port), nil
	}
	a.mu.Lock()
	ip, ok := a.names[dest.Name]
	a.mu.Unlock()
	if ok {
		return netip.AddrPortFrom(ip, dest.Port), nil
	}
	lctx, cancel := context.WithTimeout(ctx, a.s.cfg.DialTimeout)
	defer cancel()
	ips, err := a.s.cfg.Packets.LookupNetIP(lctx, dest.Name)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(ips) == 0 {
		return netip.AddrPort{}, fmt.Errorf("socks: %s has no address", dest.Name)
	}
	ip = ips[0].Unmap()
	a.mu.Lock()
	if len(a.names) >= maxNames {
		clear(a.names)
	}
	a.names[dest.Name] = ip
	a.mu.Unlock()
	return netip.AddrPortFrom(ip, dest.Port), nil
}

// socket returns the tunnel socket for ip's family, opening it and its
// reader on first use.
func (a *association) socket(ctx context.Context, ip netip.Addr) (net.PacketConn, error) {
	network := "udp6"
	if ip.Is4() {
		network = "udp4"
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, net.ErrClosed
	}
	if pc := a.socks[network]; pc != nil {
		return pc, nil
	}
	pc, err := a.s.cfg.Packets.ListenPacket(ctx, network)
	if err != nil {
		return nil, err
	}
	a.socks[network] = pc
	a.wg.Go(func() { a.toClient(pc) })
	return pc, nil
}

// toClient sends what arrives on a tunnel socket to the client, with the
// header saying where it came from.
func (a *association) toClient(pc net.PacketConn) {
	buf := make([]byte, 65535)
	out := make([]byte, 0, datagramHeader+len(buf))
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				a.s.log.Debug("tunnel socket read", "err", err)
			}
			return
		}
		src := addrOf(from)
		a.mu.Lock()
		client := a.client
		a.mu.Unlock()
		if !src.IsValid() || !client.IsValid() {
			continue
		}
		out = appendDatagram(out[:0], Addr{IP: src.Addr().Unmap(), Port: src.Port()}, buf[:n])
		if _, err := a.relay.WriteToUDPAddrPort(out, client); err != nil {
			return
		}
		a.s.datagramsDown.Add(1)
	}
}

// addrOf is a datagram's source as an AddrPort, whatever net.Addr the
// socket reports it as.
func addrOf(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.UDPAddr:
		return v.AddrPort()
	case interface{ AddrPort() netip.AddrPort }:
		return v.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
