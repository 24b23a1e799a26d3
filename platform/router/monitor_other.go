//go:build !linux

package router

import (
	"fmt"
	"runtime"
)

// NewMonitor is not supported on this operating system yet.
func NewMonitor(MonitorOptions) (Monitor, error) {
	return nil, fmt.Errorf("router: network monitor not supported yet on %s", runtime.GOOS)
}
