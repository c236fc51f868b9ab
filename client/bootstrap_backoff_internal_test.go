package client

import (
	"context"
	"crypto/ed25519"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/merpati/merpati/relay/dnsserver"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/relaylist"
)

// TestRescueBackoff: a bootstrap that finds nothing new is not repeated
// until the backoff allows it. The list names only the link's own relay;
// the first rescue fetches it, the second, right after, does not ask DNS
// at all, and one after the backoff's base (4 s here) asks again.
func TestRescueBackoff(t *testing.T) {
	const zone = "r.merpati.test"
	l := &link.Link{Relays: []string{"127.0.0.1:1"}, Pin: [link.PinSize]byte{1}, SNI: "cover.merpati.test", Key: [link.KeySize]byte{1}}
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	list, err := relaylist.Sign(&relaylist.List{Seq: 1, Expires: time.Now().Add(time.Hour),
		Entries: []relaylist.Entry{relaylist.FromLink(l)}}, priv)
	if err != nil {
		t.Fatal(err)
	}
	bk := [link.BootstrapKeySize]byte{3, 3, 3}
	s, err := dnsserver.New(dnsserver.Config{Zone: zone, Audiences: []dnsserver.Audience{{Key: bk, Lists: [][]byte{list}}}})
	if err != nil {
		t.Fatal(err)
	}
	var queries atomic.Int64
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		queries.Add(1)
		w.WriteMsg(s.Answer(r, w.RemoteAddr(), true))
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	var wg sync.WaitGroup
	wg.Go(func() { srv.ActivateAndServe() })
	<-started
	t.Cleanup(func() { srv.Shutdown(); wg.Wait() })

	l.Bootstrap, l.ListKey, l.BootstrapKeys = []string{zone}, pub, [][link.BootstrapKeySize]byte{bk}
	c, err := New(Config{Link: l, Resolvers: []string{"udp://" + pc.LocalAddr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if c.boot == nil {
		t.Fatal("no bootstrap")
	}
	const base = 4 * time.Second
	c.boot.backoff.Base = base
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	start := time.Now()
	if c.rescue(ctx) {
		t.Fatal("first rescue: new relays from a list of the link's own relay")
	}
	first := queries.Load()
	if first == 0 {
		t.Fatal("first rescue did not ask DNS")
	}
	if c.rescue(ctx) {
		t.Fatal("second rescue: new relays")
	}
	if n := queries.Load(); n != first {
		t.Fatalf("second rescue %v after the first started asked DNS again (%d queries, then %d): no backoff",
			time.Since(start).Round(time.Millisecond), first, n)
	}
	// The wait after one failure is at most base.
	time.Sleep(time.Until(start.Add(base + 100*time.Millisecond)))
	c.rescue(ctx)
	if n := queries.Load(); n == first {
		t.Errorf("rescue after the backoff did not ask DNS (%d queries)", n)
	}
	t.Logf("%d queries per fetch; the second rescue fetched nothing, the third after %v fetched again",
		first, time.Since(start).Round(time.Millisecond))
}
