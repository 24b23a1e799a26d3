package gateway

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/register"
)

// mapPeers is a WireGuardPeers test double.
type mapPeers struct {
	mu        sync.Mutex
	allowed   map[[32]byte][]netip.Prefix
	handshake map[[32]byte]time.Time
}

func newMapPeers() *mapPeers {
	return &mapPeers{allowed: map[[32]byte][]netip.Prefix{}, handshake: map[[32]byte]time.Time{}}
}

func (m *mapPeers) AddPeer(k [32]byte, a []netip.Prefix) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.allowed[k] = a
	return nil
}

func (m *mapPeers) RemovePeer(k [32]byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.allowed[k]; !ok {
		return errors.New("no such peer")
	}
	delete(m.allowed, k)
	return nil
}

func (m *mapPeers) LastHandshake(k [32]byte) (time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.handshake[k], nil
}

func request(t *testing.T, key byte, cred []byte) []byte {
	b, err := register.Marshal(register.Request{Version: register.Version, PublicKey: make32(key), Credential: cred})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func make32(b byte) []byte {
	k := make([]byte, 32)
	k[0] = b
	return k
}

func TestRegistryAssignsExpiresAndRefuses(t *testing.T) {
	now := time.Unix(1000, 0)
	peers := newMapPeers()
	r, err := NewRegistry(RegistryConfig{
		Peers: peers, Prefix4: netip.MustParsePrefix("10.70.0.0/24"), Prefix6: netip.MustParsePrefix("fd00:70::/64"),
		ServerKey: [32]byte{9}, Endpoint: netip.MustParseAddrPort("198.51.100.11:51820"), TTL: time.Minute, MaxPeers: 2,
		Authorize: func(c []byte) error {
			if string(c) == "revoked" {
				return errors.New("revoked")
			}
			return nil
		},
		Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := register.ParseResponse(r.Handle(request(t, 1, nil)))
	if err != nil || a.Error != "" {
		t.Fatalf("register: %v %q", err, a.Error)
	}
	if a.Addr4 != netip.MustParseAddr("10.70.0.2") || a.Endpoint != "198.51.100.11:51820" {
		t.Fatalf("response %+v", a)
	}
	if got := peers.allowed[[32]byte(make32(1))]; len(got) != 2 || got[0].Addr() != a.Addr4 || got[0].Bits() != 32 {
		t.Fatalf("peer allowed IPs %v", got)
	}
	// The same key again keeps its addresses.
	again, _ := register.ParseResponse(r.Handle(request(t, 1, nil)))
	if again.Addr4 != a.Addr4 || again.Addr6 != a.Addr6 {
		t.Fatal("re-registration moved the client")
	}
	r.Handle(request(t, 2, nil))
	full, _ := register.ParseResponse(r.Handle(request(t, 3, nil)))
	if full.Error == "" {
		t.Fatal("registration over MaxPeers accepted")
	}
	bad, _ := register.ParseResponse(r.Handle(request(t, 4, []byte("revoked"))))
	if !strings.Contains(bad.Error, "not authorized") {
		t.Fatalf("credential check: %q", bad.Error)
	}
	garbage, _ := register.ParseResponse(r.Handle([]byte("{nonsense")))
	if garbage.Error == "" {
		t.Fatal("garbage accepted")
	}

	// Key 1 handshakes and stays; key 2 never does and expires.
	now = now.Add(50 * time.Second)
	peers.handshake[[32]byte(make32(1))] = now
	now = now.Add(30 * time.Second)
	if n, err := r.Expire(); err != nil || n != 1 {
		t.Fatalf("expired %d: %v", n, err)
	}
	if r.Len() != 1 || peers.allowed[[32]byte(make32(2))] != nil {
		t.Fatal("unused registration kept")
	}
	// Its addresses are free again.
	c, _ := register.ParseResponse(r.Handle(request(t, 5, nil)))
	if c.Addr4 != netip.MustParseAddr("10.70.0.4") && c.Addr4 != netip.MustParseAddr("10.70.0.3") {
		t.Fatalf("new registration got %v", c.Addr4)
	}
}
