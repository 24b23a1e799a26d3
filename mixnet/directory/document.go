// Package directory is the network's topology: nodes publish descriptors
// signed with their ed25519 identity keys, the directory authority collects
// them into a document for each key epoch and signs it, and clients fetch
// the document and accept it only under the authority key they pinned.
// Sphinx keys rotate every epoch; each descriptor carries the key for the
// current and the next epoch, so packets in flight survive a rotation.
package directory

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/mixvpn/mixvpn/mixnet/sphinx"
)

// FormatVersion is the document and descriptor format this package speaks.
const FormatVersion = 1

// MaxDocumentSize bounds what a client will parse.
const MaxDocumentSize = 1 << 20

// Role is what a node does.
type Role string

// Roles.
const (
	RoleEntry Role = "entry"
	RoleMix   Role = "mix"
	RoleExit  Role = "exit"
)

// Layers is the number of mix layers.
const Layers = 3

// MaxDNS bounds the resolvers an exit may advertise: as many as a
// resolv.conf honours, and then some, but never enough to bloat the
// document.
const MaxDNS = 4

// Errors from parsing and verification.
var (
	ErrUnsigned     = errors.New("directory: document is not signed")
	ErrBadSignature = errors.New("directory: signature does not verify")
	ErrStale        = errors.New("directory: document has expired")
	ErrNotYetValid  = errors.New("directory: document is not valid yet")
	ErrVersion      = errors.New("directory: unknown format version")
	ErrMalformed    = errors.New("directory: malformed")
	ErrInvalidNode  = errors.New("directory: invalid node descriptor")
)

// EpochKey is a node's public Sphinx key for one key epoch.
type EpochKey struct {
	Epoch uint64 `json:"epoch"`
	Key   []byte `json:"key"`
}

// WireGuard is a gateway's WireGuard server, for Fast mode.
type WireGuard struct {
	PublicKey []byte `json:"public_key"`
	Endpoint  string `json:"endpoint"`
}

// Descriptor is what one node publishes about itself.
type Descriptor struct {
	Version     int        `json:"version"`
	ID          string     `json:"id"`
	Role        Role       `json:"role"`
	Layer       int        `json:"layer,omitempty"`
	Address     string     `json:"address"` // link listener, host:port
	IdentityKey []byte     `json:"identity_key"`
	LinkKey     []byte     `json:"link_key"`
	SphinxKeys  []EpochKey `json:"sphinx_keys"`
	Country     string     `json:"country,omitempty"`
	WireGuard   *WireGuard `json:"wireguard,omitempty"`
	// Control is a gateway's registration API address, if any.
	Control string `json:"control,omitempty"`
	// DNS are the resolvers an exit offers its clients: addresses that
	// its tunnels reach through it, which clients use when the user named
	// none, so that their lookups leave by the exit like the rest of
	// their traffic and not by the local network's resolver. Exits only.
	DNS       []netip.Addr `json:"dns,omitempty"`
	Published time.Time    `json:"published"`
}

// MixAddress is the node's address in Sphinx routing information: the
// SHA-256 of its identity key.
func (d *Descriptor) MixAddress() sphinx.Address {
	return sphinx.Address(sha256.Sum256(d.IdentityKey))
}

// SphinxKey returns the node's public Sphinx key for epoch.
func (d *Descriptor) SphinxKey(epoch uint64) (*ecdh.PublicKey, error) {
	for _, k := range d.SphinxKeys {
		if k.Epoch == epoch {
			pub, err := ecdh.X25519().NewPublicKey(k.Key)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrInvalidNode, d.ID, err)
			}
			return pub, nil
		}
	}
	return nil, fmt.Errorf("directory: %s has no Sphinx key for epoch %d", d.ID, epoch)
}

// LinkPublicKey returns the node's Noise static key.
func (d *Descriptor) LinkPublicKey() [32]byte { return [32]byte(d.LinkKey) }

