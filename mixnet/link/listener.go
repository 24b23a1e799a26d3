package link

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
)

// ListenerConfig configures Serve.
type ListenerConfig struct {
	Config
	// Authorize sees each initiator's static key and may refuse it.
	Authorize func(peer [32]byte) error
	// OnConn takes every established link; it owns the link (which lives
	// until closed) and should return promptly.
	OnConn func(c *Conn)
	// MaxHandshakes bounds handshakes in progress, so that slow or
	// stalled peers cannot starve others; default 64.
	MaxHandshakes int
}

// Serve accepts links on ln until ctx ends, then closes ln. Handshakes run
// concurrently; a failed one is logged and costs nothing else.
func Serve(ctx context.Context, ln net.Listener, cfg ListenerConfig) error {
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 64
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	slots := make(chan struct{}, cfg.MaxHandshakes)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("link: accept: %w", err)
		}
		select {
		case slots <- struct{}{}:
		default:
			log.Warn("link handshake refused: too many in progress", "from", nc.RemoteAddr().String())
			nc.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := Server(ctx, nc, cfg.Config, cfg.Authorize)
			<-slots
			if err != nil {
				log.Info("link handshake failed", "from", nc.RemoteAddr().String(), "err", err)
				nc.Close()
				return
			}
			if cfg.OnConn != nil {
				cfg.OnConn(c)
			}
		}()
	}
}
