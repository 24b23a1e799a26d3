package sphinx

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

// FuzzUnwrap feeds arbitrary bytes to a node. Whatever arrives, Unwrap
// returns an error or a well-formed result, and never panics. The seed
// corpus in testdata/fuzz/FuzzUnwrap holds a valid 5-hop packet for this
// node, so mutations explore the real parsing paths.
func FuzzUnwrap(f *testing.F) {
	v, nodes, _ := makeVectors(f)
	valid, _ := hex.DecodeString(v.Forward5)
	f.Add(valid)
	f.Add(make([]byte, PacketSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		var out Processed
		err := Unwrap(nodes[0].priv, data, &out)
		if err != nil {
			if out.Packet != nil || out.Payload != nil {
				t.Fatal("a failed unwrap returned data")
			}
			return
		}
		switch out.Flag {
		case FlagForward:
			if len(out.Packet) != PacketSize {
				t.Fatalf("forward packet of %d bytes", len(out.Packet))
			}
		case FlagFinal:
			if len(out.Payload) > PayloadSize {
				t.Fatalf("final payload of %d bytes", len(out.Payload))
			}
		case FlagDeliver:
			if len(out.Payload) != PayloadBlockSize {
				t.Fatalf("delivered block of %d bytes", len(out.Payload))
			}
		default:
			t.Fatalf("accepted unknown flag %d", out.Flag)
		}
	})
}

// FuzzOpenReply feeds arbitrary reply blocks to a client's kept SURB keys.
func FuzzOpenReply(f *testing.F) {
	v, _, keys := makeVectors(f)
	valid, _ := hex.DecodeString(v.Delivered)
	f.Add(valid)
	f.Add(make([]byte, PayloadBlockSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := bytes.Clone(data)
		msg, err := keys.OpenReply(in)
		if err != nil {
			if !errors.Is(err, ErrPacketSize) && !errors.Is(err, ErrReplyKeysMismatch) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		if len(msg) > PayloadSize {
			t.Fatalf("reply of %d bytes", len(msg))
		}
	})
}
