package fast

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// maxWgQuickSize bounds a wg-quick file; real ones are a few hundred bytes.
const maxWgQuickSize = 1 << 20

// WgQuick is one wg-quick(8) configuration file.
type WgQuick struct {
	PrivateKey Key
	Addresses  []netip.Prefix
	DNS        []netip.Addr
	// DNSSearch are the DNS entries that are not addresses: search domains.
	DNSSearch  []string
	MTU        int
	ListenPort uint16
	FwMark     uint32
	Peers      []WgQuickPeer
}

// WgQuickPeer is one [Peer] section.
type WgQuickPeer struct {
	PublicKey    Key
	PresharedKey Key
	// Endpoint is host:port as written; it may name a host.
	Endpoint            string
	AllowedIPs          []netip.Prefix
	PersistentKeepalive time.Duration
}

// ParseError says where a wg-quick file is malformed.
type ParseError struct {
	Line int    // 1-based; 0 when the file as a whole is at fault
	Key  string // the key at fault, if any
	Err  error
}

func (e *ParseError) Error() string {
	switch {
	case e.Line == 0:
		return fmt.Sprintf("wg-quick: %v", e.Err)
	case e.Key == "":
		return fmt.Sprintf("wg-quick: line %d: %v", e.Line, e.Err)
	}
	return fmt.Sprintf("wg-quick: line %d: %s: %v", e.Line, e.Key, e.Err)
}

func (e *ParseError) Unwrap() error { return e.Err }

// ParseWgQuick parses a wg-quick configuration as wg-quick reads it: section
// and key names in any case, '#' starting a comment, lists separated by
// commas, and Address, DNS and AllowedIPs lines adding up. Table, SaveConfig
// and the Pre/Post Up/Down hooks are accepted and ignored; the hooks are never
// run. Anything else is an error naming the line.
func ParseWgQuick(r io.Reader) (*WgQuick, error) {
	var q WgQuick
	const (
		none = iota
		iface
		peer
	)
	data, err := io.ReadAll(io.LimitReader(r, maxWgQuickSize+1))
	if err != nil {
		return nil, &ParseError{Err: fmt.Errorf("read: %w", err)}
	}
	if len(data) > maxWgQuickSize {
		return nil, &ParseError{Err: fmt.Errorf("file is larger than %d bytes", maxWgQuickSize)}
	}
	section, sawIface := none, false
	seen := map[string]bool{} // single-valued keys met in the current section
	line := 0
	for raw := range strings.Lines(string(data)) {
		line++
		text, _, _ := strings.Cut(raw, "#")
		text = strings.TrimSpace(text)
		if text == "" {
			continue
		}
		if strings.HasPrefix(text, "[") {
			switch strings.ToLower(text) {
			case "[interface]":
				if sawIface {
					return nil, &ParseError{Line: line, Err: errors.New("second [Interface] section")}
				}
				section, sawIface = iface, true
			case "[peer]":
				section = peer
				q.Peers = append(q.Peers, WgQuickPeer{})
			default:
				return nil, &ParseError{Line: line, Err: errors.New("unknown section; want [Interface] or [Peer]")}
			}
			clear(seen)
			continue
		}
		k, v, ok := strings.Cut(text, "=")
		if !ok {
			// The line is not echoed: it may hold a key.
			return nil, &ParseError{Line: line, Err: errors.New("want Key = Value or a [Section]")}
		}
		key, v := strings.TrimSpace(k), strings.TrimSpace(v)
		if !isKeyName(key) {
			// The line is not echoed: it may hold a key.
			return nil, &ParseError{Line: line, Err: errors.New("want Key = Value or a [Section]")}
		}
		lk := strings.ToLower(key)
		var err error
		switch section {
		case none:
			return nil, &ParseError{Line: line, Key: key, Err: errors.New("key outside any section")}
		case iface:
			err = q.set(lk, v, seen)
		case peer:
			err = q.Peers[len(q.Peers)-1].set(lk, v, seen)
		}
		if err != nil {
			return nil, &ParseError{Line: line, Key: key, Err: err}
		}
	}
	if !sawIface {
		return nil, &ParseError{Err: errors.New("no [Interface] section")}
	}
	if q.PrivateKey.IsZero() {
		return nil, &ParseError{Key: "PrivateKey", Err: errors.New("[Interface] has no PrivateKey")}
	}
	for i, p := range q.Peers {
		if p.PublicKey.IsZero() {
			return nil, &ParseError{Key: "PublicKey", Err: fmt.Errorf("[Peer] %d has no PublicKey", i+1)}
		}
	}
	return &q, nil
}

