//go:build linux

package linksock

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const testMark = 0x6d78

// markOf reads the socket mark of c, a TCP connection or Dial's.
func markOf(t *testing.T, c net.Conn) int {
	t.Helper()
	if p, ok := c.(*polledConn); ok {
		c = p.Conn
	}
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	if err := control(raw, func(fd int) (err error) {
		mark, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mark
}

// needMark skips a test where the process may not set socket marks.
func needMark(t *testing.T) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := setMark(fd, testMark); errors.Is(err, unix.EPERM) {
		t.Skip("setting SO_MARK needs CAP_NET_ADMIN")
	} else if err != nil {
		t.Fatal(err)
	}
}

// A dialer with MarkControl connects with the mark set, which policy
// routing sees from the SYN on; zero leaves the socket unmarked.
func TestMarkControlMarksTheSocket(t *testing.T) {
	needMark(t)
	for _, mark := range []uint32{testMark, 0} {
		d := net.Dialer{Control: MarkControl(mark)}
		c, _ := accepted(t, func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) })
		if got := markOf(t, c); got != int(mark) {
			t.Errorf("MarkControl(%#x): socket mark %#x", mark, got)
		}
	}
}

// The link's own dial marks its socket too, beside shaping it.
func TestDialMarksTheLink(t *testing.T) {
	needMark(t)
	c, _ := accepted(t, Config{Record: record, Mark: testMark}.Dial)
	if got := markOf(t, c); got != testMark {
		t.Errorf("link socket mark %#x, want %#x", got, testMark)
	}
	if mss, _ := tcpInfo(t, c); mss != record/2 {
		t.Errorf("a marked link has segments of %d bytes, want %d", mss, record/2)
	}
}

// A mark that cannot be set fails the dial instead of sending an
// unmarked socket down the tunnel's routes.
func TestMarkControlReportsFailure(t *testing.T) {
	err := MarkControl(testMark)("tcp", "192.0.2.1:1", failingRaw{})
	if !errors.Is(err, unix.EBADF) {
		t.Fatalf("error %v, want EBADF", err)
	}
}

// failingRaw is a RawConn whose descriptor is not a socket.
type failingRaw struct{ syscall.RawConn }

func (failingRaw) Control(f func(fd uintptr)) error { f(^uintptr(0)); return nil }
