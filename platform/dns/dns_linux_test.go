//go:build linux

package dns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/mixvpn/mixvpn/platform/dbustest"
)

// Every test here works on a resolv.conf in a temporary directory, keeps
// the backup in another (the daemon's state directory), and talks to a
// bus of its own or to none, never to the host's.

const original = "# the machine's own\nnameserver 192.0.2.53\nsearch lan\n"

// files is a test's stand-in for /etc and for the daemon's state
// directory.
type files struct {
	etc, state   string
	conf, backup string
}

func newDirs(t *testing.T) files {
	t.Helper()
	f := files{etc: t.TempDir(), state: t.TempDir()}
	f.conf, f.backup = filepath.Join(f.etc, "resolv.conf"), filepath.Join(f.state, "resolv.conf.backup")
	return f
}

// configurator returns one on f whose D-Bus address leads nowhere, so it
// always takes the resolv.conf path.
func (f files) configurator(t *testing.T) Configurator {
	t.Helper()
	c, err := New(Options{
		ResolvConf:  f.conf,
		Backup:      f.backup,
		DBusAddress: "unix:path=" + filepath.Join(f.state, "no-bus"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// entries lists dir, to catch temporary files left behind.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range des {
		names = append(names, de.Name())
	}
	return names
}

func stat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

// resolv.conf is written in place, the same inode throughout, and
// nothing else appears beside it: the backup is in the state directory.
func TestFileSetAndRestore(t *testing.T) {
	f := newDirs(t)
	if err := os.WriteFile(f.conf, []byte(original), 0o640); err != nil {
		t.Fatal(err)
	}
	before := stat(t, f.conf)
	c := f.configurator(t)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); got != string(resolvConf(testConfig(), f.backup)) {
		t.Fatalf("resolv.conf:\n%s", got)
	}
	if !os.SameFile(before, stat(t, f.conf)) {
		t.Fatal("resolv.conf was replaced, not written in place")
	}
	if got := read(t, f.backup); got != original {
		t.Fatalf("backup:\n%s", got)
	}
	if names := entries(t, f.etc); !slices.Equal(names, []string{"resolv.conf"}) {
		t.Fatalf("files beside resolv.conf while set: %v", names)
	}

	// A second Set rewrites the file but keeps the original backup.
	second := testConfig()
	second.Servers = []netip.Addr{netip.MustParseAddr("10.64.0.2")}
	if err := c.Set(t.Context(), second); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); !strings.Contains(got, "nameserver 10.64.0.2\n") || strings.Contains(got, "10.64.0.1") {
		t.Fatalf("second Set:\n%s", got)
	}
	if got := read(t, f.backup); got != original {
		t.Fatalf("backup after second Set:\n%s", got)
	}

	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); got != original {
		t.Fatalf("restored:\n%s", got)
	}
	after := stat(t, f.conf)
	if !os.SameFile(before, after) || after.Mode().Perm() != 0o640 {
		t.Fatalf("restored as another file or with mode %v", after.Mode())
	}
	if names := entries(t, f.etc); !slices.Equal(names, []string{"resolv.conf"}) {
		t.Fatalf("files left beside resolv.conf: %v", names)
	}
	if names := entries(t, f.state); len(names) != 0 {
		t.Fatalf("files left in the state directory: %v", names)
	}
	if err := c.Restore(); err != nil {
		t.Fatalf("second Restore: %v", err)
	}
	if got := read(t, f.conf); got != original {
		t.Fatalf("after second Restore:\n%s", got)
	}
}

