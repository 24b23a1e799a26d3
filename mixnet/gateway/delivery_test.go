package gateway

import (
	"bytes"
	"errors"
	"testing"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

func TestDeliveryRoundTrip(t *testing.T) {
	block := bytes.Repeat([]byte{9}, sphinx.PayloadBlockSize)
	body := bytes.Repeat([]byte{0xff}, sphinx.PacketSize)
	if err := EncodeDelivery(body, sphinx.MessageID{7}, block); err != nil {
		t.Fatal(err)
	}
	id, got, err := ParseDelivery(body)
	if err != nil || id != (sphinx.MessageID{7}) || !bytes.Equal(got, block) {
		t.Fatalf("round trip: %v", err)
	}
	if !bytes.Equal(body[DeliverySize:], make([]byte, sphinx.PacketSize-DeliverySize)) {
		t.Fatal("padding not zeroed")
	}
	if _, _, err := ParseDelivery(body[:10]); !errors.Is(err, ErrDelivery) {
		t.Fatalf("short: %v", err)
	}
	if ClientAddress([32]byte{1}) == ClientAddress([32]byte{2}) {
		t.Fatal("client addresses collide")
	}
}

// FuzzParseDelivery: a client parses whatever its entry sends.
func FuzzParseDelivery(f *testing.F) {
	body := make([]byte, sphinx.PacketSize)
	EncodeDelivery(body, sphinx.MessageID{1}, make([]byte, sphinx.PayloadBlockSize))
	f.Add(body)
	f.Fuzz(func(t *testing.T, b []byte) {
		_, block, err := ParseDelivery(b)
		if err == nil && len(block) != sphinx.PayloadBlockSize {
			t.Fatalf("block of %d bytes", len(block))
		}
	})
}
