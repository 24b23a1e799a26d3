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

// lostOriginal is the backup taken of a resolv.conf that is already
// mixvpn's own, when the backup of the original is gone (deleted with the
// state directory, or by hand): what Restore then puts in place of the
// tunnel's resolvers. It names no server, so that lookups go to the
// machine itself and fail, rather than go on to the tunnel's addresses
// over the local network, until the network manager or DHCP client
// writes a new file.
const lostOriginal = "# mixvpn: the resolv.conf from before its tunnel was lost (its backup was gone).\n" +
	"# The network manager or DHCP client writes a new one when it next configures the network.\n"

// noteSuffix names, beside the backup, the note of a write in place of
// resolv.conf under way (see writeNoted).
const noteSuffix = ".writing"

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
	note       string // backup+noteSuffix
	busAddr    string
	start      fileID // resolv.conf as New found it (see needsRestart)

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
	c.note = c.backup + noteSuffix
	c.start = probeFile(c.resolvConf)
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

// ours reports whether resolv.conf is the file this package wrote, so
// that the backup is the original to go back to: it starts with the full
// header line, or a write in place was under way (the note is there) and
// the file holds a part of what was being written, as a crash in the
// middle leaves it, or, with no note, the file is the header line cut
// short (see cutHeader). Anything else, an empty file included, is
// someone else's, written since the backup was taken, and stays. A missing file counts as ours, since nobody put anything newer
// there; a symlink does not, since Set replaces links with files.
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
	data, err := c.readResolvConf()
	if err != nil {
		return false, err
	}
	if bytes.HasPrefix(data, []byte(headerLine(c.backup))) {
		return true, nil
	}
	note, err := os.ReadFile(c.note)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		// Versions before the note left no note: a crash of theirs in
		// the middle of a write leaves the header cut short.
		return c.cutHeader(data), nil
	case err != nil:
		return false, fmt.Errorf("dns: %w", err)
	}
	return bytes.HasPrefix(note, data), nil
}

// minCutHeader is the least of the header line that a file must hold to
// count as a write of it cut short: less could be anyone's comment.
const minCutHeader = 8

// cutHeader reports whether data is the header line naming this backup
// cut short, as a crash of a version that wrote no note (see writeNoted)
// in the middle of writing leaves it.
func (c *linuxConfigurator) cutHeader(data []byte) bool {
	h := headerLine(c.backup)
	return len(data) >= minCutHeader && len(data) < len(h) && strings.HasPrefix(h, string(data))
}

// mixvpns reports whether data is a resolv.conf that mixvpn wrote, for
// this backup or another, or the header of one cut short: never an
// original to back up.
func (c *linuxConfigurator) mixvpns(data []byte) bool {
	return bytes.HasPrefix(data, []byte(ownHeader)) || c.cutHeader(data)
}

// readResolvConf reads resolv.conf, never through a symlink, and at most
// far more than the package ever writes, as the file could be anything.
func (c *linuxConfigurator) readResolvConf() ([]byte, error) {
	f, err := os.OpenFile(c.resolvConf, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("dns: read %s: %w", c.resolvConf, err)
	}
	return data, nil
}

// writeNoted writes data into resolv.conf in place (see writeInPlace),
// having first noted in the state directory what it writes. A crash in
// the middle leaves resolv.conf empty or cut short, which alone would
// look like someone else's file (an empty resolv.conf may well be the
// user's); the note is how ours tells the two apart. The note goes once
// the file is whole or when nothing was changed, and stays when writing
// failed half way, for the next run to recognise the remains.
func (c *linuxConfigurator) writeNoted(data []byte, perm fs.FileMode, create bool) error {
	if err := writeAtomic(c.note, data, 0o600); err != nil {
		return fmt.Errorf("note the write under way: %w", err)
	}
	touched, err := writeInPlace(c.resolvConf, data, perm, create)
	if err != nil && touched {
		return err
	}
	if nerr := c.dropNote(); nerr != nil {
		// The file itself is as it should be; a note left behind only
		// risks taking a file later emptied by someone else for ours.
		c.log.Warn("could not remove the note of a write to resolv.conf", "err", nerr)
	}
	return err
}

