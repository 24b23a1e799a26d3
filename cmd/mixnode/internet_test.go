package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
