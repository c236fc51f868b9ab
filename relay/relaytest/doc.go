// Package relaytest is the end-to-end harness that the client's and the
// relay's tests share: a cover site ([StartCover]), a relay started
// in-process on one port number for TCP and UDP ([Start]), access keys and
// their share links ([Relay.AddKey], [Relay.Revoke]), the target servers a
// stream may reach ([StartEcho], [StartSink], [StartSource]), what a
// censor's prober does ([TLSProbe], [RawProbe], [H3Get]) and a goroutine
// leak check ([CheckLeaks]).
//
// Every behaviour that does not depend on the carrier runs once per
// carrier, with [ForEachCarrier] (net/http's run(t, f) for transports):
//
//	func TestStreams(t *testing.T) {
//		relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
//			r := relaytest.Start(t, relaytest.StartCover(t), relaytest.Options{})
//			l := r.AddKey(t, "alice", access.Entry{})
//			l.Carriers = []string{carrier}
//			...
//		})
//	}
//
// A new carrier joins the matrix by being added to [Carriers] and to
// [Dialer]; the relay started by [Start] serves every carrier through
// [relay.Relay.ServeListeners].
//
// Everything listens on 127.0.0.1, port 0, and is stopped by t.Cleanup,
// which waits for every goroutine the harness started. The package is for
// tests only: production code must not import it. It is importable by the
// client's tests and by the relay's external tests (package relay_test);
// the relay's internal tests cannot import it (it imports package relay).
package relaytest
