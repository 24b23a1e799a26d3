//go:build !linux

package sysmon

import (
	"fmt"
	"runtime"
	"time"
)

// SetSlack is not supported off Linux yet; the runtime runs as it is.
func SetSlack(d time.Duration) error {
	return fmt.Errorf("sysmon timer slack: not supported yet on %s", runtime.GOOS)
}