// dropNote removes the note of a write in place, which is stale once the
// write is done, or once resolv.conf is someone else's or there is no
// backup to go back to.
func (c *linuxConfigurator) dropNote() error {
	err := os.Remove(c.note)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	syncDir(filepath.Dir(c.note))
	return nil
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
		err = c.writeNoted(data, 0o644, true)
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
		if err = c.writeNoted(data, 0, false); err != nil {
			if rerr := c.needsRestart(err); rerr != nil {
				return rerr
			}
		}
	}
	if err != nil {
		return fmt.Errorf("dns: write %s: %w%s", c.resolvConf, err, accessHint(err))
	}
	return nil
}

// needsRestart returns the ErrNeedsRestart error for err, which writing
// an existing resolv.conf in place failed with, if a restart of the
// daemon would cure it; otherwise nil. It would for EROFS where the file
// could be written when New looked at it and sits on another mount now:
// under mixvpnd.service, the bind mount that let the daemon write
// resolv.conf went with the file it was on, replaced by rename, and the
// new file is on the read-only /etc. A file that was read-only from the
// start (bound read-only in a container, a read-only file system) stays
// so after a restart, and when in doubt, no restart is asked for: a
// daemon that fails the same way at every start would restart for ever.
func (c *linuxConfigurator) needsRestart(err error) error {
	if !errors.Is(err, unix.EROFS) || !c.start.writable {
		return nil
	}
	now := probeFile(c.resolvConf)
	if !now.regular || now.sameMount(c.start) {
		return nil
	}
	return fmt.Errorf("%w (a new %s was renamed over the one its sandbox let it write, as dhclient, NetworkManager and resolvconf do, and sits on read-only %s; systemd-resolved avoids this): %w",
		ErrNeedsRestart, c.resolvConf, filepath.Dir(c.resolvConf), err)
}

// fileID is what needsRestart compares of resolv.conf: the mount it is
// on, and whether it could be written.
type fileID struct {
	regular  bool
	writable bool   // as the daemon sees it; only looked at by New
	hasMnt   bool   // statx gave a mount ID (Linux 5.8 on)
	mnt      uint64 // the mount ID
	dev, ino uint64 // the file itself, where there is no mount ID
}

// probeFile looks at path, never through a symlink.
func probeFile(path string) fileID {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW,
		unix.STATX_TYPE|unix.STATX_INO|unix.STATX_MNT_ID, &stx)
	if err != nil || stx.Mask&unix.STATX_TYPE == 0 || stx.Mode&unix.S_IFMT != unix.S_IFREG {
		return fileID{}
	}
	id := fileID{
		regular: true,
		hasMnt:  stx.Mask&unix.STATX_MNT_ID != 0,
		mnt:     stx.Mnt_id,
		dev:     unix.Mkdev(stx.Dev_major, stx.Dev_minor),
		ino:     stx.Ino,
	}
	// access(2) fails with EROFS for a read-only mount or file system,
	// and with EACCES where the daemon may not write the file.
	id.writable = unix.Access(path, unix.W_OK) == nil
	return id
}

