//go:build linux

package dns

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// Every test here works on a resolv.conf in a temporary directory and
// talks to a bus of its own or to none, never to the host's.

const original = "# the machine's own\nnameserver 192.0.2.53\nsearch lan\n"

// newFiles returns a configurator on dir/resolv.conf whose D-Bus address
// leads nowhere, so it always takes the resolv.conf path.
func newFiles(t *testing.T, dir string) Configurator {
	t.Helper()
	c, err := New(Options{
		ResolvConf:  filepath.Join(dir, "resolv.conf"),
		DBusAddress: "unix:path=" + filepath.Join(dir, "no-bus"),
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

func TestFileSetAndRestore(t *testing.T) {
	dir := t.TempDir()
	conf, backup := filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "resolv.conf.mixvpn-backup")
	if err := os.WriteFile(conf, []byte(original), 0o640); err != nil {
		t.Fatal(err)
	}
	c := newFiles(t, dir)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, conf); got != string(resolvConf(testConfig(), backup)) {
		t.Fatalf("resolv.conf:\n%s", got)
	}
	if got := read(t, backup); got != original {
		t.Fatalf("backup:\n%s", got)
	}

	// A second Set rewrites the file but keeps the original backup.
	second := testConfig()
	second.Servers = []netip.Addr{netip.MustParseAddr("10.64.0.2")}
	if err := c.Set(t.Context(), second); err != nil {
		t.Fatal(err)
	}
	if got := read(t, conf); !strings.Contains(got, "nameserver 10.64.0.2\n") || strings.Contains(got, "10.64.0.1") {
		t.Fatalf("second Set:\n%s", got)
	}
	if got := read(t, backup); got != original {
		t.Fatalf("backup after second Set:\n%s", got)
	}

	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, conf); got != original {
		t.Fatalf("restored:\n%s", got)
	}
	if fi, err := os.Stat(conf); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("restored mode %v %v", fi.Mode(), err)
	}
	if names := entries(t, dir); !slices.Equal(names, []string{"resolv.conf"}) {
		t.Fatalf("files left: %v", names)
	}
	if err := c.Restore(); err != nil {
		t.Fatalf("second Restore: %v", err)
	}
	if got := read(t, conf); got != original {
		t.Fatalf("after second Restore:\n%s", got)
	}
}

// A resolv.conf that is a symlink (to resolved's stub file, say) comes
// back as the same symlink, and the file it points at is never written.
func TestFileSymlinkComesBack(t *testing.T) {
	dir := t.TempDir()
	conf, stub := filepath.Join(dir, "resolv.conf"), filepath.Join(dir, "stub-resolv.conf")
	if err := os.WriteFile(stub, []byte("nameserver 127.0.0.53\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("stub-resolv.conf", conf); err != nil {
		t.Fatal(err)
	}
	c := newFiles(t, dir)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(conf); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("resolv.conf while set: %v %v", fi.Mode(), err)
	}
	if got := read(t, stub); got != "nameserver 127.0.0.53\n" {
		t.Fatalf("symlink target written: %q", got)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(conf); err != nil || target != "stub-resolv.conf" {
		t.Fatalf("restored link %q %v", target, err)
	}
}

func TestFileAbsentStaysAbsent(t *testing.T) {
	dir := t.TempDir()
	c := newFiles(t, dir)
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(dir, "resolv.conf")); !strings.Contains(got, "nameserver 10.64.0.1") {
		t.Fatalf("resolv.conf:\n%s", got)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
	if names := entries(t, dir); len(names) != 0 {
		t.Fatalf("files left: %v", names)
	}
}

// A daemon that crashed left its resolv.conf and the backup. The next
// one must not take its predecessor's file for the original.
func TestFileRecoversAfterCrash(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(conf, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	crashed := newFiles(t, dir)
	if err := crashed.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}

	next := newFiles(t, dir)
	if err := next.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if err := next.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, conf); got != original {
		t.Fatalf("after Set and Restore by the next run:\n%s", got)
	}

	// And Restore alone, with no Set in this run, also uses the backup.
	if err := crashed.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if err := newFiles(t, dir).Restore(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, conf); got != original {
		t.Fatalf("after a bare Restore by the next run:\n%s", got)
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
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("needs dbus-daemon from the dbus package")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(cfg, []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=`+filepath.Join(dir, "bus")+`</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config-file="+cfg, "--nofork", "--print-address")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	select {
	case a := <-addr:
		if a == "" {
			t.Fatal("dbus-daemon printed no address")
		}
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("dbus-daemon did not start within 10s")
	}
	return ""
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

	dir := t.TempDir()
	c, err := New(Options{ResolvConf: filepath.Join(dir, "resolv.conf"), DBusAddress: addr})
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
	if names := entries(t, dir); len(names) != 0 {
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
	dir := t.TempDir()
	c, err := New(Options{ResolvConf: filepath.Join(dir, "resolv.conf"), DBusAddress: addr})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Set(t.Context(), testConfig()); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(dir, "resolv.conf")); !strings.Contains(got, "nameserver 10.64.0.1") {
		t.Fatalf("resolv.conf:\n%s", got)
	}
	if err := c.Restore(); err != nil {
		t.Fatal(err)
	}
}
