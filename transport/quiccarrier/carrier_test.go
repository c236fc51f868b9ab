package quiccarrier

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	upquic "github.com/quic-go/quic-go"
	uphttp3 "github.com/quic-go/quic-go/http3"
	"go.uber.org/goleak"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/antireplay"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/tlscarrier"
	"github.com/merpati/merpati/transport/transporttest"
)

const testSNI = "cover.test"

const coverBody = "<!doctype html><title>cover</title><p>an ordinary site</p>"

// testRelay is a Server on loopback whose streams echo after the open
// exchange, with one access key.
type testRelay struct {
	addr  string
	pin   [32]byte
	key   auth.Key
	cert  tls.Certificate
	cover *testCover
	auths atomic.Int64 // tokens accepted: randoms and Authorization headers
}

// testCover is an HTTP/3 site on loopback standing in for the cover site,
// with a certificate of its own.
type testCover struct {
	addr      string
	cert      tls.Certificate
	requests  atomic.Int64 // HTTP requests served
	datagrams atomic.Int64 // datagrams received
}

// countingConn counts the datagrams read from it.
type countingConn struct {
	net.PacketConn
	n *atomic.Int64
}

func (c countingConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.PacketConn.ReadFrom(b)
	if err == nil {
		c.n.Add(1)
	}
	return n, addr, err
}

func startCover(t testing.TB) *testCover {
	t.Helper()
	c := &testCover{cert: testCertFor(t, testSNI)}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = pc.LocalAddr().String()
	srv := &uphttp3.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.requests.Add(1)
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, coverBody)
		}),
		TLSConfig: uphttp3.ConfigureTLSConfig(serverTLS(c.cert)),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(countingConn{pc, &c.datagrams})
	}()
	t.Cleanup(func() { srv.Close(); pc.Close(); <-done })
	return c
}

func testCert(t testing.TB) tls.Certificate { return testCertFor(t, testSNI) }

func testCertFor(t testing.TB, name string) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := tlscarrier.NewCertificate(name)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func startRelay(t testing.TB) *testRelay { return startRelayWith(t, nil) }

// startRelayWith is startRelay with the server's configuration changed by
// mod.
func startRelayWith(t testing.TB, mod func(*ListenConfig)) *testRelay {
	t.Helper()
	return startRelayOn(t, "127.0.0.1:0", mod)
}

// startRelayOn is startRelayWith with the relay's socket on addr.
func startRelayOn(t testing.TB, addr string, mod func(*ListenConfig)) *testRelay {
	t.Helper()
	tr := &testRelay{key: auth.NewKey(), cert: testCert(t), cover: startCover(t)}
	pin, err := tlscarrier.Pin(tr.cert)
	if err != nil {
		t.Fatal(err)
	}
	tr.pin = pin
	cfg := ListenConfig{
		Certificate: tr.cert,
		Cover:       tr.cover.addr,
		Auth:        &testAuth{keys: []auth.Key{tr.key}, auths: &tr.auths},
	}
	if mod != nil {
		mod(&cfg)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen(pc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	tr.addr = pc.LocalAddr().String()
	serveEach(t, l, func(st transport.Stream, key transport.Key) {
		if key.Name() != "alice" {
			panic("wrong key")
		}
		if _, err := transport.ReadOpenRequest(st); err != nil {
			st.CloseWrite() // end cleanly, as the relay's refusals do
			return
		}
		if _, err := (transport.OpenReply{Status: transport.StatusOK}).WriteTo(st); err != nil {
			return
		}
		// Echo until the client half-closes, then half-close.
		io.Copy(st, st)
		st.CloseWrite()
		io.Copy(io.Discard, st)
	})
	return tr
}

// testAuth accepts tokens of its keys, once each, as "alice".
type testAuth struct {
	keys   []auth.Key
	replay antireplay.Cache
	auths  *atomic.Int64 // counts accepted tokens, if not nil
}

type name string

func (n name) Name() string { return string(n) }

func (a *testAuth) Authenticate(p transport.Proof) (transport.Key, error) {
	if auth.Match(a.keys, p.Digest, p.Token, time.Now()) < 0 || a.replay.Seen(p.Token) {
		return nil, transport.ErrUnauthenticated
	}
	if a.auths != nil {
		a.auths.Add(1)
	}
	return name("alice"), nil
}

// serveEach serves every stream of every session of l with handle (which
// need not close the stream) until the test ends, then closes l and waits.
func serveEach(t testing.TB, l transport.Listener, handle func(transport.Stream, transport.Key)) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		var sessions sync.WaitGroup
		defer sessions.Wait()
		for {
			sess, err := l.Accept(ctx)
			if err != nil {
				return
			}
			sessions.Go(func() {
				defer sess.Close()
				var streams sync.WaitGroup
				defer streams.Wait()
				for {
					st, err := sess.AcceptStream(ctx)
					if err != nil {
						return
					}
					streams.Go(func() {
						defer st.Close()
						handle(st, sess.Key())
					})
				}
			})
		}
	})
	t.Cleanup(func() {
		cancel()
		l.Close()
		wg.Wait()
	})
}