// validate checks a descriptor's fields, not its signature.
func (d *Descriptor) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %q: %s", ErrInvalidNode, d.ID, fmt.Sprintf(format, args...))
	}
	switch {
	case d.Version != FormatVersion:
		return fmt.Errorf("%w: descriptor version %d", ErrVersion, d.Version)
	case d.ID == "" || len(d.ID) > 64:
		return bad("id must be 1 to 64 characters")
	case len(d.IdentityKey) != ed25519.PublicKeySize:
		return bad("identity key of %d bytes", len(d.IdentityKey))
	case len(d.LinkKey) != 32:
		return bad("link key of %d bytes", len(d.LinkKey))
	case len(d.SphinxKeys) == 0 || len(d.SphinxKeys) > 4:
		return bad("%d Sphinx keys, want 1 to 4", len(d.SphinxKeys))
	}
	switch d.Role {
	case RoleMix:
		if d.Layer < 1 || d.Layer > Layers {
			return bad("mix layer %d out of range 1..%d", d.Layer, Layers)
		}
	case RoleEntry, RoleExit:
		if d.Layer != 0 {
			return bad("a gateway has no layer")
		}
		if d.Country != "" && (len(d.Country) != 2 || d.Country[0] < 'A' || d.Country[0] > 'Z' || d.Country[1] < 'A' || d.Country[1] > 'Z') {
			return bad("country %q is not an ISO 3166 alpha-2 code", d.Country)
		}
	default:
		return bad("unknown role %q", d.Role)
	}
	if _, _, err := net.SplitHostPort(d.Address); err != nil {
		return bad("address: %v", err)
	}
	for _, k := range d.SphinxKeys {
		if _, err := ecdh.X25519().NewPublicKey(k.Key); err != nil {
			return bad("Sphinx key for epoch %d: %v", k.Epoch, err)
		}
	}
	if err := CheckResolvers(d.Role, d.DNS); err != nil {
		return bad("%v", err)
	}
	if wg := d.WireGuard; wg != nil {
		if len(wg.PublicKey) != 32 {
			return bad("WireGuard key of %d bytes", len(wg.PublicKey))
		}
		if _, err := netip.ParseAddrPort(wg.Endpoint); err != nil {
			return bad("WireGuard endpoint: %v", err)
		}
	}
	return nil
}

// CheckResolvers reports why addrs cannot be the DNS resolvers that a
// node of the given role advertises in its descriptor: only an exit
// advertises any, at most MaxDNS of them, and each must pass
// CheckResolver. No resolvers is always fine. The directory checks every
// descriptor with it, and nodes check their configuration with it at
// start, so that both apply the same rules: a node whose configuration
// passes is never refused by the directory at every publication for its
// resolvers.
func CheckResolvers(role Role, addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	if role != RoleExit {
		return fmt.Errorf("only an exit advertises DNS resolvers, and this node's role is %q", role)
	}
	if len(addrs) > MaxDNS {
		return fmt.Errorf("%d DNS resolvers, at most %d", len(addrs), MaxDNS)
	}
	for _, a := range addrs {
		if err := CheckResolver(a); err != nil {
			return fmt.Errorf("DNS resolver: %w", err)
		}
	}
	return nil
}

// CheckResolver reports why a cannot be a resolver an exit advertises:
// it refuses what a client could not reach through the tunnel, addresses
// that stay on the client's own machine or link, and ones that are no
// single host's. CheckResolvers applies it to each of a node's.
func CheckResolver(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("empty address")
	case a.Zone() != "":
		return fmt.Errorf("%s has a zone", a)
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast():
		return fmt.Errorf("%s is not reachable through a tunnel", a)
	case a.Is4In6():
		return fmt.Errorf("%s is IPv4-mapped: write it as IPv4", a)
	}
	return nil
}

// Document is the topology for one epoch.
type Document struct {
	Version     int           `json:"version"`
	Epoch       uint64        `json:"epoch"`
	EpochLength time.Duration `json:"epoch_length"`
	ValidAfter  time.Time     `json:"valid_after"`
	ValidUntil  time.Time     `json:"valid_until"`
	Nodes       []Descriptor  `json:"nodes"`
}

// signed is the wire form of a document or descriptor: the exact bytes
// signed, and the signature, so verification never re-marshals.
type signed struct {
	Body      []byte `json:"body"`
	Signature []byte `json:"signature"`
}

func sign(v any, key ed25519.PrivateKey) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(signed{Body: body, Signature: ed25519.Sign(key, body)})
}

func open(raw []byte, key ed25519.PublicKey) ([]byte, error) {
	if len(raw) > MaxDocumentSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrMalformed, len(raw), MaxDocumentSize)
	}
	var s signed
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(s.Body) == 0 {
		return nil, fmt.Errorf("%w: empty body", ErrMalformed)
	}
	if len(s.Signature) == 0 {
		return nil, ErrUnsigned
	}
	if len(key) != ed25519.PublicKeySize || !ed25519.Verify(key, s.Body, s.Signature) {
		return nil, ErrBadSignature
	}
	return s.Body, nil
}

// SignDescriptor signs d with the node's identity key.
func SignDescriptor(d *Descriptor, identity ed25519.PrivateKey) ([]byte, error) {
	d.Version = FormatVersion
	d.IdentityKey = identity.Public().(ed25519.PublicKey)
	if err := d.validate(); err != nil {
		return nil, err
	}
	return sign(d, identity)
}

// OpenDescriptor verifies a signed descriptor against the identity key it
// names and checks its fields.
func OpenDescriptor(raw []byte) (*Descriptor, error) {
	var s signed
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var d Descriptor
	if err := json.Unmarshal(s.Body, &d); err != nil {
		return nil, fmt.Errorf("%w: descriptor: %v", ErrMalformed, err)
	}
	if len(d.IdentityKey) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("%w: identity key of %d bytes", ErrInvalidNode, len(d.IdentityKey))
	}
	if _, err := open(raw, d.IdentityKey); err != nil {
		return nil, err
	}
	if err := d.validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// SignDocument signs a document with the authority key.
