package client

import "testing"

// A download spends SURBs faster than stale stock reports show: every
// reply is replaced even while the last report says the stock is full,
// four to a message here, until the replies are made up.
func TestSURBBudgetReplacesEveryReply(t *testing.T) {
	b := surbBudget{target: 200}
	if got := b.take(5); got != 5 {
		t.Fatalf("empty exit: take = %d, want 5 (a full message toward the target)", got)
	}
	// The exit reports a full stock (a return trip ago); since then it
	// spent 50 SURBs on replies that arrive now.
	b.status(200)
	for range 50 {
		b.replied()
	}
	sent := 0
	for range 20 {
		sent += b.take(4)
	}
	if sent != 50 {
		t.Fatalf("replaced %d SURBs for 50 replies", sent)
	}
	if got := b.take(4); got != 0 {
		t.Fatalf("nothing owed and the stock at target: take = %d", got)
	}
}

// Replacement cannot see SURBs lost on the way (a mix died with them):
// the reported stock tops those up, and the same SURBs are not counted
// twice while reports still lag.
func TestSURBBudgetTopsUpLosses(t *testing.T) {
	b := surbBudget{target: 200}
	b.status(120) // 80 lost
	got := 0
	for range 40 {
		got += b.take(4)
	}
	if got != 80 {
		t.Fatalf("topped up %d, want the 80 lost", got)
	}
	// A reply that arrives now is replaced on top of the top-up.
	b.replied()
	if got := b.take(4); got != 1 {
		t.Fatalf("after a reply: take = %d, want 1", got)
	}
}

// What is owed is bounded, and a report of a stock twice the target
// clears it: a client cut off from sending for a while does not then
// flood the exit.
func TestSURBBudgetBounded(t *testing.T) {
	b := surbBudget{target: 100}
	b.status(100)
	for range 1000 {
		b.replied()
	}
	if b.owed != 100 {
		t.Fatalf("owed %d after 1000 replies, want the target 100", b.owed)
	}
	b.status(250)
	if got := b.take(5); got != 0 {
		t.Fatalf("stock at 2.5× target: take = %d, want 0", got)
	}
	b.replied()
	b.flushed()
	if got := b.take(5); got != 5 {
		t.Fatalf("after a flush the stock is gone: take = %d, want 5", got)
	}
}
