package client_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/transporttest"
)

// TestRace checks which carrier wins when one of them is blocked.
func TestRace(t *testing.T) {
	tests := []struct {
		name   string
		answer []string // the carriers that answer
		want   string
		within time.Duration
	}{
		{"both open: quic first", relaytest.Carriers, "quic", 2 * time.Second},
		{"udp blocked: tls wins", []string{link.CarrierTLS}, "tls", 3 * time.Second},
		{"tcp closed: quic wins", []string{link.CarrierQUIC}, "quic", 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			relaytest.CheckLeaks(t)
			echo := relaytest.StartEcho(t)
			cov := relaytest.StartCover(t)
			r := relaytest.Start(t, cov, relaytest.Options{Carriers: tt.answer})
			c, _ := startClient(t, r.AddKey(t, "alice", access.Entry{}), nil)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			if err := echoOnce(ctx, c, relaytest.Target(t, echo), 100_000); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			a := c.Active()
			if a == nil || a.Carrier != tt.want {
				t.Fatalf("active %+v, want %s", a, tt.want)
			}
			if took > timingSlack*tt.within {
				t.Errorf("first stream took %v, want under %v", took, tt.within)
			}
			t.Logf("%s won; first stream after %v", a.Carrier, took.Round(time.Millisecond))
			// The loser's session, if it came up, is closed: its relay
			// side is not left behind (checked by the leak check).
		})
	}
}

// TestFailover kills the first relay mid-session and checks that new
// streams go to the second within 2 seconds, without restarting the
// client; the in-flight stream fails cleanly.
func TestFailover(t *testing.T) {
	for _, blocked := range []string{"none", "udp"} {
		t.Run("blocked="+blocked, func(t *testing.T) {
			relaytest.CheckLeaks(t)
			echo := relaytest.StartEcho(t)
			cov := relaytest.StartCover(t)
			var answer []string // all
			if blocked == "udp" {
				answer = []string{link.CarrierTLS}
			}
			r1 := relaytest.Start(t, cov, relaytest.Options{Carriers: answer})
			r2 := relaytest.Start(t, cov, relaytest.Options{Carriers: answer, CertFrom: r1})
			// One key valid at both relays; a link listing both.
			l := relaytest.AddSharedKey(t, "alice", access.Entry{}, r1, r2)
			c, _ := startClient(t, l, nil)
			target := relaytest.Target(t, echo)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := echoOnce(ctx, c, target, 10_000); err != nil {
				t.Fatal(err)
			}
			a := c.Active()
			if a == nil || a.Relay != r1.Addr {
				t.Fatalf("active %+v, want relay %s", a, r1.Addr)
			}
			inflight, err := c.OpenStream(ctx, target)
			if err != nil {
				t.Fatal(err)
			}
			defer inflight.Close()

			r1.Stop()
			killed := time.Now()
			if _, err := io.ReadAll(inflight); err == nil {
				t.Log("in-flight stream ended with EOF")
			}
			if err := echoOnce(ctx, c, target, 10_000); err != nil {
				t.Fatalf("stream after the first relay died: %v", err)
			}
			took := time.Since(killed)
			b := c.Active()
			if b == nil || b.Relay != r2.Addr {
				t.Fatalf("active %+v, want relay %s", b, r2.Addr)
			}
			if took > timingSlack*2*time.Second {
				t.Errorf("new stream on the second relay after %v, want under 2s (×%d under -race)", took, timingSlack)
			}
			t.Logf("%s/%s → %s/%s in %v", a.Relay, a.Carrier, b.Relay, b.Carrier, took.Round(time.Millisecond))
		})
	}
}

// TestFailoverBlackhole blackholes the first relay mid-session (its
// packets vanish, nothing tells the client) and checks that a new stream
// lands on the second relay within 2 seconds.
func TestFailoverBlackhole(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.StartEcho(t)
	cov := relaytest.StartCover(t)
	r1 := relaytest.Start(t, cov, relaytest.Options{})
	r2 := relaytest.Start(t, cov, relaytest.Options{CertFrom: r1})
	fw := transporttest.StartUDPForwarder(t, r1.Addr)
	l := relaytest.AddSharedKey(t, "alice", access.Entry{}, r1, r2)
	l.Carriers = []string{link.CarrierQUIC}
	l.Relays = []string{fw.Addr, r2.Addr}
	c, _ := startClient(t, l, nil)
	target := relaytest.Target(t, echo)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := echoOnce(ctx, c, target, 10_000); err != nil {
		t.Fatal(err)
	}
	if a := c.Active(); a == nil || a.Relay != fw.Addr {
		t.Fatalf("active %+v, want the first relay", a)
	}
	fw.Drop.Store(true)
	start := time.Now()
	if err := echoOnce(ctx, c, target, 10_000); err != nil {
		t.Fatalf("stream after the first relay went silent: %v", err)
	}
	took := time.Since(start)
	if a := c.Active(); a == nil || a.Relay != r2.Addr {
		t.Fatalf("active %+v, want relay %s", a, r2.Addr)
	}
	if took > timingSlack*2*time.Second {
		t.Errorf("stream on the second relay after %v, want under 2s (×%d under -race)", took, timingSlack)
	}
	t.Logf("blackholed relay left after %v", took.Round(time.Millisecond))
}