func (tr *testRelay) dialer(t testing.TB) *Dialer {
	t.Helper()
	d, err := NewDialer(ClientConfig{Addr: tr.addr, ServerName: testSNI, Pin: tr.pin, Key: tr.key})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func dial(t testing.TB, tr *testRelay) transport.Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := tr.dialer(t).Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openEcho opens a stream and runs the open exchange.
func openEcho(ctx context.Context, s transport.Session) (transport.Stream, error) {
	st, err := s.OpenStream(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := (transport.OpenRequest{Target: transport.DCTarget(2), Padding: 17}).WriteTo(st); err != nil {
		st.Close()
		return nil, err
	}
	if _, err := transport.ReadOpenReply(st); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// echo sends data, half-closes, and checks that exactly data comes back
// followed by io.EOF.
func echo(st transport.Stream, data []byte) error {
	errc := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(st)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if err := <-errc; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("echoed %d bytes, want %d (equal prefix: %v)", len(got), len(data), bytes.HasPrefix(data, got))
	}
	return nil
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestDualStack runs the relay on a dual-stack socket, as a relay
// listening on ":443" does, and a client over IPv4: the front door's
// batched sends give IPv4 destinations to an IPv6 socket.
func TestDualStack(t *testing.T) {
	if _, err := net.ResolveUDPAddr("udp6", "[::1]:0"); err != nil {
		t.Skip("no IPv6:", err)
	}
	tr := startRelayOn(t, "[::]:0", nil)
	_, port, err := net.SplitHostPort(tr.addr)
	if err != nil {
		t.Fatal(err)
	}
	tr.addr = net.JoinHostPort("127.0.0.1", port)
	s := dial(t, tr)
	st, err := openEcho(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	data := make([]byte, 1<<20)
	rand.Read(data)
	if err := echo(st, data); err != nil {
		t.Fatal(err)
	}
}

func TestStreamBytesAndHalfClose(t *testing.T) {
	tr := startRelay(t)
	s := dial(t, tr)
	for _, n := range []int{0, 1, 1200, 64 << 10, 4 << 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			st, err := openEcho(t.Context(), s)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			data := make([]byte, n)
			rand.Read(data)
			if err := echo(st, data); err != nil {
				t.Fatal(err)
			}
		})
	}
	if n := tr.cover.datagrams.Load(); n != 0 {
		t.Errorf("%d datagrams went to the cover site", n)
	}
	// The hello's random; the requests ride on the key it proved.
	if n := tr.auths.Load(); n != 1 {
		t.Errorf("%d tokens accepted for one connection, want 1", n)
	}
}

func TestManyStreams(t *testing.T) {
	tr := startRelay(t)
	s := dial(t, tr)
	var wg sync.WaitGroup
	errs := make(chan error, 300)
	for i := range 300 {
		wg.Go(func() {
			st, err := openEcho(t.Context(), s)
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			data := bytes.Repeat([]byte{byte(i)}, 1000+i*37)
			if err := echo(st, data); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestCloseEndsStreamsAndSession(t *testing.T) {
	tr := startRelay(t)
	s := dial(t, tr)
	st, err := openEcho(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(st)
		readErr <- err
	}()
	s.Close()
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after Close")
	}
	if s.Err() == nil {
		t.Error("Err is nil after Close")
	}
	select {
	case err := <-readErr:
		if err == nil {
			t.Error("read on a closed session ended cleanly")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read did not end after Close")
	}
	if _, err := s.OpenStream(t.Context()); !errors.Is(err, net.ErrClosed) {
		t.Errorf("OpenStream after Close: %v, want net.ErrClosed", err)
	}
}

func TestWrongPin(t *testing.T) {
	tr := startRelay(t)
	d, err := NewDialer(ClientConfig{Addr: tr.addr, ServerName: testSNI, Pin: [32]byte{1}, Key: tr.key})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if s, err := d.Dial(ctx); err == nil {
		s.Close()
		t.Fatal("Dial succeeded with a wrong pin")
	}
}

// h3Get fetches url with upstream quic-go's HTTP/3 client, the way a
// prober would, with the headers in hdr.
func h3Get(t *testing.T, addr string, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	rt := &uphttp3.Transport{
		TLSClientConfig: &tls.Config{ServerName: testSNI, InsecureSkipVerify: true},
		QUICConfig:      &upquic.Config{},
	}
	defer rt.Close()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "https://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = testSNI
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := rt.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestProbesGetCover: a QUIC client without a key holder's token in its
// hello's random talks with the cover site itself, whatever else it
// sends: the cover's certificate, the cover's page, and the relay's
// authenticator never hears of it.
func TestProbesGetCover(t *testing.T) {
	tr := startRelay(t)
	good, err := newAuthorization(tr.key, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		authz string
	}{
		{"no token", ""},
		{"garbage", "Bearer hello"},
		{"basic auth", "Basic YWxpY2U6c2VjcmV0"},
		// Even a valid Authorization token: the hello is a browser's.
		{"valid header token", good},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := tr.cover.requests.Load()
			hdr := http.Header{}
			if tt.authz != "" {
				hdr.Set("Authorization", tt.authz)
			}
			resp, body := h3Get(t, tr.addr, hdr)
			if resp.StatusCode != http.StatusOK || string(body) != coverBody || resp.ProtoMajor != 3 {
				t.Errorf("got %s %d %q, want the cover page over HTTP/3", resp.Proto, resp.StatusCode, body)
			}
			if tr.cover.requests.Load() != before+1 {
				t.Error("request did not reach the cover site")
			}
			if leaf := resp.TLS.PeerCertificates[0].Raw; !bytes.Equal(leaf, tr.cover.cert.Certificate[0]) {
				t.Error("the prober saw a certificate other than the cover site's")
			}
		})
	}
	if n := tr.auths.Load(); n != 0 {
		t.Errorf("%d tokens accepted, want 0", n)
	}
}

// TestReplayedInitialGetsCover: a client's first flight, captured and
// replayed from another address, goes to the cover site; the client's own
// session works.
func TestReplayedInitialGetsCover(t *testing.T) {
	tr := startRelay(t)
	fwd := transporttest.StartUDPForwarder(t, tr.addr)
	fwd.Record.Store(true)
	d, err := NewDialer(ClientConfig{Addr: fwd.Addr, ServerName: testSNI, Pin: tr.pin, Key: tr.key})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := d.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	echoOnce(t, sess)
	first := fwd.Recorded()
	if len(first) == 0 {
		t.Fatal("nothing recorded")
	}
	auths, covered := tr.auths.Load(), tr.cover.datagrams.Load()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	raddr, _ := net.ResolveUDPAddr("udp", tr.addr)
	for _, dg := range first[:min(2, len(first))] {
		if _, err := pc.WriteTo(dg, raddr); err != nil {
			t.Fatal(err)
		}
	}
	// The cover site answers the replayed hello (with its own Initial).
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 2048)
	if _, _, err := pc.ReadFrom(buf); err != nil {
		t.Fatalf("no answer to the replayed Initial: %v", err)
	}
	if got := tr.cover.datagrams.Load(); got <= covered {
		t.Error("the replayed Initial did not reach the cover site")
	}
	if got := tr.auths.Load(); got != auths {
		t.Errorf("the replay was accepted: %d tokens accepted, were %d", got, auths)
	}
}

// echoOnce opens a stream on sess and checks that the relay echoes.
func echoOnce(t *testing.T, sess transport.Session) {
	t.Helper()
	st, err := sess.OpenStream(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := (transport.OpenRequest{Target: transport.DCTarget(2)}).WriteTo(st); err != nil {
		t.Fatal(err)
	}
	if rep, err := transport.ReadOpenReply(st); err != nil || rep.Status != transport.StatusOK {
		t.Fatalf("open reply %+v, %v", rep, err)
	}
	if _, err := st.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo %q, %v", buf, err)
	}
}

func TestConfigErrors(t *testing.T) {
	good := ClientConfig{Addr: "127.0.0.1:443", ServerName: "x", Pin: [32]byte{1}, Key: auth.NewKey()}
	for _, mod := range []func(*ClientConfig){
		func(c *ClientConfig) { c.Addr = "" },
		func(c *ClientConfig) { c.Addr = "nohost" },
		func(c *ClientConfig) { c.ServerName = "" },
		func(c *ClientConfig) { c.Pin = [32]byte{} },
		func(c *ClientConfig) { c.Key = auth.Key{} },
	} {
		c := good
		mod(&c)
		if _, err := NewDialer(c); err == nil {
			t.Errorf("NewDialer(%+v) succeeded", c)
		}
	}
	if _, err := NewDialer(good); err != nil {
		t.Error(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := Listen(pc, ListenConfig{}); err == nil {
		t.Error("Listen with an empty config succeeded")
	}
}

func FuzzParseAuthorization(f *testing.F) {
	f.Add("")
	f.Add("Bearer ")
	if a, err := newAuthorization(auth.NewKey(), time.Now()); err == nil {
		f.Add(a)
	}
	f.Fuzz(func(t *testing.T, v string) {
		nonce, token, err := ParseAuthorization(v)
		if err == nil && (len(nonce) != NonceSize || len(token) != auth.TokenSize) {
			t.Fatalf("nonce %d bytes, token %d bytes", len(nonce), len(token))
		}
	})
}

// serverTLS returns a server tls.Config for cert.
func serverTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
}
