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
)

const testSNI = "cover.test"

const coverBody = "<!doctype html><title>cover</title><p>an ordinary site</p>"

// testRelay is a Server on loopback whose streams echo after the open
// exchange, with one access key.
type testRelay struct {
	addr   string
	pin    [32]byte
	key    auth.Key
	cert   tls.Certificate
	covers atomic.Int64 // requests served by the cover handler
	auths  atomic.Int64 // connections authenticated
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
	tr := &testRelay{key: auth.NewKey(), cert: testCert(t)}
	pin, err := tlscarrier.Pin(tr.cert)
	if err != nil {
		t.Fatal(err)
	}
	tr.pin = pin
	cfg := ListenConfig{
		Certificate: tr.cert,
		Cover: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tr.covers.Add(1)
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, coverBody)
		}),
		Auth: &testAuth{keys: []auth.Key{tr.key}, auths: &tr.auths},
	}
	if mod != nil {
		mod(&cfg)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
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
	if n := tr.covers.Load(); n != 0 {
		t.Errorf("%d requests went to the cover site", n)
	}
	if n := tr.auths.Load(); n != 1 {
		t.Errorf("%d authentications for one connection, want 1", n)
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

func TestProbesGetCover(t *testing.T) {
	tr := startRelay(t)
	good, err := newAuthorization(tr.key, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	other, err := newAuthorization(auth.NewKey(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		authz string
	}{
		{"no token", ""},
		{"garbage", "Bearer hello"},
		{"basic auth", "Basic YWxpY2U6c2VjcmV0"},
		{"other key", other},
		{"stale", mustAuthorization(t, tr.key, time.Now().Add(-time.Hour))},
		// The first use of a valid token authenticates (and the cover
		// handler is not called); its replay must not.
		{"replayed", good},
	}
	// Use the good token once, as the real client would.
	resp, _ := h3Get(t, tr.addr, http.Header{"Authorization": {good}})
	if resp.StatusCode != http.StatusOK || tr.auths.Load() != 1 {
		t.Fatalf("valid token: status %d, %d authentications", resp.StatusCode, tr.auths.Load())
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tr.covers.Load()
			hdr := http.Header{}
			if tt.authz != "" {
				hdr.Set("Authorization", tt.authz)
			}
			resp, body := h3Get(t, tr.addr, hdr)
			if resp.StatusCode != http.StatusOK || string(body) != coverBody || resp.ProtoMajor != 3 {
				t.Errorf("got %s %d %q, want the cover page over HTTP/3", resp.Proto, resp.StatusCode, body)
			}
			if tr.covers.Load() != before+1 {
				t.Error("request did not reach the cover handler")
			}
		})
	}
	if n := tr.auths.Load(); n != 1 {
		t.Errorf("%d authentications, want 1", n)
	}
}

func mustAuthorization(t *testing.T, key auth.Key, now time.Time) string {
	t.Helper()
	a, err := newAuthorization(key, now)
	if err != nil {
		t.Fatal(err)
	}
	return a
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
