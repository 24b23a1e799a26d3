package sysmon

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// SetSlack changes exactly one thread's slack, the runtime's monitor's:
// the one thread, not the main one, whose slack is now d.
func TestSetSlackOneThread(t *testing.T) {
	const d = 3 * time.Millisecond
	if err := SetSlack(d); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var set []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "timerslack_ns")) // only there, not under task/
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); v == int64(d) {
			set = append(set, e.Name())
		}
	}
	if len(set) != 1 || set[0] == strconv.Itoa(os.Getpid()) {
		t.Fatalf("threads with slack %v: %v (main thread %d); want one, not the main thread", d, set, os.Getpid())
	}
}