// A resolv.conf that is a symlink (to resolved's stub file, say) comes
// back as the same symlink, and the file it points at is never written.
func TestFileSymlinkComesBack(t *testing.T) {
	f := newDirs(t)
	stub := filepath.Join(f.etc, "stub-resolv.conf")
	if err := os.WriteFile(stub, []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("stub-resolv.conf", f.conf); err != nil {
		t.Fatal(err)
	}
	c := f.configurator(t)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if fi := stat(t, f.conf); !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
		t.Fatalf("resolv.conf while set: %v", fi.Mode())
	}
	if got := read(t, stub); got != "nameserver 127.0.0.53\n" {
		t.Fatalf("symlink target written: %q", got)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(f.conf); err != nil || target != "stub-resolv.conf" {
		t.Fatalf("restored link %q %v", target, err)
	}
	if names := entries(t, f.state); len(names) != 0 {
		t.Fatalf("files left in the state directory: %v", names)
	}
}

func TestFileAbsentStaysAbsent(t *testing.T) {
	f := newDirs(t)
	old := syscall.Umask(0o027) // the unit's, which must not make resolv.conf unreadable
	defer syscall.Umask(old)
	c := f.configurator(t)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); !strings.Contains(got, "nameserver 10.64.0.1") {
		t.Fatalf("resolv.conf:\n%s", got)
	}
	if fi := stat(t, f.conf); fi.Mode().Perm() != 0o644 {
		t.Fatalf("created resolv.conf with mode %v", fi.Mode())
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if names := entries(t, f.etc); len(names) != 0 {
		t.Fatalf("files left: %v", names)
	}
	if names := entries(t, f.state); len(names) != 0 {
		t.Fatalf("files left in the state directory: %v", names)
	}
}

// A daemon that crashed left its resolv.conf and the backup. The next
// one must not take its predecessor's file for the original.
func TestFileRecoversAfterCrash(t *testing.T) {
	f := newDirs(t)
	if err := os.WriteFile(f.conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	crashed := f.configurator(t)
	if err := crashed.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}

	next := f.configurator(t)
	if err := next.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if err := next.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); got != original {
		t.Fatalf("after Set and Restore by the next run:\n%s", got)
	}

	// And Restore alone, with no Set in this run, also uses the backup.
	if err := crashed.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if err := f.configurator(t).Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); got != original {
		t.Fatalf("after a bare Restore by the next run:\n%s", got)
	}

	// A crash between truncating resolv.conf and writing it leaves it
	// empty or short, beside the note of what was being written: that is
	// still ours, and the original comes back, whether Set's write was
	// cut short or Restore's.
	ours := string(resolvConf(testConfig(), f.backup))
	for _, cut := range []struct{ what, writing, left string }{
		{"Set's, before writing", ours, ""},
		{"Set's, in the header", ours, ours[:10]},
		{"Restore's, before writing", original, ""},
		{"Restore's, half way", original, original[:len(original)/2]},
	} {
		if err := crashed.Set(t.Context(), testConfig()); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.backup+noteSuffix, []byte(cut.writing), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.conf, []byte(cut.left), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := f.configurator(t).Restore(); err != nil {
			t.Fatal(err)
		}
		if got := read(t, f.conf); got != original {
			t.Fatalf("%s write cut short to %q, then restored:\n%s", cut.what, cut.left, got)
		}
		if names := entries(t, f.state); len(names) != 0 {
			t.Fatalf("%s: files left in the state directory: %v", cut.what, names)
		}
	}
}

