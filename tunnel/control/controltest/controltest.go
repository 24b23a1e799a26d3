// Package controltest helps tests of the control API's access checks run
// their own test binary as another user.
package controltest

import (
	"io"
	"os"
	"testing"
)

// CopyTestBinary puts the running test binary at dst, executable by
// anyone: the go build cache is root's alone, so a test that runs itself
// under setpriv as nobody needs a copy it can reach.
func CopyTestBinary(t testing.TB, dst string) {
	t.Helper()
	src, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
