package client_test

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport/link"
)

// checkLeaks fails t if goroutines started during the test outlive it.
// Call it first, so its cleanup runs after every other.
func checkLeaks(t *testing.T) {
	t.Helper()
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) })
}

// coverName is the server name clients send; the cover site's certificate
// is httptest's, whatever the name.
const coverName = "cover.merpati.test"

// coverPage is what the cover site serves.
const coverPage = "<html><body>An ordinary web site.</body></html>\n"

// cover is a real HTTPS server standing in for the operator's cover site.
type cover struct {
	srv      *httptest.Server
	accepted atomic.Int64
}

func startCover(t testing.TB) *cover {
	t.Helper()
	c := &cover{}
	c.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, coverPage)
	}))
	c.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			c.accepted.Add(1)
		}
	}
	c.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	c.srv.EnableHTTP2 = true
	c.srv.StartTLS()
	t.Cleanup(c.srv.Close)
	return c
}

func (c *cover) addr() string { return c.srv.Listener.Addr().String() }

// testRelay is a relay running in-process on 127.0.0.1:0.
type testRelay struct {
	dir  *relay.Dir
	addr string
	cfg  relay.Config
}

// testLogger logs at debug level to the test log when -v is given.
func testLogger(t testing.TB, name string) *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(tWriter{t, name}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct {
	t    testing.TB
	name string
}

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s: %s", w.name, p)
	return len(p), nil
}

// startRelay starts a relay whose cover site is cov and that may dial
// loopback targets (allow) and DC overrides (dcs), and returns it once it
// accepts connections.
func startRelay(t testing.TB, cov *cover, dcs []string) *testRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d, err := relay.Init(filepath.Join(t.TempDir(), "relay"), relay.Settings{
		Listen: ln.Addr().String(),
		Public: []string{ln.Addr().String()},
		Cover:  "https://" + cov.addr(),
		SNI:    coverName,
		DC:     dcs,
		Allow:  []string{"127.0.0.0/8"},
	})
	if err != nil {
		t.Fatal(err)
	}
	log := testLogger(t, "relay")
	cfg, err := d.Config(log)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = log
	r, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := r.Serve(ctx, ln); err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	wg.Go(func() { cfg.Keys.Watch(ctx, 20*time.Millisecond) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &testRelay{dir: d, addr: ln.Addr().String(), cfg: cfg}
}

// addKey makes a new access key and returns its share link.
func (r *testRelay) addKey(t testing.TB, name string, limits access.Entry) *link.Link {
	t.Helper()
	e, err := access.Add(r.dir.KeysPath(), name, limits)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.cfg.Keys.Reload(); err != nil {
		t.Fatal(err)
	}
	return r.dir.Link(e)
}

// startClient starts a client for l with a SOCKS5 front on 127.0.0.1:0
// and returns the client and the SOCKS5 address.
func startClient(t testing.TB, l *link.Link, mod func(*client.Config)) (*client.Client, string) {
	t.Helper()
	cfg := client.Config{Link: l, Logger: testLogger(t, "client")}
	if mod != nil {
		mod(&cfg)
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.ServeSOCKS(ctx, ln); err != nil {
			t.Errorf("client: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait(); c.Close() })
	return c, ln.Addr().String()
}

// startServer starts a TCP server on 127.0.0.1:0 that runs serve for each
// connection (serve closes it), and stops at the end of the test.
func startServer(tb testing.TB, serve func(net.Conn)) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { serve(c) })
		}
	})
	tb.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// startEcho starts a TCP server on 127.0.0.1:0 that echoes each
// connection until the peer half-closes, then half-closes too.
func startEcho(tb testing.TB) string {
	return startServer(tb, func(c net.Conn) {
		defer c.Close()
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	})
}

// tlsProbe makes a plain crypto/tls connection to addr, as a prober's
// browser would, and returns the certificate it was shown.
func tlsProbe(t testing.TB, addr string) []byte {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: coverName, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("tls probe of %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].Raw
}

func need(t testing.TB, tool string) string {
	t.Helper()
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, tool)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; .ci/run installs it", tool)
	}
	t.Skipf("%s is not installed", tool)
	return ""
}
