package socks5

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"
)

// Backoff after a temporary Accept error, as in net/http's Server.Serve.
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

// A Handler serves one SOCKS5 connection after a successful [Handshake]. It
// must answer req with [Reply] before relaying data. conn is closed after
// the handler returns; ctx is done when the [Server] shuts down, at which
// point conn is closed too.
type Handler func(ctx context.Context, conn net.Conn, req *Request)

// A Server accepts SOCKS5 connections and hands each CONNECT request to a
// [Handler]. The zero value is ready to use: no authentication, the default
// handshake timeout and no logging. Its fields must not change while Serve
// runs.
type Server struct {
	// Config is passed to [Handshake] for every connection.
	Config Config
	// Logger receives a Debug message for each failed handshake and an
	// Error message for a failed Accept. Client addresses are not logged.
	// Nil means no logging.
	Logger *slog.Logger
}

// Serve accepts connections on ln, runs [Handshake] on each in its own
// goroutine and calls handler with the request. A failed handshake closes
// the connection without calling handler.
//
// Temporary Accept errors are retried after a pause that starts at 5ms and
// doubles up to 1s. Serve returns nil when ctx is done, or the Accept error
// otherwise. Either way it closes ln and every connection it accepted, and
// waits for all handlers to return before it returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener, handler Handler) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if isTemporary(err) {
				backoff = max(minAcceptBackoff, min(2*backoff, maxAcceptBackoff))
				log.Error("socks5: accept failed; retrying", "err", err, "backoff", backoff)
				if !sleep(ctx, backoff) {
					return nil
				}
				continue
			}
			ln.Close()
			return fmt.Errorf("socks5: accept: %w", err)
		}
		backoff = 0
		wg.Go(func() { s.serveConn(ctx, log, conn, handler) })
	}
}

// serveConn runs one connection from handshake to close.
func (s *Server) serveConn(ctx context.Context, log *slog.Logger, conn net.Conn, handler Handler) {
	defer conn.Close()
	// Closing conn when the server stops unblocks both the handshake and
	// a handler busy copying.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req, err := Handshake(conn, s.Config)
	if err != nil {
		log.Debug("socks5: handshake failed", "err", err)
		return
	}
	handler(ctx, conn, req)
}

// isTemporary reports whether an Accept error is worth retrying, the way
// net/http decides it. The method is deprecated on net.Error because its
// meaning is vague, but for Accept it still marks EMFILE, ENFILE and
// friends.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// sleep waits for d or until ctx is done, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
