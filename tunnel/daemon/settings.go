package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"time"

	"github.com/mixvpn/mixvpn/tunnel/control"
)

// fileSettings is the settings file's form: every field optional, so a
// system-wide file can preset only what IT cares about.
type fileSettings struct {
	KillSwitch  *bool    `json:"kill_switch,omitempty"`
	Lockdown    *bool    `json:"lockdown,omitempty"`
	DNSServers  []string `json:"dns_servers,omitempty"`
	IPv6        *bool    `json:"ipv6,omitempty"`
	AllowLAN    *bool    `json:"allow_lan,omitempty"`
	AutoConnect *bool    `json:"auto_connect,omitempty"`
	Entry       *string  `json:"entry,omitempty"`
	Exit        *string  `json:"exit,omitempty"`
	Mode        *string  `json:"mode,omitempty"`
	MixRate     *float64 `json:"mix_rate,omitempty"`
	LoopRate    *float64 `json:"loop_rate,omitempty"`
	MeanDelayMS *float64 `json:"mean_delay_ms,omitempty"`
}

// DefaultSettings are what a fresh install runs with: the kill switch on,
// since a VPN that leaks while reconnecting protects nobody.
func DefaultSettings() control.Settings {
	return control.Settings{KillSwitch: true, IPv6: true, Mode: control.ModeFast, MixRate: 200, LoopRate: 10, MeanDelay: 15 * time.Millisecond}
}

// loadSettings applies the files in order (system-wide first, then the
// daemon's own) over the defaults. A missing file is fine; a broken one is
// an error that names it.
func loadSettings(paths ...string) (control.Settings, error) {
	s := DefaultSettings()
	for _, p := range paths {
		if p == "" {
			continue
		}
		raw, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return s, fmt.Errorf("settings %s: %w", p, err)
		}
		var f fileSettings
		if err := json.Unmarshal(raw, &f); err != nil {
			return s, fmt.Errorf("settings %s: %w", p, err)
		}
		if err := f.apply(&s); err != nil {
			return s, fmt.Errorf("settings %s: %w", p, err)
		}
	}
	if err := s.Validate(); err != nil {
		return s, fmt.Errorf("settings: %w", err)
	}
	return s, nil
}

func (f *fileSettings) apply(s *control.Settings) error {
	set := func(dst *bool, v *bool) {
		if v != nil {
			*dst = *v
		}
	}
	set(&s.KillSwitch, f.KillSwitch)
	set(&s.Lockdown, f.Lockdown)
	set(&s.IPv6, f.IPv6)
	set(&s.AllowLAN, f.AllowLAN)
	set(&s.AutoConnect, f.AutoConnect)
	if f.DNSServers != nil {
		s.DNSServers = nil
		for _, a := range f.DNSServers {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				return fmt.Errorf("dns_servers: %w", err)
			}
			s.DNSServers = append(s.DNSServers, ip)
		}
	}
	if f.Entry != nil {
		s.Entry = *f.Entry
	}
	if f.Exit != nil {
		s.Exit = *f.Exit
	}
	if f.Mode != nil {
		m, err := control.ParseMode(*f.Mode)
		if err != nil {
			return err
		}
		s.Mode = m
	}
	if f.MixRate != nil {
		s.MixRate = *f.MixRate
	}
	if f.LoopRate != nil {
		s.LoopRate = *f.LoopRate
	}
	if f.MeanDelayMS != nil {
		s.MeanDelay = time.Duration(*f.MeanDelayMS * float64(time.Millisecond))
	}
	return nil
}

func toFile(s control.Settings) fileSettings {
	b := func(v bool) *bool { return &v }
	str := func(v string) *string { return &v }
	fl := func(v float64) *float64 { return &v }
	f := fileSettings{
		KillSwitch: b(s.KillSwitch), Lockdown: b(s.Lockdown), IPv6: b(s.IPv6), AllowLAN: b(s.AllowLAN),
		AutoConnect: b(s.AutoConnect), Entry: str(s.Entry), Exit: str(s.Exit), Mode: str(s.Mode.String()),
		MixRate: fl(s.MixRate), LoopRate: fl(s.LoopRate), MeanDelayMS: fl(float64(s.MeanDelay) / float64(time.Millisecond)),
		DNSServers: []string{},
	}
	for _, a := range s.DNSServers {
		f.DNSServers = append(f.DNSServers, a.String())
	}
	return f
}

// saveSettings writes s atomically (see writeAtomic). The settings are
// no secret, and the desktop app may read them without asking.
func saveSettings(path string, s control.Settings) error {
	raw, err := json.MarshalIndent(toFile(s), "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(path, append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("settings: %w", err)
	}
	return nil
}
