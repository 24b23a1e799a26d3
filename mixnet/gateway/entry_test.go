package gateway

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

type fakeClientLink struct {
	mu   sync.Mutex
	got  []sphinx.MessageID
	fail bool
}

func (f *fakeClientLink) Deliver(id sphinx.MessageID, block []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("link down")
	}
	f.got = append(f.got, id)
	return nil
}

func TestEntryDeliversAndKeepsInbox(t *testing.T) {
	now := time.Unix(50, 0)
	e := NewEntry(EntryConfig{InboxSize: 3, InboxTTL: 10 * time.Second, Now: func() time.Time { return now }})
	alice := sphinx.Address{0xa1}
	link := &fakeClientLink{}
	detach := e.Attach(alice, link)
	block := bytes.Repeat([]byte{7}, sphinx.PayloadBlockSize)
	if err := e.Deliver(alice, sphinx.MessageID{1}, block); err != nil {
		t.Fatal(err)
	}
	detach()
	// Away: five arrive, the inbox keeps the newest three.
	for i := byte(2); i <= 6; i++ {
		if err := e.Deliver(alice, sphinx.MessageID{i}, block); err != nil {
			t.Fatal(err)
		}
	}
	back := &fakeClientLink{}
	e.Attach(alice, back)
	if len(back.got) != 3 || back.got[0] != (sphinx.MessageID{4}) || back.got[2] != (sphinx.MessageID{6}) {
		t.Fatalf("after return got %v", back.got)
	}
	if s := e.Stats(); s.Delivered != 4 || s.Dropped != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestEntryInboxExpiresAndIsBounded(t *testing.T) {
	now := time.Unix(50, 0)
	e := NewEntry(EntryConfig{InboxTTL: time.Second, MaxInboxes: 2, Now: func() time.Time { return now }})
	block := make([]byte, sphinx.PayloadBlockSize)
	e.Deliver(sphinx.Address{1}, sphinx.MessageID{}, block)
	e.Deliver(sphinx.Address{2}, sphinx.MessageID{}, block)
	if err := e.Deliver(sphinx.Address{3}, sphinx.MessageID{}, block); err == nil {
		t.Fatal("third absent client accepted over the bound")
	}
	now = now.Add(2 * time.Second)
	if err := e.Deliver(sphinx.Address{3}, sphinx.MessageID{}, block); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	link := &fakeClientLink{}
	e.Attach(sphinx.Address{1}, link)
	if len(link.got) != 0 {
		t.Fatal("expired delivery handed over")
	}
	// A newer link is not detached by an older link's detach.
	old := e.Attach(sphinx.Address{9}, &fakeClientLink{})
	newer := &fakeClientLink{}
	e.Attach(sphinx.Address{9}, newer)
	old()
	e.Deliver(sphinx.Address{9}, sphinx.MessageID{5}, block)
	if len(newer.got) != 1 {
		t.Fatal("newer link lost its deliveries")
	}
}
