package relay_test

import (
	"testing"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/link"
)

// BenchmarkNewSession measures a new TLS-carrier session end to end, in
// one process: the client's Chrome hello with a sealed token, the relay's
// check and mirrored handshake, HTTP/2 set-up on both sides, and the
// close. With -cpuprofile, the relay's share is what runs under
// tlscarrier's Listener and the relay's session loop.
func BenchmarkNewSession(b *testing.B) {
	cov := relaytest.StartCover(b)
	r := relaytest.Start(b, cov, relaytest.Options{Carriers: []string{link.CarrierTLS}})
	l := r.AddKey(b, "alice", access.Entry{MaxSessions: 1 << 20})
	for b.Loop() {
		s, err := relaytest.Session(b, l, link.CarrierTLS)
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}
