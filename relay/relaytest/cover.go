package relaytest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport/link"
)

// CoverName is the server name clients and probers send. The cover site's
// certificate is httptest's, whatever the name.
const CoverName = "cover.merpati.test"

// CoverPage is the cover site's page.
const CoverPage = "<html><body>An ordinary web site.</body></html>\n"

// coverModTime is the cover page's modification time, fixed so that its
// Last-Modified and ETag are the same on every transport and in every
// run.
var coverModTime = time.Date(2025, time.March, 14, 9, 26, 53, 0, time.UTC)

// coverETag is the cover page's strong entity tag, in nginx's form:
// modification time and length in hex.
var coverETag = fmt.Sprintf(`"%x-%x"`, coverModTime.Unix(), len(CoverPage))

// A Cover is a real HTTPS server standing in for the operator's cover
// site: HTTP/1.1 and HTTP/2 on TCP and, unless started by
// [StartCoverTCPOnly], HTTP/3 on UDP at the same port number, which its
// TCP responses advertise with Alt-Svc, as a real site's do.
//
// Like a static site (nginx's or Caddy's file server) it answers GET and
// HEAD with [CoverPage] (with Content-Length, Last-Modified, a strong
// ETag and Accept-Ranges, and ranges and conditional requests served as
// net/http's ServeContent serves them) and every other method with 405
// Method Not Allowed. Both transports share the handler and the
// certificate (httptest's), so a response differs between them only where
// the protocol makes it: Alt-Svc is sent on TCP only, as Caddy does.
//
// It counts the connections it accepts, TCP ([Cover.Accepted]) and QUIC
// ([Cover.AcceptedQUIC]): from probers spliced to it by the TLS carrier,
// and from the QUIC carrier's reverse proxy.
//
// The 405 matters to the QUIC carrier: its client opens each stream with
// a POST, and tells the relay's take-over (200) from the cover site's
// answer by the status alone, so a refused client sees
// [github.com/merpati/merpati/transport.ErrKeyRefused] only when the cover site does not answer its
// POST with 200.
type Cover struct {
	srv          *httptest.Server
	h3           bool
	accepted     atomic.Int64
	acceptedQUIC atomic.Int64
	datagrams    atomic.Int64
	// relays counts the connections relays made themselves, to learn
	// the cover site's TLS flight: Accepted leaves them out.
	relays atomic.Int64
	// stopH3 stops its HTTP/3 server and closes its UDP socket, once.
	stopH3 func()
}

// StartCover starts a cover site on 127.0.0.1, HTTPS on TCP and HTTP/3
// on UDP at one port number, closed at the end of the test.
func StartCover(t testing.TB) *Cover {
	t.Helper()
	return startCover(t, true)
}

// StartCoverTCPOnly starts a cover site on 127.0.0.1 without HTTP/3: it
// binds no UDP socket (so a datagram to its port number gets ICMP port
// unreachable, see [UDPClosed]) and sends no Alt-Svc. It is closed at
// the end of the test.
func StartCoverTCPOnly(t testing.TB) *Cover {
	t.Helper()
	return startCover(t, false)
}

