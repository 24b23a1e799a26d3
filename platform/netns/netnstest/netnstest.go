// Package netnstest gives tests a network-namespace lab that is removed,
// and checked to be gone, when the test ends.
package netnstest

import (
	"testing"

	"github.com/mixvpn/mixvpn/platform/netns"
)

// Lab starts a lab whose namespaces carry prefix, and registers a cleanup
// that closes it and fails the test if any of its namespaces remain.
// Callers skip without root first, with their own reason.
func Lab(t testing.TB, prefix string) *netns.Lab {
	t.Helper()
	lab, err := netns.NewLab(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
		if left := netns.Leftovers(lab.ID()); len(left) != 0 {
			t.Errorf("namespaces left: %v", left)
		}
	})
	return lab
}
