// Package coversite is the lab's stand-in for a relay operator's cover
// site, for the demo's and the censor lab's processes: an ordinary static
// site over HTTPS (HTTP/1.1 and HTTP/2) and, like nginx or Caddy with
// HTTP/3 on, over HTTP/3 on UDP at the same port number, advertised with
// Alt-Svc. Without a UDP socket it is a site without HTTP/3, whose UDP
// port is closed.
package coversite

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// Handler serves page to GET and HEAD requests for any path, and answers
// every other method 405, as a static site does.
func Handler(page string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "405 Method Not Allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
	})
}

// Listen binds TCP at addr and, unless noUDP, UDP at the same address and
// port number. With port 0 it tries a few ports until both are free.
func Listen(ctx context.Context, addr string, noUDP bool) (net.Listener, net.PacketConn, error) {
	var lc net.ListenConfig
	for range 20 {
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		if noUDP {
			return ln, nil, nil
		}
		pc, err := lc.ListenPacket(ctx, "udp", ln.Addr().String())
		if err == nil {
			return ln, pc, nil
		}
		ln.Close()
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			return nil, nil, err
		}
	}
	return nil, nil, errors.New("coversite: no port free for both TCP and UDP")
}

// ServeHTTP3 serves h with cert over HTTP/3 on pc until ctx is done or
// pc fails, and closes pc.
func ServeHTTP3(ctx context.Context, pc net.PacketConn, cert tls.Certificate, h http.Handler) error {
	srv := &http3.Server{
		Handler:   h,
		TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}}),
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	err := srv.Serve(pc)
	srv.Close()
	pc.Close()
	if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Serve serves h with cert over HTTPS on ln and, if pc is not nil, over
// HTTP/3 on pc, until ctx is done or either fails. It closes both.
func Serve(ctx context.Context, ln net.Listener, pc net.PacketConn, cert tls.Certificate, h http.Handler) error {
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	inner := h
	if pc != nil {
		port := pc.LocalAddr().(*net.UDPAddr).Port
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Alt-Svc", fmt.Sprintf(`h3=":%d"; ma=86400`, port))
			inner.ServeHTTP(w, r)
		})
	}
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		// Idle connections close after nginx's default keepalive_timeout
		// (relays learn their cover site's and close idle sessions then).
		IdleTimeout: 75 * time.Second,
		// Probes that hang up mid-handshake are expected; keep quiet.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- srv.ServeTLS(ln, "", "") })
	if pc != nil {
		wg.Go(func() { errc <- ServeHTTP3(ctx, pc, cert, inner) })
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	srv.Close()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
