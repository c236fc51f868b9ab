// Package transport holds what the merpati client and relay share above any
// carrier: the two small interfaces every carrier implements, and the
// stream-open exchange that names a stream's target and answers with a
// status.
//
// A carrier (TLS over TCP in [github.com/merpati/merpati/transport/tlscarrier],
// QUIC later) gives an authenticated, multiplexed session between one client
// and one relay. Each Telegram TCP connection becomes one stream of that
// session. A stream begins with an [OpenRequest] written by the client and an
// [OpenReply] written by the relay; after that it carries the application's
// bytes unchanged in both directions.
//
// The package does no I/O of its own beyond reading and writing these two
// messages on a stream the caller provides.
package transport

import (
	"context"
	"net"
)

// A Session is one authenticated, multiplexed connection from a client to a
// relay. It must be safe for concurrent use.
//
// All methods of a closed session return errors wrapping [net.ErrClosed]
// (OpenStream) or nil (Close).
type Session interface {
	// OpenStream opens a new stream. It does not wait for the relay: the
	// first bytes written go out with the stream's opening frame.
	OpenStream(ctx context.Context) (Stream, error)
	// Done is closed when the session has died or been closed; Err then
	// says why.
	Done() <-chan struct{}
	// Err returns the reason the session ended, or nil while it is alive.
	Err() error
	// Close ends the session and every stream in it.
	Close() error
}

// A Stream is one bidirectional byte stream inside a [Session]. Besides the
// net.Conn methods it supports half-close: after CloseWrite the peer reads
// io.EOF, and this side can still read until the peer closes its own write
// side. Close ends both directions at once.
type Stream interface {
	net.Conn
	// CloseWrite half-closes the stream: no more bytes will be written.
	CloseWrite() error
}

// A Dialer establishes sessions to one relay over one carrier. It must be
// safe for concurrent use.
type Dialer interface {
	// Dial performs the carrier's handshake and authentication and
	// returns a new session.
	Dial(ctx context.Context) (Session, error)
	// Carrier names the carrier, for logs and status ("tls", "quic").
	Carrier() string
}

// An AcceptedStream is a stream accepted by a relay-side carrier listener,
// labelled with the access key its session proved.
type AcceptedStream struct {
	Stream
	// KeyName names the access key that authenticated the session.
	KeyName string
}
