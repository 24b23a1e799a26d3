package control

import (
	"math"
	"net/netip"
	"slices"
	"time"

	pb "github.com/mixvpn/mixvpn/tunnel/control/controlpb"
)

// The converters map the plain types to their protobuf messages and back.
// Enum values outside the known ones are carried through unchanged so that
// validation, not conversion, is what rejects them with a clear message.

// ModeToProto converts m.
func ModeToProto(m Mode) pb.Mode { return pb.Mode(m) }

// ModeFromProto converts m.
func ModeFromProto(m pb.Mode) Mode { return Mode(m) }

// StateToProto converts s.
func StateToProto(s State) pb.State { return pb.State(s + 1) }

// StateFromProto converts s; STATE_UNSPECIFIED, from a daemon too old to
// set it, reads as disconnected.
func StateFromProto(s pb.State) State {
	if s == pb.State_STATE_UNSPECIFIED {
		return StateDisconnected
	}
	return State(s - 1)
}

// StatusToProto converts s.
func StatusToProto(s Status) *pb.Status {
	return &pb.Status{
		State:         StateToProto(s.State),
		Error:         s.Error,
		Mode:          ModeToProto(s.Mode),
		Entry:         s.Entry,
		Exit:          s.Exit,
		SinceUnixMs:   unixMs(s.Since),
		DaemonVersion: s.DaemonVersion,
	}
}

// StatusFromProto converts s.
func StatusFromProto(s *pb.Status) Status {
	return Status{
		State:         StateFromProto(s.GetState()),
		Error:         s.GetError(),
		Mode:          ModeFromProto(s.GetMode()),
		Entry:         s.GetEntry(),
		Exit:          s.GetExit(),
		Since:         fromUnixMs(s.GetSinceUnixMs()),
		DaemonVersion: s.GetDaemonVersion(),
	}
}

// EventToProto converts e.
func EventToProto(e Event) *pb.Event {
	return &pb.Event{Status: StatusToProto(e.Status), TimeUnixMs: unixMs(e.Time)}
}

// EventFromProto converts e.
func EventFromProto(e *pb.Event) Event {
	return Event{Status: StatusFromProto(e.GetStatus()), Time: fromUnixMs(e.GetTimeUnixMs())}
}

// GatewayToProto converts g.
func GatewayToProto(g Gateway) *pb.Gateway {
	return &pb.Gateway{
		Id:        g.ID,
		Role:      pb.Role(g.Role),
		Country:   g.Country,
		Endpoint:  g.Endpoint,
		Health:    pb.Health(g.Health),
		LatencyUs: usOf(g.Latency),
	}
}

// GatewayFromProto converts g.
func GatewayFromProto(g *pb.Gateway) Gateway {
	return Gateway{
		ID:       g.GetId(),
		Role:     Role(g.GetRole()),
		Country:  g.GetCountry(),
		Endpoint: g.GetEndpoint(),
		Health:   Health(g.GetHealth()),
		Latency:  usDuration(g.GetLatencyUs()),
	}
}

// SettingsToProto converts s.
func SettingsToProto(s Settings) *pb.Settings {
	dns := make([]string, len(s.DNSServers))
	for i, a := range s.DNSServers {
		dns[i] = a.String()
	}
	return &pb.Settings{
		KillSwitch:  s.KillSwitch,
		Lockdown:    s.Lockdown,
		DnsServers:  dns,
		Ipv6:        s.IPv6,
		AllowLan:    s.AllowLAN,
		AutoConnect: s.AutoConnect,
		Entry:       s.Entry,
		Exit:        s.Exit,
		Mode:        ModeToProto(s.Mode),
		MixRate:     s.MixRate,
		LoopRate:    s.LoopRate,
		MeanDelayMs: uint32(min(max(s.MeanDelay.Milliseconds(), 0), 1<<32-1)),
	}
}

// SettingsFromProto converts s. It fails only on DNS servers that are not
// IP addresses; Settings.Validate judges the rest.
func SettingsFromProto(s *pb.Settings) (Settings, error) {
	out := Settings{
		KillSwitch:  s.GetKillSwitch(),
		Lockdown:    s.GetLockdown(),
		IPv6:        s.GetIpv6(),
		AllowLAN:    s.GetAllowLan(),
		AutoConnect: s.GetAutoConnect(),
		Entry:       s.GetEntry(),
		Exit:        s.GetExit(),
		Mode:        ModeFromProto(s.GetMode()),
		MixRate:     s.GetMixRate(),
		LoopRate:    s.GetLoopRate(),
		MeanDelay:   time.Duration(s.GetMeanDelayMs()) * time.Millisecond,
	}
	if n := len(s.GetDnsServers()); n > MaxDNSServers {
		// Checked before parsing so a huge request costs nothing.
		return Settings{}, invalidf("dns_servers has %d addresses: at most %d", n, MaxDNSServers)
	}
	for _, d := range s.GetDnsServers() {
		a, err := netip.ParseAddr(d)
		if err != nil {
			return Settings{}, invalidf("dns_servers: %q is not an IP address", truncate(d, 64))
		}
		out.DNSServers = append(out.DNSServers, a)
	}
	return out, nil
}

