//go:build linux

package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/mixvpn/mixvpn/platform/dns"
	"github.com/mixvpn/mixvpn/platform/firewall"
	"github.com/mixvpn/mixvpn/platform/router"
)

// The daemon's own connections carry the router's mark, so that they
// leave by the main table while the tunnel holds the default route; its
// directory requests go through the same dial.
func TestOwnTrafficIsMarked(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	d, err := New(Config{Device: tuntest.NewChannelTUN().TUN(), DirectoryURL: srv.URL, DirectoryKey: make([]byte, 32),
		Router: &router.Fake{}, DNS: &dns.Fake{}, Firewall: &firewall.Fake{}})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, router.FwMark)
	unix.Close(fd)
	if errors.Is(err, unix.EPERM) {
		t.Skip("setting SO_MARK needs CAP_NET_ADMIN")
	}
	// The transport dials on a goroutine of its own, so the wrapper
	// reports by channel; an error reads as mark -1.
	marks := make(chan int, 4)
	marked := d.dial
	d.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := marked(ctx, network, addr)
		if err != nil {
			marks <- -1
			return nil, err
		}
		mark, merr := -1, error(nil)
		if raw, err := c.(*net.TCPConn).SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) { mark, merr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
		}
		if merr != nil {
			mark = -1
		}
		marks <- mark
		return c, nil
	}
	resp, err := d.web.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	select {
	case m := <-marks:
		if m != router.FwMark {
			t.Fatalf("directory request's socket mark %#x, want %#x", m, router.FwMark)
		}
	default:
		t.Fatal("the directory request did not go through the daemon's dial")
	}
}
