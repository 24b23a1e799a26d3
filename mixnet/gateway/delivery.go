package gateway

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// DeliverySize is what an entry hands a client per delivery: the message
// id and the still-encrypted payload block. It fits a link frame body.
const DeliverySize = sphinx.IDSize + sphinx.PayloadBlockSize

// ErrDelivery is returned for a malformed delivery.
var ErrDelivery = errors.New("gateway: malformed delivery")

// ClientAddress is the mixnet address of the client whose link key is key:
// the destination its SURBs and loops name, which the entry maps to its
// link.
func ClientAddress(key [32]byte) sphinx.Address {
	return sphinx.Address(sha256.Sum256(append([]byte("mixvpn client address v1"), key[:]...)))
}

// EncodeDelivery writes id ‖ block ‖ zero padding into dst (a whole frame
// body, at least DeliverySize bytes).
func EncodeDelivery(dst []byte, id sphinx.MessageID, block []byte) error {
	if len(block) != sphinx.PayloadBlockSize || len(dst) < DeliverySize {
		return fmt.Errorf("%w: block %d bytes into %d", ErrDelivery, len(block), len(dst))
	}
	n := copy(dst, id[:])
	n += copy(dst[n:], block)
	clear(dst[n:])
	return nil
}

// ParseDelivery splits a frame body into id and payload block (aliasing
// body).
func ParseDelivery(body []byte) (sphinx.MessageID, []byte, error) {
	var id sphinx.MessageID
	if len(body) < DeliverySize {
		return id, nil, fmt.Errorf("%w: %d bytes", ErrDelivery, len(body))
	}
	copy(id[:], body)
	return id, body[sphinx.IDSize:DeliverySize], nil
}
