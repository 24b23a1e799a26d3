package directory

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var genesis = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// deterministicKey makes an ed25519 key from a seed byte.
func deterministicKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
}

func testDescriptor(t testing.TB, id string, role Role, layer int, n byte, epochs ...uint64) *Descriptor {
	d := &Descriptor{ID: id, Role: role, Layer: layer, Address: fmt.Sprintf("198.51.100.%d:1789", n), LinkKey: bytes.Repeat([]byte{n}, 32)}
	for _, e := range epochs {
		k, err := ecdh.X25519().NewPrivateKey(bytes.Repeat([]byte{n + byte(e)}, 32))
		if err != nil {
			t.Fatal(err)
		}
		d.SphinxKeys = append(d.SphinxKeys, EpochKey{Epoch: e, Key: k.PublicKey().Bytes()})
	}
	return d
}

func testDocument(t testing.TB, epoch uint64) *Document {
	doc := &Document{Epoch: epoch, EpochLength: time.Hour, ValidAfter: genesis, ValidUntil: genesis.Add(time.Hour)}
	for i, n := range []struct {
		id    string
		role  Role
		layer int
	}{{"entry-1", RoleEntry, 0}, {"mix-1", RoleMix, 1}, {"mix-2", RoleMix, 2}, {"mix-3", RoleMix, 3}, {"exit-1", RoleExit, 0}} {
		d := testDescriptor(t, n.id, n.role, n.layer, byte(10+i), epoch, epoch+1)
		d.Version = FormatVersion
		d.IdentityKey = deterministicKey(byte(10 + i)).Public().(ed25519.PublicKey)
		doc.Nodes = append(doc.Nodes, *d)
	}
	doc.Nodes[0].Country = "DE"
	doc.Nodes[4].Country = "CH"
	doc.Nodes[4].DNS = testDNS()
	return doc
}

// testDNS is what the test document's exit advertises.
func testDNS() []netip.Addr {
	return []netip.Addr{netip.MustParseAddr("198.51.100.80"), netip.MustParseAddr("fd6d:7876::80")}
}

func TestDocumentSignVerify(t *testing.T) {
	auth := deterministicKey(1)
	raw, err := SignDocument(testDocument(t, 0), auth)
	if err != nil {
		t.Fatal(err)
	}
	pub := auth.Public().(ed25519.PublicKey)
	now := genesis.Add(time.Minute)
	doc, err := Verify(raw, pub, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.NodesOf(RoleMix, 2)) != 1 || doc.ByID("exit-1") == nil || len(doc.GatewaysIn(RoleExit, "CH")) != 1 {
		t.Fatal("queries on the verified document")
	}
	if doc.ByAddress(doc.Nodes[1].MixAddress()).ID != "mix-1" {
		t.Fatal("lookup by address")
	}
	if got := doc.ByID("exit-1").DNS; !slices.Equal(got, testDNS()) {
		t.Fatalf("exit's DNS came back as %v, want %v", got, testDNS())
	}
	if got := doc.ByID("entry-1").DNS; got != nil {
		t.Fatalf("entry's DNS came back as %v", got)
	}

	// Tampering with any byte of the body breaks the signature.
	var s signed
	json.Unmarshal(raw, &s)
	s.Body[len(s.Body)/2] ^= 1
	tampered, _ := json.Marshal(s)
	if _, err := Verify(tampered, pub, now); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered: %v", err)
	}
	json.Unmarshal(raw, &s)
	s.Signature = nil
	unsigned, _ := json.Marshal(s)
	if _, err := Verify(unsigned, pub, now); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("unsigned: %v", err)
	}
	if _, err := Verify(raw, deterministicKey(2).Public().(ed25519.PublicKey), now); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong pinned key: %v", err)
	}
	if _, err := Verify(raw, pub, genesis.Add(2*time.Hour)); !errors.Is(err, ErrStale) {
		t.Fatalf("expired: %v", err)
	}
	if _, err := Verify(raw, pub, genesis.Add(-time.Minute)); !errors.Is(err, ErrNotYetValid) {
		t.Fatalf("early: %v", err)
	}
	if _, err := Verify([]byte("{"), pub, now); !errors.Is(err, ErrMalformed) {
		t.Fatalf("garbage: %v", err)
	}
	if _, err := Verify(make([]byte, MaxDocumentSize+1), pub, now); !errors.Is(err, ErrMalformed) {
		t.Fatalf("oversized: %v", err)
	}
}

