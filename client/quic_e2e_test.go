package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/client/internal/telegramtest"
	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/quiccarrier"
)

// bothRelay is a relay serving the TLS carrier on TCP and the QUIC carrier
// on UDP at the same port number, on loopback, either of which may be
// left closed.
type bothRelay struct {
	*testRelay
	stop func() // kills the relay: every session ends
}

// startBothRelay starts a relay on one port number for TCP and UDP. With
// tcp or udp false, that socket is bound (so the port stays ours) but
// nothing answers on it: a closed TCP port resets, a closed UDP port
// swallows packets, as a censor's drop would.
//
// With certFrom set, the relay uses certFrom's certificate, so that one
// link (one pin) covers both.
func startBothRelay(t testing.TB, cov *cover, dcs []string, tcp, udp bool, certFrom *bothRelay) *bothRelay {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	for range 20 {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err = net.ListenPacket("udp", ln.Addr().String())
		if err == nil {
			break
		}
		ln.Close()
		ln = nil
	}
	if ln == nil {
		t.Fatal("no port free for both TCP and UDP")
	}
	addr := ln.Addr().String()
	path := filepath.Join(t.TempDir(), "relay")
	d, err := relay.Init(path, relay.Settings{
		Listen: addr,
		Public: []string{addr},
		Cover:  "https://" + cov.addr(),
		SNI:    coverName,
		DC:     dcs,
		Allow:  []string{"127.0.0.0/8"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if certFrom != nil {
		for _, f := range []string{relay.CertFile, relay.KeyFile} {
			b, err := os.ReadFile(filepath.Join(certFrom.dir.Path, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(path, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if d, err = relay.LoadDir(path); err != nil {
			t.Fatal(err)
		}
	}
	log := testLogger(t, "relay "+addr)
	cfg, err := d.Config(log)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = log
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !tcp {
		// Nothing listening: connections are refused.
		ln.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if tcp {
		wg.Go(func() {
			if err := r.Serve(ctx, ln); err != nil {
				t.Errorf("relay tcp: %v", err)
			}
		})
	}
	if udp {
		wg.Go(func() {
			if err := r.ServeQUIC(ctx, pc); err != nil {
				t.Errorf("relay quic: %v", err)
			}
		})
	} else {
		// Bound but never read: packets vanish.
		context.AfterFunc(ctx, func() { pc.Close() })
	}
	wg.Go(func() { cfg.Keys.Watch(ctx, 20*time.Millisecond) })
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return &bothRelay{testRelay: &testRelay{dir: d, addr: addr, cfg: cfg}, stop: stop}
}

func echoTarget(t testing.TB, echo string) transport.Target {
	host, port, _ := net.SplitHostPort(echo)
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatal(err)
	}
	return transport.AddrTarget(host, uint16(p))
}

// echoOnce sends n random bytes on a new stream and checks they come back.
func echoOnce(ctx context.Context, c *client.Client, target transport.Target, n int) error {
	st, err := c.OpenStream(ctx, target)
	if err != nil {
		return err
	}
	defer st.Close()
	data := make([]byte, n)
	rand.Read(data)
	go func() {
		st.Write(data)
		st.CloseWrite()
	}()
	got, err := io.ReadAll(st)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("%d of %d bytes back", len(got), len(data))
	}
	return nil
}

// TestTelegramQUIC runs gotd's MTProto client through the SOCKS5 front
// and the QUIC carrier to a gotd test DC.
func TestTelegramQUIC(t *testing.T) {
	checkLeaks(t)
	dc := telegramtest.StartDC(t, 2)
	cov := startCover(t)
	r := startBothRelay(t, cov, []string{"2=" + dc.Addr}, true, true, nil)
	l := r.addKey(t, "alice", access.Entry{})
	if got := l.CarrierList(); len(got) != 2 || got[0] != link.CarrierTLS || got[1] != link.CarrierQUIC {
		t.Fatalf("link carriers %v, want tls,quic", got)
	}
	c, socks := startClient(t, l, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := telegramtest.Run(ctx, dc, socksDialer(t, socks), 100)
	if err != nil {
		t.Fatalf("MTProto through merpati over QUIC: %v", err)
	}
	if st.RPCs != 100 {
		t.Fatalf("%d RPCs answered, want 100", st.RPCs)
	}
	if a := c.Active(); a == nil || a.Carrier != "quic" {
		t.Fatalf("active session %+v, want quic", a)
	}
	t.Logf("QUIC: key exchange %v, first RPC %v, 100 RPCs in %v", st.KeyExchange, st.FirstRPC, st.Total)
	status, ok := c.Status(ctx)
	if !ok || status.Carrier != "quic" || status.RTT <= 0 || status.Sent == 0 || status.Received == 0 {
		t.Errorf("status %+v", status)
	}
	t.Logf("status: relay %s, %s, rtt %v, sent %d, received %d", status.Relay, status.Carrier, status.RTT, status.Sent, status.Received)
	if n := cov.accepted.Load(); n != 0 {
		t.Errorf("cover site got %d connections from an authenticated client", n)
	}
}

// TestRace checks which carrier wins when one of them is blocked.
func TestRace(t *testing.T) {
	tests := []struct {
		name     string
		tcp, udp bool
		want     string
		within   time.Duration
	}{
		{"both open: quic first", true, true, "quic", 2 * time.Second},
		{"udp blocked: tls wins", true, false, "tls", 3 * time.Second},
		{"tcp closed: quic wins", false, true, "quic", 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			echo := startEcho(t)
			cov := startCover(t)
			r := startBothRelay(t, cov, nil, tt.tcp, tt.udp, nil)
			c, _ := startClient(t, r.addKey(t, "alice", access.Entry{}), nil)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			if err := echoOnce(ctx, c, echoTarget(t, echo), 100_000); err != nil {
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
			checkLeaks(t)
			echo := startEcho(t)
			cov := startCover(t)
			r1 := startBothRelay(t, cov, nil, true, blocked != "udp", nil)
			r2 := startBothRelay(t, cov, nil, true, blocked != "udp", r1)
			// One key valid at both relays; a link listing both.
			e, err := access.Add(r1.dir.KeysPath(), "alice", access.Entry{})
			if err != nil {
				t.Fatal(err)
			}
			if err := access.Save(r2.dir.KeysPath(), []access.Entry{e}); err != nil {
				t.Fatal(err)
			}
			for _, r := range []*bothRelay{r1, r2} {
				if _, err := r.cfg.Keys.Reload(); err != nil {
					t.Fatal(err)
				}
			}
			l := r1.dir.Link(e)
			l.Relays = []string{r1.addr, r2.addr}
			c, _ := startClient(t, l, nil)
			target := echoTarget(t, echo)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := echoOnce(ctx, c, target, 10_000); err != nil {
				t.Fatal(err)
			}
			a := c.Active()
			if a == nil || a.Relay != r1.addr {
				t.Fatalf("active %+v, want relay %s", a, r1.addr)
			}
			inflight, err := c.OpenStream(ctx, target)
			if err != nil {
				t.Fatal(err)
			}
			defer inflight.Close()

			r1.stop()
			killed := time.Now()
			if _, err := io.ReadAll(inflight); err == nil {
				t.Log("in-flight stream ended with EOF")
			}
			if err := echoOnce(ctx, c, target, 10_000); err != nil {
				t.Fatalf("stream after the first relay died: %v", err)
			}
			took := time.Since(killed)
			b := c.Active()
			if b == nil || b.Relay != r2.addr {
				t.Fatalf("active %+v, want relay %s", b, r2.addr)
			}
			if took > timingSlack*2*time.Second {
				t.Errorf("new stream on the second relay after %v, want under 2s (×%d under -race)", took, timingSlack)
			}
			t.Logf("%s/%s → %s/%s in %v", a.Relay, a.Carrier, b.Relay, b.Carrier, took.Round(time.Millisecond))
		})
	}
}

// udpForwarder relays UDP datagrams between one client and to, and can be
// told to drop everything, as a censor blackholing the relay would.
type udpForwarder struct {
	pc   net.PacketConn
	drop atomic.Bool
}

func startUDPForwarder(t testing.TB, to string) *udpForwarder {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.Dial("udp", to)
	if err != nil {
		t.Fatal(err)
	}
	f := &udpForwarder{pc: pc}
	var client atomic.Pointer[net.Addr]
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			client.Store(&from)
			if !f.drop.Load() {
				up.Write(buf[:n])
			}
		}
	})
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			if c := client.Load(); c != nil && !f.drop.Load() {
				pc.WriteTo(buf[:n], *c)
			}
		}
	})
	t.Cleanup(func() { pc.Close(); up.Close(); wg.Wait() })
	return f
}

// TestFailoverBlackhole blackholes the first relay mid-session (its
// packets vanish, nothing tells the client) and checks that a new stream
// lands on the second relay within 2 seconds.
func TestFailoverBlackhole(t *testing.T) {
	checkLeaks(t)
	echo := startEcho(t)
	cov := startCover(t)
	r1 := startBothRelay(t, cov, nil, true, true, nil)
	r2 := startBothRelay(t, cov, nil, true, true, r1)
	fw := startUDPForwarder(t, r1.addr)
	e, err := access.Add(r1.dir.KeysPath(), "alice", access.Entry{})
	if err != nil {
		t.Fatal(err)
	}
	if err := access.Save(r2.dir.KeysPath(), []access.Entry{e}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*bothRelay{r1, r2} {
		if _, err := r.cfg.Keys.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	l := r1.dir.Link(e)
	l.Carriers = []string{link.CarrierQUIC}
	l.Relays = []string{fw.pc.LocalAddr().String(), r2.addr}
	c, _ := startClient(t, l, nil)
	target := echoTarget(t, echo)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := echoOnce(ctx, c, target, 10_000); err != nil {
		t.Fatal(err)
	}
	if a := c.Active(); a == nil || a.Relay != fw.pc.LocalAddr().String() {
		t.Fatalf("active %+v, want the first relay", a)
	}
	fw.drop.Store(true)
	start := time.Now()
	if err := echoOnce(ctx, c, target, 10_000); err != nil {
		t.Fatalf("stream after the first relay went silent: %v", err)
	}
	took := time.Since(start)
	if a := c.Active(); a == nil || a.Relay != r2.addr {
		t.Fatalf("active %+v, want relay %s", a, r2.addr)
	}
	if took > timingSlack*2*time.Second {
		t.Errorf("stream on the second relay after %v, want under 2s (×%d under -race)", took, timingSlack)
	}
	t.Logf("blackholed relay left after %v", took.Round(time.Millisecond))
}

// h3Get fetches https://addr/ with upstream quic-go's HTTP/3 client, as a
// prober would, with the Authorization header authz if not empty.
func h3Get(t *testing.T, addr, authz string) (int, string) {
	t.Helper()
	rt := &http3.Transport{TLSClientConfig: &tls.Config{ServerName: coverName, InsecureSkipVerify: true}}
	defer rt.Close()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = coverName
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatalf("HTTP/3 probe: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestProbesQUIC checks what an HTTP/3 prober sees at the relay's UDP
// port: the cover site's page, also when it replays a valid token.
func TestProbesQUIC(t *testing.T) {
	checkLeaks(t)
	cov := startCover(t)
	r := startBothRelay(t, cov, nil, true, true, nil)
	l := r.addKey(t, "alice", access.Entry{})

	if code, body := h3Get(t, r.addr, ""); code != http.StatusOK || body != coverPage {
		t.Errorf("plain HTTP/3 GET: %d %q, want the cover page", code, body)
	}
	// A token as the client makes it, used once (by "the client") and
	// then replayed by a prober that somehow learned it.
	var nonce [quiccarrier.NonceSize]byte
	rand.Read(nonce[:])
	tok := auth.Token(auth.Key(l.Key), auth.Slot(time.Now()), quiccarrier.Digest(nonce[:]))
	authz := "Bearer " + base64.RawURLEncoding.EncodeToString(append(nonce[:], tok[:]...))
	if code, body := h3Get(t, r.addr, authz); code != http.StatusOK || body == coverPage {
		t.Errorf("first use of a valid token: %d %q, want a taken-over stream", code, body)
	}
	if code, body := h3Get(t, r.addr, authz); code != http.StatusOK || body != coverPage {
		t.Errorf("replayed token: %d %q, want the cover page", code, body)
	}
	if code, body := h3Get(t, r.addr, "Bearer "+base64.RawURLEncoding.EncodeToString(make([]byte, 48))); code != http.StatusOK || body != coverPage {
		t.Errorf("zero token: %d %q, want the cover page", code, body)
	}
	if cov.accepted.Load() == 0 {
		t.Error("the cover site saw no connection from the HTTP/3 reverse proxy")
	}
}
