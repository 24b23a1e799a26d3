//go:build !linux

package sleep

import (
	"context"
	"fmt"
	"runtime"
)

// Resumed is not supported on this operating system yet; the daemon
// falls back to its clocks.
func (n *Notifier) Resumed(context.Context) (<-chan struct{}, error) {
	return nil, fmt.Errorf("sleep: resume notifications not supported yet on %s", runtime.GOOS)
}