// isKeyName reports whether s can be a wg-quick key: letters only, which
// also means an error may name it without leaking a secret.
func isKeyName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// once rejects a second occurrence of a single-valued key in a section.
func once(seen map[string]bool, key string) error {
	if seen[key] {
		return errors.New("given twice in this section")
	}
	seen[key] = true
	return nil
}

func (q *WgQuick) set(key, v string, seen map[string]bool) error {
	switch key {
	case "address", "dns":
		// Lists add up across lines.
	case "table", "saveconfig", "preup", "postup", "predown", "postdown":
		return nil
	default:
		if err := once(seen, key); err != nil {
			return err
		}
	}
	var err error
	switch key {
	case "privatekey":
		q.PrivateKey, err = ParseKey(v)
		if err == nil && q.PrivateKey.IsZero() {
			err = errors.New("key is all zeros")
		}
	case "address":
		for _, s := range list(v) {
			p, perr := parsePrefixOrAddr(s)
			if perr != nil {
				return perr
			}
			q.Addresses = append(q.Addresses, p)
		}
	case "dns":
		for _, s := range list(v) {
			if a, aerr := netip.ParseAddr(s); aerr == nil {
				q.DNS = append(q.DNS, a)
			} else if validDomain(s) {
				q.DNSSearch = append(q.DNSSearch, s)
			} else {
				return fmt.Errorf("%q is neither an address nor a domain", s)
			}
		}
	case "mtu":
		var n uint64
		n, err = strconv.ParseUint(v, 10, 16)
		if err == nil && (n < minMTU || n > maxMTU+HopOverhead) {
			err = fmt.Errorf("%d is outside [%d, %d]", n, minMTU, maxMTU+HopOverhead)
		}
		q.MTU = int(n)
	case "listenport":
		var n uint64
		n, err = strconv.ParseUint(v, 10, 16)
		q.ListenPort = uint16(n)
	case "fwmark":
		if strings.EqualFold(v, "off") {
			return nil
		}
		var n uint64
		n, err = strconv.ParseUint(v, 0, 32)
		q.FwMark = uint32(n)
	default:
		return errors.New("unknown [Interface] key")
	}
	return unwrapNum(err)
}

func (p *WgQuickPeer) set(key, v string, seen map[string]bool) error {
	if key != "allowedips" {
		if err := once(seen, key); err != nil {
			return err
		}
	}
	var err error
	switch key {
	case "publickey":
		p.PublicKey, err = ParseKey(v)
		if err == nil && p.PublicKey.IsZero() {
			err = errors.New("key is all zeros")
		}
	case "presharedkey":
		p.PresharedKey, err = ParseKey(v)
	case "endpoint":
		host, port, serr := net.SplitHostPort(v)
		if serr != nil {
			return serr
		}
		n, perr := strconv.ParseUint(port, 10, 16)
		if perr != nil || n == 0 {
			return fmt.Errorf("port %q is not a number in [1, 65535]", port)
		}
		if _, aerr := netip.ParseAddr(host); aerr != nil && !validDomain(host) {
			return fmt.Errorf("host %q is neither an address nor a domain", host)
		}
		p.Endpoint = v
	case "allowedips":
		for _, s := range list(v) {
			pfx, perr := parsePrefixOrAddr(s)
			if perr != nil {
				return perr
			}
			p.AllowedIPs = append(p.AllowedIPs, pfx.Masked())
		}
	case "persistentkeepalive":
		if strings.EqualFold(v, "off") {
			return nil
		}
		var n uint64
		n, err = strconv.ParseUint(v, 10, 16)
		p.PersistentKeepalive = time.Duration(n) * time.Second
	default:
		return errors.New("unknown [Peer] key")
	}
	return unwrapNum(err)
}

