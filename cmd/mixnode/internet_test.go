package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestInternetHTTPBlob(t *testing.T) {
	srv := httptest.NewServer(internetHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/blob/100000")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	n, _ := io.Copy(h, resp.Body)
	resp.Body.Close()
	if n != 100000 {
		t.Fatalf("got %d bytes", n)
	}
	resp, err = http.Get(srv.URL + "/blob/100000.sha256")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.TrimSpace(string(want)) || got != blobSHA256(100000) {
		t.Fatalf("hash %s, server says %s", got, want)
	}
	resp, _ = http.Get(srv.URL + "/blob/huge")
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("bad size gave %d", resp.StatusCode)
	}
}

func TestInternetDNSAndEcho(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	zone, err := parseZone([]string{"internet.mixvpn.test=203.0.113.80", "internet.mixvpn.test=fd00:203::80"})
	if err != nil {
		t.Fatal(err)
	}
	dnsAddr, echoAddr := freeUDP(t), freeUDP(t)
	done := make(chan error, 1)
	go func() {
		done <- runInternet(ctx, internetConfig{DNS: dnsAddr, Echo: echoAddr, Zone: zone, Log: slog.New(slog.DiscardHandler)})
	}()
	c := &dns.Client{Timeout: time.Second}
	q := new(dns.Msg).SetQuestion("internet.mixvpn.test.", dns.TypeA)
	var r *dns.Msg
	for i := 0; i < 50; i++ { // the server may still be starting
		if r, _, err = c.Exchange(q, dnsAddr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "203.0.113.80" {
		t.Fatalf("answer %v", r.Answer)
	}
	r, _, err = c.Exchange(new(dns.Msg).SetQuestion("elsewhere.example.", dns.TypeA), dnsAddr)
	if err != nil || r.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown name: %v %v", r, err)
	}
	conn, err := net.Dial("udp", echoAddr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	conn.Write([]byte("echo?"))
	buf := make([]byte, 16)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "echo?" {
		t.Fatalf("echo: %q %v", buf[:n], err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func freeUDP(t *testing.T) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

// TestInternetHTTPBlobRanges: a blob answers Range requests with the
// right bytes, and the parts of a download resumed at arbitrary offsets
// hash to the whole blob's hash.
func TestInternetHTTPBlobRanges(t *testing.T) {
	srv := httptest.NewServer(internetHandler())
	defer srv.Close()
	const size = 300000
	whole, err := io.ReadAll(blobReader(size))
	if err != nil {
		t.Fatal(err)
	}
	get := func(rng string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/blob/%d", srv.URL, size), nil)
		req.Header.Set("Range", rng)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	for _, c := range []struct {
		rng        string
		start, end int // of whole, end exclusive
	}{
		{"bytes=250000-", 250000, size},
		{"bytes=0-99", 0, 100},
		{"bytes=123456-123456", 123456, 123457},
		{"bytes=-1000", size - 1000, size},
		{"bytes=299999-400000", size - 1, size},
	} {
		resp, b := get(c.rng)
		if resp.StatusCode != http.StatusPartialContent {
			t.Fatalf("%s: %s", c.rng, resp.Status)
		}
		if want := fmt.Sprintf("bytes %d-%d/%d", c.start, c.end-1, size); resp.Header.Get("Content-Range") != want {
			t.Errorf("%s: Content-Range %q, want %q", c.rng, resp.Header.Get("Content-Range"), want)
		}
		if !bytes.Equal(b, whole[c.start:c.end]) {
			t.Errorf("%s: %d bytes, not the blob's %d to %d", c.rng, len(b), c.start, c.end)
		}
	}
	if resp, _ := get(fmt.Sprintf("bytes=%d-", size)); resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("a range past the end gave %s", resp.Status)
	}

	// A download resumed twice hashes to the whole.
	h := sha256.New()
	for _, rng := range []string{"bytes=0-77776", "bytes=77777-200000", "bytes=200001-"} {
		resp, b := get(rng)
		if resp.StatusCode != http.StatusPartialContent {
			t.Fatalf("%s: %s", rng, resp.Status)
		}
		h.Write(b)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != blobSHA256(size) {
		t.Fatalf("the parts hash to %s, the blob to %s", got, blobSHA256(size))
	}
}

// TestBlobContentSeek checks the reader ServeContent gets on its own:
// reads after seeks forward, back and relative match the stream, and it
// ends at its size.
func TestBlobContentSeek(t *testing.T) {
	const size = 100000
	whole, _ := io.ReadAll(blobReader(size))
	b := newBlobContent(size)
	buf := make([]byte, 5000)
	for _, s := range []struct {
		off    int64
		whence int
		at     int64
	}{{90000, io.SeekStart, 90000}, {-80000, io.SeekCurrent, 15000}, {-3000, io.SeekEnd, size - 3000}, {7, io.SeekStart, 7}} {
		at, err := b.Seek(s.off, s.whence)
		if err != nil || at != s.at {
			t.Fatalf("seek %d,%d: %d %v", s.off, s.whence, at, err)
		}
		n, err := io.ReadFull(b, buf)
		if want := min(len(buf), size-int(at)); n != want || !bytes.Equal(buf[:n], whole[at:at+int64(n)]) {
			t.Fatalf("after seeking to %d: %d bytes (%v), not the blob's", at, n, err)
		}
	}
	if _, err := b.Seek(-1, io.SeekStart); err == nil {
		t.Error("a seek before the start worked")
	}
	b.Seek(0, io.SeekEnd)
	if n, err := b.Read(buf); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d %v", n, err)
	}
}
