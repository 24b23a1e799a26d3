package sphinx

import (
	"crypto/hkdf"
	"crypto/sha256"
	"fmt"
)

// hopKeys are derived from one hop's shared secret with HKDF-SHA256 (empty
// salt) and split in a fixed order.
type hopKeys struct {
	stream    [16]byte // AES-128-CTR key for β
	mac       [16]byte // HMAC-SHA256 key for γ
	payload   [LionessKeySize]byte
	blinding  [32]byte
	replayTag [ReplayTagSize]byte
}

const (
	hopKeysInfo  = "mixvpn sphinx v1 hop keys"
	surbKeysInfo = "mixvpn sphinx v1 surb payload key"
	hopKeysSize  = 16 + 16 + LionessKeySize + 32 + ReplayTagSize
)

func deriveHopKeys(k *hopKeys, secret []byte) error {
	out, err := hkdf.Key(sha256.New, secret, nil, hopKeysInfo, hopKeysSize)
	if err != nil {
		return fmt.Errorf("sphinx: derive hop keys: %w", err)
	}
	n := copy(k.stream[:], out)
	n += copy(k.mac[:], out[n:])
	n += copy(k.payload[:], out[n:])
	n += copy(k.blinding[:], out[n:])
	copy(k.replayTag[:], out[n:])
	return nil
}

// expandSURBKey turns the seed carried in a SURB into the Lioness key the
// replier encrypts with, so that the first reply hop never sees plaintext.
func expandSURBKey(seed []byte) (*[LionessKeySize]byte, error) {
	out, err := hkdf.Key(sha256.New, seed, nil, surbKeysInfo, LionessKeySize)
	if err != nil {
		return nil, fmt.Errorf("sphinx: expand SURB key: %w", err)
	}
	return (*[LionessKeySize]byte)(out), nil
}
