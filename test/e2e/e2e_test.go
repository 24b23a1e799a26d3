//go:build linux

// Package e2e runs mixvpn end to end on the local network: real binaries,
// every node in its own network namespace, real traffic. The tests need
// root and skip with a message without it.
package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// bins holds the binaries built once for the whole run.
var bins string

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "mixvpn-e2e-bin-")
		if err != nil {
			panic(err)
		}
		cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), "github.com/mixvpn/mixvpn/cmd/...")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			panic("building binaries: " + err.Error())
		}
		os.Chmod(dir, 0o755) // the unprivileged test runs them too
		bins = dir
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root: they build network namespaces, veth links and TUN devices")
	}
}

func bin(name string) string { return filepath.Join(bins, name) }
