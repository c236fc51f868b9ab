package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/client/internal/telegramtest"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/transporttest"
)

// The end-to-end behaviours below run once per carrier
// (relaytest.ForEachCarrier), each with a relay on which every carrier
// answers and a link restricted to the carrier under test.

// socksDialer returns a dial function through the SOCKS5 proxy at addr.
func socksDialer(t testing.TB, addr string) func(ctx context.Context, network, address string) (net.Conn, error) {
	d, err := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	return d.(proxy.ContextDialer).DialContext
}

// carrierRelay starts a cover site and a relay on which every carrier
// answers, with the DC overrides dcs.
func carrierRelay(t *testing.T, dcs []string) (*relaytest.Relay, *relaytest.Cover) {
	t.Helper()
	cov := relaytest.StartCover(t)
	return relaytest.Start(t, cov, relaytest.Options{DC: dcs}), cov
}

// addKey adds an access key with limits at r and returns its link,
// restricted to carrier.
func addKey(t *testing.T, r *relaytest.Relay, name, carrier string, limits access.Entry) *link.Link {
	t.Helper()
	l := r.AddKey(t, name, limits)
	l.Carriers = []string{carrier}
	return l
}

// TestTelegram runs a real MTProto client (gotd) through merpati's SOCKS5
// front, the carrier and the relay to a gotd test server playing DC 2:
// the key exchange completes and 100 RPCs succeed.
func TestTelegram(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		dc := telegramtest.StartDC(t, 2)
		r, cov := carrierRelay(t, []string{"2=" + dc.Addr})
		l := r.AddKey(t, "alice", access.Entry{})
		if got := l.CarrierList(); len(got) != 2 || got[0] != link.CarrierTLS || got[1] != link.CarrierQUIC {
			t.Fatalf("link carriers %v, want tls,quic", got)
		}
		l.Carriers = []string{carrier}
		c, socks := startClient(t, l, nil)

		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		st, err := telegramtest.Run(ctx, dc, socksDialer(t, socks), 100)
		if err != nil {
			t.Fatalf("MTProto through merpati: %v", err)
		}
		if st.RPCs != 100 {
			t.Fatalf("%d RPCs answered, want 100", st.RPCs)
		}
		t.Logf("key exchange %v, first RPC %v, 100 RPCs in %v", st.KeyExchange, st.FirstRPC, st.Total)
		if a := c.Active(); a == nil || a.Carrier != carrier {
			t.Fatalf("active session %+v, want %s", a, carrier)
		}
		status, ok := c.Status(ctx)
		if !ok || status.Carrier != carrier || status.RTT <= 0 || status.Sent == 0 || status.Received == 0 {
			t.Errorf("status %+v", status)
		}
		t.Logf("status: relay %s, %s, rtt %v, sent %d, received %d", status.Relay, status.Carrier, status.RTT, status.Sent, status.Received)
		if n := cov.Accepted(); n != 0 {
			t.Errorf("cover site got %d connections from an authenticated client", n)
		}
	})
}

// TestStreamByDCNumber opens streams that name a DC number, as the local
// MTProxy front does, and checks the relay maps it through its table.
func TestStreamByDCNumber(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echo := relaytest.StartEcho(t)
		r, _ := carrierRelay(t, []string{"2=" + echo})
		c, _ := startClient(t, addKey(t, r, "alice", carrier, access.Entry{}), nil)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		st, err := c.OpenStream(ctx, transport.DCTarget(-2)) // media DC 2 uses DC 2's address
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.Write([]byte("ping"))
		st.CloseWrite()
		got, err := io.ReadAll(st)
		if err != nil || string(got) != "ping" {
			t.Fatalf("echo: %q %v", got, err)
		}
		if _, err := c.OpenStream(ctx, transport.DCTarget(7)); !isStatus(err, transport.StatusNotAllowed) {
			t.Fatalf("unknown DC: %v", err)
		}
	})
}

func isStatus(err error, s transport.Status) bool {
	var se *transport.StatusError
	return errors.As(err, &se) && se.Status == s
}

// TestCurl drives the client with curl: SOCKS5 with a host name resolved by
// the relay, and with RFC 1929 authentication.
func TestCurl(t *testing.T) {
	curl := need(t, "curl")
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello through merpati")
		}))
		defer web.Close()
		_, port, _ := net.SplitHostPort(web.Listener.Addr().String())

		r, _ := carrierRelay(t, nil)
		l := addKey(t, r, "alice", carrier, access.Entry{})
		_, socks := startClient(t, l, nil)
		_, socksAuth := startClient(t, l, func(c *client.Config) { c.SocksUsers = map[string]string{"tg": "secret"} })

		run := func(args ...string) (string, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, curl, append([]string{"-sS", "--max-time", "20"}, args...)...).CombinedOutput()
			return string(out), err
		}
		for _, tc := range []struct{ name, flag, proxy, url string }{
			{"hostname", "--socks5-hostname", socks, "http://localhost:" + port + "/"},
			{"address", "--socks5", socks, "http://127.0.0.1:" + port + "/"},
			{"auth", "--socks5-hostname", "tg:secret@" + socksAuth, "http://localhost:" + port + "/"},
		} {
			out, err := run(tc.flag, tc.proxy, tc.url)
			if err != nil || out != "hello through merpati" {
				t.Errorf("%s: %q %v", tc.name, out, err)
			}
		}
		if out, err := run("--socks5-hostname", "tg:wrong@"+socksAuth, "http://localhost:"+port+"/"); err == nil {
			t.Errorf("wrong SOCKS password accepted: %q", out)
		}
		// A target outside Telegram and outside the lab's allowed range
		// is refused by the relay, never dialled, and reported through
		// SOCKS5 as reply 2, "connection not allowed by ruleset".
		out, err := run("--socks5", socks, "http://10.255.255.1:80/")
		if err == nil || !strings.Contains(out, "(2)") {
			t.Errorf("non-Telegram target: %q %v", out, err)
		}
	})
}

