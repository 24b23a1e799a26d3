package gateway

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// ClientLink is the entry's way to one connected client. Deliver must not
// keep block after it returns.
type ClientLink interface {
	Deliver(id sphinx.MessageID, block []byte) error
}

// EntryConfig configures an Entry.
type EntryConfig struct {
	// InboxSize bounds deliveries kept for one absent client; default 1024.
	InboxSize int
	// InboxTTL drops deliveries older than this; default 30 s.
	InboxTTL time.Duration
	// MaxInboxes bounds absent clients with a non-empty inbox; default 4096.
	MaxInboxes int
	Logger     *slog.Logger
	Now        func() time.Time
}

// EntryStats counts what an entry did.
type EntryStats struct {
	Clients, Delivered, Queued, Dropped uint64
}

// Entry hands packets addressed to its clients over their links, and keeps
// them in a bounded inbox while a client is away. Its Deliver method is the
// node.Handler of an entry node.
type Entry struct {
	cfg EntryConfig
	log *slog.Logger

	mu      sync.Mutex
	clients map[sphinx.Address]ClientLink
	inboxes map[sphinx.Address]*inbox

	delivered, queued, dropped atomic.Uint64
}

type inbox struct {
	items []inboxItem
}

type inboxItem struct {
	id    sphinx.MessageID
	block []byte
	at    time.Time
}

// NewEntry builds an entry.
func NewEntry(cfg EntryConfig) *Entry {
	if cfg.InboxSize <= 0 {
		cfg.InboxSize = 1024
	}
	if cfg.InboxTTL <= 0 {
		cfg.InboxTTL = 30 * time.Second
	}
	if cfg.MaxInboxes <= 0 {
		cfg.MaxInboxes = 4096
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	e := &Entry{
		cfg:     cfg,
		log:     cfg.Logger,
		clients: make(map[sphinx.Address]ClientLink),
		inboxes: make(map[sphinx.Address]*inbox),
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	return e
}

// Attach registers a connected client under its mixnet address and hands it
// what waited in its inbox. The returned function detaches this link (and
// only this one: a newer link for the same client stays).
func (e *Entry) Attach(addr sphinx.Address, link ClientLink) (detach func()) {
	e.mu.Lock()
	e.clients[addr] = link
	box := e.inboxes[addr]
	delete(e.inboxes, addr)
	e.mu.Unlock()
	if box != nil {
		cutoff := e.cfg.Now().Add(-e.cfg.InboxTTL)
		for _, it := range box.items {
			if it.at.Before(cutoff) {
				e.dropped.Add(1)
				continue
			}
			e.send(link, it.id, it.block)
		}
	}
	return func() {
		e.mu.Lock()
		if e.clients[addr] == link {
			delete(e.clients, addr)
		}
		e.mu.Unlock()
	}
}

// Stats returns the entry's counters.
func (e *Entry) Stats() EntryStats {
	e.mu.Lock()
	n := len(e.clients)
	e.mu.Unlock()
	return EntryStats{Clients: uint64(n), Delivered: e.delivered.Load(), Queued: e.queued.Load(), Dropped: e.dropped.Load()}
}

// Deliver takes a packet whose last hop was this entry and hands it to the
// client, or keeps it for a while if the client is away.
func (e *Entry) Deliver(dest sphinx.Address, id sphinx.MessageID, block []byte) error {
	e.mu.Lock()
	link := e.clients[dest]
	if link == nil {
		defer e.mu.Unlock()
		return e.keep(dest, id, block)
	}
	e.mu.Unlock()
	return e.send(link, id, block)
}

func (e *Entry) send(link ClientLink, id sphinx.MessageID, block []byte) error {
	if err := link.Deliver(id, block); err != nil {
		e.dropped.Add(1)
		return fmt.Errorf("gateway: deliver to client: %w", err)
	}
	e.delivered.Add(1)
	return nil
}

// keep stores a delivery for an absent client. Called with mu.
func (e *Entry) keep(dest sphinx.Address, id sphinx.MessageID, block []byte) error {
	box := e.inboxes[dest]
	now := e.cfg.Now()
	if box == nil {
		if len(e.inboxes) >= e.cfg.MaxInboxes {
			e.expireLocked(now)
			if len(e.inboxes) >= e.cfg.MaxInboxes {
				e.dropped.Add(1)
				return errors.New("gateway: too many absent clients")
			}
		}
		box = &inbox{}
		e.inboxes[dest] = box
	}
	if len(box.items) >= e.cfg.InboxSize {
		// The oldest delivery is the least likely to still matter.
		box.items = box.items[1:]
		e.dropped.Add(1)
	}
	box.items = append(box.items, inboxItem{id: id, block: append([]byte(nil), block...), at: now})
	e.queued.Add(1)
	return nil
}

// Expire drops inbox entries older than InboxTTL.
func (e *Entry) Expire() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.expireLocked(e.cfg.Now())
}

func (e *Entry) expireLocked(now time.Time) {
	cutoff := now.Add(-e.cfg.InboxTTL)
	for addr, box := range e.inboxes {
		i := 0
		for i < len(box.items) && box.items[i].at.Before(cutoff) {
			i++
		}
		e.dropped.Add(uint64(i))
		box.items = box.items[i:]
		if len(box.items) == 0 {
			delete(e.inboxes, addr)
		}
	}
}

// Final refuses: nothing ends at an entry but deliveries.
func (e *Entry) Final(sphinx.Address, sphinx.MessageID, []byte) error {
	return errors.New("gateway: entry is not a final hop")
}
