package daemon

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/tunnel"
	"github.com/mixvpn/mixvpn/tunnel/anon"
	"github.com/mixvpn/mixvpn/tunnel/control"
	"github.com/mixvpn/mixvpn/tunnel/fast"
)

// modeTunnel is a tunnel of either mode, tunnel/fast's or tunnel/anon's,
// seen the way the daemon drives and watches it. The daemon compares
// them, so they must be pointers.
type modeTunnel interface {
	Up(ctx context.Context) error
	Close() error
	// Info is the tunnel's inner addresses and its gateways' IDs, once
	// Up returned.
	Info() (addrs []netip.Prefix, entry, exit string)
	// Stats are its counters in the control API's terms.
	Stats() control.Stats
	// Carry lets the tunnel carry packets from its own addresses, and
	// only those; until then it is handed none. The daemon calls it once
	// the device has the addresses, so that an application that
	// reconnects at once finds them there.
	Carry()
	// Progress counts what the tunnel sent that the far end must answer,
	// and the answers. A tunnel whose sent grows while heard stands still
	// is dead; one that sends nothing is idle, which is fine.
	Progress() (sent, heard uint64)
}

// openFunc builds the tunnel for tg on a new lease of the device; the
// daemon's is newTunnel, and tests put a fake in its place.
type openFunc func(ctx context.Context, tg target, doc *directory.Document, s control.Settings) (modeTunnel, error)

// newTunnel builds the tunnel of tg's mode on a new lease of the device.
func (d *Daemon) newTunnel(ctx context.Context, tg target, doc *directory.Document, s control.Settings) (modeTunnel, error) {
	switch tg.Mode {
	case control.ModeFast:
		// Registration dials the entry while the old tunnel may still
		// hold the default route: the mark sends it around, as it does
		// the WireGuard socket.
		fc, joined, err := fast.Join(ctx, fast.JoinConfig{DirectoryURL: d.cfg.DirectoryURL, DirectoryKey: d.cfg.DirectoryKey, Document: doc, Entry: tg.Entry, Exit: tg.Exit,
			HTTPClient: d.web, DialLink: d.dialLink, Logger: d.log})
		if err != nil {
			return nil, err
		}
		fc.FwMark = d.mark
		lease := d.shared.Lease()
		t, err := fast.New(fc, lease)
		if err != nil {
			return nil, err
		}
		return &fastMode{Tunnel: t, lease: lease, addrs: fc.InnerAddrs, entry: joined.EntryID, exit: joined.ExitID}, nil
	case control.ModeAnonymous:
		lease := d.shared.Lease()
		// The link and the client's directory refreshes run under the
		// tunnel they carry, so both are marked to go around it.
		t, err := anon.New(anon.Config{Logger: d.log, Mark: d.mark, Connect: client.ConnectConfig{
			DirectoryURL: d.cfg.DirectoryURL, DirectoryKey: d.cfg.DirectoryKey, Document: doc, Entry: tg.Entry, Exit: tg.Exit,
			HTTPClient: d.web,
			Client:     client.Config{Rate: s.MixRate, LoopRate: s.LoopRate, MeanDelay: s.MeanDelay},
		}}, lease)
		if err != nil {
			return nil, err
		}
		return &anonMode{Tunnel: t, lease: lease}, nil
	}
	return nil, fmt.Errorf("unknown mode %v", tg.Mode)
}

// fastMode is a Fast-mode tunnel with what Join said about it.
type fastMode struct {
	*fast.Tunnel
	lease       *tunnel.Lease
	addrs       []netip.Prefix
	entry, exit string
}

func (f *fastMode) Carry() { f.lease.Allow(prefixAddrs(f.addrs)) }

// prefixAddrs is the addresses of ps.
func prefixAddrs(ps []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Addr())
	}
	return out
}

func (f *fastMode) Info() ([]netip.Prefix, string, string) { return f.addrs, f.entry, f.exit }

func (f *fastMode) Stats() control.Stats {
	s := f.Tunnel.Stats()
	out := control.Stats{Mode: control.ModeFast, BytesIn: s.BytesIn, BytesOut: s.BytesOut}
	// The older handshake, so that its age speaks for both hops; none
	// until both have one.
	if e, x := s.Entry.LastHandshake, s.Exit.LastHandshake; !e.IsZero() && !x.IsZero() {
		out.LastHandshake = e
		if x.Before(e) {
			out.LastHandshake = x
		}
	}
	return out
}

// Progress is the exit hop's WireGuard traffic: the exit answers data
// within ten seconds (a keepalive if it has nothing to say), and its
// answers cross the entry hop too, so silence means either hop is dead.
func (f *fastMode) Progress() (uint64, uint64) {
	s := f.Tunnel.Stats()
	return s.Exit.TxBytes, s.Exit.RxBytes
}

// anonMode is an Anonymous-mode tunnel.
type anonMode struct {
	*anon.Tunnel
	lease *tunnel.Lease
}

// Carry allows the addresses the exit gave when the session opened.
func (a *anonMode) Carry() {
	v4, v6 := a.Addrs()
	a.lease.Allow([]netip.Addr{v4, v6})
}

func (a *anonMode) Info() ([]netip.Prefix, string, string) {
	v4, v6 := a.Addrs()
	st := a.Tunnel.Stats()
	return []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)}, st.Entry, st.Exit
}

func (a *anonMode) Stats() control.Stats {
	as := a.Tunnel.Stats()
	return control.Stats{
		Mode:    control.ModeAnonymous,
		BytesIn: as.BytesIn, BytesOut: as.BytesOut,
		Latency:     as.LoopRTTMean,
		RealPackets: as.RealSent, CoverPackets: as.CoverSent,
		LoopsSent: as.LoopsSent, LoopsReturned: as.LoopsReturned, LoopsLost: as.LoopsLost,
		LoopRTTP50: as.LoopRTTP50, LoopRTTP90: as.LoopRTTP90,
		SURBsMade: as.SURBsMade, SURBsUsed: as.RepliesReceived, SURBStock: as.SURBStock,
	}
}

// Progress is the client's loops: they go out all the time, whatever the
// user does, and come back through every layer, so loops that stop
// returning mean the path is gone.
func (a *anonMode) Progress() (uint64, uint64) {
	s := a.Tunnel.Stats()
	return s.LoopsSent, s.LoopsReturned
}
