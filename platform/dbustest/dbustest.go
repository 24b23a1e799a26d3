// Package dbustest runs a private D-Bus daemon for tests of code that
// talks to system services (systemd-resolved, logind) over the bus, so
// they can export a fake service and send its signals without a system
// bus or root.
package dbustest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Start runs a private dbus-daemon listening on a new temporary
// directory and returns its address and a function that kills it (the
// test's cleanup kills it too). It skips the test when dbus-daemon is not
// installed, saying why; skipNote, if given, says what covers the test's
// ground without a bus.
func Start(t *testing.T, skipNote string) (addr string, kill func()) {
	t.Helper()
	return StartIn(t, t.TempDir(), skipNote)
}

// StartIn is Start listening on dir/bus, so that a test can start another
// daemon where one it killed was.
func StartIn(t *testing.T, dir, skipNote string) (addr string, kill func()) {
	t.Helper()
	bin, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip(strings.TrimSuffix("needs dbus-daemon from the dbus package; "+skipNote, "; "))
	}
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
	kill = func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
	t.Cleanup(kill)
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		got <- strings.TrimSpace(line)
	}()
	select {
	case a := <-got:
		if a == "" {
			t.Fatal("dbus-daemon printed no address")
		}
		return a, kill
	case <-time.After(10 * time.Second):
		t.Fatal("dbus-daemon did not start within 10s")
	}
	return "", nil
}
