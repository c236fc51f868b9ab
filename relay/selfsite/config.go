package selfsite

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/certmagic"
)

// LetsEncrypt is the default [Config.CA]: Let's Encrypt's production
// ACME directory.
const LetsEncrypt = certmagic.LetsEncryptProductionCA

// DefaultListen is the default [Config.Listen]: a port on loopback that
// is free on TCP and UDP both.
const DefaultListen = "127.0.0.1:0"

// DefaultPublicPort is the default [Config.PublicPort].
const DefaultPublicPort = 443

// Config configures a [Site]. The zero value is not valid: Domain, Dir
// and Storage are required.
type Config struct {
	// Domain is the site's name, the one its certificate is for and the
	// one the relay's clients send in their hellos, such as
	// "relay.example.net". Its A/AAAA records must point at the relay,
	// which must answer on port 443 for the CA to check it (TLS-ALPN-01,
	// RFC 8737). Required.
	Domain string
	// Dir is the directory of static files served, as a small Caddy
	// site would (see [Site]). It must exist; [WriteDefaultSite] fills
	// an empty one. Required.
	Dir string
	// CA is the URL of the ACME directory; empty means [LetsEncrypt].
	// It must be an https URL.
	CA string
	// Email is the contact address given to the CA with the ACME
	// account; empty registers the account without one (Let's Encrypt
	// no longer mails about expiry anyway).
	Email string
	// CARoots are the roots trusted for the ACME directory's own HTTPS;
	// nil means the system's. Tests set a test CA's.
	CARoots *x509.CertPool
	// Storage is the directory where the ACME account, the certificate
	// and its key are kept (certmagic's file storage), such as
	// <relay directory>/acme; it is created, mode 0700, if missing.
	// Required.
	Storage string
	// PublicPort is the port clients reach the site on, through the
	// relay, on TCP and UDP: the one TCP responses advertise HTTP/3 on
	// (Alt-Svc). Zero means [DefaultPublicPort].
	PublicPort int
	// Listen is the loopback "host:port" the site listens on, on TCP
	// and on UDP at the same port number (as the relay expects of its
	// cover site); empty means [DefaultListen], a port free on both.
	Listen string
	// Logger receives the site's logs and certmagic's; nil discards.
	Logger *slog.Logger

	// renewalWindow is certmagic's RenewalWindowRatio, the part of a
	// certificate's lifetime, at its end, in which it is renewed; zero
	// means certmagic's default (a third). Tests set 1 to make a fresh
	// certificate due.
	renewalWindow float64
}

// Validate reports the first setting that is missing or wrong, naming
// the field. It does not change c.
func (c *Config) Validate() error {
	if err := checkDomain(c.Domain); err != nil {
		return fmt.Errorf("selfsite: Config.Domain: %w", err)
	}
	if c.Dir == "" {
		return errors.New("selfsite: Config.Dir: required")
	}
	if c.Storage == "" {
		return errors.New("selfsite: Config.Storage: required")
	}
	if c.CA != "" {
		u, err := url.Parse(c.CA)
		switch {
		case err != nil:
			return fmt.Errorf("selfsite: Config.CA: %w", err)
		case u.Scheme != "https" || u.Host == "":
			return fmt.Errorf("selfsite: Config.CA: %q is not an https URL", c.CA)
		}
	}
	if c.Email != "" && (!strings.Contains(c.Email, "@") || strings.ContainsAny(c.Email, " \t\r\n<>")) {
		return fmt.Errorf("selfsite: Config.Email: %q is not an address", c.Email)
	}
	if c.PublicPort < 0 || c.PublicPort > 65535 {
		return fmt.Errorf("selfsite: Config.PublicPort: %d is not a port", c.PublicPort)
	}
	if c.Listen != "" {
		host, port, err := net.SplitHostPort(c.Listen)
		if err != nil {
			return fmt.Errorf("selfsite: Config.Listen: %w", err)
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("selfsite: Config.Listen: %q is not a loopback address: the site is reached through the relay only", host)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return fmt.Errorf("selfsite: Config.Listen: %q is not a port", port)
		}
	}
	return nil
}

// filled returns a copy of c with the defaults in place.
func (c Config) filled() Config {
	c.Domain = strings.ToLower(c.Domain)
	if c.CA == "" {
		c.CA = LetsEncrypt
	}
	if c.PublicPort == 0 {
		c.PublicPort = DefaultPublicPort
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// checkDomain accepts a fully qualified DNS name a CA can issue for:
// letters, digits and hyphens, at least two labels, no IP address, no
// wildcard, no trailing dot.
func checkDomain(d string) error {
	switch {
	case d == "":
		return errors.New("required")
	case len(d) > 253:
		return fmt.Errorf("%q is longer than 253 bytes", d)
	case net.ParseIP(d) != nil:
		return fmt.Errorf("%q is an IP address; a domain name is needed", d)
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return fmt.Errorf("%q is not a fully qualified name", d)
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q: bad label %q", d, l)
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("%q: bad label %q", d, l)
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return fmt.Errorf("%q ends in a numeric label", d)
	}
	return nil
}
