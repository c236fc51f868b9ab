package relay

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/quiccarrier"
)

// ServeQUIC serves the QUIC carrier (an HTTP/3 server) on pc until ctx is
// done or pc fails, and closes pc. Requests with a valid, unreplayed token
// become streams served like the TLS carrier's; every other request is
// reverse-proxied over HTTPS to the cover site, so a prober sees the cover
// site over HTTP/3.
func (r *Relay) ServeQUIC(ctx context.Context, pc net.PacketConn) error {
	cover, coverTransport := r.coverProxy()
	defer coverTransport.CloseIdleConnections()
	srv, err := quiccarrier.NewServer(quiccarrier.ServerConfig{
		Certificate: r.cfg.Certificate,
		Cover:       cover,
		Authenticate: func(cctx context.Context, digest [32]byte, token []byte, conn io.Closer) (any, bool) {
			key, err := authenticator{r}.Authenticate(transport.Proof{Carrier: "quic", Digest: digest, Token: token})
			if err != nil {
				r.log.Debug("request sent to cover site", "transport", "quic", "err", err)
				return nil, false
			}
			u := key.(*access.User)
			untrack, err := u.TrackSession(conn)
			if err != nil {
				// A key holder is told plainly: the connection
				// closes, rather than showing it the cover site.
				r.refuseSession(u, "quic", err)
				conn.Close()
				return nil, false
			}
			context.AfterFunc(cctx, untrack)
			r.log.Debug("session opened", "transport", "quic", "key", u.Name())
			return u, true
		},
		ServeStream: func(sctx context.Context, st transport.Stream, peer any) {
			r.serveStream(sctx, st, peer.(*access.User))
		},
		Logger: r.log,
	})
	if err != nil {
		return err
	}
	return srv.Serve(ctx, pc)
}

// coverProxy returns the handler for unauthenticated HTTP/3 requests: a
// reverse proxy to the cover site over HTTPS, keeping the request's Host.
// The cover is the operator's own choice of address, reached by address,
// so its certificate is not checked against a CA here: what matters is
// that the prober gets what the cover site sends.
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
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			// The proxy is invisible: no X-Forwarded-* headers (Rewrite
			// adds none unless SetXForwarded is called).
			pr.Out.TLS = nil
		},
		Transport: tr,
		ErrorLog:  log.New(io.Discard, "", 0),
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) {
			r.warns.Warn(r.log, "cover site unreachable", "transport", "quic", "err", err)
			w.WriteHeader(http.StatusBadGateway)
		},
	}, tr
}

// ServeBoth serves the TLS carrier on ln and the QUIC carrier on pc until
// ctx is done or either fails, and closes both. It returns the first
// error.
func (r *Relay) ServeBoth(ctx context.Context, ln net.Listener, pc net.PacketConn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- r.Serve(ctx, ln) }()
	go func() { errc <- r.ServeQUIC(ctx, pc) }()
	err := <-errc
	cancel()
	if err2 := <-errc; err == nil {
		err = err2
	}
	return err
}