// StatsSample is one sample of WatchStats: the daemon's counters with the
// rates the Server worked out from the previous sample.
type StatsSample struct {
	Stats
	Time time.Time
	// RateIn and RateOut are bytes per second since the previous sample.
	RateIn, RateOut float64
}

// StatsToProto converts s.
func StatsToProto(s StatsSample) *pb.Stats {
	return &pb.Stats{
		TimeUnixMs:          unixMs(s.Time),
		Mode:                ModeToProto(s.Mode),
		BytesIn:             s.BytesIn,
		BytesOut:            s.BytesOut,
		RateIn:              s.RateIn,
		RateOut:             s.RateOut,
		LatencyUs:           usOf(s.Latency),
		LastHandshakeUnixMs: unixMs(s.LastHandshake),
		RealPackets:         s.RealPackets,
		CoverPackets:        s.CoverPackets,
		LoopsSent:           s.LoopsSent,
		LoopsReturned:       s.LoopsReturned,
		LoopsLost:           s.LoopsLost,
		LoopRttP50Us:        usOf(s.LoopRTTP50),
		LoopRttP90Us:        usOf(s.LoopRTTP90),
		SurbsMade:           s.SURBsMade,
		SurbsUsed:           s.SURBsUsed,
		SurbStock:           s.SURBStock,
	}
}

// StatsFromProto converts s.
func StatsFromProto(s *pb.Stats) StatsSample {
	return StatsSample{
		Stats: Stats{
			Mode:          ModeFromProto(s.GetMode()),
			BytesIn:       s.GetBytesIn(),
			BytesOut:      s.GetBytesOut(),
			Latency:       usDuration(s.GetLatencyUs()),
			LastHandshake: fromUnixMs(s.GetLastHandshakeUnixMs()),
			RealPackets:   s.GetRealPackets(),
			CoverPackets:  s.GetCoverPackets(),
			LoopsSent:     s.GetLoopsSent(),
			LoopsReturned: s.GetLoopsReturned(),
			LoopsLost:     s.GetLoopsLost(),
			LoopRTTP50:    usDuration(s.GetLoopRttP50Us()),
			LoopRTTP90:    usDuration(s.GetLoopRttP90Us()),
			SURBsMade:     s.GetSurbsMade(),
			SURBsUsed:     s.GetSurbsUsed(),
			SURBStock:     s.GetSurbStock(),
		},
		Time:    fromUnixMs(s.GetTimeUnixMs()),
		RateIn:  s.GetRateIn(),
		RateOut: s.GetRateOut(),
	}
}

// SettingsFields returns the names of the settings, as update_mask and the
// CLI's settings set take them, in proto order.
func SettingsFields() []string {
	return []string{
		"kill_switch", "lockdown", "dns_servers", "ipv6", "allow_lan", "auto_connect",
		"entry", "exit", "mode", "mix_rate", "loop_rate", "mean_delay_ms",
	}
}

// applyMask copies the fields named in mask from upd to cur; an empty mask
// replaces everything, as AIP-134 has it.
func applyMask(cur, upd Settings, mask []string) (Settings, error) {
	if len(mask) == 0 {
		return upd, nil
	}
	for _, f := range mask {
		switch f {
		case "kill_switch":
			cur.KillSwitch = upd.KillSwitch
		case "lockdown":
			cur.Lockdown = upd.Lockdown
		case "dns_servers":
			cur.DNSServers = slices.Clone(upd.DNSServers)
		case "ipv6":
			cur.IPv6 = upd.IPv6
		case "allow_lan":
			cur.AllowLAN = upd.AllowLAN
		case "auto_connect":
			cur.AutoConnect = upd.AutoConnect
		case "entry":
			cur.Entry = upd.Entry
		case "exit":
			cur.Exit = upd.Exit
		case "mode":
			cur.Mode = upd.Mode
		case "mix_rate":
			cur.MixRate = upd.MixRate
		case "loop_rate":
			cur.LoopRate = upd.LoopRate
		case "mean_delay_ms":
			cur.MeanDelay = upd.MeanDelay
		default:
			return Settings{}, invalidf("update_mask: unknown setting %q", truncate(f, 64))
		}
	}
	return cur, nil
}

// truncate keeps error messages short whatever a client sent.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func unixMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromUnixMs(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// usOf is d in whole microseconds; a negative d is 0.
func usOf(d time.Duration) uint64 { return uint64(max(d, 0) / time.Microsecond) }

func usDuration(us uint64) time.Duration {
	if us > uint64(time.Duration(math.MaxInt64)/time.Microsecond) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(us) * time.Microsecond
}
