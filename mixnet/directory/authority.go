package directory

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// AuthorityConfig configures the directory authority.
type AuthorityConfig struct {
	Key    ed25519.PrivateKey
	Epochs Epochs
	// Allow lists the identity keys that may publish; nil accepts any
	// well-signed descriptor (the local network runs this way).
	Allow []ed25519.PublicKey
	// DescriptorTTL drops nodes that stopped publishing; default 2 min.
	DescriptorTTL time.Duration
	Logger        *slog.Logger
	Now           func() time.Time
}

// Authority collects descriptors and serves the signed document.
type Authority struct {
	cfg AuthorityConfig
	log *slog.Logger

	mu    sync.Mutex
	nodes map[string]*Descriptor
	doc   []byte
	docAt uint64
	dirty bool
}

// NewAuthority builds an authority.
func NewAuthority(cfg AuthorityConfig) (*Authority, error) {
	if len(cfg.Key) != ed25519.PrivateKeySize || cfg.Epochs.Length <= 0 {
		return nil, errors.New("directory: authority needs a key and an epoch length")
	}
	if cfg.DescriptorTTL <= 0 {
		cfg.DescriptorTTL = 2 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Authority{cfg: cfg, log: cfg.Logger, nodes: make(map[string]*Descriptor)}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	return a, nil
}

// Publish accepts a signed descriptor.
func (a *Authority) Publish(raw []byte) error {
	d, err := OpenDescriptor(raw)
	if err != nil {
		return err
	}
	if a.cfg.Allow != nil {
		ok := false
		for _, k := range a.cfg.Allow {
			ok = ok || k.Equal(ed25519.PublicKey(d.IdentityKey))
		}
		if !ok {
			return fmt.Errorf("%w: %s: identity key not allowed", ErrInvalidNode, d.ID)
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, other := range a.nodes {
		if id != d.ID && other.Address == d.Address {
			return fmt.Errorf("%w: %s: address %s already used by %s", ErrInvalidNode, d.ID, d.Address, id)
		}
	}
	if old := a.nodes[d.ID]; old != nil && !ed25519.PublicKey(old.IdentityKey).Equal(ed25519.PublicKey(d.IdentityKey)) {
		return fmt.Errorf("%w: %s: id taken by another identity", ErrInvalidNode, d.ID)
	}
	d.Published = a.cfg.Now()
	a.nodes[d.ID] = d
	a.dirty = true
	return nil
}

// Document returns the signed document for the current epoch, rebuilt when
// nodes changed or the epoch turned.
func (a *Authority) Document() ([]byte, error) {
	now := a.cfg.Now()
	epoch := a.cfg.Epochs.At(now)
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, d := range a.nodes {
		if now.Sub(d.Published) > a.cfg.DescriptorTTL {
			delete(a.nodes, id)
			a.dirty = true
			a.log.Info("node expired", "id", id)
		}
	}
	if a.doc != nil && !a.dirty && a.docAt == epoch {
		return a.doc, nil
	}
	doc := Document{
		Epoch:       epoch,
		EpochLength: a.cfg.Epochs.Length,
		ValidAfter:  a.cfg.Epochs.Start(epoch),
		// A client may use a document a little into the next epoch: nodes
		// still hold this epoch's key during their grace.
		ValidUntil: a.cfg.Epochs.Start(epoch + 1).Add(a.cfg.Epochs.Length / 4),
	}
	for _, d := range a.nodes {
		if _, err := d.SphinxKey(epoch); err != nil {
			continue // no key for this epoch: not routable now
		}
		doc.Nodes = append(doc.Nodes, *d)
	}
	raw, err := SignDocument(&doc, a.cfg.Key)
	if err != nil {
		return nil, err
	}
	a.doc, a.docAt, a.dirty = raw, epoch, false
	return raw, nil
}

// Handler serves POST /v1/descriptor and GET /v1/document.
func (a *Authority) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/descriptor", func(w http.ResponseWriter, r *http.Request) {
		raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if err != nil {
			http.Error(w, "descriptor too large", http.StatusRequestEntityTooLarge)
			return
		}
		if err := a.Publish(raw); err != nil {
			a.log.Info("descriptor refused", "from", r.RemoteAddr, "err", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/document", func(w http.ResponseWriter, r *http.Request) {
		raw, err := a.Document()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(raw)
	})
	return mux
}

// Serve runs the authority's HTTP server on ln until ctx ends.
func (a *Authority) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("directory: serve: %w", err)
	}
	return nil
}
