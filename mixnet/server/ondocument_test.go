package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/directory"
	"github.com/mixvpn/mixvpn/mixnet/server"
)

// OnDocument sees the documents the node routes by: the first one that
// lists the node itself arrives soon after it publishes, and a document is
// not handed over twice.
func TestOnDocumentSeesNewDocuments(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	epochs := directory.Epochs{Genesis: time.Now().Add(-time.Minute), Length: time.Hour}
	auth, _ := directory.NewAuthority(directory.AuthorityConfig{Key: priv, Epochs: epochs})
	srv := httptest.NewServer(auth.Handler())
	defer srv.Close()
	docs := make(chan *directory.Document, 64)
	_, run, err := server.Build(server.Config{ID: "entry", Role: directory.RoleEntry, Listen: freeAddr(t), DataDir: t.TempDir(),
		DirectoryURL: srv.URL, DirectoryKey: pub, Epochs: epochs, RefreshInterval: 20 * time.Millisecond,
		OnDocument: func(d *directory.Document) {
			select {
			case docs <- d:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); run(ctx) }()
	defer func() { cancel(); <-done }()
	seen := map[*directory.Document]bool{}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case d := <-docs:
			if seen[d] {
				t.Fatal("the same document was handed over twice")
			}
			seen[d] = true
			if d.ByID("entry") != nil {
				return
			}
		case <-deadline:
			t.Fatalf("no document listing the node within 10 s (%d seen)", len(seen))
		}
	}
}