func TestDocumentRejectsBadNodes(t *testing.T) {
	auth := deterministicKey(1)
	cases := map[string]func(*Document){
		"duplicate id":      func(d *Document) { d.Nodes[1].ID = d.Nodes[2].ID },
		"duplicate address": func(d *Document) { d.Nodes[1].Address = d.Nodes[2].Address },
		"layer 4":           func(d *Document) { d.Nodes[1].Layer = 4 },
		"gateway layer":     func(d *Document) { d.Nodes[0].Layer = 1 },
		"unknown role":      func(d *Document) { d.Nodes[0].Role = "relay" },
		"short link key":    func(d *Document) { d.Nodes[0].LinkKey = d.Nodes[0].LinkKey[:31] },
		"bad country":       func(d *Document) { d.Nodes[0].Country = "Germany" },
		"bad address":       func(d *Document) { d.Nodes[0].Address = "nowhere" },
		"DNS on an entry":   func(d *Document) { d.Nodes[0].DNS = testDNS() },
		"DNS on a mix":      func(d *Document) { d.Nodes[1].DNS = testDNS() },
		"empty DNS":         func(d *Document) { d.Nodes[4].DNS = []netip.Addr{{}} },
		"loopback DNS":      func(d *Document) { d.Nodes[4].DNS = []netip.Addr{netip.MustParseAddr("127.0.0.53")} },
		"link-local DNS":    func(d *Document) { d.Nodes[4].DNS = []netip.Addr{netip.MustParseAddr("fe80::1")} },
		"zoned DNS":         func(d *Document) { d.Nodes[4].DNS = []netip.Addr{netip.MustParseAddr("fd00::1%eth0")} },
		"unspecified DNS":   func(d *Document) { d.Nodes[4].DNS = []netip.Addr{netip.IPv4Unspecified()} },
		"multicast DNS":     func(d *Document) { d.Nodes[4].DNS = []netip.Addr{netip.MustParseAddr("224.0.0.251")} },
		"mapped DNS":        func(d *Document) { d.Nodes[4].DNS = []netip.Addr{netip.MustParseAddr("::ffff:198.51.100.80")} },
		"too many DNS": func(d *Document) {
			d.Nodes[4].DNS = slices.Repeat([]netip.Addr{netip.MustParseAddr("198.51.100.80")}, MaxDNS+1)
		},
	}
	for name, mutate := range cases {
		doc := testDocument(t, 0)
		mutate(doc)
		if _, err := SignDocument(doc, auth); !errors.Is(err, ErrInvalidNode) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// The resolvers an exit advertises are parsed as strictly as the rest:
// a name where an address belongs, or a field this version does not
// know, makes the whole document malformed rather than half read.
func TestDocumentDNSIsStrict(t *testing.T) {
	auth := deterministicKey(1)
	pub := auth.Public().(ed25519.PublicKey)
	doc := testDocument(t, 0)
	doc.Version = FormatVersion
	body, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	good := `"dns":["198.51.100.80","fd6d:7876::80"]`
	if !strings.Contains(string(body), good) {
		t.Fatalf("the exit's DNS is not in the body as %s:\n%s", good, body)
	}
	for name, bad := range map[string]string{
		"a name":        `"dns":["resolver.example"]`,
		"a number":      `"dns":[53]`,
		"not a list":    `"dns":"198.51.100.80"`,
		"unknown field": `"dns_servers":["198.51.100.80"]`,
	} {
		raw, err := sign(json.RawMessage(strings.Replace(string(body), good, bad, 1)), auth)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Verify(raw, pub, genesis.Add(time.Minute)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	// A descriptor round-trips its DNS through signing and opening.
	d := testDescriptor(t, "exit-9", RoleExit, 0, 99, 0)
	d.DNS = testDNS()
	raw, err := SignDescriptor(d, deterministicKey(99))
	if err != nil {
		t.Fatal(err)
	}
	back, err := OpenDescriptor(raw)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(back.DNS, testDNS()) {
		t.Fatalf("descriptor DNS %v, want %v", back.DNS, testDNS())
	}
}

func TestAuthorityPublishersAndFetcher(t *testing.T) {
	clk := &clock{t: genesis.Add(10 * time.Minute)}
	epochs := Epochs{Genesis: genesis, Length: time.Hour}
	authKey := deterministicKey(1)
	allowed := []ed25519.PublicKey{deterministicKey(20).Public().(ed25519.PublicKey), deterministicKey(21).Public().(ed25519.PublicKey)}
	a, err := NewAuthority(AuthorityConfig{Key: authKey, Epochs: epochs, Allow: allowed, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()

	dir := t.TempDir()
	rings := map[string]*KeyRing{}
	publish := func(id string, role Role, layer int, n byte, identity ed25519.PrivateKey) error {
		ring := rings[id]
		if ring == nil {
			ring = &KeyRing{Dir: filepath.Join(dir, id), Epochs: epochs, Now: clk.Now}
			rings[id] = ring
		}
		p := PublisherConfig{URL: srv.URL, Identity: identity, Describe: func() (*Descriptor, error) {
			keys, err := ring.Public()
			if err != nil {
				return nil, err
			}
			d := testDescriptor(t, id, role, layer, n)
			d.SphinxKeys = keys
			if role == RoleExit {
				d.DNS = testDNS()
			}
			return d, nil
		}}
		return p.Publish(context.Background())
	}
	if err := publish("mix-1", RoleMix, 1, 21, deterministicKey(20)); err != nil {
		t.Fatal(err)
	}
	if err := publish("exit-1", RoleExit, 0, 51, deterministicKey(21)); err != nil {
		t.Fatal(err)
	}
	if err := publish("intruder", RoleMix, 2, 66, deterministicKey(99)); err == nil {
		t.Fatal("a node outside the allow list published")
	}
	if err := publish("mix-1", RoleMix, 1, 22, deterministicKey(21)); err == nil {
		t.Fatal("another identity took over an id")
	}

	f := &Fetcher{URL: srv.URL, Key: authKey.Public().(ed25519.PublicKey), Now: clk.Now}
	doc, err := f.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if doc.Epoch != 0 || len(doc.Nodes) != 2 {
		t.Fatalf("epoch %d with %d nodes", doc.Epoch, len(doc.Nodes))
	}
	// The exit's resolvers reach clients through the authority.
	if got := doc.ByID("exit-1").DNS; !slices.Equal(got, testDNS()) {
		t.Fatalf("exit's DNS in the document %v, want %v", got, testDNS())
	}
	mix := doc.ByID("mix-1")
	if _, err := mix.SphinxKey(1); err != nil {
		t.Fatal("next epoch's key not published ahead")
	}

	// The epoch turns: nodes republish, the new document carries epoch 1
	// and its key is the one announced as "next" before.
	nextKey := mix.SphinxKeys[1].Key
	clk.Add(time.Hour)
	publish("mix-1", RoleMix, 1, 21, deterministicKey(20))
	publish("exit-1", RoleExit, 0, 51, deterministicKey(21))
	doc, err = f.Fetch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	k, err := doc.ByID("mix-1").SphinxKey(1)
	if doc.Epoch != 1 || err != nil || !bytes.Equal(k.Bytes(), nextKey) {
		t.Fatalf("epoch %d: key for epoch 1 changed or missing (%v)", doc.Epoch, err)
	}

	// A node that stops publishing leaves the document.
	clk.Add(3 * time.Minute)
	publish("exit-1", RoleExit, 0, 51, deterministicKey(21))
	doc, _ = f.Fetch(context.Background())
	if doc.ByID("mix-1") != nil || doc.ByID("exit-1") == nil {
		t.Fatal("silent node kept or live node dropped")
	}

	// A wrong pinned key is refused; the fetcher does not fall back to a
	// document it never verified.
	bad := &Fetcher{URL: srv.URL, Key: deterministicKey(2).Public().(ed25519.PublicKey), Now: clk.Now}
	if _, err := bad.Fetch(context.Background()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong pinned key: %v", err)
	}
}

func TestKeyRingRotation(t *testing.T) {
	clk := &clock{t: genesis.Add(90 * time.Minute)}
	r := &KeyRing{Dir: t.TempDir(), Epochs: Epochs{Genesis: genesis, Length: time.Hour}, Grace: 10 * time.Minute, Now: clk.Now}
	keys, err := r.Active()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].Epoch != 1 || keys[1].Epoch != 2 {
		t.Fatalf("active %v", epochsOf(keys))
	}
	for _, e := range []uint64{1, 2} {
		st, err := os.Stat(r.path(e))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("key file for epoch %d: %v %v", e, err, st.Mode())
		}
	}
	next := keys[1].Key
	clk.Add(35 * time.Minute) // 5 minutes into epoch 2: epoch 1 in grace
	keys, _ = r.Active()
	if got := epochsOf(keys); len(got) != 3 || got[0] != 2 || got[2] != 1 {
		t.Fatalf("during grace: %v", got)
	}
	if !keys[0].Key.Equal(next) {
		t.Fatal("the announced next key was not used")
	}
	clk.Add(10 * time.Minute) // past grace
	keys, _ = r.Active()
	if got := epochsOf(keys); len(got) != 2 || got[0] != 2 {
		t.Fatalf("after grace: %v", got)
	}
	if _, err := os.Stat(r.path(1)); !os.IsNotExist(err) {
		t.Fatal("expired key file not deleted")
	}
	// A restarted node loads the same keys from disk.
	r2 := &KeyRing{Dir: r.Dir, Epochs: r.Epochs, Grace: r.Grace, Now: clk.Now}
	keys2, _ := r2.Active()
	if !keys2[0].Key.Equal(keys[0].Key) {
		t.Fatal("key changed across restart")
	}
}

func epochsOf(keys []EpochPrivateKey) []uint64 {
	var out []uint64
	for _, k := range keys {
		out = append(out, k.Epoch)
	}
	return out
}