// TestStreams checks stream semantics end to end: exact bytes, half-close,
// many concurrent streams on one session.
func TestStreams(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echo := relaytest.Target(t, relaytest.StartEcho(t))
		r, _ := carrierRelay(t, nil)
		c, _ := startClient(t, addKey(t, r, "alice", carrier, access.Entry{}), nil)

		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Go(func() {
				if err := echoOnce(ctx, c, echo, 1+i*37_000); err != nil {
					t.Errorf("stream %d: %v", i, err)
				}
			})
		}
		wg.Wait()
		if a := c.Active(); a == nil || a.Carrier != carrier {
			t.Fatalf("active session %+v, want %s", a, carrier)
		}
	})
}

// TestProbes checks what a censor's prober sees at the relay's port: the
// cover site, byte for byte where the bytes are deterministic (see
// relaytest.CheckProbes), and to curl and openssl over TCP.
func TestProbes(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		r, cov := carrierRelay(t, nil)
		l := r.AddKey(t, "alice", access.Entry{})
		relaytest.CheckProbes(t, carrier, r, cov, l)
		if carrier != link.CarrierTLS {
			return
		}
		if curl := need(t, "curl"); curl != "" {
			_, port, _ := net.SplitHostPort(r.Addr)
			out, err := exec.Command(curl, "-sSk", "--max-time", "20", "--resolve", relaytest.CoverName+":"+port+":127.0.0.1",
				"https://"+relaytest.CoverName+":"+port+"/").CombinedOutput()
			if err != nil || string(out) != relaytest.CoverPage {
				t.Errorf("curl https probe: %q %v", out, err)
			}
		}
		if openssl := need(t, "openssl"); openssl != "" {
			cert := func(addr string) string {
				cmd := exec.Command(openssl, "s_client", "-connect", addr, "-servername", relaytest.CoverName)
				cmd.Stdin = strings.NewReader("")
				out, _ := cmd.CombinedOutput()
				s := string(out)
				i, j := strings.Index(s, "-----BEGIN CERTIFICATE-----"), strings.Index(s, "-----END CERTIFICATE-----")
				if i < 0 || j < i {
					t.Fatalf("openssl s_client %s: no certificate in %q", addr, s)
				}
				return s[i:j]
			}
			if cert(r.Addr) != cert(cov.Addr()) {
				t.Error("openssl saw a certificate other than the cover site's")
			}
		}
	})
}

// recorder keeps the first bytes a client sends to the relay.
type recorder struct {
	net.Conn
	mu    sync.Mutex
	first []byte
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	if r.first == nil {
		r.first = bytes.Clone(b)
	}
	r.mu.Unlock()
	return r.Conn.Write(b)
}

// TestReplay replays what a client sent to open its session: the relay
// must not open a session for it. Over TCP the captured hello goes to the
// cover site. Over UDP the client's datagrams, replayed from elsewhere,
// are a handshake nobody can finish (the token is sent only once the
// handshake completes), so no session is made.
func TestReplay(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echo := relaytest.Target(t, relaytest.StartEcho(t))
		r, cov := carrierRelay(t, nil)
		l := addKey(t, r, "alice", carrier, access.Entry{})
		var (
			rec *recorder
			fw  *transporttest.UDPForwarder
		)
		if carrier == link.CarrierQUIC {
			fw = transporttest.StartUDPForwarder(t, r.Addr)
			fw.Record.Store(true)
			l.Relays = []string{fw.Addr}
		}
		c, _ := startClient(t, l, func(cfg *client.Config) {
			cfg.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				conn, err := d.DialContext(ctx, network, addr)
				if err == nil {
					rec = &recorder{Conn: conn}
					return rec, nil
				}
				return conn, err
			}
		})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := echoOnce(ctx, c, echo, 1000); err != nil {
			t.Fatal(err)
		}
		opened := r.Logs.Count("session opened")
		if opened != 1 {
			t.Fatalf("%d sessions opened for one client", opened)
		}
		before := cov.Accepted()
		switch carrier {
		case link.CarrierTLS:
			rec.mu.Lock()
			hello := rec.first
			rec.mu.Unlock()
			if len(hello) < 100 || hello[0] != 0x16 {
				t.Fatalf("recorded %d bytes, not a hello", len(hello))
			}
			conn, err := net.Dial("tcp", r.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.Write(hello)
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			var b [1]byte
			conn.Read(b[:]) // the cover site's server hello (or an alert)
			if cov.Accepted() != before+1 {
				t.Fatal("a replayed hello did not go to the cover site")
			}
		case link.CarrierQUIC:
			fw.Record.Store(false)
			sent := fw.Recorded()
			if len(sent) < 2 {
				t.Fatalf("recorded %d datagrams from the client", len(sent))
			}
			conn, err := net.Dial("udp", r.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// The relay cannot decrypt what follows the Initial: those
			// packets are keyed to the client's handshake.
			for _, d := range sent {
				conn.Write(d)
			}
			// Give a replayed session time to show.
			time.Sleep(time.Second)
		}
		if n := r.Logs.Count("session opened"); n != opened {
			t.Errorf("%d sessions opened after the replay, want %d", n, opened)
		}
		if err := echoOnce(ctx, c, echo, 1000); err != nil {
			t.Errorf("the client's own session after the replay: %v", err)
		}
	})
}

