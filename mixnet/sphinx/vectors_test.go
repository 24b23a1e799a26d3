package sphinx

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the current code")

// vectors are known answers made once from a fixed seed. Any change to the
// wire format changes these bytes and fails the test; regenerate with
// `go test ./mixnet/sphinx -run TestKnownAnswers -update` only for a
// deliberate, versioned format change.
type vectors struct {
	Comment   string `json:"comment"`
	Forward5  string `json:"forward_5_hops"`
	Forward1  string `json:"forward_1_hop"`
	SURB      string `json:"surb_4_hops"`
	Reply     string `json:"reply"`
	Delivered string `json:"delivered_reply_block"`
}

func makeVectors(t testing.TB) (vectors, []testNode, *SURBKeys) {
	rnd := seeded(2026)
	nodes := makeNodes(t, rnd, 5)
	dest := Address{0xde, 0x57}
	id := MessageID{0x1d}
	msg := []byte("mixvpn known-answer vector")
	delays := []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond, 4 * time.Millisecond}
	f5, err := NewPacket(rnd, pathOf(nodes, delays...), dest, id, msg)
	if err != nil {
		t.Fatal(err)
	}
	f1, err := NewPacket(rnd, pathOf(nodes[:1]), dest, id, msg)
	if err != nil {
		t.Fatal(err)
	}
	surb, keys, err := NewSURB(rnd, pathOf(nodes[1:], delays...), dest, id)
	if err != nil {
		t.Fatal(err)
	}
	_, reply, err := NewReply(surb, msg)
	if err != nil {
		t.Fatal(err)
	}
	pkt := bytes.Clone(reply)
	var out Processed
	for _, n := range nodes[1:] {
		if err := Unwrap(n.priv, pkt, &out); err != nil {
			t.Fatal(err)
		}
		pkt = out.Packet
	}
	return vectors{
		Comment:   "mixvpn Sphinx v1 known answers; seed 2026, see vectors_test.go",
		Forward5:  hex.EncodeToString(f5),
		Forward1:  hex.EncodeToString(f1),
		SURB:      hex.EncodeToString(surb),
		Reply:     hex.EncodeToString(reply),
		Delivered: hex.EncodeToString(out.Payload),
	}, nodes, keys
}

func TestKnownAnswers(t *testing.T) {
	got, nodes, _ := makeVectors(t)
	path := filepath.Join("testdata", "vectors.json")
	if *update {
		b, _ := json.MarshalIndent(got, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		writeSeed(t, "FuzzUnwrap", "valid_5_hops", got.Forward5)
		writeSeed(t, "FuzzUnwrap", "valid_1_hop", got.Forward1)
		writeSeed(t, "FuzzUnwrap", "reply_packet", got.Reply)
		writeSeed(t, "FuzzOpenReply", "delivered", got.Delivered)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var want vectors
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatal("Sphinx wire format changed: packets no longer match testdata/vectors.json")
	}
	// The checked-in bytes must also still open with today's code.
	pkt, _ := hex.DecodeString(want.Forward5)
	var out Processed
	for _, n := range nodes {
		if err := Unwrap(n.priv, pkt, &out); err != nil {
			t.Fatal(err)
		}
		pkt = out.Packet
	}
	if string(out.Payload) != "mixvpn known-answer vector" {
		t.Fatalf("vector payload %q", out.Payload)
	}
}

// writeSeed stores a fuzz seed in Go's corpus file format.
func writeSeed(t *testing.T, target, name, hexData string) {
	t.Helper()
	data, err := hex.DecodeString(hexData)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}
