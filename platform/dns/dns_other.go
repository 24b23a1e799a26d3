//go:build !linux

package dns

import (
	"fmt"
	"runtime"
)

// New is not supported on this operating system yet.
func New(Options) (Configurator, error) {
	return nil, fmt.Errorf("dns: not supported yet on %s", runtime.GOOS)
}
