package gateway

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/register"
)

func storeRegistry(t *testing.T, peers *mapPeers, store RegistrationStore, now *time.Time) *Registry {
	t.Helper()
	r, err := NewRegistry(RegistryConfig{
		Peers: peers, Prefix4: netip.MustParsePrefix("10.70.0.0/24"), Prefix6: netip.MustParsePrefix("fd00:70::/64"),
		ServerKey: [32]byte{9}, Endpoint: netip.MustParseAddrPort("198.51.100.11:51820"), TTL: time.Minute,
		Store: store, Now: func() time.Time { return *now },
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func register1(t *testing.T, r *Registry, key byte) *register.Response {
	t.Helper()
	resp, err := register.ParseResponse(r.Handle(request(t, key, nil)))
	if err != nil || resp.Error != "" {
		t.Fatalf("register %d: %+v %v", key, resp, err)
	}
	return resp
}

// A restarted gateway (a new registry and a new, empty WireGuard server on
// the same store) knows its clients again, with the same addresses, and
// hands newcomers addresses nobody holds.
func TestRegistryRestoresAfterRestart(t *testing.T) {
	now := time.Unix(1000, 0)
	store := &MemoryStore{}
	first := storeRegistry(t, newMapPeers(), store, &now)
	a, b := register1(t, first, 1), register1(t, first, 2)
	if store.Saves() != 2 {
		t.Fatalf("%d saves for two registrations, want 2", store.Saves())
	}
	register1(t, first, 1) // a renewal changes nothing stored
	if store.Saves() != 2 {
		t.Fatalf("a renewal saved again (%d saves)", store.Saves())
	}

	peers := newMapPeers()
	second := storeRegistry(t, peers, store, &now)
	if second.Len() != 2 {
		t.Fatalf("restored %d registrations, want 2", second.Len())
	}
	k1 := [32]byte(make32(1))
	want := []netip.Prefix{netip.PrefixFrom(a.Addr4, 32), netip.PrefixFrom(a.Addr6, 128)}
	if got := peers.allowed[k1]; !slices.Equal(got, want) {
		t.Fatalf("the new server has key 1 with %v, want %v", got, want)
	}
	if again := register1(t, second, 1); again.Addr4 != a.Addr4 || again.Addr6 != a.Addr6 {
		t.Fatalf("key 1 re-registered as %v, it had %v", again.Addr4, a.Addr4)
	}
	c := register1(t, second, 3)
	if c.Addr4 == a.Addr4 || c.Addr4 == b.Addr4 {
		t.Fatalf("a newcomer got %v, which a restored client holds", c.Addr4)
	}

	// Restored clients get a full TTL to come back: nothing expires at
	// once, everything that stays silent does, and the store follows.
	if n, err := second.Expire(); err != nil || n != 0 {
		t.Fatalf("expired %d (%v) right after the restart", n, err)
	}
	now = now.Add(2 * time.Minute)
	peers.handshake[[32]byte(make32(2))] = now
	if n, err := second.Expire(); err != nil || n != 2 {
		t.Fatalf("expired %d (%v), want the 2 silent ones", n, err)
	}
	third := storeRegistry(t, newMapPeers(), store, &now)
	if third.Len() != 1 {
		t.Fatalf("after expiry the store restores %d registrations, want 1", third.Len())
	}
}

// Entries that the pools could not have handed out, or that clash, are
// dropped on restore; the rest are kept and the store is rewritten.
func TestRegistryRestoreDropsWhatDoesNotFit(t *testing.T) {
	now := time.Unix(1000, 0)
	good := Registration{PublicKey: [32]byte{1}, Addr4: netip.MustParseAddr("10.70.0.5"), Addr6: netip.MustParseAddr("fd00:70::5")}
	store := &MemoryStore{regs: []Registration{
		good,
		{PublicKey: [32]byte{2}, Addr4: netip.MustParseAddr("10.71.0.5"), Addr6: netip.MustParseAddr("fd00:70::6")},    // another pool
		{PublicKey: [32]byte{3}, Addr4: netip.MustParseAddr("10.70.0.7"), Addr6: netip.MustParseAddr("fd00:70::8")},    // host numbers differ
		{PublicKey: [32]byte{4}, Addr4: netip.MustParseAddr("10.70.0.1"), Addr6: netip.MustParseAddr("fd00:70::1")},    // the gateway's own
		{PublicKey: [32]byte{5}, Addr4: netip.MustParseAddr("10.70.0.5"), Addr6: netip.MustParseAddr("fd00:70::5")},    // taken
		{PublicKey: [32]byte{1}, Addr4: netip.MustParseAddr("10.70.0.9"), Addr6: netip.MustParseAddr("fd00:70::9")},    // key again
		{PublicKey: [32]byte{6}, Addr4: netip.MustParseAddr("10.70.0.255"), Addr6: netip.MustParseAddr("fd00:70::ff")}, // broadcast
	}}
	r := storeRegistry(t, newMapPeers(), store, &now)
	if r.Len() != 1 {
		t.Fatalf("restored %d registrations, want only the good one", r.Len())
	}
	if regs, _ := store.Load(); !slices.Equal(regs, []Registration{good}) {
		t.Fatalf("store holds %v after the restore, want only the good one", regs)
	}
}

func TestFileStore(t *testing.T) {
	dir := t.TempDir()
	s := FileStore{Path: filepath.Join(dir, "registrations.json")}
	if regs, err := s.Load(); err != nil || regs != nil {
		t.Fatalf("missing file: %v %v", regs, err)
	}
	regs := []Registration{
		{PublicKey: [32]byte{1, 2}, Addr4: netip.MustParseAddr("10.70.0.2"), Addr6: netip.MustParseAddr("fd00:70::2")},
		{PublicKey: [32]byte{3}, Addr4: netip.MustParseAddr("10.70.0.3"), Addr6: netip.MustParseAddr("fd00:70::3")},
	}
	if err := s.Save(regs); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(s.Path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	got, err := s.Load()
	if err != nil || !slices.Equal(got, regs) {
		t.Fatalf("loaded %v %v, want %v", got, err, regs)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Fatalf("the directory holds %d files, want the store alone", len(entries))
	}

	// A damaged file is an error for the store; the registry starts
	// anyway, empty, since its clients can register again.
	os.WriteFile(s.Path, []byte(`{"version": 1, "registrations": [{"public_key": "AAE="}]}`), 0o600)
	if _, err := s.Load(); err == nil {
		t.Fatal("loaded a file with a short key")
	}
	os.WriteFile(s.Path, []byte("not json"), 0o600)
	if _, err := s.Load(); err == nil {
		t.Fatal("loaded a file that is not JSON")
	}
	now := time.Unix(1000, 0)
	if r := storeRegistry(t, newMapPeers(), s, &now); r.Len() != 0 {
		t.Fatalf("restored %d registrations from garbage", r.Len())
	}
}
