package sysmon

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// SetSlack gives sysmon a timer slack of d (/proc/TID/timerslack_ns).
// Sysmon is the first thread the runtime starts after the main one, before
// any package's init runs, so it is the oldest thread after the main one,
// ordering threads by start time, then thread id.
func SetSlack(d time.Duration) error {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("sysmon: %w", err)
	}
	type thread struct{ tid, start uint64 }
	pid := uint64(os.Getpid())
	var threads []thread
	for _, e := range ents {
		tid, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil || tid == pid {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc/self/task", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the command name in parentheses; starttime is the
		// 22nd field of the line, the 20th after the name.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) < 20 {
			continue
		}
		start, err := strconv.ParseUint(f[19], 10, 64)
		if err != nil {
			continue
		}
		threads = append(threads, thread{tid, start})
	}
	if len(threads) == 0 {
		return errors.New("sysmon: no runtime thread found")
	}
	t := slices.MinFunc(threads, func(a, b thread) int {
		return cmp.Or(cmp.Compare(a.start, b.start), cmp.Compare(a.tid, b.tid))
	})
	path := fmt.Sprintf("/proc/%d/timerslack_ns", t.tid)
	if err := os.WriteFile(path, []byte(strconv.FormatInt(int64(d), 10)), 0); err != nil {
		return fmt.Errorf("sysmon timer slack: %w", err)
	}
	return nil
}
