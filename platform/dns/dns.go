// Package dns points the system's resolver at the tunnel's DNS servers, so
// that names are looked up inside the tunnel and not by the local
// network's resolver. On Linux it asks systemd-resolved for that when it
// runs, and otherwise rewrites /etc/resolv.conf in place, keeping the
// original in a backup in the daemon's state directory that survives a
// crash of the daemon: the next start puts it back. systemd-resolved is
// the reliable way: under the daemon's sandbox, resolv.conf stays
// writable only until someone replaces the file (see ErrNeedsRestart).
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
)

// Configurator sets and restores the system's DNS configuration.
type Configurator interface {
	// Set sends every lookup to cfg's servers. Calling it again replaces
	// the previous Set.
	Set(ctx context.Context, cfg Config) error
	// Restore puts back the configuration found before the first Set,
	// including one left behind by an earlier run that crashed, unless
	// someone else has replaced what Set wrote since (then theirs is
	// newer, and stays). It is safe to call when nothing was set. Where
	// the original is lost (its backup deleted), what Set wrote gives
	// way to a resolv.conf that names no server, so that the tunnel's
	// resolvers never outlive it.
	Restore() error
}

// Config is the DNS the tunnel wants.
type Config struct {
	// Servers are the resolvers inside the tunnel.
	Servers []netip.Addr
	// Domains are search domains, tried for names without a dot.
	Domains []string
	// Interface is the TUN device the servers are reached through.
	Interface string
}

// Options configure New.
type Options struct {
	// Logger defaults to a discard logger.
	Logger *slog.Logger
	// ResolvConf defaults to /etc/resolv.conf. Tests point it at a
	// temporary file.
	ResolvConf string
	// Backup is where the original resolv.conf is kept while the tunnel
	// runs; it defaults to DefaultBackup. It belongs in the daemon's state
	// directory, not beside ResolvConf: a sandboxed daemon may write
	// resolv.conf itself (in place) but nothing else under /etc. And it
	// must be on a disk, not a tmpfs such as /run, since resolv.conf is:
	// after a crash and a reboot the next start still finds and restores
	// it.
	Backup string
	// DBusAddress is the bus to find systemd-resolved on; empty means the
	// system bus. Tests point it at a bus of their own (or at nothing, to
	// force the resolv.conf path).
	DBusAddress string
}

// DefaultBackup is Options.Backup's default, in the state directory the
// daemon's systemd unit gives it (StateDirectory=mixvpn).
const DefaultBackup = "/var/lib/mixvpn/resolv.conf.backup"

// Validate reports whether cfg can be set. Domains end up in resolv.conf
// and in D-Bus calls, so anything that is not a plain domain name is
// refused rather than escaped.
func (c Config) Validate() error {
	if len(c.Servers) == 0 {
		return errors.New("dns: no servers")
	}
	for _, s := range c.Servers {
		if !s.IsValid() {
			return errors.New("dns: invalid server address")
		}
	}
	if c.Interface == "" {
		return errors.New("dns: no interface")
	}
	for _, d := range c.Domains {
		if d == "" || len(d) > 253 {
			return fmt.Errorf("dns: search domain %q is empty or too long", d)
		}
		for _, r := range d {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
				return fmt.Errorf("dns: search domain %q has a character other than letters, digits, '-', '_' and '.'", d)
			}
		}
	}
	return nil
}

// ErrNeedsRestart is in the chain of a Set or Restore that could not
// write resolv.conf because the file was replaced since the daemon
// started. Under mixvpnd.service the daemon may write resolv.conf only
// through a bind mount of the file onto itself; whoever renames a new
// file over it (dhclient-script, NetworkManager, resolvconf) detaches
// that mount, and the daemon sees the new file on its read-only /etc.
// Nothing short of a new mount namespace, that is a restart of the
// service, gives it write access again.
var ErrNeedsRestart = errors.New("dns: resolv.conf was replaced under the daemon's sandbox; the daemon must restart to be able to write the new one")

// ownHeader starts every resolv.conf the package writes. A resolv.conf
// that starts with anything else was written by someone else.
const ownHeader = "# Written by mixvpn while its tunnel is up; "

// headerLine is the whole first line of the resolv.conf written with
// backup as the original's. Restore puts the original back only over a
// file that starts with it (or with a part of what a crash interrupted
// the writing of; see the Linux ours): any other file, an empty one
// included, was written since by someone else (a network manager at
// boot, after a crash) and is newer than the backup.
func headerLine(backup string) string {
	return ownHeader + "the original is in " + backup + "\n"
}

// resolvConf is the file written in place of the original.
func resolvConf(cfg Config, backup string) []byte {
	var b strings.Builder
	b.WriteString(headerLine(backup))
	fmt.Fprintf(&b, "# and comes back when the tunnel stops.\n")
	for _, s := range cfg.Servers {
		fmt.Fprintf(&b, "nameserver %s\n", s.Unmap().WithZone(""))
	}
	if len(cfg.Domains) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(cfg.Domains, " "))
	}
	return []byte(b.String())
}
