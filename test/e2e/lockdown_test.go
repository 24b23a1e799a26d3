//go:build linux

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLeakKill9Lockdown: with lockdown on, mixvpnd connects, carries
// traffic and is killed with SIGKILL, as a crash would end it. Its
// nftables rules are kernel state and stay: nothing gets out, and the
// capture on the client's outer interface shows nothing but tunnel
// traffic. Started again, the daemon remembers it was connected and
// connects by itself, and traffic flows again.
func TestLeakKill9Lockdown(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	// Lockdown's rules outlive the daemon by design. Registered before
	// the daemon's cleanup, this runs after it: the table goes, pass or
	// fail, and the namespace with it when devnet stops.
	t.Cleanup(func() {
		exec.Command("ip", "netns", "exec", st.ns("client"), "nft", "delete", "table", "inet", "mixvpn").Run()
	})
	stop := capture(t, st)
	cd := startDaemon(t, st, fmt.Sprintf(`{"dns_servers": [%q], "kill_switch": true, "lockdown": true}`, st.addr("inet")))
	blocked := func(when string) {
		t.Helper()
		if out, err := cd.tryFetch("http://198.51.100.80/blob/1024", 5*time.Second); err == nil {
			t.Fatalf("%s, a fetch around the tunnel worked: %s", when, out)
		}
	}
	blocked("locked down and disconnected")

	cd.must("connect", "--mode", "fast", "--exit", "CH")
	t.Log("before the crash: " + cd.fetch(256<<10))
	cd.kill9()

	if out, err := exec.Command("ip", "netns", "exec", st.ns("client"), "nft", "list", "table", "inet", "mixvpn").CombinedOutput(); err != nil {
		t.Fatalf("the lockdown table went with the daemon: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(cd.dir, "lockdown.nft")); err != nil {
		t.Fatalf("no boot ruleset for the lockdown unit: %v", err)
	}
	blocked("with mixvpnd dead")

	cd.start()
	w := cd.watchStates()
	t.Log("after the restart: " + w.until("connected", 60*time.Second))
	var s struct{ State, Mode, Exit string }
	if out := cd.must("status", "--json"); json.Unmarshal([]byte(out), &s) != nil || s.Mode != "fast" || s.Exit != "exit1" {
		t.Fatalf("the restarted daemon is not back as it was: %s", out)
	}
	t.Log("after the restart: " + cd.fetch(256<<10))
	cd.must("disconnect")
	blocked("locked down after disconnecting")

	bad, tunnel := leaks(st, stop())
	if tunnel < 50 {
		t.Fatalf("only %d tunnel packets captured: the capture is not seeing the traffic", tunnel)
	}
	if len(bad) > 0 {
		t.Fatalf("%d packets left outside the tunnel, first: %v", len(bad), bad[:min(len(bad), 10)])
	}
	t.Logf("%d packets captured on the outer interface, all tunnel traffic; states %v", tunnel, w.seen)
}

// TestRefusedOutsideGroup runs the real daemon with its default group,
// mixvpn, and the CLI as an unprivileged user: outside the group it is
// refused with advice on how to get in, inside it (and as root) it works.
// No local network is needed: the daemon runs in a namespace of its own
// and is never asked to connect.
func TestRefusedOutsideGroup(t *testing.T) {
	needRoot(t)
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	const group = "mixvpn"
	g, err := user.LookupGroup(group)
	if err != nil {
		if out, err := exec.Command("groupadd", "--system", group).CombinedOutput(); err != nil {
			t.Skipf("cannot create the %s group: %v %s", group, err, out)
		}
		t.Cleanup(func() { exec.Command("groupdel", group).Run() })
		if g, err = user.LookupGroup(group); err != nil {
			t.Fatal(err)
		}
	}
	var b [3]byte
	rand.Read(b[:])
	ns := "mvgrp" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })

	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		os.Chmod(d, 0o755) // so that the socket's mode alone decides
	}
	socket := filepath.Join(dir, "mixvpnd.sock")
	os.WriteFile(filepath.Join(dir, "resolv.conf"), []byte("nameserver 192.0.2.53\n"), 0o644)
	daemon := exec.Command("ip", "netns", "exec", ns, bin("mixvpnd"), "--tun", "mvpn0",
		"--directory", "http://192.0.2.2:8080", "--directory-key", base64.StdEncoding.EncodeToString(make([]byte, 32)),
		"--socket", socket, "--settings", filepath.Join(dir, "settings.json"),
		"--system-settings", filepath.Join(dir, "none.json"), "--resolv-conf", filepath.Join(dir, "resolv.conf"))
	var log strings.Builder
	daemon.Stdout, daemon.Stderr = &log, &log
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { daemon.Wait(); close(exited) }()
	t.Cleanup(func() {
		daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			t.Error("mixvpnd did not stop on SIGTERM")
			daemon.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("mixvpnd log:\n%s", log.String())
		}
	})

	// as runs `mixvpn status` with the given setpriv options, or as
	// root without any.
	as := func(opts ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args := append(opts, bin("mixvpn"), "--socket", socket, "status")
		cmd := exec.CommandContext(ctx, setpriv, args...)
		if len(opts) == 0 {
			cmd = exec.CommandContext(ctx, bin("mixvpn"), "--socket", socket, "status")
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := as(); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("mixvpnd's socket never answered root")
		}
		time.Sleep(100 * time.Millisecond)
	}

	out, err := as("--reuid=65534", "--regid=65534", "--clear-groups")
	want := "mixvpn: you are not allowed to talk to mixvpnd: ask an administrator to add you to the mixvpn group (sudo usermod -aG mixvpn $USER) and log in again"
	if err == nil || !strings.Contains(out, want) {
		t.Fatalf("outside the group, mixvpn status said (%v):\n%s\nwant %q", err, out, want)
	}
	out, err = as("--reuid=65534", "--regid=65534", "--groups="+g.Gid)
	if err != nil || !strings.Contains(out, "State: disconnected") {
		t.Fatalf("in the group, mixvpn status said (%v):\n%s", err, out)
	}
}
