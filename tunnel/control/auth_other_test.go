//go:build !linux

package control

import (
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Without peer credentials a real socket connection gets through the
// handshake only as an unidentifiedPeer, which authorize refuses.
func TestHandshakeMarksCallerUnidentified(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Skip("no Unix sockets here:", err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	defer server.Close()
	_, ai, err := (peerCredentials{}).ServerHandshake(server)
	if err != nil {
		t.Fatal(err)
	}
	u, ok := ai.(unidentifiedPeer)
	if !ok || !strings.Contains(u.reason, "not supported yet on "+runtime.GOOS) {
		t.Fatalf("AuthInfo %#v", ai)
	}
}
