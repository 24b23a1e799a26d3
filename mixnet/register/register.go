// Package register is how a Fast-mode client obtains a place on a
// gateway's WireGuard server: it sends its WireGuard public key (and, for
// paid access later, a credential) in a control message over an
// authenticated link, and the gateway answers with the client's inner IPv4
// and IPv6 addresses and the server's key and endpoint. A registration that
// is never used, or falls idle, expires.
//
// The client registers with its entry over a direct link (the entry knows
// who it is anyway) and with its exit only through the entry's tunnel, so
// the exit sees the entry's address, never the client's.
package register

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
)

// Version is the registration protocol version.
const Version = 1

// MaxMessage bounds a request or response (it travels in one control
// frame).
const MaxMessage = 2048

// Errors for malformed messages.
var (
	ErrMalformed = errors.New("register: malformed message")
	ErrVersion   = errors.New("register: unknown version")
)

// Request asks a gateway for a WireGuard peer slot.
type Request struct {
	Version int `json:"version"`
	// PublicKey is the client's WireGuard public key for this gateway
	// (clients use a different key per hop, so gateways cannot link hops).
	PublicKey []byte `json:"public_key"`
	// Credential is reserved for paid access; gateways may require it.
	Credential []byte `json:"credential,omitempty"`
}

// Response answers a Request.
type Response struct {
	Version int `json:"version"`
	// Error, if not empty, says why the request was refused.
	Error     string     `json:"error,omitempty"`
	Addr4     netip.Addr `json:"addr4,omitzero"`
	Addr6     netip.Addr `json:"addr6,omitzero"`
	ServerKey []byte     `json:"server_key,omitempty"`
	Endpoint  string     `json:"endpoint,omitempty"`
	// ExpiresIn is how long, in seconds, an unused registration is kept.
	ExpiresIn int `json:"expires_in,omitempty"`
}

func decode(b []byte, v any) error {
	if len(b) > MaxMessage {
		return fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	return nil
}

// ParseRequest parses and checks a request from outside.
func ParseRequest(b []byte) (*Request, error) {
	var r Request
	if err := decode(b, &r); err != nil {
		return nil, err
	}
	if r.Version != Version {
		return nil, fmt.Errorf("%w: %d", ErrVersion, r.Version)
	}
	if len(r.PublicKey) != 32 {
		return nil, fmt.Errorf("%w: public key of %d bytes", ErrMalformed, len(r.PublicKey))
	}
	if len(r.Credential) > 1024 {
		return nil, fmt.Errorf("%w: credential of %d bytes", ErrMalformed, len(r.Credential))
	}
	return &r, nil
}

// ParseResponse parses and checks a gateway's answer.
func ParseResponse(b []byte) (*Response, error) {
	var r Response
	if err := decode(b, &r); err != nil {
		return nil, err
	}
	if r.Version != Version {
		return nil, fmt.Errorf("%w: %d", ErrVersion, r.Version)
	}
	if r.Error != "" {
		return &r, nil
	}
	if !r.Addr4.Is4() || !r.Addr6.Is6() || len(r.ServerKey) != 32 {
		return nil, fmt.Errorf("%w: response lacks addresses or server key", ErrMalformed)
	}
	if _, err := netip.ParseAddrPort(r.Endpoint); err != nil {
		return nil, fmt.Errorf("%w: endpoint: %v", ErrMalformed, err)
	}
	return &r, nil
}

// Marshal encodes a request or response.
func Marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("register: message of %d bytes exceeds %d", len(b), MaxMessage)
	}
	return b, nil
}
