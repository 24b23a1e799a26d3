package sphinx

import "fmt"

// A payload block is κ zero bytes ‖ message ‖ 0x01 ‖ zero padding. The zeros
// are the integrity check after Lioness: a modified block decrypts to random
// bytes, and 16 random bytes are zero with probability 2⁻¹²⁸.

func encodePayload(dst []byte, msg []byte) {
	clear(dst)
	n := PayloadZeroPrefix + copy(dst[PayloadZeroPrefix:], msg)
	dst[n] = 0x01
}

func decodePayload(block []byte) ([]byte, error) {
	if len(block) != PayloadBlockSize {
		return nil, fmt.Errorf("%w: payload block of %d bytes", ErrPacketSize, len(block))
	}
	var acc byte
	for _, b := range block[:PayloadZeroPrefix] {
		acc |= b
	}
	if acc != 0 {
		return nil, ErrPayloadIntegrity
	}
	for i := len(block) - 1; i >= PayloadZeroPrefix; i-- {
		switch block[i] {
		case 0:
			continue
		case 0x01:
			return block[PayloadZeroPrefix:i], nil
		}
		break
	}
	return nil, ErrPayloadPadding
}