// StartCoverChain starts a cover site as [StartCover] does, but under the
// chain an [Nginx] serves, on TCP and on UDP: a leaf for [CoverName] of
// [NginxLeafLen] bytes and the intermediate that signed it, of
// [NginxIntermediateLen] bytes, RSA-2048 both. A relay's handshake then
// has the cover site's shape only if the relay mirrors its chain.
func StartCoverChain(t testing.TB) *Cover {
	t.Helper()
	dir := t.TempDir()
	chainFile, keyFile := filepath.Join(dir, "chain.pem"), filepath.Join(dir, "key.pem")
	if _, _, err := writeNginxChain(chainFile, keyFile); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(chainFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return startCover(t, true, cert)
}

// startCover starts a cover site, with HTTP/3 if withH3, under cert, or
// httptest's certificate if there is none.
func startCover(t testing.TB, withH3 bool, cert ...tls.Certificate) *Cover {
	t.Helper()
	c := &Cover{h3: withH3}
	var (
		ln net.Listener
		pc net.PacketConn
	)
	if withH3 {
		ln, pc = listenBoth(t)
	} else {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	port := ln.Addr().(*net.TCPAddr).Port
	altSvc := fmt.Sprintf(`h3=":%d"; ma=86400`, port)

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if withH3 && r.ProtoMajor < 3 {
			w.Header().Set("Alt-Svc", altSvc)
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "405 Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("ETag", coverETag)
		http.ServeContent(w, r, "index.html", coverModTime, strings.NewReader(CoverPage))
	})

	c.srv = httptest.NewUnstartedServer(handler)
	if len(cert) > 0 {
		c.srv.TLS = &tls.Config{Certificates: cert}
	}
	c.srv.Listener.Close()
	c.srv.Listener = ln
	c.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			c.accepted.Add(1)
		}
	}
	c.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	c.srv.EnableHTTP2 = true
	c.srv.StartTLS()
	t.Cleanup(c.srv.Close)
	if !withH3 {
		return c
	}

	h3 := &http3.Server{
		Handler:   handler,
		TLSConfig: &tls.Config{Certificates: c.srv.TLS.Certificates},
		ConnContext: func(ctx context.Context, _ *quic.Conn) context.Context {
			c.acceptedQUIC.Add(1)
			return ctx
		},
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := h3.Serve(countingConn{pc.(*net.UDPConn), &c.datagrams}); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			t.Errorf("cover site's HTTP/3 server: %v", err)
		}
	})
	var once sync.Once
	c.stopH3 = func() {
		once.Do(func() {
			h3.Close()
			pc.Close()
			wg.Wait()
		})
	}
	t.Cleanup(c.stopH3)
	return c
}

// Addr returns the cover site's "host:port", on TCP and, if it serves
// HTTP/3, on UDP.
func (c *Cover) Addr() string { return c.srv.Listener.Addr().String() }

// HTTP3 reports whether the cover site was started with HTTP/3.
func (c *Cover) HTTP3() bool { return c.h3 }

// StopHTTP3 stops the cover site's HTTP/3 server and closes its UDP
// socket, as when a site's operator turns HTTP/3 off: its port number on
// UDP is then closed ([UDPClosed]), while TCP goes on as before (its
// responses still send Alt-Svc). It does nothing without HTTP/3.
func (c *Cover) StopHTTP3() {
	if c.stopH3 != nil {
		c.stopH3()
	}
}

// Accepted returns how many TCP connections the cover site has accepted.
// Connections that relays made to learn its TLS flight are not counted.
func (c *Cover) Accepted() int64 { return c.accepted.Load() - c.relays.Load() }

// AcceptedQUIC returns how many QUIC connections the cover site has
// accepted (completed handshakes); always 0 without HTTP/3.
func (c *Cover) AcceptedQUIC() int64 { return c.acceptedQUIC.Load() }

// DatagramsQUIC returns how many UDP datagrams the cover site has
// received, whether or not they made a connection.
func (c *Cover) DatagramsQUIC() int64 { return c.datagrams.Load() }

// countingConn is a UDP socket that counts the datagrams read from it. It
// hides the socket's SyscallConn, so that quic-go reads through ReadFrom.
type countingConn struct {
	*net.UDPConn
	n *atomic.Int64
}

func (c countingConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, addr, err := c.UDPConn.ReadFrom(b)
	if err == nil {
		c.n.Add(1)
	}
	return n, addr, err
}

// SyscallConn is not offered: see countingConn.
func (c countingConn) SyscallConn() {}

// Reached counts what reached the cover site over carrier: the TCP
// connections it accepted for the TLS carrier, the UDP datagrams it
// received for QUIC.
func (c *Cover) Reached(carrier string) int64 {
	if carrier == link.CarrierQUIC {
		return c.DatagramsQUIC()
	}
	return c.Accepted()
}
