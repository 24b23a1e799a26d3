// Package link is the encrypted, authenticated link that carries Sphinx
// packets between a client and its entry gateway and between nodes: a
// Noise IK handshake over TCP (the initiator knows the responder's static
// key from the directory), then frames that are all exactly FrameSize
// bytes on the wire, whether they carry a packet, a keepalive or a control
// message, so an observer of the link learns only how many frames flow.
package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// FrameType says what a frame carries.
type FrameType byte

// Frame types.
const (
	// FramePacket carries one Sphinx packet (or, from an entry gateway to
	// its client, one delivery of the same size).
	FramePacket FrameType = 1
	// FrameDummy is a keepalive or cover frame; its body is discarded.
	FrameDummy FrameType = 2
	// FrameControl carries a short control message: 2-byte length, bytes.
	FrameControl FrameType = 3
	// FramePace asks the other side to send at a steady Poisson rate,
	// a dummy whenever it has nothing queued: 4-byte big-endian
	// milli-frames per second. A client sends it to its entry so that
	// what it receives shows the rate it chose, not what it downloads.
	FramePace FrameType = 4
)

// Sizes of a frame.
const (
	// BodySize is the size of every frame's body.
	BodySize = sphinx.PacketSize
	// PlainSize is type ‖ body.
	PlainSize = 1 + BodySize
	// TagSize is the AEAD tag Noise adds.
	TagSize = 16
	// FrameSize is the size of every frame on the wire after the handshake.
	FrameSize = PlainSize + TagSize
	// MaxControl is the longest control message.
	MaxControl = BodySize - 2
)

// Errors for malformed frames.
var (
	ErrFrameSize   = errors.New("link: frame has the wrong size")
	ErrFrameType   = errors.New("link: unknown frame type")
	ErrControlSize = errors.New("link: control message length out of range")
	ErrPace        = errors.New("link: pace rate out of range")
)

// PaceSize is the body of a FramePace frame.
const PaceSize = 4

// EncodeFrame writes a frame's plaintext into dst (PlainSize bytes). For
// FramePacket body must be BodySize bytes; for FrameControl at most
// MaxControl; FrameDummy ignores body.
func EncodeFrame(dst []byte, t FrameType, body []byte) error {
	if len(dst) != PlainSize {
		return fmt.Errorf("%w: buffer of %d bytes", ErrFrameSize, len(dst))
	}
	dst[0] = byte(t)
	switch t {
	case FramePacket:
		if len(body) != BodySize {
			return fmt.Errorf("%w: packet of %d bytes", ErrFrameSize, len(body))
		}
		copy(dst[1:], body)
	case FrameDummy:
		clear(dst[1:])
	case FramePace:
		if len(body) != PaceSize {
			return fmt.Errorf("%w: pace of %d bytes", ErrFrameSize, len(body))
		}
		n := copy(dst[1:], body)
		clear(dst[1+n:])
	case FrameControl:
		if len(body) > MaxControl {
			return fmt.Errorf("%w: %d bytes", ErrControlSize, len(body))
		}
		binary.BigEndian.PutUint16(dst[1:], uint16(len(body)))
		n := copy(dst[3:], body)
		clear(dst[3+n:])
	default:
		return fmt.Errorf("%w: %d", ErrFrameType, t)
	}
	return nil
}

// DecodeFrame parses a frame's plaintext. The body aliases plain: a packet
// is BodySize bytes, a control message its own length, a dummy nil.
func DecodeFrame(plain []byte) (FrameType, []byte, error) {
	if len(plain) != PlainSize {
		return 0, nil, fmt.Errorf("%w: %d bytes", ErrFrameSize, len(plain))
	}
	t := FrameType(plain[0])
	switch t {
	case FramePacket:
		return t, plain[1:], nil
	case FrameDummy:
		return t, nil, nil
	case FramePace:
		return t, plain[1 : 1+PaceSize], nil
	case FrameControl:
		n := int(binary.BigEndian.Uint16(plain[1:]))
		if n > MaxControl {
			return 0, nil, fmt.Errorf("%w: %d bytes", ErrControlSize, n)
		}
		return t, plain[3 : 3+n], nil
	}
	return 0, nil, fmt.Errorf("%w: %d", ErrFrameType, t)
}

// EncodePace is the body of a FramePace frame asking for rate frames per
// second.
func EncodePace(rate float64) ([]byte, error) {
	if !(rate > 0 && rate*1000 < math.MaxUint32) {
		return nil, fmt.Errorf("%w: %v frames/s", ErrPace, rate)
	}
	return binary.BigEndian.AppendUint32(nil, uint32(rate*1000)), nil
}

// DecodePace reads a FramePace body as frames per second.
func DecodePace(body []byte) (float64, error) {
	if len(body) != PaceSize {
		return 0, fmt.Errorf("%w: pace of %d bytes", ErrFrameSize, len(body))
	}
	return float64(binary.BigEndian.Uint32(body)) / 1000, nil
}