// sameMount reports whether f is on the same mount as was; without
// mount IDs, whether it is the same file.
func (f fileID) sameMount(was fileID) bool {
	if f.hasMnt && was.hasMnt {
		return f.mnt == was.mnt
	}
	return f.dev == was.dev && f.ino == was.ino
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
// as missing. A file of mixvpn's own is not copied: the backup of the
// original is lost then, and a copy would bring the tunnel's resolvers
// back at every Restore, for good. Failing Set for it would not help
// either (the file stays as it is, and the tunnel must have its DNS), so
// Set goes on, with a warning, and the backup is lostOriginal: Restore
// leaves a resolv.conf without servers, which sends no lookup anywhere,
// for the network manager to replace. That placeholder never replaces a
// backup already there (resolv.conf then names another backup): the
// backup is kept as it is.
func (c *linuxConfigurator) saveBackup() error {
	if err := os.MkdirAll(filepath.Dir(c.backup), 0o700); err != nil {
		return fmt.Errorf("dns: backup directory: %w", err)
	}
	// Whether no backup was left or resolv.conf is someone else's, a
	// note is stale.
	if err := c.dropNote(); err != nil {
		return fmt.Errorf("dns: %w", err)
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
		if data, err = os.ReadFile(c.resolvConf); err != nil {
			break
		}
		perm := fi.Mode().Perm()
		if c.mixvpns(data) {
			if _, berr := os.Lstat(c.backup); berr == nil {
				// A backup there is the original, or as good as any:
				// the placeholder must not take its place.
				c.log.Warn("resolv.conf is mixvpn's own but does not name this backup; keeping the backup",
					"resolv_conf", c.resolvConf, "backup", c.backup)
				return nil
			}
			c.log.Warn("resolv.conf is mixvpn's own and the backup of the original is gone; when the tunnel stops, a resolv.conf without servers takes its place until the network manager writes one",
				"resolv_conf", c.resolvConf, "backup", c.backup)
			data, perm = []byte(lostOriginal), 0o644
		}
		err = writeAtomic(c.backup, data, perm)
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
		// Without a backup a note is stale, and must not make a file
		// someone empties later look like ours.
		if err := c.dropNote(); err != nil {
			return fmt.Errorf("dns: %w", err)
		}
		return c.restoreLost()
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
			missing := errors.Is(lerr, fs.ErrNotExist)
			if err = c.writeNoted(data, fi.Mode().Perm(), missing); err != nil && !missing {
				if rerr := c.needsRestart(err); rerr != nil {
					return rerr
				}
			}
		}
	}
	if err != nil {
		return fmt.Errorf("dns: restore %s from %s: %w%s", c.resolvConf, c.backup, err, accessHint(err))
	}
	// The note goes first: a crash between the two then leaves a backup
	// beside a file that is no longer ours, which the next run drops,
	// as it should.
	if err := c.dropNote(); err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	if err := os.Remove(c.backup); err != nil {
		return fmt.Errorf("dns: remove backup: %w", err)
	}
	syncDir(filepath.Dir(c.backup))
	c.log.Info("dns restored", "via", c.resolvConf, "resolv_conf", how)
	return nil
}

// restoreLost puts lostOriginal in place of a resolv.conf that Set wrote
// (its header names this backup) but whose backup is gone, so that the
// tunnel's resolvers do not outlive the tunnel (see saveBackup). A crash
// while writing it leaves a file without servers as well, so it needs no
// note.
func (c *linuxConfigurator) restoreLost() error {
	fi, err := os.Lstat(c.resolvConf)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("dns: %w", err)
	case !fi.Mode().IsRegular():
		return nil
	}
	data, err := c.readResolvConf()
	if err != nil {
		return err
	}
	if !bytes.HasPrefix(data, []byte(headerLine(c.backup))) {
		return nil
	}
	if _, err := writeInPlace(c.resolvConf, []byte(lostOriginal), 0, false); err != nil {
		if rerr := c.needsRestart(err); rerr != nil {
			return rerr
		}
		return fmt.Errorf("dns: replace %s, whose original's backup %s is gone: %w%s", c.resolvConf, c.backup, err, accessHint(err))
	}
	c.log.Warn("resolv.conf was mixvpn's own and the backup of the original was gone; put one without servers in its place until the network manager writes one",
		"resolv_conf", c.resolvConf, "backup", c.backup)
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
// between leaves a short one (see writeNoted). It never follows a
// symlink. touched reports whether it got as far as changing the file,
// which a failure may then have left cut short.
func writeInPlace(path string, data []byte, perm fs.FileMode, create bool) (touched bool, err error) {
	flags := os.O_WRONLY | os.O_TRUNC | unix.O_NOFOLLOW
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, perm)
	if err != nil {
		return false, err
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
	return true, err
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
