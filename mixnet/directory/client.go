package directory

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Source yields the current verified document.
type Source interface {
	Fetch(ctx context.Context) (*Document, error)
}

// Static is a Source that always returns the same document (a test double).
type Static struct{ Doc *Document }

// Fetch returns the document.
func (s Static) Fetch(context.Context) (*Document, error) { return s.Doc, nil }

// Fetcher fetches the document over HTTP and verifies it under a pinned
// authority key. It keeps the last good document for when a fetch fails
// but that document is still valid.
type Fetcher struct {
	URL    string
	Key    ed25519.PublicKey
	Client *http.Client
	Now    func() time.Time

	mu   sync.Mutex
	last *Document
}

// Fetch returns a verified document.
func (f *Fetcher) Fetch(ctx context.Context) (*Document, error) {
	now := time.Now
	if f.Now != nil {
		now = f.Now
	}
	doc, err := f.fetch(ctx, now())
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		if f.last != nil && now().Before(f.last.ValidUntil) {
			return f.last, nil
		}
		return nil, err
	}
	f.last = doc
	return doc, nil
}

func (f *Fetcher) fetch(ctx context.Context, now time.Time) (*Document, error) {
	c := f.Client
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL+"/v1/document", nil)
	if err != nil {
		return nil, fmt.Errorf("directory: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("directory: fetch: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("directory: fetch: %s", resp.Status)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxDocumentSize+1))
	if err != nil {
		return nil, fmt.Errorf("directory: fetch: %w", err)
	}
	return Verify(raw, f.Key, now)
}

// PublisherConfig configures a node's descriptor publisher.
type PublisherConfig struct {
	URL      string
	Identity ed25519.PrivateKey
	// Describe returns the descriptor to publish; it is called each time,
	// so current keys are included.
	Describe func() (*Descriptor, error)
	// Interval between publications; default 30 s.
	Interval time.Duration
	Client   *http.Client
	Logger   *slog.Logger
}

// Publish signs and uploads one descriptor.
func (p *PublisherConfig) Publish(ctx context.Context) error {
	d, err := p.Describe()
	if err != nil {
		return err
	}
	raw, err := SignDescriptor(d, p.Identity)
	if err != nil {
		return err
	}
	c := p.Client
	if c == nil {
		c = &http.Client{Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL+"/v1/descriptor", bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("directory: %w", err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("directory: publish: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("directory: publish refused: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// Run publishes now and every Interval until ctx ends, retrying failures
// sooner.
func (p *PublisherConfig) Run(ctx context.Context) error {
	interval := p.Interval
	if interval <= 0 {
		interval = 30 * time.Second
	}
	log := p.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for {
		wait := interval
		if err := p.Publish(ctx); err != nil {
			log.Warn("publish failed", "err", err)
			wait = min(interval, time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}
