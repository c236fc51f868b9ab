package censorlab_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/merpati/merpati/client/internal/censorlab"
	"github.com/merpati/merpati/client/internal/telegramtest"
	"github.com/merpati/merpati/transport/link"
)

// telegramUntil runs MTProto clients through the lab client's SOCKS5 port,
// one after another, until one gets through or deadline passes, and
// returns the last run's figures, the number of runs and the last error.
func telegramUntil(t *testing.T, lab *censorlab.Lab, svc *censorlab.Services, deadline time.Time) (st telegramtest.Stats, attempts int, err error) {
	for time.Now().Before(deadline) {
		attempts++
		st, err = lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{
			SOCKS: censorlab.ClientListen, Timeout: time.Until(deadline)})
		if err == nil {
			break
		}
	}
	return st, attempts, err
}

// failoverLimit is how soon new connections must use the second relay
// after the first is blackholed.
const failoverLimit = 2 * time.Second

var (
	binsOnce sync.Once
	binsDir  string
	bins     censorlab.Bins
	binsErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binsDir != "" {
		os.RemoveAll(binsDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// need skips t when the machine cannot run a lab, or fails it when the
// CI environment variable is set (CI runs as root with the tools
// installed).
func need(t *testing.T) {
	t.Helper()
	if err := censorlab.Check(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("censor lab unavailable in CI: %v", err)
		}
		t.Skipf("censor lab unavailable: %v", err)
	}
}

// newLab makes a lab with its services running, torn down when t ends;
// if t fails, every process's output is logged.
func newLab(t *testing.T) (*censorlab.Lab, *censorlab.Services) {
	t.Helper()
	need(t)
	binsOnce.Do(func() {
		binsDir, binsErr = os.MkdirTemp("", "censorlab-bins-")
		if binsErr == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			bins, binsErr = censorlab.Build(ctx, binsDir)
		}
	})
	if binsErr != nil {
		t.Fatal(binsErr)
	}
	lab, err := censorlab.New(t.Context(), censorlab.Config{Bins: bins})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("censor:\n%s\n%s", lab.Rules(), lab.Logs())
		}
		if err := lab.Close(); err != nil {
			t.Error(err)
		}
	})
	svc, err := lab.StartServices(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return lab, svc
}

// withCarriers returns a copy of lk that offers only carriers.
func withCarriers(lk *link.Link, carriers ...string) *link.Link {
	c := *lk
	c.Carriers = carriers
	return &c
}

func relayAddr(ip string) string { return ip + ":" + strconv.Itoa(censorlab.RelayPort) }

// TestLabIsolated checks the lab's promise: its hosts have no default
// route and no route outside the lab prefix.
func TestLabIsolated(t *testing.T) {
	need(t)
	lab, err := censorlab.New(t.Context(), censorlab.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	for _, h := range censorlab.Hosts {
		out, err := lab.Run(t.Context(), h, "ip", "-4", "route", "get", "192.0.2.1")
		if err == nil {
			t.Errorf("%s has a route to 192.0.2.1: %s", h, out)
		}
		out, err = lab.Run(t.Context(), h, "ip", "-6", "route", "show", "default")
		if err == nil && len(out) > 0 {
			t.Errorf("%s has an IPv6 default route: %s", h, out)
		}
	}
}

// Case 1: UDP blocked at the censor: the TLS carrier wins and Telegram
// traffic goes through.
func TestUDPBlocked(t *testing.T) {
	lab, svc := newLab(t)
	if err := lab.BlockUDP(); err != nil {
		t.Fatal(err)
	}
	client, err := lab.StartClient(t.Context(), "merpati", svc.Link)
	if err != nil {
		t.Fatal(err)
	}
	st, err := lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{SOCKS: censorlab.ClientListen, RPCs: 3})
	if err != nil {
		t.Fatal(err)
	}
	sessions := censorlab.ClientSessions(client)
	if len(sessions) == 0 {
		t.Fatalf("client logged no session")
	}
	if got := sessions[len(sessions)-1].Carrier; got != link.CarrierTLS {
		t.Errorf("carrier in use = %q, want %q", got, link.CarrierTLS)
	}
	t.Logf("UDP blocked: %d RPCs via %s/%s; key exchange %v, first RPC %v, total %v",
		st.RPCs, sessions[0].Relay, sessions[0].Carrier, ms(st.KeyExchange), ms(st.FirstRPC), ms(st.Total))
}

