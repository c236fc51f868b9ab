// Package transport holds what the merpati client and relay share above any
// carrier: the contract every carrier implements on both sides, and the
// stream-open exchange that names a stream's target and answers with a
// status.
//
// A carrier (TLS over TCP in [github.com/merpati/merpati/transport/tlscarrier],
// QUIC in [github.com/merpati/merpati/transport/quiccarrier]) gives an
// authenticated, multiplexed session between one client and one relay.
// On the client a [Dialer] makes [Session]s; on the relay a [Listener]
// yields [ServerSession]s, having asked the relay's [Authenticator] about
// the [Proof] each client presented and sent everyone else to the cover
// site itself. Each Telegram TCP connection becomes one [Stream] of a
// session. A stream begins with an [OpenRequest] written by the client and
// an [OpenReply] written by the relay; after that it carries the
// application's bytes unchanged in both directions.
//
// A new carrier is one Dialer, one Listener, and a pass of the conformance
// suite in [github.com/merpati/merpati/transport/transporttest].
//
// The package does no I/O of its own beyond reading and writing the open
// messages on a stream the caller provides, and splicing two connections.
package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"time"
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
	// Ping checks that the relay still answers, and returns an estimate
	// of the round-trip time (zero if the carrier has none yet). It never
	// competes with the streams: it opens no stream and does not wait
	// behind their queued data, and anything that arrives from the relay
	// after it began (data, acknowledgements of what this side sent)
	// counts as the answer, so a slow link busy with an upload is not
	// mistaken for a dead relay. The TLS carrier also sends an HTTP/2 PING
	// ahead of queued data; QUIC, which has no ping outside a stream,
	// counts the acknowledgements it gets anyway, for a stream's first
	// bytes among others. An error means the relay gave no sign of life
	// before ctx ended, or the session is closed.
	Ping(ctx context.Context) (time.Duration, error)
	// Close ends the session and every stream in it.
	Close() error
}

// A Stream is one bidirectional byte stream inside a [Session]. Besides the
// net.Conn methods it supports half-close: after CloseWrite the peer reads
// io.EOF, and this side can still read until the peer closes its own write
// side. Close ends both directions at once and is abortive: the peer's
// pending and later calls fail with an error other than io.EOF, unless
// this side had already ended its writing with CloseWrite (that data still
// arrives). A session or connection that dies under a stream is never
// reported as io.EOF.
//
// Deadlines work as for net.Conn, with one allowance: a Write that times
// out partway may leave the write side broken, as crypto/tls does, where
// the carrier's framing cannot resume it. Later Writes then fail with an
// error wrapping os.ErrDeadlineExceeded, and the peer sees the stream
// abort; it never receives bytes the Write did not report.
type Stream interface {
	net.Conn
	// CloseWrite half-closes the stream: no more bytes will be written.
	CloseWrite() error
}

// A Splicer is a conn, typically a [Stream], that writes what it reads
// straight from the buffers its carrier received it in, sparing [Splice] a
// copy.
type Splicer interface {
	// SpliceTo writes what the conn reads to w until EOF, when it
	// returns nil as io.Copy does, or until the first read or write
	// error, which it returns. It calls count, if not nil, with the
	// bytes of each write.
	SpliceTo(w io.Writer, count func(int)) (int64, error)
}

// A WriteSizer is a conn, typically a [Stream], that carries writes of a
// particular size best: one whose framing and encryption then fill whole
// records, with no short record and no extra system call. [Splice] reads
// at most that much at a time for it.
type WriteSizer interface {
	// WriteSize returns the best size of one Write, or 0 for no
	// preference.
	WriteSize() int
}

// A HeadroomWriter is a conn, typically a [Stream], that frames what it
// writes in front of the data itself: given free bytes before the data,
// it writes each frame's header there and hands header and payload on in
// one piece, sparing the copy of the payload behind its header. [Splice]
// reads into a buffer after that many free bytes for it.
type HeadroomWriter interface {
	// WriteHeadroom returns how many free bytes WriteWithHeadroom
	// wants before the data, or 0 if it wants none.
	WriteHeadroom() int
	// WriteWithHeadroom writes b[head:], where head is WriteHeadroom's
	// answer, as Write writes its argument. Unlike Write it may
	// overwrite b meanwhile: b[:head], and each byte of b[head:] once
	// that byte is written.
	WriteWithHeadroom(b []byte, head int) (int, error)
}

// A WriteGate is a conn, typically a [Stream] of a multiplexed session,
// whose writes queue behind those of other conns sharing its connection.
// [Splice] calls WaitWrite before each read that follows a read of a whole
// big buffer (a bulk transfer, not a message), so that the data is read
// shortly before it can be written, not long before, in a queue where it
// leaves the CPU's caches (and the source's socket buffer holds it
// meanwhile, as it would for a connection of its own).
type WriteGate interface {
	// WaitWrite returns when a write is unlikely to wait long behind
	// other conns' writes, or at once once the conn cannot be written.
	// It reports nothing: such a conn fails the next Write.
	WaitWrite()
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

// ErrOrderlyClose is wrapped by a session's Err, and by the errors of
// streams the peer never saw, when the peer ended the session in an
// orderly way and no stream was cut short: an HTTP/2 server's GOAWAY
// closing an idle connection, as web servers do after a minute or so. It
// is not a failure: the client opens a new session, to the same relay,
// when it next needs one, and retries those streams there. Carriers wrap
// it; test with errors.Is.
var ErrOrderlyClose = errors.New("session closed by the peer in an orderly way")

// ErrKeyRefused means the relay did not accept the link's access key: the
// key was revoked or has expired, the link is wrong, or this device's clock
// is more than about two minutes off. A relay never says so in as many
// words (it answers an unauthenticated connection as its cover site
// would), so a carrier infers it from that answer; something in the path
// that answers in the relay's place looks the same, and the message says
// so. Carriers wrap it; test with errors.Is.
var ErrKeyRefused = errors.New("the relay did not accept this link's key (revoked, expired or wrong link, or this device's clock is off), or something in the path answered in its place")
