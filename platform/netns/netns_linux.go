//go:build linux

package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// Lab is a set of namespaces made by one run.
type Lab struct {
	id string

	mu    sync.Mutex
	hosts []*Host
	links int
}

// Host is one namespace in a lab.
type Host struct {
	lab  *Lab
	Name string // the short name given by the caller
	NS   string // the namespace's name, unique per run
	ifs  int
}

// NewLab starts an empty lab. prefix (a few letters) is part of every
// namespace name so that leftovers are recognisable.
func NewLab(prefix string) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("netns: iproute2 is missing (make deps installs it): %w", err)
	}
	var b [3]byte
	rand.Read(b[:])
	return &Lab{id: prefix + hex.EncodeToString(b[:])}, nil
}

// AddHost creates a namespace with loopback up.
func (l *Lab) AddHost(name string) (*Host, error) {
	h := &Host{lab: l, Name: name, NS: l.id + "-" + name}
	if err := run("ip", "netns", "add", h.NS); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	if err := h.Run("ip", "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return h, nil
}

// Connect joins a and b with a veth pair and gives each end an address.
// It returns the interface names in a and b.
func (l *Lab) Connect(a *Host, aAddrs []netip.Prefix, b *Host, bAddrs []netip.Prefix) (string, string, error) {
	l.mu.Lock()
	l.links++
	n := l.links
	l.mu.Unlock()
	aIf, bIf := a.nextIf(), b.nextIf()
	tmpA, tmpB := fmt.Sprintf("%sa%d", l.id, n), fmt.Sprintf("%sb%d", l.id, n)
	if err := run("ip", "link", "add", tmpA, "netns", a.NS, "type", "veth", "peer", "name", tmpB, "netns", b.NS); err != nil {
		return "", "", err
	}
	for _, s := range []struct {
		h          *Host
		tmp, iface string
		addrs      []netip.Prefix
	}{{a, tmpA, aIf, aAddrs}, {b, tmpB, bIf, bAddrs}} {
		if err := s.h.Run("ip", "link", "set", s.tmp, "name", s.iface); err != nil {
			return "", "", err
		}
		if err := s.h.configure(s.iface, s.addrs); err != nil {
			return "", "", err
		}
	}
	return aIf, bIf, nil
}

// Bridge makes hub a switch: a bridge in hub that every later Attach joins.
func (h *Host) Bridge() error {
	if err := h.Run("ip", "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	return h.Run("ip", "link", "set", "br0", "up")
}

// Attach connects h to the bridge in hub with the given addresses and
// returns h's interface name.
func (l *Lab) Attach(hub, h *Host, addrs []netip.Prefix) (string, error) {
	hIf, hubIf, err := l.Connect(h, addrs, hub, nil)
	if err != nil {
		return "", err
	}
	if err := hub.Run("ip", "link", "set", hubIf, "master", "br0"); err != nil {
		return "", err
	}
	return hIf, nil
}

func (h *Host) nextIf() string {
	h.lab.mu.Lock()
	defer h.lab.mu.Unlock()
	h.ifs++
	return fmt.Sprintf("eth%d", h.ifs-1)
}

func (h *Host) configure(iface string, addrs []netip.Prefix) error {
	for _, p := range addrs {
		args := []string{"addr", "add", p.String(), "dev", iface}
		if p.Addr().Is6() {
			args = append([]string{"-6"}, append(args, "nodad")...)
		}
		if err := h.Run("ip", args...); err != nil {
			return err
		}
	}
	return h.Run("ip", "link", "set", iface, "up")
}

// Command returns a command that runs inside h's namespace.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Run runs a command in h's namespace and returns its error with output.
func (h *Host) Run(name string, args ...string) error {
	return run("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Output runs a command in h's namespace and returns its standard output.
func (h *Host) Output(name string, args ...string) (string, error) {
	out, err := h.Command(context.Background(), name, args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return string(out), fmt.Errorf("netns %s: %s %s: %w: %s", h.NS, name, strings.Join(args, " "), err, ee.Stderr)
		}
		return string(out), fmt.Errorf("netns %s: %s: %w", h.NS, name, err)
	}
	return string(out), nil
}

// Forwarding turns on IPv4 and IPv6 forwarding inside h.
func (h *Host) Forwarding() error {
	if err := h.Run("sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	return h.Run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
}

// Close deletes every namespace of the lab, and with them their links.
// It is safe to call more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	hosts := l.hosts
	l.hosts = nil
	l.mu.Unlock()
	var errs []error
	for _, h := range hosts {
		// Processes left in the namespace would keep its devices alive.
		if pids, err := exec.Command("ip", "netns", "pids", h.NS).Output(); err == nil {
			for _, p := range strings.Fields(string(pids)) {
				exec.Command("kill", "-9", p).Run()
			}
		}
		if err := run("ip", "netns", "del", h.NS); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists namespaces whose names start with prefix, left by runs
// that did not clean up.
func Leftovers(prefix string) []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
