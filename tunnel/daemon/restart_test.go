package daemon

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/tunnel/control"
)

// restoreCounter counts the Restores of the DNS it wraps.
type restoreCounter struct {
	dns.Configurator
	restores atomic.Int32
}

func (c *restoreCounter) Restore() error {
	c.restores.Add(1)
	return c.Configurator.Restore()
}

// errNeedsRestart is what platform/dns returns once resolv.conf was
// replaced under the sandbox.
var errNeedsRestart = fmt.Errorf("%w (systemd-resolved avoids this): read-only file system", dns.ErrNeedsRestart)

// A DNS that only a new process can set stops the daemon as a stop does,
// keeping the target, and Run says why, so that systemd starts a new one
// that comes back connected. Set is not tried again meanwhile.
func TestDNSNeedsRestartStopsTheDaemon(t *testing.T) {
	for _, c := range []struct {
		name, settings string
		// fail makes the connected daemon set DNS again.
		fail     func(t *testing.T, r *rig)
		tunnels  int
		lockdown bool
	}{
		{"settings change", `{"lockdown": true}`, func(t *testing.T, r *rig) {
			s := r.d.Settings()
			s.DNSServers = addrs("9.9.9.9")
			if err := r.d.SetSettings(t.Context(), s); !errors.Is(err, dns.ErrNeedsRestart) {
				t.Fatalf("SetSettings: %v", err)
			}
		}, 1, true},
		{"reconnect", `{"kill_switch": true}`, func(t *testing.T, r *rig) {
			if !r.mon.Change("eth0 went down") {
				t.Fatal("the monitor's change was not taken")
			}
		}, 2, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			var rc *restoreCounter
			r := newRig(t, dir, c.settings, func(cfg *Config) {
				rc = &restoreCounter{Configurator: cfg.DNS}
				cfg.DNS = rc
			})
			r.watching(t)
			r.connect(t)
			restores := rc.restores.Load()

			r.dc.SetErr(errNeedsRestart)
			c.fail(t, r)
			if err := r.end(t); !errors.Is(err, dns.ErrNeedsRestart) {
				t.Fatalf("Run returned %v", err)
			}

			ts := r.net.opened()
			if len(ts) != c.tunnels {
				t.Fatalf("%d tunnels, want %d: Set tried again", len(ts), c.tunnels)
			}
			for i, tun := range ts {
				if !tun.closed.Load() {
					t.Fatalf("tunnel %d left open", i)
				}
			}
			cfgs := r.rt.Configs()
			if last := cfgs[len(cfgs)-1]; len(last.Addresses) != 0 || last.RouteIPv4 || len(last.Tunnel) != 0 {
				t.Fatalf("routes left %+v", last)
			}
			if rc.restores.Load() == restores {
				t.Fatal("DNS not restored")
			}
			if st := r.d.Status(); st.State != control.StateDisconnected {
				t.Fatalf("status %+v", st)
			}
			// The kill switch (or lockdown's rules) stays up until the
			// new process, which reconnects, takes over: nothing leaves
			// in the clear meanwhile.
			p, on := r.fw.Active()
			if !on {
				t.Fatalf("firewall off after the stop, lockdown %v", c.lockdown)
			}
			if got := len(p.Endpoints) > 2; got == c.lockdown {
				// Lockdown keeps its rules for a stop, which allow the
				// directory only; the kill switch stays as while connected.
				t.Fatalf("firewall after the stop, lockdown %v: %+v", c.lockdown, p)
			}
			tg, err := loadTarget(filepath.Join(dir, "state.json"))
			if err != nil || !tg.Connected {
				t.Fatalf("remembered %+v %v", tg, err)
			}

			// The new process comes back connected by itself.
			b := newRig(t, dir, "")
			b.untilState(t, control.StateConnected)
		})
	}
}

// A Restore at start that only a new process can do stops the daemon at
// once.
func TestDNSNeedsRestartAtStart(t *testing.T) {
	r := newRig(t, "", "", func(cfg *Config) { cfg.DNS = &dns.Fake{Err: errNeedsRestart} })
	if err := r.end(t); !errors.Is(err, dns.ErrNeedsRestart) {
		t.Fatalf("Run returned %v", err)
	}
}
