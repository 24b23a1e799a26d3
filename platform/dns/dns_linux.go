//go:build linux

package dns

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
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
		c.backup = DefaultBackup
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
// one, and must not be replaced by our own file; but if resolv.conf is no
// longer ours, someone rewrote it since the backup was taken (a network
// manager, at boot after a crash) and the backup is stale.
func (c *linuxConfigurator) setFile(cfg Config) error {
	_, err := os.Lstat(c.backup)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		err = c.saveBackup()
	case err != nil:
		err = fmt.Errorf("dns: backup: %w", err)
	default:
		var ours bool
		if ours, err = c.ours(); err == nil && !ours {
			c.log.Warn("resolv.conf changed since the backup was taken; backing it up again", "resolv_conf", c.resolvConf, "backup", c.backup)
			err = c.saveBackup()
		}
	}
	if err != nil {
		return err
	}
	if err := c.writeResolvConf(resolvConf(cfg, c.backup)); err != nil {
		return err
	}
	if len(cfg.Servers) > 3 {
		c.log.Warn("resolv.conf readers use only the first three servers", "servers", len(cfg.Servers))
	}
	c.log.Info("dns set", "via", c.resolvConf, "servers", cfg.Servers)
	return nil
}

// ours reports whether resolv.conf is a file this package wrote, or one
// whose writing a crash cut short (empty, or part of our header): only
// then is the backup the original to go back to. A missing file counts as
// ours, since nobody put anything newer there; a symlink does not, since
// Set replaces links with files.
func (c *linuxConfigurator) ours() (bool, error) {
	fi, err := os.Lstat(c.resolvConf)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("dns: %w", err)
	case !fi.Mode().IsRegular():
		return false, nil
	}
	f, err := os.OpenFile(c.resolvConf, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return false, fmt.Errorf("dns: %w", err)
	}
	defer f.Close()
	head := make([]byte, len(ownHeader))
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return false, fmt.Errorf("dns: read %s: %w", c.resolvConf, err)
	}
	return strings.HasPrefix(ownHeader, string(head[:n])), nil
}

// writeResolvConf puts data in resolv.conf. A file is written in place:
// under the daemon's sandbox resolv.conf is a bind mount of itself
// (ReadWritePaths=-/etc/resolv.conf), which can be written but neither
// renamed over nor removed. A symlink is replaced by a file, never written
// through: the file it points at belongs to another program (resolved,
// NetworkManager, resolvconf) that would rewrite it behind the tunnel's
// back. Replacing a link, like creating a missing file, takes write access
// to the directory, which the sandbox does not give.
func (c *linuxConfigurator) writeResolvConf(data []byte) error {
	fi, err := os.Lstat(c.resolvConf)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		err = writeInPlace(c.resolvConf, data, 0o644, true)
	case err != nil:
	case fi.Mode()&fs.ModeSymlink != 0:
		target, _ := os.Readlink(c.resolvConf)
		if err = writeAtomic(c.resolvConf, data, 0o644); err != nil {
			return fmt.Errorf("dns: %s links to %s, which mixvpn replaces with a file of its own while the tunnel is up, but cannot: %w; %s",
				c.resolvConf, target, err, linkHint(target, filepath.Dir(c.resolvConf)))
		}
	case !fi.Mode().IsRegular():
		err = fmt.Errorf("not a regular file but %v", fi.Mode().Type())
	default:
		err = writeInPlace(c.resolvConf, data, 0, false)
	}
	if err != nil {
		return fmt.Errorf("dns: write %s: %w%s", c.resolvConf, err, accessHint(err))
	}
	return nil
}

// linkHint says what to do about a resolv.conf linking to target that
// could not be replaced.
func linkHint(target, dir string) string {
	if strings.Contains(target, "systemd/resolve") {
		return "it is systemd-resolved's, which is not running: start systemd-resolved, and mixvpn sets DNS through it"
	}
	return "use systemd-resolved, or let mixvpnd write " + dir + " (a drop-in with ReadWritePaths=" + dir + ")"
}

