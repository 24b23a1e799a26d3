package register

import (
	"errors"
	"net/netip"
	"testing"
)

func TestRoundTripAndRefusals(t *testing.T) {
	b, err := Marshal(Request{Version: Version, PublicKey: make([]byte, 32), Credential: []byte("token")})
	if err != nil {
		t.Fatal(err)
	}
	req, err := ParseRequest(b)
	if err != nil || string(req.Credential) != "token" {
		t.Fatalf("request: %v", err)
	}
	resp := Response{Version: Version, Addr4: netip.MustParseAddr("10.0.0.2"), Addr6: netip.MustParseAddr("fd00::2"),
		ServerKey: make([]byte, 32), Endpoint: "198.51.100.1:51820", ExpiresIn: 60}
	b, _ = Marshal(resp)
	got, err := ParseResponse(b)
	if err != nil || got.Addr4 != resp.Addr4 || got.Endpoint != resp.Endpoint {
		t.Fatalf("response: %v %+v", err, got)
	}
	for name, raw := range map[string]string{
		"short key":     `{"version":1,"public_key":"AAAA"}`,
		"version":       `{"version":2,"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`,
		"unknown field": `{"version":1,"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","x":1}`,
		"trailing":      `{"version":1,"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="} {}`,
	} {
		if _, err := ParseRequest([]byte(raw)); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if _, err := ParseResponse([]byte(`{"version":1,"addr4":"10.0.0.2"}`)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("incomplete response: %v", err)
	}
}

// FuzzParseRequest: control requests come from anyone who can open a link.
func FuzzParseRequest(f *testing.F) {
	b, _ := Marshal(Request{Version: Version, PublicKey: make([]byte, 32)})
	f.Add(b)
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := ParseRequest(raw)
		if err == nil && len(req.PublicKey) != 32 {
			t.Fatalf("accepted a key of %d bytes", len(req.PublicKey))
		}
		_, _ = ParseResponse(raw)
	})
}
