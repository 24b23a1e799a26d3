package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mixvpn/mixvpn/tunnel/control"
	"github.com/mixvpn/mixvpn/tunnel/control/controltest"
)

// helperEnv makes the test binary run `mixvpn status` against the socket in
// MIXVPN_SOCKET; TestNotInGroup runs it as another user.
const helperEnv = "MIXVPN_CLI_TEST_HELPER"

func TestHelperCLI(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("only a helper process for TestNotInGroup")
	}
	code := run(context.Background(), []string{"status"}, os.Stdout, os.Stdout, os.Getenv)
	fmt.Printf("exit=%d\n", code)
}

// TestNotInGroup runs the CLI as nobody against a daemon whose group nobody
// is not in. With a world-writable socket the daemon's SO_PEERCRED check
// refuses it; with the default mode the socket's permissions already do.
// Both must tell the user how to get access: the group to join is the
// socket's, or the default group when the socket was left to root's
// because the daemon's group did not exist.
func TestNotInGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the CLI as another user")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	root, err := user.LookupGroupId("0")
	if err != nil {
		t.Fatalf("group 0: %v", err)
	}
	cases := []struct {
		name, group string
		mode        os.FileMode
		want        string
	}{
		{"refused by the daemon", root.Name, 0o666, "you are not allowed to talk to mixvpnd: ask an administrator to add you to the " + root.Name + " group (sudo usermod -aG " + root.Name + " $USER) and log in again"},
		{"refused by the socket mode", root.Name, 0o660, permissionHint(control.DefaultGroup)},
	}
	// users is in Debian's base system; nobody is not a member.
	if _, err := user.LookupGroup("users"); err == nil {
		cases = append(cases, struct {
			name, group string
			mode        os.FileMode
			want        string
		}{"refused by the socket's group", "users", 0o660, permissionHint("users")})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, _ := startDaemon(t, daemonOptions{group: c.group, mode: c.mode})
			dir := filepath.Dir(path)
			for _, d := range []string{filepath.Dir(dir), dir} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			bin := filepath.Join(dir, "mixvpn.test")
			controltest.CopyTestBinary(t, bin)
			cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin, "-test.run=^TestHelperCLI$")
			cmd.Env = append(os.Environ(), helperEnv+"=1", socketEnv+"="+path)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("helper: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), "mixvpn: "+c.want) || !strings.Contains(string(out), "exit=1") {
				t.Fatalf("as nobody, mixvpn status said:\n%s\nwant %q and exit 1", out, c.want)
			}
		})
	}
}
