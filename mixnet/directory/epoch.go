package directory

import (
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Epochs divides time into key epochs of Length from Genesis.
type Epochs struct {
	Genesis time.Time
	Length  time.Duration
}

// At returns the epoch that contains t.
func (e Epochs) At(t time.Time) uint64 {
	if t.Before(e.Genesis) {
		return 0
	}
	return uint64(t.Sub(e.Genesis) / e.Length)
}

// Start returns when epoch begins.
func (e Epochs) Start(epoch uint64) time.Time {
	return e.Genesis.Add(time.Duration(epoch) * e.Length)
}

// KeyRing is a node's Sphinx private keys, one per epoch, in files of mode
// 0600 under Dir. It holds the current and next epoch's keys, and the
// previous one for Grace after the turn so packets in flight still open.
type KeyRing struct {
	Dir    string
	Epochs Epochs
	// Grace keeps the previous epoch's key after the turn; default a
	// quarter of the epoch length.
	Grace time.Duration
	Now   func() time.Time

	mu   sync.Mutex
	keys map[uint64]*ecdh.PrivateKey
}

// EpochPrivateKey is a private Sphinx key with its epoch.
type EpochPrivateKey struct {
	Epoch uint64
	Key   *ecdh.PrivateKey
}

func (r *KeyRing) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *KeyRing) grace() time.Duration {
	if r.Grace > 0 {
		return r.Grace
	}
	return r.Epochs.Length / 4
}

// Active returns the keys to try on a packet, current epoch first, and
// makes or loads them as needed. It also deletes keys past their grace.
func (r *KeyRing) Active() ([]EpochPrivateKey, error) {
	now := r.now()
	cur := r.Epochs.At(now)
	epochs := []uint64{cur, cur + 1}
	if cur > 0 && now.Sub(r.Epochs.Start(cur)) < r.grace() {
		epochs = append(epochs, cur-1)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keys == nil {
		r.keys = make(map[uint64]*ecdh.PrivateKey)
	}
	out := make([]EpochPrivateKey, 0, len(epochs))
	for _, e := range epochs {
		k, err := r.load(e)
		if err != nil {
			return nil, err
		}
		out = append(out, EpochPrivateKey{Epoch: e, Key: k})
	}
	r.prune(epochs)
	return out, nil
}

// Public returns the public keys to publish: current and next epoch.
func (r *KeyRing) Public() ([]EpochKey, error) {
	active, err := r.Active()
	if err != nil {
		return nil, err
	}
	var out []EpochKey
	for _, k := range active[:2] {
		out = append(out, EpochKey{Epoch: k.Epoch, Key: k.Key.PublicKey().Bytes()})
	}
	return out, nil
}

func (r *KeyRing) path(epoch uint64) string {
	return filepath.Join(r.Dir, fmt.Sprintf("sphinx-%d.key", epoch))
}

// load returns epoch's key from memory, disk, or a new one. Called with mu.
func (r *KeyRing) load(epoch uint64) (*ecdh.PrivateKey, error) {
	if k := r.keys[epoch]; k != nil {
		return k, nil
	}
	raw, err := os.ReadFile(r.path(epoch))
	var k *ecdh.PrivateKey
	switch {
	case err == nil:
		k, err = ecdh.X25519().NewPrivateKey(raw)
		if err != nil {
			return nil, fmt.Errorf("directory: key file %s: %w", r.path(epoch), err)
		}
	case errors.Is(err, fs.ErrNotExist):
		if k, err = ecdh.X25519().GenerateKey(rand.Reader); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(r.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("directory: key directory: %w", err)
		}
		if err := os.WriteFile(r.path(epoch), k.Bytes(), 0o600); err != nil {
			return nil, fmt.Errorf("directory: write key: %w", err)
		}
	default:
		return nil, fmt.Errorf("directory: read key: %w", err)
	}
	r.keys[epoch] = k
	return k, nil
}

// prune forgets and deletes keys of epochs not in keep. Called with mu.
func (r *KeyRing) prune(keep []uint64) {
	want := make(map[uint64]bool, len(keep))
	for _, e := range keep {
		want[e] = true
	}
	for e := range r.keys {
		if !want[e] {
			delete(r.keys, e)
		}
	}
	entries, _ := os.ReadDir(r.Dir)
	for _, ent := range entries {
		name := ent.Name()
		if !strings.HasPrefix(name, "sphinx-") || !strings.HasSuffix(name, ".key") {
			continue
		}
		e, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "sphinx-"), ".key"), 10, 64)
		if err == nil && !want[e] && e < keep[0] {
			os.Remove(filepath.Join(r.Dir, name))
		}
	}
}
