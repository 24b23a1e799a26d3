package control

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Defaults for ListenConfig.
const (
	DefaultSocketPath = "/run/mixvpn/mixvpnd.sock"
	DefaultGroup      = "mixvpn"
	DefaultSocketMode = fs.FileMode(0o660)
)

// ListenConfig says where and for whom the control socket is made.
type ListenConfig struct {
	// Path of the socket; default DefaultSocketPath. Its directory is
	// created if missing.
	Path string
	// Group may use the API besides root; default DefaultGroup. If the
	// group does not exist, only root may, and Listen logs a warning.
	Group string
	// Mode of the socket file; default DefaultSocketMode. The mode only
	// keeps strangers from connecting at all; the credentials check on
	// every call is what enforces access, so a wider mode is still safe.
	Mode   fs.FileMode
	Logger *slog.Logger
}

// Listener is a control socket ready for Server.Serve, with the access
// rule that goes with it.
type Listener struct {
	*net.UnixListener
	path   string
	access access
}

// Path is where the socket is.
func (l *Listener) Path() string { return l.path }

// Listen creates the control socket, replacing a stale one left by a daemon
// that died, and gives it to root and cfg.Group.
func Listen(ctx context.Context, cfg ListenConfig) (*Listener, error) {
	if cfg.Path == "" {
		cfg.Path = DefaultSocketPath
	}
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	if cfg.Mode == 0 {
		cfg.Mode = DefaultSocketMode
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o755); err != nil {
		return nil, fmt.Errorf("control: socket directory: %w", err)
	}
	if err := removeStale(ctx, cfg.Path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control: listen: %w", err)
	}
	l := &Listener{UnixListener: ln, path: cfg.Path, access: access{group: cfg.Group}}
	if g, err := user.LookupGroup(cfg.Group); err != nil {
		log.Warn("control: group not found, only root can use mixvpnd; create it with `groupadd --system "+cfg.Group+"`",
			"group", cfg.Group, "err", err)
	} else {
		gid, err := strconv.ParseUint(g.Gid, 10, 32)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("control: group %s has gid %q: %w", cfg.Group, g.Gid, err)
		}
		if err := os.Chown(cfg.Path, -1, int(gid)); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control: socket group: %w", err)
		}
		l.access.gid, l.access.hasGroup = uint32(gid), true
	}
	if err := os.Chmod(cfg.Path, cfg.Mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control: socket mode: %w", err)
	}
	log.Info("control: listening", "path", cfg.Path, "group", cfg.Group, "mode", cfg.Mode)
	return l, nil
}

// removeStale removes a socket nobody answers on, and refuses to take over
// one a running daemon answers on or a file that is not a socket.
func removeStale(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control: socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control: %s exists and is not a socket", path)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("control: another mixvpnd is listening on %s", path)
	}
	// Only a refusal proves nobody listens; a timeout may be a busy daemon.
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control: cannot tell whether %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control: removing stale socket: %w", err)
	}
	return nil
}
