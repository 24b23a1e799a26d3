//go:build !linux

package firewall

import (
	"fmt"
	"runtime"
)

// New is not supported on this operating system yet; Render still works,
// as it only writes text.
func New(Options) (Firewall, error) {
	return nil, fmt.Errorf("firewall: not supported yet on %s", runtime.GOOS)
}
