package selfsite

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport/tlscarrier"
)

// A Site is the relay's own cover site: a small static web site on
// loopback, HTTPS on TCP (HTTP/1.1 and HTTP/2) and HTTP/3 on UDP at the
// same port number, under one certificate obtained and renewed by ACME.
// Its methods are safe for concurrent use.
type Site struct {
	cfg   Config
	log   *slog.Logger
	root  *os.Root
	cache *certmagic.Cache
	cm    *certmagic.Config
	// placeholder is served for Domain until a certificate is had.
	placeholder *tls.Certificate

	tcp net.Listener
	udp net.PacketConn
	hs  *http.Server
	h3  *http3.Server

	serving   sync.WaitGroup
	obtainMu  sync.Mutex
	closeOnce sync.Once
	closeErr  error
}

// Start starts the site described by cfg: it listens on Config.Listen,
// TCP and UDP, and serves Config.Dir. The certificate is the one in
// Config.Storage if there is one (it may be due for renewal: see
// [Site.Obtain]); until one is had, handshakes for Domain get a
// self-signed placeholder, so that the relay's checks of its cover site
// (which do not verify it) find it up. Nothing is asked of the CA before
// [Site.Obtain]. ctx bounds the start only. Close the site with
// [Site.Close].
func Start(ctx context.Context, cfg Config) (*Site, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.filled()
	s := &Site{cfg: cfg, log: cfg.Logger}
	var err error
	if s.placeholder, err = makePlaceholder(cfg.Domain); err != nil {
		return nil, fmt.Errorf("selfsite: placeholder certificate: %w", err)
	}
	if s.root, err = os.OpenRoot(cfg.Dir); err != nil {
		return nil, fmt.Errorf("selfsite: Config.Dir: %w", err)
	}
	if err := os.MkdirAll(cfg.Storage, 0o700); err != nil {
		s.root.Close()
		return nil, fmt.Errorf("selfsite: Config.Storage: %w", err)
	}
	if s.tcp, s.udp, err = listenBoth(ctx, cfg.Listen); err != nil {
		s.root.Close()
		return nil, fmt.Errorf("selfsite: listen: %w", err)
	}
	s.setupACME()

	if cert, err := s.cm.CacheManagedCertificate(ctx, cfg.Domain); err == nil {
		s.log.Info("cover site certificate loaded from storage", "domain", cfg.Domain,
			"expires", cert.Leaf.NotAfter, "needs_renewal", cert.NeedsRenewal(s.cm))
	} else if !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("cover site certificate in storage unusable; a new one is obtained", "domain", cfg.Domain, "err", err)
	}

	tlsConf := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: s.getCertificate,
		// acme-tls/1 last: a client offering it alone is the CA checking
		// a TLS-ALPN-01 challenge, which certmagic answers (RFC 8737).
		NextProtos: []string{"h2", "http/1.1", acmez.ACMETLS1Protocol},
	}
	handler := &fileServer{
		fsys:   s.root.FS(),
		altSvc: `h3=":` + strconv.Itoa(cfg.PublicPort) + `"; ma=2592000`,
	}
	s.hs = &http.Server{
		Handler:           handler,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: time.Minute,
		IdleTimeout:       5 * time.Minute,
		// Handshake failures (scanners, unknown names) are routine.
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.h3 = &http3.Server{
		Handler:     handler,
		TLSConfig:   &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: s.getCertificate},
		IdleTimeout: 5 * time.Minute,
		Logger:      s.log,
	}
	s.serving.Go(func() {
		if err := s.hs.ServeTLS(s.tcp, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("cover site stopped serving TCP", "err", err)
		}
	})
	s.serving.Go(func() {
		if err := s.h3.Serve(s.udp); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("cover site stopped serving QUIC", "err", err)
		}
	})
	s.log.Info("cover site listening", "domain", cfg.Domain, "addr", s.tcp.Addr().String(), "dir", cfg.Dir)
	return s, nil
}

// setupACME makes the site's own certmagic cache and configuration (not
// certmagic's package-level defaults).
func (s *Site) setupACME() {
	zl := newZapLogger(s.log.Handler()).Named("certmagic")
	var cm *certmagic.Config
	s.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cm, nil },
		Logger:           zl,
	})
	cm = certmagic.New(s.cache, certmagic.Config{
		Storage:            &certmagic.FileStorage{Path: s.cfg.Storage},
		Logger:             zl,
		RenewalWindowRatio: s.cfg.renewalWindow,
	})
	host, port, _ := net.SplitHostPort(s.tcp.Addr().String())
	portNum, _ := strconv.Atoi(port)
	iss := certmagic.NewACMEIssuer(cm, certmagic.ACMEIssuer{
		CA:           s.cfg.CA,
		Email:        s.cfg.Email,
		Agreed:       true,
		TrustedRoots: s.cfg.CARoots,
		// Only TLS-ALPN-01: the relay has port 443 and nothing on 80.
		DisableHTTPChallenge: true,
		// The challenge reaches this site's own listener, through the
		// relay's splice. certmagic tries to bind this address for a
		// challenge server of its own, finds it taken and connectable,
		// and leaves the answering to GetCertificate here, as it would
		// to any server using its TLS configuration. Left to its
		// default (":443") it would try the relay's public port.
		ListenHost:     host,
		AltTLSALPNPort: portNum,
		Logger:         zl,
	})
	if s.cfg.Email == "" {
		cm.Issuers = []certmagic.Issuer{noPrompt{iss}}
	} else {
		cm.Issuers = []certmagic.Issuer{iss}
	}
	s.cm = cm
}