// Case 2: TCP 443 to the relay blocked: the QUIC carrier wins.
func TestTCPBlocked(t *testing.T) {
	lab, svc := newLab(t)
	if !slices.Contains(svc.Link.CarrierList(), link.CarrierQUIC) {
		t.Fatalf("relay's link offers %v, no QUIC", svc.Link.CarrierList())
	}
	for _, a := range []string{censorlab.Relay1Addr, censorlab.Relay2Addr} {
		if err := lab.BlockTCP(a, censorlab.RelayPort); err != nil {
			t.Fatal(err)
		}
	}
	client, err := lab.StartClient(t.Context(), "merpati", svc.Link)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{SOCKS: censorlab.ClientListen, RPCs: 3}); err != nil {
		t.Fatal(err)
	}
	sessions := censorlab.ClientSessions(client)
	if len(sessions) == 0 {
		t.Fatalf("client logged no session")
	}
	if got := sessions[len(sessions)-1].Carrier; got != link.CarrierQUIC {
		t.Errorf("carrier in use = %q, want %q", got, link.CarrierQUIC)
	}
}

// Case 3: the first relay is blackholed while the client's session to it
// is up; new connections must use the second relay within failoverLimit.
func TestRelayBlackholed(t *testing.T) {
	lab, svc := newLab(t)
	if len(svc.Link.Relays) < 2 || svc.Link.Relays[0] != relayAddr(censorlab.Relay1Addr) {
		t.Fatalf("link relays = %v, want %s first and another", svc.Link.Relays, relayAddr(censorlab.Relay1Addr))
	}
	client, err := lab.StartClient(t.Context(), "merpati", svc.Link)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{SOCKS: censorlab.ClientListen}); err != nil {
		t.Fatal(err)
	}
	before := censorlab.ClientSessions(client)
	if len(before) == 0 {
		t.Fatal("client logged no session")
	}
	for _, s := range before {
		if s.Relay != relayAddr(censorlab.Relay1Addr) {
			t.Fatalf("sessions before the blackhole = %+v, want relay1 only", before)
		}
	}

	blackholed := time.Now()
	if err := lab.Blackhole(censorlab.Relay1Addr); err != nil {
		t.Fatal(err)
	}
	// New Telegram connections, one after another, until one gets
	// through; without fast failover each may hang for the client's open
	// timeout, so the whole wait is bounded.
	deadline := blackholed.Add(25 * time.Second)
	st, attempts, lastErr := telegramUntil(t, lab, svc, deadline)
	if lastErr != nil {
		t.Fatalf("no connection got through within %v of the blackhole (%d attempts): %v", time.Since(blackholed), attempts, lastErr)
	}
	through := time.Since(blackholed)
	var moved time.Duration
	sessions := censorlab.ClientSessions(client)
	for _, s := range sessions {
		if s.Relay == relayAddr(censorlab.Relay2Addr) && s.Time.After(blackholed) {
			moved = s.Time.Sub(blackholed)
			break
		}
	}
	if moved == 0 {
		t.Fatalf("a connection got through but the client has no session to relay2: %+v", sessions)
	}
	t.Logf("relay1 blackholed: session to relay2 up after %v; first MTProto client through after %v (%d attempts; its key exchange %v)",
		ms(moved), ms(through), attempts, ms(st.KeyExchange))
	if moved > timingSlack*failoverLimit {
		t.Errorf("new connections moved to relay2 after %v, want within %v", ms(moved), timingSlack*failoverLimit)
	}
}

