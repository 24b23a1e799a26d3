package control

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"
)

// Errors a Daemon returns, wrapped, so that the Server can give clients the
// right gRPC code; any other error is reported as INTERNAL.
var (
	// ErrInvalid is a request that can never succeed as written
	// (INVALID_ARGUMENT).
	ErrInvalid = errors.New("invalid argument")
	// ErrNotFound is a gateway or country with no gateway (NOT_FOUND).
	ErrNotFound = errors.New("not found")
	// ErrState is a request the daemon cannot carry out in its current
	// state (FAILED_PRECONDITION).
	ErrState = errors.New("not possible now")
)

// invalidError carries a message meant for the user as it is, without the
// "invalid argument:" prefix wrapping ErrInvalid would add.
type invalidError struct{ msg string }

func (e *invalidError) Error() string        { return e.msg }
func (e *invalidError) Is(target error) bool { return target == ErrInvalid }

func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// Bounds of Settings. They are wide enough for any sensible tuning and
// narrow enough that a typo cannot make the client flood its uplink or hold
// packets for minutes.
const (
	MinMixRate   = 1.0
	MaxMixRate   = 5000.0
	MinLoopRate  = 0.1
	MaxLoopRate  = 1000.0
	MinMeanDelay = time.Millisecond
	MaxMeanDelay = 1000 * time.Millisecond
	// MaxDNSServers is as many as resolv.conf honours, and then some.
	MaxDNSServers = 8
	// maxIDLen matches the directory's limit on node IDs.
	maxIDLen = 64
)

// ValidateLocation checks an entry or exit choice: empty (any), a gateway
// ID of 1 to 64 characters from [a-z0-9-], or an ISO 3166 country code in
// capitals such as CH. which names the field in the error.
func ValidateLocation(which, s string) error {
	switch {
	case s == "":
		return nil
	case isCountry(s):
		return nil
	case isID(s):
		return nil
	case len(s) == 2 && isLetter(s[0]) && isLetter(s[1]):
		return invalidf("%s %q: write country codes in capitals, e.g. %q", which, s, upper2(s))
	case len(s) > maxIDLen:
		return invalidf("%s is %d characters long: a gateway ID has at most %d", which, len(s), maxIDLen)
	}
	return invalidf("%s %q is neither a gateway ID (lower-case letters, digits and '-') nor a country code (two capitals, e.g. CH)", which, s)
}

func isCountry(s string) bool {
	return len(s) == 2 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z'
}

func isID(s string) bool {
	if len(s) == 0 || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func upper2(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'a' && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// validateMode accepts only a mode the daemon can run.
func validateMode(which string, m Mode) error {
	switch m {
	case ModeFast, ModeAnonymous:
		return nil
	case ModeUnspecified:
		return invalidf("%s is missing: want fast or anonymous", which)
	}
	return invalidf("%s %d is unknown: want fast or anonymous", which, int(m))
}

// validateEntryExit checks both choices and that they differ, since one
// gateway as both entry and exit would see who and where at once.
func validateEntryExit(entry, exit string) error {
	if err := ValidateLocation("entry", entry); err != nil {
		return err
	}
	if err := ValidateLocation("exit", exit); err != nil {
		return err
	}
	if entry != "" && entry == exit && isID(entry) {
		return invalidf("entry and exit are both %q: one gateway must not see both ends", entry)
	}
	return nil
}

// Validate reports the first thing wrong with s, in terms of the settings
// keys users type (mix_rate, dns_servers, ...).
func (s Settings) Validate() error {
	if err := validateMode("mode", s.Mode); err != nil {
		return err
	}
	if err := validateEntryExit(s.Entry, s.Exit); err != nil {
		return err
	}
	if len(s.DNSServers) > MaxDNSServers {
		return invalidf("dns_servers has %d addresses: at most %d", len(s.DNSServers), MaxDNSServers)
	}
	for _, a := range s.DNSServers {
		if err := validateDNS(a); err != nil {
			return err
		}
		if a.Is6() && !a.Is4In6() && !s.IPv6 {
			return invalidf("dns_servers: %s is IPv6 but ipv6 is off", a)
		}
	}
	if !inRange(s.MixRate, MinMixRate, MaxMixRate) {
		return invalidf("mix_rate %v is out of range: want %v to %v packets/s", s.MixRate, MinMixRate, MaxMixRate)
	}
	if !inRange(s.LoopRate, MinLoopRate, MaxLoopRate) {
		return invalidf("loop_rate %v is out of range: want %v to %v packets/s", s.LoopRate, MinLoopRate, MaxLoopRate)
	}
	if s.LoopRate > s.MixRate {
		return invalidf("loop_rate %v is above mix_rate %v: loops would crowd out real traffic", s.LoopRate, s.MixRate)
	}
	if s.MeanDelay < MinMeanDelay || s.MeanDelay > MaxMeanDelay {
		return invalidf("mean_delay_ms %d is out of range: want %d to %d", s.MeanDelay.Milliseconds(), MinMeanDelay.Milliseconds(), MaxMeanDelay.Milliseconds())
	}
	return nil
}

func inRange(v, lo, hi float64) bool {
	return !math.IsNaN(v) && v >= lo && v <= hi
}

func validateDNS(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return invalidf("dns_servers: empty address")
	case a.Zone() != "":
		return invalidf("dns_servers: %s has a zone: a resolver inside the tunnel cannot be link-local", a)
	case a.IsUnspecified(), a.IsMulticast(), a.IsLinkLocalUnicast():
		return invalidf("dns_servers: %s cannot be a resolver", a)
	}
	return nil
}
