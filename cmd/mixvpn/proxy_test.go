package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/mixvpn/mixvpn/mixnet/server/servertest"
)

func TestProxyDNS(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(conf, []byte("# systemd-resolved stub and a home router\nnameserver 127.0.0.53\nnameserver 192.168.1.1\n"+
		"nameserver fe80::1%eth0\nnameserver 9.9.9.9\nnameserver 2620:fe::fe\noptions edns0\n"), 0o644)
	got, err := proxyDNS(nil, conf)
	if err != nil || fmt.Sprint(got) != "[9.9.9.9 2620:fe::fe]" {
		t.Fatalf("from resolv.conf: %v, %v", got, err)
	}
	if got, err := proxyDNS(nil, filepath.Join(t.TempDir(), "none")); err != nil || len(got) != 0 {
		t.Fatalf("no resolv.conf: %v, %v", got, err)
	}
	got, err = proxyDNS([]string{"198.51.100.80", " fd00::53"}, conf)
	if err != nil || fmt.Sprint(got) != "[198.51.100.80 fd00::53]" {
		t.Fatalf("given: %v, %v", got, err)
	}
	for _, bad := range []string{"dns.example", "127.0.0.1", "0.0.0.0", "fe80::1%eth0"} {
		if _, err := proxyDNS([]string{bad}, conf); err == nil {
			t.Errorf("--dns %s accepted", bad)
		}
	}
}

func TestCheckListen(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:1080": true, "[::1]:1080": true, "localhost:1080": true, "127.0.0.2:9": true,
		"0.0.0.0:1080": false, ":1080": false, "192.0.2.1:1080": false, "1080": false,
	} {
		if err := checkListen(addr, false); (err == nil) != ok {
			t.Errorf("%s: %v", addr, err)
		}
	}
	if err := checkListen("0.0.0.0:1080", true); err != nil {
		t.Errorf("--allow-remote: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestProxyCommand runs `mixvpn proxy` against an in-process mixnet whose
// internet reflects every packet: a SOCKS5 client's bytes cross the
// mixnet and come back (see tunnel/socks's tests for why a reflected TCP
// connection echoes), and the command stops when its context ends.
func TestProxyCommand(t *testing.T) {
	n := servertest.Start(t, servertest.Options{Echo: true})
	addr, err := servertest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"proxy", "--socks5", addr, "--directory", n.DirURL,
			"--directory-key", base64.StdEncoding.EncodeToString(n.AuthKey), "--mean-delay", "2ms", "--resolv-conf", "/nonexistent"},
			&out, &errOut, func(string) string { return "" })
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "SOCKS5 proxy on") {
		select {
		case code := <-done:
			t.Fatalf("proxy exited with %d: %s%s", code, out.String(), errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy not up after 30 s: %s", errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "exit exit") {
		t.Errorf("output does not name the exit: %q", out.String())
	}
	pd, _ := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	c, err := pd.Dial("tcp", "192.0.2.1:7")
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := []byte("through five hops and back")
	c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("%q, %v", got, err)
	}
	c.Close()
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit status %d: %s", code, errOut.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("proxy did not stop")
	}
	if !strings.Contains(errOut.String(), "no DNS server") {
		t.Errorf("no warning about names without DNS: %s", errOut.String())
	}
}

func TestProxyFlags(t *testing.T) {
	key := base64.StdEncoding.EncodeToString(make([]byte, 32))
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"proxy"}, "--directory is required"},
		{[]string{"proxy", "--directory", "http://192.0.2.1", "--directory-key", "short"}, "--directory-key"},
		{[]string{"proxy", "--directory", "http://192.0.2.1", "--directory-key", key, "--socks5", "0.0.0.0:1080"}, "not a loopback address"},
		{[]string{"proxy", "--directory", "http://192.0.2.1", "--directory-key", key, "--dns", "resolver"}, "--dns"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), tc.args, &out, &errOut, func(string) string { return "" }); code == 0 || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d, %q", tc.args, code, errOut.String())
		}
	}
	// The environment gives the directory, as it does to mixvpnd.
	env := map[string]string{"MIXVPN_DIRECTORY": "http://192.0.2.1", "MIXVPN_DIRECTORY_KEY": "short"}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"proxy"}, &out, &errOut, func(k string) string { return env[k] }); code == 0 || !strings.Contains(errOut.String(), "--directory-key") {
		t.Errorf("from the environment: exit %d, %q", code, errOut.String())
	}
}