// Without the note of a write under way, an empty resolv.conf, or one
// that holds only a part of the header, is someone else's (an empty
// resolv.conf is a way to say "ask 127.0.0.1"), and the backup does not
// clobber it. Nor does a note whose write the file is not a part of.
func TestFileEmptiedSinceIsKept(t *testing.T) {
	ours := string(resolvConf(testConfig(), "/elsewhere"))
	for _, c := range []struct{ what, note, left string }{
		{"emptied", "", ""},
		{"a few bytes of the header", "", ownHeader[:minCutHeader-1]},
		{"the header with another backup", "", ours},
		{"rewritten beside a note", original, "nameserver 203.0.113.53\n"},
	} {
		f := newDirs(t)
		if err := os.WriteFile(f.conf, []byte(original), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := f.configurator(t).Set(t.Context(), testConfig()); err != nil {
			t.Fatal(err)
		}
		if c.note != "" {
			if err := os.WriteFile(f.backup+noteSuffix, []byte(c.note), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(f.conf, []byte(c.left), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := f.configurator(t).Restore(); err != nil {
			t.Fatal(err)
		}
		if got := read(t, f.conf); got != c.left {
			t.Fatalf("%s: the backup came back over it:\n%s", c.what, got)
		}
		if names := entries(t, f.state); len(names) != 0 {
			t.Fatalf("%s: files left in the state directory: %v", c.what, names)
		}
	}

	// The same when the next Set finds an emptied file: it is the one
	// to come back.
	f := newDirs(t)
	c := f.configurator(t)
	if err := os.WriteFile(f.conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	emptiedIsOriginal(t, f, c, "resolv.conf was emptied under a Set")
}

// When the backup is gone (the state directory deleted) while
// resolv.conf is still the tunnel's, Set must not take the tunnel's file
// for the original, which would bring the tunnel's resolvers back at
// every Restore. What comes back is a file without servers.
func TestFileBackupLost(t *testing.T) {
	f := newDirs(t)
	if err := os.WriteFile(f.conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	c := f.configurator(t)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(f.backup); err != nil {
		t.Fatal(err)
	}
	// A mixvpn file naming another backup is no original either.
	for _, backup := range []string{f.backup, "/elsewhere"} {
		if err := os.WriteFile(f.conf, resolvConf(testConfig(), backup), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(t.Context(), testConfig()); err != nil {
			t.Fatal(err)
		}
		if got := read(t, f.backup); got != lostOriginal {
			t.Fatalf("backup of the tunnel's own resolv.conf naming %s:\n%s", backup, got)
		}
		if got := read(t, f.conf); got != string(resolvConf(testConfig(), f.backup)) {
			t.Fatalf("resolv.conf:\n%s", got)
		}
		if err := c.Restore(); err != nil {
			t.Fatal(err)
		}
		if got := read(t, f.conf); got != lostOriginal {
			t.Fatalf("restored:\n%s", got)
		}
		if strings.Contains(lostOriginal, "nameserver") {
			t.Fatal("the stand-in for a lost original names a server")
		}
		if names := entries(t, f.state); len(names) != 0 {
			t.Fatalf("files left in the state directory: %v", names)
		}
	}

	// A bare Restore, at the next start, does the same for a file that
	// names this backup, and leaves alone one that names another.
	for backup, want := range map[string]string{
		f.backup:     lostOriginal,
		"/elsewhere": string(resolvConf(testConfig(), "/elsewhere")),
	} {
		if err := os.WriteFile(f.conf, resolvConf(testConfig(), backup), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := f.configurator(t).Restore(); err != nil {
			t.Fatal(err)
		}
		if got := read(t, f.conf); got != want {
			t.Fatalf("a bare Restore of a file naming %s:\n%s", backup, got)
		}
	}

	// A note left without a backup is dropped unread: it must not make a
	// file emptied since look like a write of the tunnel's cut short.
	if err := os.WriteFile(f.backup+noteSuffix, []byte(original), 0o600); err != nil {
		t.Fatal(err)
	}
	emptiedIsOriginal(t, f, c, "an emptied resolv.conf beside a stale note")
}

// emptiedIsOriginal empties resolv.conf and checks that the next Set takes
// the empty file for the original and Restore brings it back: an empty
// file is someone else's, never a write of mixvpn's cut short.
func emptiedIsOriginal(t *testing.T, f files, c Configurator, what string) {
	t.Helper()
	if err := os.WriteFile(f.conf, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.backup); got != "" {
		t.Fatalf("backup after %s:\n%s", what, got)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); got != "" {
		t.Fatalf("restored after %s:\n%s", what, got)
	}
}

// A resolv.conf of mixvpn's that names another backup is no original,
// but the backup already there is: Set keeps it rather than put the
// placeholder for a lost original in its place.
func TestFileOtherHeaderKeepsBackup(t *testing.T) {
	f := newDirs(t)
	if err := os.WriteFile(f.conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	c := f.configurator(t)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	for _, left := range []string{string(resolvConf(testConfig(), "/elsewhere")), ownHeader} {
		if err := os.WriteFile(f.conf, []byte(left), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(t.Context(), testConfig()); err != nil {
			t.Fatal(err)
		}
		if got := read(t, f.backup); got != original {
			t.Fatalf("backup after a Set over %q:\n%s", left, got)
		}
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); got != original {
		t.Fatalf("restored:\n%s", got)
	}
}

// A version that wrote no note, crashing in the middle of a write, left
// the header line cut short: that is still the tunnel's file, and the
// original comes back over it.
func TestFileCutHeaderWithoutNote(t *testing.T) {
	for _, n := range []int{minCutHeader, len(ownHeader) + 3, len(headerLine("x")) - 1} {
		f := newDirs(t)
		if err := os.WriteFile(f.conf, []byte(original), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := f.configurator(t).Set(t.Context(), testConfig()); err != nil {
			t.Fatal(err)
		}
		cut := headerLine(f.backup)[:n]
		if err := os.WriteFile(f.conf, []byte(cut), 0o644); err != nil {
			t.Fatal(err)
		}
		// The next run's Set keeps the backup, and its Restore puts the
		// original back.
		c := f.configurator(t)
		if err := c.Set(t.Context(), testConfig()); err != nil {
			t.Fatal(err)
		}
		if got := read(t, f.backup); got != original {
			t.Fatalf("%q: backup:\n%s", cut, got)
		}
		if err := os.WriteFile(f.conf, []byte(cut), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := f.configurator(t).Restore(); err != nil {
			t.Fatal(err)
		}
		if got := read(t, f.conf); got != original {
			t.Fatalf("%q: restored:\n%s", cut, got)
		}
		if names := entries(t, f.state); len(names) != 0 {
			t.Fatalf("files left in the state directory: %v", names)
		}
	}
}

// After a crash and a reboot, the network manager may have written a
// fresh resolv.conf before the daemon starts: the old backup must not
// clobber it, and must not come back at the next Restore either.
func TestFileRewrittenSinceIsKept(t *testing.T) {
	f := newDirs(t)
	if err := os.WriteFile(f.conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.configurator(t).Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	const fresh = "# from DHCP after the reboot\nnameserver 203.0.113.53\n"
	if err := os.WriteFile(f.conf, []byte(fresh), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.configurator(t).Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); got != fresh {
		t.Fatalf("a newer resolv.conf was clobbered by the old backup:\n%s", got)
	}
	if names := entries(t, f.state); len(names) != 0 {
		t.Fatalf("stale backup kept: %v", names)
	}

	// The same when the next Set finds it: the fresh file is the one
	// to come back.
	c := f.configurator(t)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.conf, []byte(fresh), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.backup); got != fresh {
		t.Fatalf("backup after resolv.conf was rewritten under a Set:\n%s", got)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); got != fresh {
		t.Fatalf("restored:\n%s", got)
	}
}

// sandboxEnv, in the environment of a re-executed test binary, names the
// files of TestFileUnderSandbox for the child that runs in a mount
// namespace of its own.
const sandboxEnv = "MIXVPN_DNS_SANDBOX"

// Under mixvpnd.service, /etc is read-only but for a bind mount of
// /etc/resolv.conf onto itself (ProtectSystem=strict with
// ReadWritePaths=-/etc/resolv.conf): the file can be written, but not
// renamed over, and nothing can be created beside it. The test builds
// just that in a mount namespace of a child process and sets and
// restores DNS there.
func TestFileUnderSandbox(t *testing.T) {
	if spec := os.Getenv(sandboxEnv); spec != "" {
		sandboxChild(t, spec)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	f := newDirs(t)
	if err := os.WriteFile(f.conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	// linked is an /etc whose resolv.conf links to resolved's stub.
	linked := t.TempDir()
	if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(linked, "resolv.conf")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFileUnderSandbox$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), sandboxEnv+"="+strings.Join([]string{f.etc, f.state, linked}, ":"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out)
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
	if got := read(t, f.conf); got != original {
		t.Fatalf("resolv.conf after the sandboxed run:\n%s", got)
	}
	if target, err := os.Readlink(filepath.Join(linked, "resolv.conf")); err != nil || target != "../run/systemd/resolve/stub-resolv.conf" {
		t.Fatalf("the symlinked resolv.conf changed: %q %v", target, err)
	}
}

// sandboxChild runs in its own mount namespace (Go makes it private).
func sandboxChild(t *testing.T, spec string) {
	dirs := strings.Split(spec, ":")
	if len(dirs) != 3 {
		t.Fatalf("%s=%q", sandboxEnv, spec)
	}
	etc, state, linked := dirs[0], dirs[1], dirs[2]
	f := files{etc: etc, state: state, conf: filepath.Join(etc, "resolv.conf"), backup: filepath.Join(state, "resolv.conf.backup")}
	sandbox(t, f.conf, etc, linked)
	// The sandbox is as systemd makes it: the old way, a rename over
	// resolv.conf, fails in it.
	if err := os.Rename(f.conf, f.conf+".moved"); err == nil {
		t.Fatal("resolv.conf could be renamed")
	}
	if err := os.WriteFile(filepath.Join(etc, "x"), nil, 0o644); err == nil {
		t.Fatal("the directory is writable")
	}
	c := f.configurator(t)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); !strings.Contains(got, "nameserver 10.64.0.1") {
		t.Fatalf("resolv.conf:\n%s", got)
	}
	if got := read(t, f.backup); got != original {
		t.Fatalf("backup:\n%s", got)
	}
	// A daemon that crashes here is replaced by one that restores.
	if err := f.configurator(t).Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); got != original {
		t.Fatalf("restored:\n%s", got)
	}

	// A resolv.conf linking to resolved's stub cannot be replaced here.
	// Set fails and says what to do, rather than write resolved's file
	// or leave the machine's resolver in place unsaid.
	l := files{etc: linked, state: state, conf: filepath.Join(linked, "resolv.conf"), backup: filepath.Join(state, "resolv.conf.backup")}
	c = l.configurator(t)
	err := c.Set(t.Context(), testConfig())
	if err == nil || !strings.Contains(err.Error(), "start systemd-resolved") {
		t.Fatalf("Set on a symlinked resolv.conf in the sandbox: %v", err)
	}
	t.Log(err)
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if names := entries(t, state); len(names) != 0 {
		t.Fatalf("files left in the state directory: %v", names)
	}

	// A resolv.conf bound read-only from the start, as in a container
	// (mount --bind -o ro), on a file system that is not: a restart
	// would find it as read-only, so Set fails plainly rather than ask
	// for one, which would restart the daemon for ever.
	ro := files{etc: t.TempDir(), state: state}
	ro.conf, ro.backup = filepath.Join(ro.etc, "resolv.conf"), filepath.Join(state, "resolv.conf.backup")
	if err := os.WriteFile(ro.conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount(ro.conf, ro.conf, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind resolv.conf: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(ro.conf, syscall.MNT_DETACH) })
	if err := syscall.Mount("", ro.conf, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("read-only remount of resolv.conf: %v", err)
	}
	c = ro.configurator(t)
	err = c.Set(t.Context(), testConfig())
	if err == nil || errors.Is(err, ErrNeedsRestart) || !errors.Is(err, syscall.EROFS) {
		t.Fatalf("Set on a resolv.conf bound read-only from the start: %v", err)
	}
	t.Log(err)
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, ro.conf); got != original {
		t.Fatalf("resolv.conf bound read-only:\n%s", got)
	}
	if names := entries(t, state); len(names) != 0 {
		t.Fatalf("files left in the state directory: %v", names)
	}
}

// sandbox makes dirs read-only in the calling process's mount namespace
// but for conf, bind-mounted onto itself read-write, as systemd does for
// ProtectSystem=strict with ReadWritePaths=-/etc/resolv.conf. It skips
// the test where bind mounts are not allowed.
func sandbox(t *testing.T, conf string, dirs ...string) {
	t.Helper()
	for _, dir := range dirs {
		if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
			t.Skipf("bind mount: %v", err)
		}
		if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); err != nil {
			t.Fatalf("read-only remount: %v", err)
		}
	}
	// A bind mount starts with its source's flags: read-only, here, until
	// remounted, as systemd does for ReadWritePaths.
	if err := syscall.Mount(conf, conf, "", syscall.MS_BIND, ""); err != nil {
		t.Fatalf("bind resolv.conf: %v", err)
	}
	if err := syscall.Mount("", conf, "", syscall.MS_REMOUNT|syscall.MS_BIND, ""); err != nil {
		t.Fatalf("read-write remount of resolv.conf: %v", err)
	}
}

// replacedEnv is sandboxEnv's counterpart for TestFileReplacedUnderSandbox.
const replacedEnv = "MIXVPN_DNS_REPLACED"

// replaceNow is the line the child of TestFileReplacedUnderSandbox prints
// when it has set DNS and waits for resolv.conf to be replaced.
const replaceNow = "mixvpn-test: replace resolv.conf now"

// When something on the host renames a new resolv.conf over the old one,
// as dhclient-script, NetworkManager and resolvconf do, the kernel
// detaches the sandbox's bind mount of the old file: the daemon sees the
// new file on read-only /etc. Set must then say that a restart is what
// it takes, and Restore must leave the new file alone. The parent
// process does the renaming, from outside the child's mount namespace,
// as the host would.
func TestFileReplacedUnderSandbox(t *testing.T) {
	if spec := os.Getenv(replacedEnv); spec != "" {
		replacedChild(t, spec)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	f := newDirs(t)
	if err := os.WriteFile(f.conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestFileReplacedUnderSandbox$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), replacedEnv+"="+f.etc+":"+f.state)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const fresh = "# from DHCP, renamed into place\nnameserver 203.0.113.53\n"
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		fmt.Fprintln(&out, sc.Text())
		if sc.Text() != replaceNow {
			continue
		}
		tmp := filepath.Join(f.etc, "resolv.conf.dhclient-new")
		if err := os.WriteFile(tmp, []byte(fresh), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.conf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(stdin, "replaced\n"); err != nil {
			t.Fatal(err)
		}
	}
	err = cmd.Wait()
	if strings.Contains(out.String(), "--- SKIP") {
		t.Skipf("child skipped:\n%s", out.String())
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out.String())
	}
	t.Logf("child:\n%s", out.String())
	if got := read(t, f.conf); got != fresh {
		t.Fatalf("the new resolv.conf after the sandboxed run:\n%s", got)
	}
}

func replacedChild(t *testing.T, spec string) {
	etc, state, ok := strings.Cut(spec, ":")
	if !ok {
		t.Fatalf("%s=%q", replacedEnv, spec)
	}
	f := files{etc: etc, state: state, conf: filepath.Join(etc, "resolv.conf"), backup: filepath.Join(state, "resolv.conf.backup")}
	sandbox(t, f.conf, etc)
	c := f.configurator(t)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	fmt.Println(replaceNow)
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		t.Fatalf("waiting for the parent to replace resolv.conf: %v", err)
	}
	err := c.Set(t.Context(), testConfig())
	if !errors.Is(err, ErrNeedsRestart) || !errors.Is(err, syscall.EROFS) {
		t.Fatalf("Set on a resolv.conf replaced under the sandbox: %v", err)
	}
	t.Log(err)
	// The new file is someone else's: it stays, and the backup goes.
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if names := entries(t, state); len(names) != 0 {
		t.Fatalf("files left in the state directory: %v", names)
	}

	// Where the file system itself went read-only, the file on the
	// mount it was on, a restart would not help, and Set does not ask
	// for one.
	ro := t.TempDir()
	if err := syscall.Mount("tmpfs", ro, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatalf("tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(ro, syscall.MNT_DETACH) })
	r := files{etc: ro, state: state, conf: filepath.Join(ro, "resolv.conf"), backup: f.backup}
	if err := os.WriteFile(r.conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	// Writable when New looks, read-only later, on the same mount.
	c = r.configurator(t)
	if err := syscall.Mount("", ro, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatalf("read-only remount of the tmpfs: %v", err)
	}
	err = c.Set(t.Context(), testConfig())
	if err == nil || errors.Is(err, ErrNeedsRestart) || !errors.Is(err, syscall.EROFS) {
		t.Fatalf("Set on a read-only file system: %v", err)
	}
	t.Log(err)
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if names := entries(t, state); len(names) != 0 {
		t.Fatalf("files left in the state directory: %v", names)
	}
}

// fakeResolved answers systemd-resolved's link methods and records them.
type fakeResolved struct {
	mu           sync.Mutex
	servers      map[int32][]linkDNS
	domains      map[int32][]linkDomain
	defaultRoute map[int32]bool
	reverted     []int32
}

func (f *fakeResolved) SetLinkDNS(idx int32, s []linkDNS) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.servers[idx] = s
	return nil
}

func (f *fakeResolved) SetLinkDomains(idx int32, d []linkDomain) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.domains[idx] = d
	return nil
}

func (f *fakeResolved) SetLinkDefaultRoute(idx int32, on bool) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.defaultRoute[idx] = on
	return nil
}

func (f *fakeResolved) FlushCaches() *dbus.Error { return nil }

func (f *fakeResolved) RevertLink(idx int32) *dbus.Error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.servers, idx)
	delete(f.domains, idx)
	delete(f.defaultRoute, idx)
	f.reverted = append(f.reverted, idx)
	return nil
}

// startBus runs a private dbus-daemon for the test and returns its
// address.
func startBus(t *testing.T) string {
	t.Helper()
	addr, _ := dbustest.Start(t, "")
	return addr
}

func TestResolvedSetAndRevert(t *testing.T) {
	addr := startBus(t)
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fake := &fakeResolved{servers: map[int32][]linkDNS{}, domains: map[int32][]linkDomain{}, defaultRoute: map[int32]bool{}}
	if err := conn.Export(fake, resolvedPath, resolvedManager); err != nil {
		t.Fatal(err)
	}
	if reply, err := conn.RequestName(resolvedName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s: %v %v", resolvedName, reply, err)
	}

	f := newDirs(t)
	c, err := New(Options{ResolvConf: f.conf, Backup: f.backup, DBusAddress: addr})
	if err != nil {
		t.Fatal(err)
	}
	// "lo" is only a name the fake is told about; nothing changes on it.
	ifi, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	lo := int32(ifi.Index)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	servers, domains, def := fake.servers[lo], fake.domains[lo], fake.defaultRoute[lo]
	fake.mu.Unlock()
	wantServers := []linkDNS{{Family: 2, Address: []byte{10, 64, 0, 1}}, {Family: 10, Address: netip.MustParseAddr("fd64::1").AsSlice()}}
	if got, want := fmt.Sprint(servers), fmt.Sprint(wantServers); got != want {
		t.Fatalf("servers %s, want %s", got, want)
	}
	wantDomains := []linkDomain{{"corp.example", false}, {"example.org", false}, {".", true}}
	if !slices.Equal(domains, wantDomains) {
		t.Fatalf("domains %+v, want %+v", domains, wantDomains)
	}
	if !def {
		t.Fatal("link not made the default route for DNS")
	}
	if names := append(entries(t, f.etc), entries(t, f.state)...); len(names) != 0 {
		t.Fatalf("resolv.conf written although resolved runs: %v", names)
	}

	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if !slices.Equal(fake.reverted, []int32{lo}) || len(fake.servers) != 0 {
		t.Fatalf("reverted %v, servers left %v", fake.reverted, fake.servers)
	}
}

// A bus without resolved on it means resolv.conf.
func TestNoResolvedOnBusUsesFile(t *testing.T) {
	addr := startBus(t)
	f := newDirs(t)
	c, err := New(Options{ResolvConf: f.conf, Backup: f.backup, DBusAddress: addr})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, f.conf); !strings.Contains(got, "nameserver 10.64.0.1") {
		t.Fatalf("resolv.conf:\n%s", got)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
}
