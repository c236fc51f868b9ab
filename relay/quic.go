package relay

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/quiccarrier"
)

// ListenQUIC starts the QUIC carrier (an HTTP/3 server) on pc, which it
// then owns. Requests with a valid, unreplayed token become streams of
// their connection's session; every other request is reverse-proxied over
// HTTPS to the cover site, so a prober sees the cover site over HTTP/3.
// Serve its sessions with [Relay.ServeListeners].
func (r *Relay) ListenQUIC(pc net.PacketConn) (transport.Listener, error) {
	cover, coverTransport := r.coverProxy()
	l, err := quiccarrier.Listen(pc, quiccarrier.ListenConfig{
		Certificate: r.cfg.Certificate,
		Auth:        authenticator{r},
		Cover:       cover,
		Logger:      r.log,
	})
	if err != nil {
		coverTransport.CloseIdleConnections()
		return nil, err
	}
	return quicListener{l, coverTransport}, nil
}

// quicListener is the QUIC carrier's listener with the transport of its
// cover proxy, whose idle connections end with it.
type quicListener struct {
	*quiccarrier.Listener
	cover *http.Transport
}

func (l quicListener) Close() error {
	err := l.Listener.Close()
	l.cover.CloseIdleConnections()
	return err
}

// ServeQUIC serves the QUIC carrier on pc (see [Relay.ListenQUIC]) until
// ctx is done or pc fails, and closes pc.
func (r *Relay) ServeQUIC(ctx context.Context, pc net.PacketConn) error {
	l, err := r.ListenQUIC(pc)
	if err != nil {
		pc.Close()
		return fmt.Errorf("relay: %w", err)
	}
	return r.ServeListeners(ctx, l)
}

// coverProxy returns the handler for unauthenticated HTTP/3 requests: a
// reverse proxy to the cover site over HTTPS, keeping the request's Host.
// The cover is the operator's own choice of address, reached by address,
// so its certificate is not checked against a CA here: what matters is
// that the prober gets what the cover site sends.
//
// Once the cover site's response has been copied, the request's body is
// closed (STOP_SENDING), as an HTTP/3 server that answered without reading
// it would. Without that, a request whose body is still open, such as a
// refused client's stream, which waits for an answer before it sends
// more, never got one: net/http's HTTP/2 transport, closing the response
// body, waits for its copy of the request body, blocked in a Read, and the
// handler, whose answer is sent when it returns, never returned.
func (r *Relay) coverProxy() (http.Handler, *http.Transport) {
	target := &url.URL{Scheme: "https", Host: r.cfg.Cover}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        16,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			// The proxy is invisible: no X-Forwarded-* headers (Rewrite
			// adds none unless SetXForwarded is called).
			pr.Out.TLS = nil
		},
		Transport: tr,
		ErrorLog:  log.New(io.Discard, "", 0),
		ModifyResponse: func(resp *http.Response) error {
			if in, ok := resp.Request.Context().Value(inBodyKey{}).(io.Closer); ok {
				resp.Body = closeAfter{resp.Body, in}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			r.warns.Warn(r.log, "cover site unreachable", "transport", "quic", "err", err)
			w.WriteHeader(http.StatusBadGateway)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		proxy.ServeHTTP(w, req.WithContext(context.WithValue(req.Context(), inBodyKey{}, req.Body)))
	}), tr
}

// inBodyKey keys the body of the request a cover proxy serves in the
// context of its outgoing copy.
type inBodyKey struct{}

// closeAfter is a cover site's response body whose Close first closes the
// incoming request's body, in.
type closeAfter struct {
	io.ReadCloser
	in io.Closer
}

func (b closeAfter) Close() error {
	b.in.Close()
	return b.ReadCloser.Close()
}

// ServeBoth serves the TLS carrier on ln and the QUIC carrier on pc until
// ctx is done or either fails, and closes both. It returns the first
// error.
func (r *Relay) ServeBoth(ctx context.Context, ln net.Listener, pc net.PacketConn) error {
	tl, err := r.ListenTLS(ln)
	if err != nil {
		ln.Close()
		pc.Close()
		return fmt.Errorf("relay: %w", err)
	}
	ql, err := r.ListenQUIC(pc)
	if err != nil {
		tl.Close()
		pc.Close()
		return fmt.Errorf("relay: %w", err)
	}
	return r.ServeListeners(ctx, tl, ql)
}
