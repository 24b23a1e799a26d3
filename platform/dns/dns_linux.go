//go:build linux

package dns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
	"golang.org/x/sys/unix"
)

// systemd-resolved's D-Bus names.
const (
	resolvedName    = "org.freedesktop.resolve1"
	resolvedPath    = "/org/freedesktop/resolve1"
	resolvedManager = "org.freedesktop.resolve1.Manager"
)

// absentMarker is the backup of a resolv.conf that did not exist, so that
// Restore removes the file instead of leaving an empty one.
const absentMarker = "# mixvpn: there was no resolv.conf before the tunnel\n"

// restoreTimeout bounds the D-Bus calls of Restore, which has no context
// because it runs on the way out.
const restoreTimeout = 5 * time.Second

type mode int

const (
	modeNone     mode = iota // nothing set
	modeResolved             // per-link settings in systemd-resolved
	modeFile                 // resolv.conf rewritten
)

// linkDNS and linkDomain are resolved's (iay) and (sb) arguments.
type linkDNS struct {
	Family  int32
	Address []byte
}

type linkDomain struct {
	Domain      string
	RoutingOnly bool
}

type linuxConfigurator struct {
	log        *slog.Logger
	resolvConf string
	backup     string
	busAddr    string

	mu      sync.Mutex
	mode    mode
	bus     *dbus.Conn
	ifindex int32 // the link given to resolved
}

// New returns the Linux configurator. It changes nothing until Set or
// Restore.
func New(opts Options) (Configurator, error) {
	c := &linuxConfigurator{
		log:        opts.Logger,
		resolvConf: opts.ResolvConf,
		backup:     opts.Backup,
		busAddr:    opts.DBusAddress,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.resolvConf == "" {
		c.resolvConf = "/etc/resolv.conf"
	}
	if c.backup == "" {
		c.backup = c.resolvConf + ".mixvpn-backup"
	}
	if _, err := os.Lstat(c.backup); err == nil {
		c.log.Warn("found the resolv.conf backup of an earlier run that did not restore it; Restore will put it back", "backup", c.backup)
	}
	return c, nil
}

// Set picks systemd-resolved or resolv.conf on its first call and sticks
// to that until Restore, so that Restore undoes the right one.
func (c *linuxConfigurator) Set(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mode == modeNone {
		c.mode = modeFile
		if c.resolvedRunning(ctx) {
			c.mode = modeResolved
		}
	}
	if c.mode == modeResolved {
		return c.setResolved(ctx, cfg)
	}
	return c.setFile(cfg)
}

// Restore puts resolv.conf back from the backup whatever the mode, since
// a backup may come from a crashed run that used the file.
func (c *linuxConfigurator) Restore() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	if err := c.restoreFile(); err != nil {
		errs = append(errs, err)
	}
	if c.mode == modeResolved && c.ifindex != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), restoreTimeout)
		defer cancel()
		if err := c.revertLink(ctx, c.ifindex); err != nil {
			errs = append(errs, err)
		} else {
			c.log.Info("dns restored", "via", "systemd-resolved")
		}
	}
	if c.bus != nil {
		c.bus.Close()
		c.bus = nil
	}
	c.mode, c.ifindex = modeNone, 0
	return errors.Join(errs...)
}

// resolvedRunning reports whether systemd-resolved owns its name on the
// bus; any failure to ask means no.
func (c *linuxConfigurator) resolvedRunning(ctx context.Context) bool {
	if err := c.connect(ctx); err != nil {
		c.log.Debug("no D-Bus, using resolv.conf", "err", err)
		return false
	}
	var owned bool
	err := c.bus.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.NameHasOwner", 0, resolvedName).Store(&owned)
	if err != nil || !owned {
		c.log.Debug("systemd-resolved not running, using resolv.conf", "err", err)
		return false
	}
	return true
}

func (c *linuxConfigurator) connect(ctx context.Context) error {
	if c.bus != nil && c.bus.Connected() {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dns: connect to D-Bus: %w", err)
	}
	// No dbus.WithContext: it would close the connection with the
	// context of the call that happened to open it.
	var err error
	if c.busAddr == "" {
		c.bus, err = dbus.ConnectSystemBus()
	} else {
		c.bus, err = dbus.Connect(c.busAddr)
	}
	if err != nil {
		c.bus = nil
		return fmt.Errorf("dns: connect to D-Bus: %w", err)
	}
	return nil
}

