package sphinx

import "errors"

// Errors returned when a packet, SURB or reply cannot be processed. They are
// wrapped with context; test with errors.Is.
var (
	ErrPacketSize        = errors.New("sphinx: wrong packet size")
	ErrSURBSize          = errors.New("sphinx: wrong SURB size")
	ErrPathLength        = errors.New("sphinx: path must have 1 to 5 hops")
	ErrPayloadTooLarge   = errors.New("sphinx: payload too large")
	ErrInvalidKey        = errors.New("sphinx: invalid group element")
	ErrBadMAC            = errors.New("sphinx: header MAC mismatch")
	ErrUnknownVersion    = errors.New("sphinx: unknown routing version")
	ErrUnknownFlag       = errors.New("sphinx: unknown hop flag")
	ErrPayloadIntegrity  = errors.New("sphinx: payload integrity check failed")
	ErrPayloadPadding    = errors.New("sphinx: payload padding malformed")
	ErrReplyKeysMismatch = errors.New("sphinx: reply does not match SURB keys")
)
