//go:build !linux

package netns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
)

// Lab is a set of namespaces made by one run; here there are none, since
// NewLab fails, and the type exists so that callers build.
type Lab struct {
	id string
}

// Host is one namespace in a lab. A Host built by hand, as callers that
// join a namespace by name do, still cannot be entered here.
type Host struct {
	Name string // the short name given by the caller
	NS   string // the namespace's name, unique per run
}

// errUnsupported is what every operation returns here. It wraps
// errors.ErrUnsupported so that callers can tell it from a failure.
func errUnsupported() error {
	return fmt.Errorf("network namespaces: not supported on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// NewLab fails: only Linux has network namespaces.
func NewLab(prefix string) (*Lab, error) { return nil, errUnsupported() }

// AddHost fails: only Linux has network namespaces.
func (l *Lab) AddHost(name string) (*Host, error) { return nil, errUnsupported() }

// Connect fails: only Linux has network namespaces.
func (l *Lab) Connect(a *Host, aAddrs []netip.Prefix, b *Host, bAddrs []netip.Prefix) (string, string, error) {
	return "", "", errUnsupported()
}

// Attach fails: only Linux has network namespaces.
func (l *Lab) Attach(hub, h *Host, addrs []netip.Prefix) (string, error) {
	return "", errUnsupported()
}

// Close has nothing to remove, since no lab can be made here; it returns
// nil so that deferred cleanups stay quiet.
func (l *Lab) Close() error { return nil }

// Leftovers finds none: no run can have made namespaces here.
func Leftovers(prefix string) []string { return nil }

// Bridge fails: only Linux has network namespaces.
func (h *Host) Bridge() error { return errUnsupported() }

// Command returns a command whose Start, Run and Output fail, because
// there is no namespace to run it in. It is never nil, as on Linux, so
// callers need no special case before they see the error.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Err = errUnsupported()
	return cmd
}

// Run fails: only Linux has network namespaces.
func (h *Host) Run(name string, args ...string) error { return errUnsupported() }

// Output fails: only Linux has network namespaces.
func (h *Host) Output(name string, args ...string) (string, error) { return "", errUnsupported() }

// Forwarding fails: only Linux has network namespaces.
func (h *Host) Forwarding() error { return errUnsupported() }

// Do fails without calling f: only Linux has network namespaces.
func (h *Host) Do(f func() error) error { return errUnsupported() }
