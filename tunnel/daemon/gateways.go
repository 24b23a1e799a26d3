package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/client"
	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

const (
	// probeTimeout bounds the probe of one entry: an entry slower than
	// this to accept a TCP connection serves a tunnel badly anyway, and
	// the user is waiting for the list.
	probeTimeout = 1500 * time.Millisecond
	// maxProbes bounds the probes in flight, so that a large directory
	// does not open a socket per entry at once.
	maxProbes = 16
)

// loopHealth is a tunnel that measures its path as it runs (Anonymous
// mode's loops).
type loopHealth interface {
	Health() client.Health
}

// Gateways lists the gateways in the directory with the health the daemon
// measured, never assumed:
//
//   - The gateways of the connected tunnel are up, since traffic crosses
//     them (degraded when Anonymous mode's loops say packets get lost).
//   - Other entries are probed, all at once, with a TCP connection marked
//     like the tunnel's own traffic: up, with the time it took, or down.
//     An entry the kill switch blocks (under lockdown, while
//     disconnected, it lets through only the directory) is unknown: a
//     probe would measure the firewall, not the entry.
//   - Other exits are unknown. The client never talks to an exit
//     directly, and a probe would show the exit the client's address,
//     which Anonymous mode keeps from it.
func (d *Daemon) Gateways(ctx context.Context) ([]control.Gateway, error) {
	doc, err := d.dir.Fetch(ctx)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	d.mu.Lock()
	s, fwDoc, meantUp, st, cur := d.settings, d.doc, d.target.Connected, d.status, d.cur
	d.mu.Unlock()
	policy, blocking := d.firewallPolicy(s, fwDoc, meantUp)

	var out []control.Gateway
	var probes sync.WaitGroup
	slots := make(chan struct{}, maxProbes)
	for _, n := range doc.NodesOf(directory.RoleEntry, 0) {
		out = append(out, control.Gateway{ID: n.ID, Role: control.RoleEntry, Country: n.Country, Endpoint: n.Address})
	}
	// Each probe writes its own element; nothing appends until all are
	// done.
	for i := range out {
		g := &out[i]
		if blocking && !allowsTCP(policy, g.Endpoint) {
			continue
		}
		probes.Go(func() {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-slots }()
			g.Health, g.Latency = d.probe(ctx, g.Endpoint)
		})
	}
	probes.Wait()
	if err := ctx.Err(); err != nil {
		// Probes cut short say nothing about the entries.
		return nil, fmt.Errorf("gateways: %w", err)
	}
	for _, n := range doc.NodesOf(directory.RoleExit, 0) {
		out = append(out, control.Gateway{ID: n.ID, Role: control.RoleExit, Country: n.Country, Endpoint: n.Address})
	}
	if st.State == control.StateConnected && cur != nil {
		inUse := control.HealthUp
		if h, ok := cur.(loopHealth); ok && h.Health().Degraded {
			inUse = control.HealthDegraded
		}
		for i := range out {
			g := &out[i]
			if g.Role == control.RoleEntry && g.ID == st.Entry || g.Role == control.RoleExit && g.ID == st.Exit {
				g.Health = inUse
			}
		}
	}
	return out, nil
}

// probe connects to an entry's link port and reports it up, with the
// time the connection took, or down.
func (d *Daemon) probe(ctx context.Context, addr string) (control.Health, time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	start := time.Now()
	c, err := d.dial(ctx, "tcp", addr)
	if err != nil {
		d.log.Debug("entry probe failed", "addr", addr, "err", err)
		return control.HealthDown, 0
	}
	took := time.Since(start)
	c.Close()
	return control.HealthUp, took
}
