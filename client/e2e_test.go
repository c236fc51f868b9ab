package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/client/internal/telegramtest"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport"
)

// socksDialer returns a dial function through the SOCKS5 proxy at addr.
func socksDialer(t testing.TB, addr string) func(ctx context.Context, network, address string) (net.Conn, error) {
	d, err := proxy.SOCKS5("tcp", addr, nil, proxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	return d.(proxy.ContextDialer).DialContext
}

// TestTelegram runs a real MTProto client (gotd) through merpati's SOCKS5
// front, the TLS carrier and the relay to a gotd test server playing DC 2:
// the key exchange completes and 100 RPCs succeed.
func TestTelegram(t *testing.T) {
	checkLeaks(t)
	dc := telegramtest.StartDC(t, 2)
	cov := startCover(t)
	r := startRelay(t, cov, []string{"2=" + dc.Addr})
	_, socks := startClient(t, r.addKey(t, "alice", access.Entry{}), nil)

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
	if n := cov.accepted.Load(); n != 0 {
		t.Errorf("cover site got %d connections from an authenticated client", n)
	}
}

// TestTelegramByDCNumber opens streams that name a DC number, as the
// local MTProxy front does, and checks the relay maps it through its table.
func TestStreamByDCNumber(t *testing.T) {
	checkLeaks(t)
	echo := startEcho(t)
	cov := startCover(t)
	r := startRelay(t, cov, []string{"2=" + echo})
	c, _ := startClient(t, r.addKey(t, "alice", access.Entry{}), nil)
	ctx := context.Background()
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
}

func isStatus(err error, s transport.Status) bool {
	var se *transport.StatusError
	return errors.As(err, &se) && se.Status == s
}

// TestCurl drives the client with curl: SOCKS5 with a host name resolved by
// the relay, and with RFC 1929 authentication.
func TestCurl(t *testing.T) {
	checkLeaks(t)
	curl := need(t, "curl")
	web := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello through merpati")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go web.Serve(ln)
	defer web.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())

	cov := startCover(t)
	r := startRelay(t, cov, nil)
	l := r.addKey(t, "alice", access.Entry{})
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
	// A target outside Telegram and outside the lab's allowed range is
	// refused by the relay, never dialled, and reported through SOCKS5 as
	// reply 2, "connection not allowed by ruleset".
	out, err := run("--socks5", socks, "http://10.255.255.1:80/")
	if err == nil || !strings.Contains(out, "(2)") {
		t.Errorf("non-Telegram target: %q %v", out, err)
	}
}

// TestStreams checks stream semantics end to end: exact bytes, half-close,
// many concurrent streams on one session.
func TestStreams(t *testing.T) {
	checkLeaks(t)
	echo := startEcho(t)
	cov := startCover(t)
	r := startRelay(t, cov, nil)
	c, _ := startClient(t, r.addKey(t, "alice", access.Entry{}), nil)
	host, port, _ := net.SplitHostPort(echo)
	var p uint16
	fmt.Sscan(port, &p)

	var wg sync.WaitGroup
	for i := range 32 {
		wg.Go(func() {
			st, err := c.OpenStream(context.Background(), transport.AddrTarget(host, p))
			if err != nil {
				t.Errorf("stream %d: %v", i, err)
				return
			}
			defer st.Close()
			data := make([]byte, 1+i*37_000)
			rand.Read(data)
			go func() {
				st.Write(data)
				st.CloseWrite() // the echo server answers EOF only after ours
			}()
			got, err := io.ReadAll(st)
			if err != nil || !bytes.Equal(got, data) {
				t.Errorf("stream %d: %d of %d bytes back, err %v", i, len(got), len(data), err)
			}
		})
	}
	wg.Wait()
	if a := c.Active(); a == nil || a.Carrier != "tls" {
		t.Fatalf("active session: %+v", a)
	}
}

