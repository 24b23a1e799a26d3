//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

type devnetState struct {
	ID           string `json:"id"`
	DirectoryURL string `json:"directory_url"`
	DirectoryKey string `json:"directory_key"`
	Hosts        []struct {
		Name, Role, NS string
		Addr4, Addr6   netip.Addr
	} `json:"hosts"`
}

// startDevnet runs `mixnode devnet` until the test ends and returns its
// state. Cleanup interrupts it and checks that it removed its namespaces.
func startDevnet(t *testing.T) devnetState {
	t.Helper()
	dir := t.TempDir()
	statePath := filepath.Join(dir, "state.json")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	cmd := exec.CommandContext(ctx, bin("mixnode"), "devnet", "--state", statePath, "--run-dir", filepath.Join(dir, "run"))
	logf, _ := os.Create(filepath.Join(dir, "devnet.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var st devnetState
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("devnet did not stop on SIGINT")
			cmd.Process.Kill()
		}
		cancel()
		logf.Close()
		if st.ID != "" {
			if left := namespacesWithPrefix(st.ID); len(left) > 0 {
				t.Errorf("namespaces left after stop: %v", left)
				for _, ns := range left {
					exec.Command("ip", "netns", "del", ns).Run()
				}
			}
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "devnet.log"))
			t.Logf("devnet log:\n%s", b)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(statePath)
		if err == nil && json.Unmarshal(b, &st) == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatal("devnet did not come up within 60 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s devnetState) ns(name string) string {
	for _, h := range s.Hosts {
		if h.Name == name {
			return h.NS
		}
	}
	return ""
}

func namespacesWithPrefix(prefix string) []string {
	out, _ := exec.Command("ip", "netns", "list").Output()
	var left []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 && strings.HasPrefix(f[0], prefix+"-") {
			left = append(left, f[0])
		}
	}
	return left
}

// TestDevnetCarriesProbesAndCleansUp: the local network comes up in its
// namespaces, probe packets cross entry, three mixes and an exit and are
// answered on SURBs, and on SIGINT every namespace disappears.
func TestDevnetCarriesProbesAndCleansUp(t *testing.T) {
	needRoot(t)
	st := startDevnet(t)
	if len(namespacesWithPrefix(st.ID)) < 13 {
		t.Fatalf("expected the 13 hosts' namespaces, found %v", namespacesWithPrefix(st.ID))
	}
	out, err := exec.Command("ip", "netns", "exec", st.ns("client"), bin("mixnode"), "probe",
		"--directory", st.DirectoryURL, "--key", st.DirectoryKey, "--packets", "100").CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("probe: %v", err)
	}
	if !strings.Contains(string(out), "100 of 100 answered") {
		t.Fatal("not every probe was answered")
	}
	// The internet host answers on the backbone (the exits' NAT side).
	if out, err := exec.Command("ip", "netns", "exec", st.ns("exit1"), "ping", "-c", "1", "-W", "2", "198.51.100.80").CombinedOutput(); err != nil {
		t.Fatalf("exit cannot reach the internet host: %v %s", err, out)
	}
}

// TestDevnetWithoutRoot: an unprivileged user gets the same network on
// loopback addresses, and probes cross it.
func TestDevnetWithoutRoot(t *testing.T) {
	needRoot(t) // to become the unprivileged user
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is needed to drop privileges")
	}
	dir, err := os.MkdirTemp("", "mixvpn-e2e-noroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		bin("mixnode"), "devnet", "--demo", "--run-dir", filepath.Join(dir, "run"))
	cmd.Env = append(os.Environ(), "HOME="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged devnet: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "local network loopback is up") || !strings.Contains(string(out), "200 of 200 answered") {
		t.Fatalf("unexpected output:\n%s", out)
	}
}

func (s devnetState) addr(name string) netip.Addr {
	for _, h := range s.Hosts {
		if h.Name == name {
			return h.Addr4
		}
	}
	return netip.Addr{}
}
