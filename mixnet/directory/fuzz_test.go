package directory

import (
	"crypto/ed25519"
	"testing"
	"time"
)

// FuzzVerifyDocument: arbitrary bytes from the network must be refused
// with an error or verify as a well-formed document, never panic.
func FuzzVerifyDocument(f *testing.F) {
	auth := deterministicKey(1)
	raw, err := SignDocument(testDocument(f, 0), auth)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	pub := auth.Public().(ed25519.PublicKey)
	now := genesis.Add(time.Minute)
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, err := Verify(data, pub, now)
		if err != nil {
			return
		}
		for i := range doc.Nodes {
			if err := doc.Nodes[i].validate(); err != nil {
				t.Fatalf("verified document holds an invalid node: %v", err)
			}
		}
		_, _ = OpenDescriptor(data)
	})
}