// Case 4: 100 ms extra RTT and 1% loss each way at the censor: time to the
// first MTProto RPC through each carrier and directly. Figures are logged,
// not asserted: the machine is shared and noisy.
func TestSlowLossyLink(t *testing.T) {
	const (
		delay   = 50 * time.Millisecond // each way: RTT +100 ms
		loss    = 1.0                   // percent, each way
		samples = 3
	)
	lab, svc := newLab(t)
	switch err := lab.Netem(delay, loss); {
	case errors.Is(err, censorlab.ErrNetemUnsupported):
		t.Logf("%v: NO DELAY; %v%% loss via nftables only", err, loss)
		if err := lab.Loss(loss); err != nil {
			t.Fatal(err)
		}
	case err != nil:
		t.Fatal(err)
	}
	t.Logf("censor:\n%s", lab.Rules())

	// measure runs samples fresh MTProto clients (new TCP connection, new
	// auth key each) and returns the times to their first RPC's answer.
	measure := func(t *testing.T, socks string) []time.Duration {
		var ds []time.Duration
		for range samples {
			st, err := lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{SOCKS: socks, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			ds = append(ds, st.Total)
		}
		return ds
	}
	t.Run("direct", func(t *testing.T) {
		ds := measure(t, "")
		t.Logf("direct: time to first RPC %v (median %v)", msAll(ds), median(ds))
	})
	for _, carrier := range []string{link.CarrierTLS, link.CarrierQUIC} {
		t.Run(carrier, func(t *testing.T) {
			client, err := lab.StartClient(t.Context(), "merpati-"+carrier, withCarriers(svc.Link, carrier))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Stop()
			// The first run pays for the carrier's session handshake; the
			// rest reuse the session.
			ds := measure(t, censorlab.ClientListen)
			sessions := censorlab.ClientSessions(client)
			if len(sessions) == 0 || sessions[0].Carrier != carrier {
				t.Fatalf("sessions = %+v, want %s", sessions, carrier)
			}
			t.Logf("via %s: time to first RPC %v (first includes the carrier handshake; median of the rest %v)",
				carrier, msAll(ds), median(ds[1:]))
		})
	}
}

// TestSmallMTU: a hop on the path carries smaller packets than both ends
// (1,500): 1,400 bytes, as behind many tunnels and mobile networks, or
// 1,280, IPv6's minimum. Each carrier carries an MTProto client's key
// exchange and RPCs of up to 24 KiB each way: TCP by path MTU discovery,
// QUIC within its first packets' size, its don't-fragment probes for more
// lost or refused. At 1,280 only the TLS carrier works: quic-go's first
// packets carry 1,280 bytes of UDP payload, 1,308 bytes of IPv4 packet, as
// the cover site's own (Caddy's) do, and the client falls back to TLS.
func TestSmallMTU(t *testing.T) {
	lab, svc := newLab(t)
	both := []string{link.CarrierQUIC, link.CarrierTLS}
	for _, c := range []struct {
		mtu     int
		offered []string // the link's carriers
		want    string   // the carrier that carries
	}{
		{1400, []string{link.CarrierTLS}, link.CarrierTLS},
		{1400, []string{link.CarrierQUIC}, link.CarrierQUIC},
		{1280, []string{link.CarrierTLS}, link.CarrierTLS},
		{1280, both, link.CarrierTLS},
	} {
		name := fmt.Sprintf("%d/%s", c.mtu, strings.Join(c.offered, "+"))
		t.Run(name, func(t *testing.T) {
			if err := lab.MTU(c.mtu); err != nil {
				t.Fatal(err)
			}
			client, err := lab.StartClient(t.Context(), "merpati-"+strings.ReplaceAll(name, "/", "-"), withCarriers(svc.Link, c.offered...))
			if err != nil {
				t.Fatal(err)
			}
			defer client.Stop()
			// Payloads cycle through 16 B, 256 B, 4 KiB and 24 KiB.
			st, err := lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{SOCKS: censorlab.ClientListen, RPCs: 8, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			sessions := censorlab.ClientSessions(client)
			if len(sessions) == 0 || sessions[len(sessions)-1].Carrier != c.want {
				t.Fatalf("sessions = %+v, want %s", sessions, c.want)
			}
			t.Logf("MTU %d, via %s: %d RPCs, first answered after %v", c.mtu, c.want, st.RPCs, ms(st.KeyExchange+st.FirstRPC))
		})
	}
}

// Case 5: the censor drops everything from the client to the "Telegram"
// addresses: direct connections fail, connections through the relay work.
func TestDCBlocked(t *testing.T) {
	lab, svc := newLab(t)
	if _, err := lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{Timeout: 10 * time.Second}); err != nil {
		t.Fatalf("direct, before the block: %v", err)
	}
	if err := lab.DropTo(censorlab.DCPrefix); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{Timeout: 3 * time.Second}); err == nil {
		t.Fatal("direct connection to the DC worked through the block")
	}
	if _, err := lab.StartClient(t.Context(), "merpati", svc.Link); err != nil {
		t.Fatal(err)
	}
	st, err := lab.Telegram(t.Context(), svc, censorlab.TelegramOptions{SOCKS: censorlab.ClientListen, RPCs: 3})
	if err != nil {
		t.Fatalf("via the relay: %v", err)
	}
	t.Logf("DC blocked: direct fails; via the relay %d RPCs, first RPC answered after %v", st.RPCs, ms(st.KeyExchange+st.FirstRPC))
}

func ms(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

func msAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = ms(d)
	}
	return out
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return ms(s[len(s)/2])
}