// unwrapNum drops strconv's echo of the function name, keeping the reason.
func unwrapNum(err error) error {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		return fmt.Errorf("%q: %w", ne.Num, ne.Err)
	}
	return err
}

// list splits a comma-separated value, skipping empty items.
func list(v string) []string {
	var out []string
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// parsePrefixOrAddr accepts a prefix or, as ip(8) does, a bare address as
// a host prefix.
func parsePrefixOrAddr(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("%q is not a prefix: %w", s, err)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address: %w", s, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// validDomain is a loose check for a DNS name: letters, digits, '-' and '.',
// labels of 1 to 63 bytes, 253 bytes at most.
func validDomain(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// ConfigFromWgQuick chains two wg-quick files, each with one [Peer], into a
// Fast-mode config: entry's peer is the first hop and exit's the second. The
// client's entry-tunnel addresses come from entry, its inner addresses and
// DNS from exit. The inner MTU is the entry's MTU less HopOverhead (DefaultMTU
// when the entry sets none), lowered further if the exit asks. Endpoints must
// be IP addresses: resolving names is the caller's choice of resolver.
func ConfigFromWgQuick(entry, exit io.Reader) (Config, error) {
	var c Config
	e, err := ParseWgQuick(entry)
	if err != nil {
		return c, fmt.Errorf("entry config: %w", err)
	}
	x, err := ParseWgQuick(exit)
	if err != nil {
		return c, fmt.Errorf("exit config: %w", err)
	}
	if c.Entry, err = hopFromWgQuick(e); err != nil {
		return c, fmt.Errorf("entry config: %w", err)
	}
	if c.Exit, err = hopFromWgQuick(x); err != nil {
		return c, fmt.Errorf("exit config: %w", err)
	}
	c.PrivateKeyEntry, c.PrivateKeyExit = e.PrivateKey, x.PrivateKey
	c.EntryAddrs, c.InnerAddrs, c.DNS = e.Addresses, x.Addresses, x.DNS
	c.FwMark = e.FwMark
	c.MTU = DefaultMTU
	if e.MTU > 0 {
		c.MTU = e.MTU - HopOverhead
	}
	if x.MTU > 0 && x.MTU < c.MTU {
		c.MTU = x.MTU
	}
	if _, err := c.normalise(); err != nil {
		return c, fmt.Errorf("chained config: %w", err)
	}
	return c, nil
}

// ConfigFromWgQuickFiles is ConfigFromWgQuick on two files, which hold
// private keys and so must not be readable by group or others.
func ConfigFromWgQuickFiles(entryPath, exitPath string) (Config, error) {
	var files [2]*os.File
	for i, path := range []string{entryPath, exitPath} {
		f, err := os.Open(path)
		if err != nil {
			return Config{}, fmt.Errorf("open wg-quick config: %w", err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return Config{}, fmt.Errorf("stat wg-quick config: %w", err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			return Config{}, fmt.Errorf("wg-quick config %s has mode %v; it holds a private key, so chmod 600 it", path, st.Mode().Perm())
		}
		files[i] = f
	}
	return ConfigFromWgQuick(files[0], files[1])
}

// hopFromWgQuick takes the one peer of q as a hop.
func hopFromWgQuick(q *WgQuick) (Hop, error) {
	if len(q.Peers) != 1 {
		return Hop{}, fmt.Errorf("has %d [Peer] sections, want 1", len(q.Peers))
	}
	p := q.Peers[0]
	if p.Endpoint == "" {
		return Hop{}, errors.New("[Peer] has no Endpoint")
	}
	ep, err := netip.ParseAddrPort(p.Endpoint)
	if err != nil {
		return Hop{}, fmt.Errorf("endpoint %q is not an IP address and port; resolve it first", p.Endpoint)
	}
	return Hop{
		PublicKey:           p.PublicKey,
		PresharedKey:        p.PresharedKey,
		Endpoint:            ep,
		AllowedIPs:          p.AllowedIPs,
		PersistentKeepalive: p.PersistentKeepalive,
	}, nil
}
