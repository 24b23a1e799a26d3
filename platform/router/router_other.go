//go:build !linux

package router

import (
	"fmt"
	"runtime"
)

// New is not supported on this operating system yet.
func New(Options) (Router, error) {
	return nil, fmt.Errorf("router: not supported yet on %s", runtime.GOOS)
}