// TestRevoke revokes one person's key while two people use the relay: the
// revoked one's streams end within seconds, and from then on it is sent to
// the cover site, which the client reports as a refused key
// (transport.ErrKeyRefused) at once, not after its stream timeout; the
// other notices nothing.
func TestRevoke(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echo := relaytest.Target(t, relaytest.StartEcho(t))
		r, cov := carrierRelay(t, nil)
		alice, _ := startClient(t, addKey(t, r, "alice", carrier, access.Entry{}), nil)
		bob, _ := startClient(t, addKey(t, r, "bob", carrier, access.Entry{}), nil)
		open := func(c *client.Client) (transport.Stream, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return c.OpenStream(ctx, echo)
		}
		roundTrip := func(st transport.Stream, msg string) error {
			if _, err := st.Write([]byte(msg)); err != nil {
				return err
			}
			buf := make([]byte, len(msg))
			st.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(st, buf); err != nil {
				return err
			}
			if string(buf) != msg {
				return fmt.Errorf("got %q", buf)
			}
			return nil
		}
		as, err := open(alice)
		if err != nil {
			t.Fatal(err)
		}
		defer as.Close()
		bs, err := open(bob)
		if err != nil {
			t.Fatal(err)
		}
		defer bs.Close()
		if err := roundTrip(as, "a1"); err != nil {
			t.Fatal(err)
		}
		if err := roundTrip(bs, "b1"); err != nil {
			t.Fatal(err)
		}

		// As the operator does: the relay notices the file change (polled
		// every 20 ms here).
		if err := access.Revoke(r.Dir.KeysPath(), "alice"); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for roundTrip(as, "a2") == nil {
			if time.Now().After(deadline) {
				t.Fatal("revoked key's stream still works")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := roundTrip(bs, "b2"); err != nil {
			t.Fatalf("bob's stream broke when alice was revoked: %v", err)
		}
		before := cov.Reached(carrier)
		start := time.Now()
		if st, err := open(alice); err == nil {
			st.Close()
			t.Fatal("revoked key opened a stream")
		} else if !errors.Is(err, transport.ErrKeyRefused) {
			t.Errorf("revoked key's open: %v, want ErrKeyRefused", err)
		}
		// The client's stream timeout is 20 s: a refusal it had to wait
		// out would take that long.
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("revoked key's open failed after %v, want well under the 20 s stream timeout", took)
		}
		if cov.Reached(carrier) == before {
			t.Error("revoked key's new connection did not go to the cover site")
		}
		if bs2, err := open(bob); err != nil {
			t.Fatalf("bob cannot open a new stream: %v", err)
		} else {
			bs2.Close()
		}
	})
}

// TestQuota gives a key a byte quota: the stream that crosses it is cut,
// and the key's next streams are refused with StatusQuota, on a session
// that stays up.
func TestQuota(t *testing.T) {
	const quota = 256 << 10
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echo := relaytest.Target(t, relaytest.StartEcho(t))
		r, _ := carrierRelay(t, nil)
		c, _ := startClient(t, addKey(t, r, "small", carrier, access.Entry{QuotaBytes: quota}), nil)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := echoOnce(ctx, c, echo, 1000); err != nil {
			t.Fatalf("stream within the quota: %v", err)
		}
		// 4 MiB through the echo: 8 MiB counted, far over the quota.
		err := echoOnce(ctx, c, echo, 4<<20)
		if err == nil {
			t.Fatal("a stream carried 8 MiB with a quota of 256 KiB")
		}
		if used := r.Keys.Usage()["small"]; used < quota {
			t.Errorf("usage %d after the stream was cut, want at least the quota %d", used, quota)
		}
		if _, err := c.OpenStream(ctx, echo); !isStatus(err, transport.StatusQuota) {
			t.Fatalf("stream over the quota: %v, want %v", err, transport.StatusQuota)
		}
		if a := c.Active(); a == nil || a.Carrier != carrier {
			t.Errorf("active session %+v, want %s", a, carrier)
		}
	})
}
