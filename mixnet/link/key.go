package link

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// KeyPair is a static X25519 key for the Noise handshake.
type KeyPair struct {
	Private [32]byte
	Public  [32]byte
}

// GenerateKey makes a fresh key pair.
func GenerateKey() (KeyPair, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return KeyPair{}, fmt.Errorf("link: generate key: %w", err)
	}
	return keyPairFrom(k), nil
}

func keyPairFrom(k *ecdh.PrivateKey) KeyPair {
	var kp KeyPair
	copy(kp.Private[:], k.Bytes())
	copy(kp.Public[:], k.PublicKey().Bytes())
	return kp
}

// LoadOrCreateKey reads a key from path (base64 of the private key), or
// makes one and writes it with mode 0600 if the file does not exist. A key
// file that others can read is refused.
func LoadOrCreateKey(path string) (KeyPair, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		kp, err := GenerateKey()
		if err != nil {
			return kp, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return kp, fmt.Errorf("link: key directory: %w", err)
		}
		enc := base64.StdEncoding.EncodeToString(kp.Private[:]) + "\n"
		if err := os.WriteFile(path, []byte(enc), 0o600); err != nil {
			return kp, fmt.Errorf("link: write key: %w", err)
		}
		return kp, nil
	}
	if err != nil {
		return KeyPair{}, fmt.Errorf("link: read key: %w", err)
	}
	if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
		return KeyPair{}, fmt.Errorf("link: key file %s has mode %v; want 0600", path, st.Mode().Perm())
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil {
		return KeyPair{}, fmt.Errorf("link: key file %s: %w", path, err)
	}
	k, err := ecdh.X25519().NewPrivateKey(raw)
	if err != nil {
		return KeyPair{}, fmt.Errorf("link: key file %s: %w", path, err)
	}
	return keyPairFrom(k), nil
}
