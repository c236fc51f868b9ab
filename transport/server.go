package transport

import (
	"context"
	"errors"
	"net"
)

// The relay side of the carrier contract.
//
// A relay runs one [Listener] per carrier. The listener does everything its
// carrier needs to tell clients from everyone else: it reads handshakes,
// asks the relay's [Authenticator] about the proof a client presents, and
// answers everything that does not authenticate as the cover site would,
// itself. The relay sees only authenticated sessions, and runs one session
// loop for all carriers: it accepts their streams and applies the key's
// limits and usage in one place.

// A Key is an access key as the relay's [Authenticator] knows it. Carriers
// treat it as opaque and hand it back with the session it authenticated.
type Key interface {
	// Name names the key (the person it was given to), for logs.
	Name() string
}

// A Proof is what a carrier's client presents to authenticate: a token
// over a digest that binds it to this one handshake.
type Proof struct {
	// Carrier names the carrier ("tls", "quic").
	Carrier string
	// Digest is the carrier's digest of the handshake the token covers.
	Digest [32]byte
	// Token is the client's token (see package auth).
	Token []byte
	// Random and KeyShare are the hello's client random and X25519 key
	// share, for a sealed token ([github.com/merpati/merpati/transport/auth.Open]);
	// nil where the carrier has none.
	Random, KeyShare []byte
	// Sealed and SealDigest, where set, are the sealed token and the
	// digest it covers, when they are not Token and Digest (the QUIC
	// carrier's client random is either a sealed token or, from older
	// links, a nonce and a short plain token); Random is then the salt
	// (nil for QUIC).
	Sealed     []byte
	SealDigest [32]byte
}

// ErrUnauthenticated is what an [Authenticator] returns (wrapped) when no
// live key made a proof, or when the proof was seen before. A carrier
// answers such a client as the cover site would; it never tells the client
// why.
var ErrUnauthenticated = errors.New("transport: not authenticated")

// An Authenticator is the relay's judgment of the proofs carriers collect.
// It must be safe for concurrent use.
type Authenticator interface {
	// Authenticate returns the key whose holder made p, or an error: an
	// unknown, expired or replayed proof, or a key that may not open
	// another session now. A carrier treats every error alike, as a
	// prober's connection.
	Authenticate(p Proof) (Key, error)
}

// A ServerSession is the relay side of one authenticated session. It must
// be safe for concurrent use.
type ServerSession interface {
	// AcceptStream waits for the next stream the client opens. It fails
	// once the session has ended, and when ctx is done.
	AcceptStream(ctx context.Context) (Stream, error)
	// Key is the access key the session proved.
	Key() Key
	// Carrier names the carrier, for logs and metrics.
	Carrier() string
	// Done is closed when the session has ended.
	Done() <-chan struct{}
	// Close ends the session and every stream in it, and returns once
	// the session's own goroutines have stopped.
	Close() error
}

// A StreamServer is a [ServerSession] that can hand its streams to a
// function as they open, instead of [ServerSession.AcceptStream], so that
// an idle session holds no goroutine waiting for its next stream (the
// relay holds thousands of idle sessions). The relay uses it where a
// carrier's sessions offer it.
type StreamServer interface {
	// ServeStreams calls handle with each stream the client opens, in
	// the order they open, from the session's own goroutine (those
	// already waiting, from the caller's; handle must not block), and
	// end, from a goroutine of its own, once the session
	// has ended and handle has had its last stream. It is called at most
	// once, instead of AcceptStream.
	ServeStreams(handle func(Stream), end func()) error
}

// A Listener is the relay side of one carrier: it yields authenticated
// sessions and serves everything else as the cover site. It must be safe
// for concurrent use.
type Listener interface {
	// Accept waits for the next authenticated session. After Close it
	// returns an error wrapping [net.ErrClosed].
	Accept(ctx context.Context) (ServerSession, error)
	// Close stops listening, closes the sessions not yet accepted and the
	// connections the listener serves itself (those spliced to the cover
	// site), and returns once its goroutines have stopped. Sessions
	// already accepted are the caller's to close.
	Close() error
	// Addr is the address the listener listens on.
	Addr() net.Addr
}
