package relaytest

import (
	"context"
	"sync"
	"testing"

	"github.com/merpati/merpati/relay/dnsserver"
)

// StartDNS serves cfg with the relay's DNS server on a loopback port,
// UDP and TCP, as `merpati-relay dns` would, until the test ends, and
// returns the address ("127.0.0.1:port"). A failure to serve fails the
// test.
func StartDNS(tb testing.TB, cfg dnsserver.Config) string {
	tb.Helper()
	s, err := dnsserver.New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	pc, ln, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Serve(ctx, pc, ln); err != nil {
			tb.Errorf("dns: %v", err)
		}
	})
	tb.Cleanup(func() { cancel(); wg.Wait() })
	return pc.LocalAddr().String()
}