func SignDocument(doc *Document, authority ed25519.PrivateKey) ([]byte, error) {
	doc.Version = FormatVersion
	if err := doc.validate(); err != nil {
		return nil, err
	}
	return sign(doc, authority)
}

// Verify parses a signed document, checks the signature under the pinned
// authority key, its validity at now and every node in it.
func Verify(raw []byte, authority ed25519.PublicKey, now time.Time) (*Document, error) {
	body, err := open(raw, authority)
	if err != nil {
		return nil, err
	}
	var doc Document
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("%w: document: %v", ErrMalformed, err)
	}
	if doc.Version != FormatVersion {
		return nil, fmt.Errorf("%w: %d", ErrVersion, doc.Version)
	}
	if now.Before(doc.ValidAfter) {
		return nil, fmt.Errorf("%w: valid after %v", ErrNotYetValid, doc.ValidAfter)
	}
	if !now.Before(doc.ValidUntil) {
		return nil, fmt.Errorf("%w: valid until %v", ErrStale, doc.ValidUntil)
	}
	if err := doc.validate(); err != nil {
		return nil, err
	}
	return &doc, nil
}

func (doc *Document) validate() error {
	if !doc.ValidAfter.Before(doc.ValidUntil) {
		return fmt.Errorf("%w: empty validity window", ErrMalformed)
	}
	ids := make(map[string]bool, len(doc.Nodes))
	addrs := make(map[string]bool, len(doc.Nodes))
	for i := range doc.Nodes {
		d := &doc.Nodes[i]
		if err := d.validate(); err != nil {
			return err
		}
		if ids[d.ID] {
			return fmt.Errorf("%w: duplicate id %q", ErrInvalidNode, d.ID)
		}
		if addrs[d.Address] {
			return fmt.Errorf("%w: duplicate address %s", ErrInvalidNode, d.Address)
		}
		ids[d.ID], addrs[d.Address] = true, true
	}
	return nil
}

// NodesOf returns the nodes with role, and for mixes with layer (0: any).
func (doc *Document) NodesOf(role Role, layer int) []*Descriptor {
	var out []*Descriptor
	for i := range doc.Nodes {
		d := &doc.Nodes[i]
		if d.Role == role && (layer == 0 || d.Layer == layer) {
			out = append(out, d)
		}
	}
	return out
}

// ByID finds a node by its id.
func (doc *Document) ByID(id string) *Descriptor {
	for i := range doc.Nodes {
		if doc.Nodes[i].ID == id {
			return &doc.Nodes[i]
		}
	}
	return nil
}

// ByAddress finds a node by its Sphinx address.
func (doc *Document) ByAddress(a sphinx.Address) *Descriptor {
	for i := range doc.Nodes {
		if doc.Nodes[i].MixAddress() == a {
			return &doc.Nodes[i]
		}
	}
	return nil
}

// GatewaysIn returns the gateways with role in country (empty: any).
func (doc *Document) GatewaysIn(role Role, country string) []*Descriptor {
	var out []*Descriptor
	for _, d := range doc.NodesOf(role, 0) {
		if country == "" || d.Country == country {
			out = append(out, d)
		}
	}
	return out
}

// Candidates are the gateways of role that want admits, as PickGateway
// reads it: the one node want names by ID, every gateway in the country
// want names by its ISO code, or every gateway for empty. It fails, saying
// why, when there is none. Callers that pick by more than chance (the
// daemon passes over gateways that just failed) start from it, so that
// they read a choice the same way the tunnels do.
func (doc *Document) Candidates(role Role, want string) ([]*Descriptor, error) {
	if d := doc.ByID(want); d != nil && want != "" {
		if d.Role != role {
			return nil, fmt.Errorf("directory: %s is a %s, not a %s", want, d.Role, role)
		}
		return []*Descriptor{d}, nil
	}
	country := ""
	if len(want) == 2 {
		country = strings.ToUpper(want)
	} else if want != "" {
		return nil, fmt.Errorf("directory: no %s gateway %q in epoch %d", role, want, doc.Epoch)
	}
	ds := doc.GatewaysIn(role, country)
	if len(ds) == 0 {
		if country != "" {
			return nil, fmt.Errorf("directory: no %s gateway in country %s", role, country)
		}
		return nil, fmt.Errorf("directory: no %s gateway", role)
	}
	return ds, nil
}

// PickGateway chooses a gateway of role by want: a node ID, an ISO
// country code (any gateway there), or empty (any gateway). pick chooses
// among several; nil takes the first.
func (doc *Document) PickGateway(role Role, want string, pick func(n int) int) (*Descriptor, error) {
	ds, err := doc.Candidates(role, want)
	if err != nil {
		return nil, err
	}
	if pick == nil {
		return ds[0], nil
	}
	return ds[pick(len(ds))], nil
}