// noPrompt is an ACME issuer whose checks before obtaining never ask for
// an email address on the terminal: certmagic does when obtaining in the
// foreground without one, and a service has no one to answer.
type noPrompt struct{ *certmagic.ACMEIssuer }

// PreCheck runs the issuer's checks as in the background.
func (i noPrompt) PreCheck(ctx context.Context, names []string, _ bool) error {
	return i.ACMEIssuer.PreCheck(ctx, names, false)
}

// Obtain makes sure the site has a valid certificate for Domain: it loads
// the one in storage, renews it if it is due, or obtains one from the CA,
// in the foreground, once (no retries), and returns when the site serves
// it or with what failed. Call it once the relay's front door listens on
// the public port 443: the CA then connects to Domain:443, the relay
// splices the connection here (it does not authenticate) and the site
// answers the TLS-ALPN-01 challenge. It is safe to call again, for
// instance after a failure; a current certificate makes it return at
// once, without contacting the CA.
//
// Afterwards certmagic's own maintenance renews the certificate in the
// background, for as long as the site runs, and staples OCSP responses
// where the CA still offers them (Let's Encrypt no longer runs OCSP, so
// its certificates have nothing to staple).
func (s *Site) Obtain(ctx context.Context) error {
	s.obtainMu.Lock()
	defer s.obtainMu.Unlock()
	d := s.cfg.Domain
	var stale []string
	for _, c := range s.cache.AllMatchingCertificates(d) {
		if !c.NeedsRenewal(s.cm) {
			return nil
		}
		stale = append(stale, c.Hash())
	}
	if len(stale) == 0 {
		if err := s.cm.ManageSync(ctx, []string{d}); err != nil {
			return fmt.Errorf("selfsite: certificate for %s: %w", d, err)
		}
	} else {
		// The stored certificate, loaded by Start, is due: renew it and
		// swap it in, keeping the old one served meanwhile.
		if err := s.cm.RenewCertSync(ctx, d, false); err != nil {
			return fmt.Errorf("selfsite: renew certificate for %s: %w", d, err)
		}
		c, err := s.cm.CacheManagedCertificate(ctx, d)
		if err != nil {
			return fmt.Errorf("selfsite: load renewed certificate for %s: %w", d, err)
		}
		s.cache.Remove(slices.DeleteFunc(stale, func(h string) bool { return h == c.Hash() }))
	}
	for _, c := range s.cache.AllMatchingCertificates(d) {
		s.log.Info("cover site certificate ready", "domain", d, "expires", c.Leaf.NotAfter, "issuer", c.Leaf.Issuer.String())
	}
	return nil
}

// getCertificate is the site's certificate choice, on TCP and QUIC both:
// certmagic's (which answers TLS-ALPN-01 challenges and serves the managed
// certificate), or the placeholder for Domain while there is none.
func (s *Site) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	cert, err := s.cm.GetCertificate(hello)
	if err == nil {
		return cert, nil
	}
	challenge := len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmez.ACMETLS1Protocol
	if !challenge && strings.EqualFold(hello.ServerName, s.cfg.Domain) {
		return s.placeholder, nil
	}
	return nil, err
}

// TCPAddr returns the address the site serves HTTPS on (HTTP/1.1, HTTP/2):
// the relay's cover address.
func (s *Site) TCPAddr() net.Addr { return s.tcp.Addr() }

// UDPAddr returns the address the site serves HTTP/3 on: the same IP and
// port number as [Site.TCPAddr], as the relay expects.
func (s *Site) UDPAddr() net.Addr { return s.udp.LocalAddr() }

// Close stops the site: its listeners, its connections and certmagic's
// maintenance. Cancel the context of an [Site.Obtain] under way first. It
// returns the first error of the first call; later calls return the same.
func (s *Site) Close() error {
	s.closeOnce.Do(func() {
		errs := []error{s.hs.Close(), s.h3.Close(), s.udp.Close()}
		s.serving.Wait()
		s.cache.Stop()
		errs = append(errs, s.root.Close())
		for _, err := range errs {
			if err != nil && !errors.Is(err, net.ErrClosed) {
				s.closeErr = fmt.Errorf("selfsite: close: %w", err)
				break
			}
		}
	})
	return s.closeErr
}

// listenBoth listens on addr on TCP and on UDP at the same port number;
// with port 0 it tries ports until one is free on both.
func listenBoth(ctx context.Context, addr string) (net.Listener, net.PacketConn, error) {
	var lc net.ListenConfig
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	tries := 1
	if port == "0" {
		tries = 32
	}
	for range tries {
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		_, p, _ := net.SplitHostPort(ln.Addr().String())
		pc, err := lc.ListenPacket(ctx, "udp", net.JoinHostPort(host, p))
		if err == nil {
			return ln, pc, nil
		}
		ln.Close()
		if tries == 1 {
			return nil, nil, err
		}
	}
	return nil, nil, fmt.Errorf("no port free on both TCP and UDP at %s", host)
}

// makePlaceholder makes a self-signed certificate for domain (ECDSA P-256,
// 90 days), served until the real one is had.
func makePlaceholder(domain string) (*tls.Certificate, error) {
	now := time.Now()
	certPEM, keyPEM, err := tlscarrier.NewCertificateValid(domain, "ECDSA-P256", now.Add(-time.Hour), now.Add(90*24*time.Hour))
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &cert, nil
}
