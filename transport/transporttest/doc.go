// Package transporttest holds what every carrier's tests share: an
// in-memory carrier, an [Authenticator] of test keys, and the conformance
// suite [TestStreams] that checks a carrier against the stream contract of
// package transport.
//
// The in-memory carrier ([Listen], [NewDialer]) runs h2mux sessions over
// net.Pipe, so tests of code above the carrier (the relay's session loop,
// the client's picker) get real sessions with real flow control and real
// authentication, and never touch the network. It has no cover site: a
// client whose proof the [transport.Authenticator] refuses just has its
// pipe closed.
//
// [TestStreams] is to a carrier what golang.org/x/net/nettest.TestConn is
// to a net.Conn, with the stream semantics of [transport.Stream]: Close is
// abortive and ends both directions (the peer sees an error, never io.EOF),
// and CloseWrite is the graceful half-close. Each carrier's tests run it
// once; a new carrier is done when it passes.
//
// The package is for tests only: production code must not import it.
package transporttest
