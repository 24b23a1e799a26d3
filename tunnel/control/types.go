package control

import (
	"fmt"
	"net/netip"
	"time"
)

// Mode is how traffic leaves the machine.
type Mode int

// Modes. The zero Mode is no choice: Connect then uses the settings' mode.
const (
	ModeUnspecified Mode = iota
	// ModeFast is two-hop WireGuard.
	ModeFast
	// ModeAnonymous is the mixnet.
	ModeAnonymous
)

// String returns the name users type: "fast" or "anonymous".
func (m Mode) String() string {
	switch m {
	case ModeUnspecified:
		return "unspecified"
	case ModeFast:
		return "fast"
	case ModeAnonymous:
		return "anonymous"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses "fast" or "anonymous".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "fast":
		return ModeFast, nil
	case "anonymous", "anon":
		return ModeAnonymous, nil
	}
	return ModeUnspecified, fmt.Errorf("unknown mode %q: want fast or anonymous", s)
}

// State is where the tunnel is in its life.
type State int

// States. The zero State is StateDisconnected, what a fresh daemon is.
const (
	StateDisconnected State = iota
	StateConnecting
	StateConnected
	StateDisconnecting
	// StateError comes with Status.Error saying what went wrong.
	StateError
	// StateReconnecting is a tunnel that was up and is being brought back
	// after it died or the network changed under it; Status.Error says
	// why. The kill switch keeps blocking meanwhile.
	StateReconnecting
)

// String returns the state in lower case, as the CLI prints it.
func (s State) String() string {
	switch s {
	case StateDisconnected:
		return "disconnected"
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateDisconnecting:
		return "disconnecting"
	case StateError:
		return "error"
	case StateReconnecting:
		return "reconnecting"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Role is what a gateway can be used as.
type Role int

// Roles.
const (
	RoleUnspecified Role = iota
	RoleEntry
	RoleExit
)

// String returns "entry" or "exit".
func (r Role) String() string {
	switch r {
	case RoleUnspecified:
		return "unspecified"
	case RoleEntry:
		return "entry"
	case RoleExit:
		return "exit"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// Health is what the daemon last measured of a gateway.
type Health int

// Health values; the zero value is HealthUnknown, never measured.
const (
	HealthUnknown Health = iota
	HealthUp
	HealthDegraded
	HealthDown
)

// String returns the health in lower case.
func (h Health) String() string {
	switch h {
	case HealthUnknown:
		return "unknown"
	case HealthUp:
		return "up"
	case HealthDegraded:
		return "degraded"
	case HealthDown:
		return "down"
	}
	return fmt.Sprintf("Health(%d)", int(h))
}

// Status is the connection state as the daemon reports it.
type Status struct {
	State State
	// Error says why State is StateError, or why the daemon is
	// reconnecting and how its last attempt went.
	Error string
	Mode  Mode
	// Entry and Exit are the gateway IDs in use while connected.
	Entry, Exit string
	// Since is when State last changed.
	Since time.Time
	// DaemonVersion is filled in by the Server, not the daemon, since
	// the server runs in the daemon's process.
	DaemonVersion string
}

// Event is a change of status.
type Event struct {
	Status Status
	Time   time.Time
}

// Gateway is an entry or exit gateway one can choose.
type Gateway struct {
	ID   string
	Role Role
	// Country is an ISO 3166 alpha-2 code in capitals, or empty.
	Country string
	// Endpoint is host:port.
	Endpoint string
	Health   Health
	// Latency is the last measured round trip; 0 if never measured.
	Latency time.Duration
}

// Settings are the daemon's persistent settings.
type Settings struct {
	// KillSwitch blocks traffic outside the tunnel while it is meant to
	// be up; Lockdown blocks it even while disconnected.
	KillSwitch, Lockdown bool
	// DNSServers are used inside the tunnel; empty uses the resolvers the
	// exit advertises in the directory, and connecting fails through an
	// exit that advertises none rather than use the local network's.
	DNSServers  []netip.Addr
	IPv6        bool
	AllowLAN    bool
	AutoConnect bool
	// Entry and Exit are gateway IDs or country codes (see
	// ValidateLocation); empty picks any.
	Entry, Exit string
	Mode        Mode
	// MixRate is λ_P and LoopRate λ_L, in packets per second.
	MixRate, LoopRate float64
	// MeanDelay is the mean time each mix holds a packet.
	MeanDelay time.Duration
}

// Stats are the daemon's traffic counters since it last connected.
type Stats struct {
	// Mode is the current tunnel's; ModeUnspecified when there is none.
	Mode              Mode
	BytesIn, BytesOut uint64
	// Latency is the current round trip through the tunnel; 0 if unknown.
	Latency time.Duration
	// LastHandshake is Fast mode's: the older of the two hops' latest
	// WireGuard handshakes, so its age tells whether both hops are fresh.
	LastHandshake time.Time
	// The rest count Anonymous mode's packets.
	RealPackets, CoverPackets           uint64
	LoopsSent, LoopsReturned, LoopsLost uint64
	LoopRTTP50, LoopRTTP90              time.Duration
	SURBsMade, SURBsUsed                uint64
	// SURBStock estimates the reply blocks the exit holds: those sent
	// less those a reply came back on. Blocks the exit dropped still
	// count, so it is an upper bound.
	SURBStock uint64
}