// setResolved gives the link the servers and the routing domain "~.",
// which makes resolved send every lookup to this link's servers and none
// to the other links'.
func (c *linuxConfigurator) setResolved(ctx context.Context, cfg Config) error {
	iface, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return fmt.Errorf("dns: interface %s: %w", cfg.Interface, err)
	}
	idx := int32(iface.Index)
	if c.ifindex != 0 && c.ifindex != idx {
		if err := c.revertLink(ctx, c.ifindex); err != nil {
			return err
		}
		c.ifindex = 0
	}
	if err := c.connect(ctx); err != nil {
		return err
	}
	servers := make([]linkDNS, 0, len(cfg.Servers))
	for _, s := range cfg.Servers {
		s = s.Unmap()
		fam := int32(unix.AF_INET)
		if s.Is6() {
			fam = unix.AF_INET6
		}
		servers = append(servers, linkDNS{Family: fam, Address: s.AsSlice()})
	}
	domains := make([]linkDomain, 0, len(cfg.Domains)+1)
	for _, d := range cfg.Domains {
		domains = append(domains, linkDomain{Domain: d})
	}
	domains = append(domains, linkDomain{Domain: ".", RoutingOnly: true})

	c.ifindex = idx // from here on there may be something to revert
	obj := c.bus.Object(resolvedName, resolvedPath)
	if err := obj.CallWithContext(ctx, resolvedManager+".SetLinkDNS", 0, idx, servers).Err; err != nil {
		return fmt.Errorf("dns: resolved SetLinkDNS on %s: %w", cfg.Interface, err)
	}
	if err := obj.CallWithContext(ctx, resolvedManager+".SetLinkDomains", 0, idx, domains).Err; err != nil {
		return fmt.Errorf("dns: resolved SetLinkDomains on %s: %w", cfg.Interface, err)
	}
	// Versions before 240 lack these; "~." alone already routes everything.
	if err := obj.CallWithContext(ctx, resolvedManager+".SetLinkDefaultRoute", 0, idx, true).Err; err != nil {
		c.log.Debug("resolved SetLinkDefaultRoute failed", "err", err)
	}
	if err := obj.CallWithContext(ctx, resolvedManager+".FlushCaches", 0).Err; err != nil {
		c.log.Debug("resolved FlushCaches failed", "err", err)
	}
	c.log.Info("dns set", "via", "systemd-resolved", "interface", cfg.Interface, "servers", cfg.Servers)
	return nil
}

func (c *linuxConfigurator) revertLink(ctx context.Context, idx int32) error {
	if err := c.connect(ctx); err != nil {
		return err
	}
	err := c.bus.Object(resolvedName, resolvedPath).CallWithContext(ctx, resolvedManager+".RevertLink", 0, idx).Err
	var derr dbus.Error
	if errors.As(err, &derr) && derr.Name == "org.freedesktop.resolve1.NoSuchLink" {
		return nil // the TUN is gone, and resolved forgot it with it
	}
	if err != nil {
		return fmt.Errorf("dns: resolved RevertLink %d: %w", idx, err)
	}
	return nil
}

// setFile saves the original resolv.conf once, then overwrites it. A
// backup already there holds the original, from this run or a crashed
// one, and must not be replaced by our own file.
func (c *linuxConfigurator) setFile(cfg Config) error {
	if _, err := os.Lstat(c.backup); errors.Is(err, fs.ErrNotExist) {
		if err := c.saveBackup(); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("dns: backup: %w", err)
	}
	if err := writeAtomic(c.resolvConf, resolvConf(cfg, c.backup), 0o644); err != nil {
		return fmt.Errorf("dns: write %s: %w", c.resolvConf, err)
	}
	if len(cfg.Servers) > 3 {
		c.log.Warn("resolv.conf readers use only the first three servers", "servers", len(cfg.Servers))
	}
	c.log.Info("dns set", "via", c.resolvConf, "servers", cfg.Servers)
	return nil
}

// saveBackup copies resolv.conf as it is: a symlink (to resolved's or
// NetworkManager's file) stays a symlink, and a missing file is recorded
// as missing.
func (c *linuxConfigurator) saveBackup() error {
	fi, err := os.Lstat(c.resolvConf)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		err = writeAtomic(c.backup, []byte(absentMarker), 0o644)
	case err != nil:
	case fi.Mode()&fs.ModeSymlink != 0:
		var target string
		if target, err = os.Readlink(c.resolvConf); err == nil {
			err = symlinkAtomic(target, c.backup)
		}
	default:
		var data []byte
		if data, err = os.ReadFile(c.resolvConf); err == nil {
			err = writeAtomic(c.backup, data, fi.Mode().Perm())
		}
	}
	if err != nil {
		return fmt.Errorf("dns: back up %s: %w", c.resolvConf, err)
	}
	return nil
}

// restoreFile renames the backup over resolv.conf, so readers see either
// our file or the original and never a half-written one.
func (c *linuxConfigurator) restoreFile() error {
	fi, err := os.Lstat(c.backup)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dns: backup: %w", err)
	}
	if fi.Mode().IsRegular() && fi.Size() == int64(len(absentMarker)) {
		if data, err := os.ReadFile(c.backup); err == nil && bytes.Equal(data, []byte(absentMarker)) {
			if err := os.Remove(c.resolvConf); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("dns: remove %s: %w", c.resolvConf, err)
			}
			if err := os.Remove(c.backup); err != nil {
				return fmt.Errorf("dns: remove backup: %w", err)
			}
			c.log.Info("dns restored", "via", c.resolvConf, "note", "there was no resolv.conf before")
			return nil
		}
	}
	if err := os.Rename(c.backup, c.resolvConf); err != nil {
		return fmt.Errorf("dns: restore %s: %w", c.resolvConf, err)
	}
	syncDir(filepath.Dir(c.resolvConf))
	c.log.Info("dns restored", "via", c.resolvConf)
	return nil
}

// writeAtomic writes data to a temporary file beside path, syncs it and
// renames it over path.
func writeAtomic(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // fails harmlessly once renamed
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

func symlinkAtomic(target, path string) error {
	tmp := fmt.Sprintf("%s.tmp%d", path, os.Getpid())
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// syncDir makes a rename durable. Failing to is not worth an error: the
// rename itself has happened.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
