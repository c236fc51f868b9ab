package h2mux

import (
	"errors"
	"fmt"
	"net"
)

// Sentinel errors. Callers test for them with [errors.Is].
var (
	// ErrSessionClosed is returned by operations on a session that has
	// been closed or has died, and by its streams. It wraps
	// [net.ErrClosed], as the transport contract requires.
	ErrSessionClosed = fmt.Errorf("h2mux: session closed: %w", net.ErrClosed)

	// ErrStreamReset is wrapped by the errors a stream's Read and Write
	// return after the peer reset the stream with RST_STREAM, refused it,
	// or answered it with a status other than 200. It is distinct from
	// io.EOF, which only ever means the peer ended its side cleanly.
	ErrStreamReset = errors.New("h2mux: stream reset")

	// ErrProtocol is wrapped by the error a session dies with when the
	// peer violated HTTP/2 (RFC 9113): malformed frames, frames on idle
	// streams, data beyond the advertised flow-control window, and so on.
	ErrProtocol = errors.New("h2mux: protocol error")

	// ErrKeepAliveTimeout is wrapped by the error a session dies with when
	// the peer sent nothing within [Config.Timeout] of a PING the session
	// sent on its own account ([Config.ReuseProbe] or
	// [Config.KeepAlive]).
	ErrKeepAliveTimeout = errors.New("h2mux: keep-alive timeout")

	// ErrGoAway is wrapped by the error of [Session.OpenStream] after the
	// peer sent GOAWAY (the session still carries its existing streams
	// but accepts no new ones), by that of streams the GOAWAY refused,
	// and by a client session's Err once it has closed itself with no
	// stream left after the GOAWAY. It wraps [net.ErrClosed]. After a
	// GOAWAY with NO_ERROR, such as an idle close, these errors also wrap
	// [github.com/merpati/merpati/transport.ErrOrderlyClose].
	ErrGoAway = fmt.Errorf("h2mux: peer sent GOAWAY: %w", net.ErrClosed)

	// ErrIdleClosed is the Err of a server session that closed itself
	// after [Config.IdleTimeout] without streams. It wraps
	// [ErrSessionClosed].
	ErrIdleClosed = fmt.Errorf("h2mux: idle: %w", ErrSessionClosed)

	// ErrWrongSide is returned by [Session.OpenStream] on a server
	// session and by [Session.AcceptStream] on a client session: only
	// the client opens streams.
	ErrWrongSide = errors.New("h2mux: operation not valid on this side of the session")
)