// TestProbes checks what a censor's prober sees at the relay's port: the
// cover site, byte for byte where the bytes are deterministic.
func TestProbes(t *testing.T) {
	checkLeaks(t)
	cov := startCover(t)
	r := startRelay(t, cov, nil)
	r.addKey(t, "alice", access.Entry{})

	// A TLS client without a key is shown the cover site's certificate.
	if got, want := tlsProbe(t, r.addr), tlsProbe(t, cov.addr()); !bytes.Equal(got, want) {
		t.Error("TLS probe saw a certificate other than the cover site's")
	}

	// Non-TLS and broken probes get the cover site's own answer.
	for _, probe := range [][]byte{
		[]byte("GET / HTTP/1.1\r\nHost: " + coverName + "\r\n\r\n"),
		[]byte("\x16\x03\x01\x00\x05hello"),
		bytes.Repeat([]byte{0x16, 0x03, 0x03, 0x00, 0x10}, 5),
		randomBytes(300),
	} {
		got, want := rawProbe(t, r.addr, probe), rawProbe(t, cov.addr(), probe)
		if !bytes.Equal(got, want) {
			t.Errorf("probe %q: relay answered %q, cover site %q", probe[:min(len(probe), 16)], got, want)
		}
	}

	if curl := need(t, "curl"); curl != "" {
		_, port, _ := net.SplitHostPort(r.addr)
		out, err := exec.Command(curl, "-sSk", "--max-time", "20", "--resolve", coverName+":"+port+":127.0.0.1",
			"https://"+coverName+":"+port+"/").CombinedOutput()
		if err != nil || string(out) != coverPage {
			t.Errorf("curl https probe: %q %v", out, err)
		}
	}
	if openssl := need(t, "openssl"); openssl != "" {
		cert := func(addr string) string {
			cmd := exec.Command(openssl, "s_client", "-connect", addr, "-servername", coverName)
			cmd.Stdin = strings.NewReader("")
			out, _ := cmd.CombinedOutput()
			s := string(out)
			i, j := strings.Index(s, "-----BEGIN CERTIFICATE-----"), strings.Index(s, "-----END CERTIFICATE-----")
			if i < 0 || j < i {
				t.Fatalf("openssl s_client %s: no certificate in %q", addr, s)
			}
			return s[i:j]
		}
		if cert(r.addr) != cert(cov.addr()) {
			t.Error("openssl saw a certificate other than the cover site's")
		}
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	b[0] = 0x47 // not 0x16: decided at the first byte
	return b
}

// rawProbe sends probe, half-closes, and returns everything the server
// answers within two seconds.
func rawProbe(t testing.TB, addr string, probe []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(probe)
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b, _ := io.ReadAll(c)
	return b
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

// TestReplay replays a captured authenticated hello: the relay must not
// open a session for it, and must send it to the cover site.
func TestReplay(t *testing.T) {
	checkLeaks(t)
	echo := startEcho(t)
	cov := startCover(t)
	r := startRelay(t, cov, nil)
	var rec *recorder
	c, _ := startClient(t, r.addKey(t, "alice", access.Entry{}), func(cfg *client.Config) {
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
	host, port, _ := net.SplitHostPort(echo)
	var p uint16
	fmt.Sscan(port, &p)
	st, err := c.OpenStream(context.Background(), transport.AddrTarget(host, p))
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	rec.mu.Lock()
	hello := rec.first
	rec.mu.Unlock()
	if len(hello) < 100 || hello[0] != 0x16 {
		t.Fatalf("recorded %d bytes, not a hello", len(hello))
	}
	before := cov.accepted.Load()
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write(hello)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	conn.Read(b[:]) // the cover site's server hello (or an alert)
	if cov.accepted.Load() != before+1 {
		t.Fatal("a replayed hello did not go to the cover site")
	}
}

// TestRevoke revokes one person's key while two people use the relay: the
// revoked one is cut off and sent to the cover site from then on; the other
// notices nothing.
func TestRevoke(t *testing.T) {
	checkLeaks(t)
	echo := startEcho(t)
	cov := startCover(t)
	r := startRelay(t, cov, nil)
	alice, _ := startClient(t, r.addKey(t, "alice", access.Entry{}), nil)
	bob, _ := startClient(t, r.addKey(t, "bob", access.Entry{}), nil)
	host, port, _ := net.SplitHostPort(echo)
	var p uint16
	fmt.Sscan(port, &p)
	open := func(c *client.Client) (transport.Stream, error) {
		return c.OpenStream(context.Background(), transport.AddrTarget(host, p))
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
	bs, err := open(bob)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(as, "a1"); err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(bs, "b1"); err != nil {
		t.Fatal(err)
	}

	if err := access.Revoke(r.dir.KeysPath(), "alice"); err != nil {
		t.Fatal(err)
	}
	// The relay notices the file change (polled every 20ms here).
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
	before := cov.accepted.Load()
	if _, err := open(alice); err == nil {
		t.Fatal("revoked key opened a stream")
	}
	if cov.accepted.Load() == before {
		t.Error("revoked key's new connection did not go to the cover site")
	}
	if bs2, err := open(bob); err != nil {
		t.Fatalf("bob cannot open a new stream: %v", err)
	} else {
		bs2.Close()
	}
	bs.Close()
}
