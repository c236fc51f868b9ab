package relaytest

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// CoverName is the server name clients and probers send. The cover site's
// certificate is httptest's, whatever the name.
const CoverName = "cover.merpati.test"

// CoverPage is the cover site's page.
const CoverPage = "<html><body>An ordinary web site.</body></html>\n"

// A Cover is a real HTTPS server (HTTP/1.1 and HTTP/2) standing in for the
// operator's cover site. Like a static site (nginx's or Caddy's file
// server) it answers GET and HEAD with [CoverPage] and every other method
// with 405 Method Not Allowed. It counts the TCP connections it accepts:
// from probers spliced to it by the TLS carrier, and from the QUIC
// carrier's reverse proxy.
//
// The 405 matters to the QUIC carrier: its client opens each stream with
// a POST, and tells the relay's take-over (200) from the cover site's
// answer by the status alone, so a refused client sees
// [github.com/merpati/merpati/transport.ErrKeyRefused] only when the cover site does not answer its
// POST with 200.
type Cover struct {
	srv      *httptest.Server
	accepted atomic.Int64
}

// StartCover starts a cover site on 127.0.0.1:0, closed at the end of the
// test.
func StartCover(t testing.TB) *Cover {
	t.Helper()
	c := &Cover{}
	c.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "405 Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		io.WriteString(w, CoverPage)
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

// Addr returns the cover site's "host:port".
func (c *Cover) Addr() string { return c.srv.Listener.Addr().String() }

// Accepted returns how many TCP connections the cover site has accepted.
func (c *Cover) Accepted() int64 { return c.accepted.Load() }
