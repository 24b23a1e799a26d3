package control

import (
	"context"
	"fmt"
	"github.com/mixvpn/mixvpn/tunnel/control/controltest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

// helperEnv makes the test binary a client that dials the socket it names
// and prints the status code of one call; TestPeerCredentials runs it as
// another user.
const helperEnv = "MIXVPN_CONTROL_TEST_DIAL"

func TestHelperDial(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("only a helper process for TestPeerCredentials")
	}
	client, cc, err := Dial(path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = client.GetStatus(ctx, &pb.GetStatusRequest{})
	fmt.Printf("code=%s msg=%s\n", status.Code(err), status.Convert(err).Message())
}

// TestPeerCredentials runs a client as nobody. The socket is world-writable
// here so that only the SO_PEERCRED check can refuse it.
func TestPeerCredentials(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "control.test")
	controltest.CopyTestBinary(t, bin)

	nobodyGroup, _ := user.LookupGroupId("65534")
	rootGroup, err := user.LookupGroupId("0")
	if err != nil {
		t.Fatalf("group 0: %v", err)
	}
	cases := []struct {
		name, group string
		setpriv     []string
		want        string
	}{
		{"no such group", "mixvpn-test-no-such-group", []string{"--clear-groups"}, "code=PermissionDenied msg=you are not allowed to talk to mixvpnd"},
		{"not in the group", rootGroup.Name, []string{"--clear-groups"}, "code=PermissionDenied msg=you are not allowed to talk to mixvpnd: ask an administrator to add you to the " + rootGroup.Name + " group"},
		{"supplementary member", rootGroup.Name, []string{"--groups=0"}, "code=OK"},
	}
	if nobodyGroup != nil {
		cases = append(cases, struct {
			name, group string
			setpriv     []string
			want        string
		}{"primary member", nobodyGroup.Name, []string{"--clear-groups"}, "code=OK"})
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("%d.sock", i))
			startServer(t, ListenConfig{Path: path, Group: c.group, Mode: 0o666})
			args := append([]string{"--reuid=65534", "--regid=65534"}, c.setpriv...)
			args = append(args, bin, "-test.run=^TestHelperDial$")
			cmd := exec.Command(setpriv, args...)
			cmd.Env = append(os.Environ(), helperEnv+"="+path)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("helper: %v\n%s", err, out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Fatalf("helper said:\n%s\nwant %q", out, c.want)
			}
		})
	}
}
