package socks5

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/merpati/merpati/transport/acceptloop"
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
// Temporary Accept errors (such as "too many open files") are retried
// after a pause that starts at 5ms and doubles up to 1s. Serve returns nil
// when ctx is done, or the Accept error otherwise. Either way it closes ln
// and every connection it accepted, and waits for all handlers to return
// before it returns.
func (s *Server) Serve(ctx context.Context, ln net.Listener, handler Handler) error {
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	err := acceptloop.Serve(ctx, ln, log.With("transport", "socks5"), func(ctx context.Context, conn net.Conn) {
		req, err := Handshake(conn, s.Config)
		if err != nil {
			log.Debug("socks5: handshake failed", "err", err)
			return
		}
		handler(ctx, conn, req)
	})
	if err != nil {
		return fmt.Errorf("socks5: %w", err)
	}
	return nil
}