// accessHint explains a write refused by the file system or the sandbox.
func accessHint(err error) string {
	if errors.Is(err, unix.EROFS) || errors.Is(err, fs.ErrPermission) || errors.Is(err, unix.EBUSY) {
		return " (mixvpnd may not write it here: use systemd-resolved, or give it write access to the file, as mixvpnd.service does with ReadWritePaths=-/etc/resolv.conf)"
	}
	return ""
}

// saveBackup copies resolv.conf as it is: a symlink (to resolved's or
// NetworkManager's file) stays a symlink, and a missing file is recorded
// as missing.
func (c *linuxConfigurator) saveBackup() error {
	if err := os.MkdirAll(filepath.Dir(c.backup), 0o700); err != nil {
		return fmt.Errorf("dns: backup directory: %w", err)
	}
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
		return fmt.Errorf("dns: back up %s to %s: %w", c.resolvConf, c.backup, err)
	}
	return nil
}

// restoreFile puts the original back from the backup, if resolv.conf is
// still the file Set wrote: its contents in place for a file, and the
// link or the absence it was otherwise. A resolv.conf that is not ours
// was rewritten since by someone who knew better than an old backup
// (after a crash, the network manager at boot), so it stays, and the
// backup goes. A backup is kept whenever restoring fails, for the next
// try.
func (c *linuxConfigurator) restoreFile() error {
	fi, err := os.Lstat(c.backup)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dns: backup: %w", err)
	}
	ours, err := c.ours()
	if err != nil {
		return err
	}
	how := "restored"
	switch {
	case !ours:
		how = "left as someone else rewrote it; old backup dropped"
	case fi.Mode()&fs.ModeSymlink != 0:
		var target string
		if target, err = os.Readlink(c.backup); err == nil {
			err = symlinkAtomic(target, c.resolvConf)
		}
	case isAbsentMarker(c.backup, fi):
		how = "removed, as there was none before"
		if err = os.Remove(c.resolvConf); errors.Is(err, fs.ErrNotExist) {
			err = nil
		} else if err == nil {
			syncDir(filepath.Dir(c.resolvConf))
		}
	default:
		var data []byte
		if data, err = os.ReadFile(c.backup); err == nil {
			_, lerr := os.Lstat(c.resolvConf)
			err = writeInPlace(c.resolvConf, data, fi.Mode().Perm(), errors.Is(lerr, fs.ErrNotExist))
		}
	}
	if err != nil {
		return fmt.Errorf("dns: restore %s from %s: %w%s", c.resolvConf, c.backup, err, accessHint(err))
	}
	if err := os.Remove(c.backup); err != nil {
		return fmt.Errorf("dns: remove backup: %w", err)
	}
	syncDir(filepath.Dir(c.backup))
	c.log.Info("dns restored", "via", c.resolvConf, "resolv_conf", how)
	return nil
}

// isAbsentMarker reports whether the backup records that there was no
// resolv.conf.
func isAbsentMarker(path string, fi fs.FileInfo) bool {
	if !fi.Mode().IsRegular() || fi.Size() != int64(len(absentMarker)) {
		return false
	}
	data, err := os.ReadFile(path)
	return err == nil && bytes.Equal(data, []byte(absentMarker))
}

// writeInPlace truncates path and writes data into the same inode, then
// syncs it; with create it makes the file, with perm, which must not
// exist. Readers may see an empty file for a moment, and a crash in
// between leaves a short one, which ours recognises as its own. It never
// follows a symlink.
func writeInPlace(path string, data []byte, perm fs.FileMode, create bool) error {
	flags := os.O_WRONLY | os.O_TRUNC | unix.O_NOFOLLOW
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, perm)
	if err != nil {
		return err
	}
	if create {
		// The daemon's umask (0027 under systemd) would keep users from
		// reading it.
		err = f.Chmod(perm)
	}
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && create {
		syncDir(filepath.Dir(path))
	}
	return err
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
