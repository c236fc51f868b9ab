package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/dc"
	"github.com/merpati/merpati/relay/selfsite"
	"github.com/merpati/merpati/transport/atomicfile"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// Files in a relay directory.
const (
	SettingsFile = "relay.json" // Settings, edited by hand or by init
	CertFile     = "cert.pem"   // the relay's certificate
	KeyFile      = "key.pem"    // its private key (0600)
	KeysFile     = "keys.json"  // the access keys (0600)
	UsageFile    = "usage.json" // bytes relayed per key, kept by the relay

	// SiteDir is the default directory of the relay's own site
	// (Settings.Site), in domain mode.
	SiteDir = "site"
	// ACMEDir is where, in domain mode, the ACME account and the site's
	// certificate and key are kept (0700; certmagic's file storage).
	ACMEDir = "acme"
)

// ErrDomainMode means the relay is its own cover site (Settings.Domain):
// there is no cover site's address in the settings, as the site listens on
// a loopback port chosen when run starts it.
var ErrDomainMode = errors.New("the relay is its own cover site (domain mode)")

// Settings are the operator's choices, kept in relay.json in the relay
// directory. Unknown fields are rejected when loading.
type Settings struct {
	// Listen is the TCP address to listen on, such as ":443".
	Listen string `json:"listen"`
	// Public lists the "host:port" addresses clients reach the relay at;
	// they go into share links.
	Public []string `json:"public"`
	// Cover is the cover site's URL, such as "https://www.example.com".
	// Connections that do not authenticate are spliced to its host and
	// port. Set Cover or Domain, not both.
	Cover string `json:"cover,omitempty"`
	// Domain, instead of Cover, makes the relay its own cover site
	// ("domain mode"): it serves a small static site (Site) itself, for
	// this name, under a certificate it obtains by ACME (TLS-ALPN-01,
	// through its own port 443) and renews; see package selfsite. The
	// name's DNS records must point at the relay.
	Domain string `json:"domain,omitempty"`
	// Site is the directory of the relay's own site, in domain mode;
	// empty means [SiteDir], and a relative path is taken from the relay
	// directory.
	Site string `json:"site,omitempty"`
	// ACMECA is the URL of the ACME directory the certificate is
	// obtained from, in domain mode; empty means Let's Encrypt's.
	ACMECA string `json:"acme_ca,omitempty"`
	// ACMEEmail is the contact address given to the CA; empty means none.
	ACMEEmail string `json:"acme_email,omitempty"`
	// ACMERoots is a PEM file of the roots trusted for the CA's own
	// HTTPS, for a lab's CA (such as pebble); empty means the system's.
	// A relative path is taken from the relay directory.
	ACMERoots string `json:"acme_roots,omitempty"`
	// HTTPListen is, in domain mode, the TCP address of the plain HTTP
	// listener that redirects to the site's https:// address as a web
	// server does (such as ":80"); empty means none. init --domain sets
	// ":80".
	HTTPListen string `json:"http_listen,omitempty"`
	// SNI is the server name clients send; empty means Cover's host name,
	// or Domain in domain mode (where SNI, if set, must be Domain).
	SNI string `json:"sni,omitempty"`
	// DC overrides datacenter addresses: "ID=HOST:PORT" (tests, labs).
	DC []string `json:"dc,omitempty"`
	// Allow adds allowed target ranges in CIDR form (tests, labs).
	Allow []string `json:"allow,omitempty"`
	// NoQUIC turns off the QUIC carrier (HTTP/3 on UDP at the Listen
	// port); links then offer the TLS carrier only.
	NoQUIC bool `json:"no_quic,omitempty"`
	// LegacyTokens lets in TLS-carrier clients whose links predate
	// sealed tokens (see [Config.LegacyTokens]); absent means true, for
	// relays made before them, whose links lack "ak": once every person
	// has a new link (link show), set it false. init writes false.
	LegacyTokens *bool `json:"legacy_tokens,omitempty"`
	// IdleTimeout, such as "75s", is how long a TLS-carrier session may
	// stay without streams before the relay closes it (see
	// [Config.IdleTimeout]); empty means the cover site's own idle
	// close, which the relay learns: set it only when that cannot be
	// learned (the relay logs why) and you know the cover site's.
	IdleTimeout string `json:"idle_timeout,omitempty"`
}

// DomainMode reports whether the relay is its own cover site (Domain is
// set).
func (s *Settings) DomainMode() bool { return s.Domain != "" }

// CoverAddr returns the host:port of the cover site. In domain mode it
// returns an error wrapping [ErrDomainMode]: the address is the loopback
// one of the relay's own site, known once run has started it.
func (s *Settings) CoverAddr() (string, error) {
	if s.DomainMode() {
		return "", fmt.Errorf("cover: %w for %s: its address is the site's loopback one, chosen when run starts it", ErrDomainMode, s.Domain)
	}
	u, err := url.Parse(s.Cover)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" {
		return "", fmt.Errorf("cover %q: want an https:// URL", s.Cover)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// ServerName returns the SNI clients send: in domain mode the domain (in
// lower case).
func (s *Settings) ServerName() string {
	if s.DomainMode() {
		return strings.ToLower(s.Domain)
	}
	if s.SNI != "" {
		return s.SNI
	}
	u, err := url.Parse(s.Cover)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// Validate checks the settings.
func (s *Settings) Validate() error {
	if s.Listen == "" {
		return errors.New("settings: listen: required")
	}
	if len(s.Public) == 0 {
		return errors.New("settings: public: at least one address required")
	}
	for _, p := range s.Public {
		if _, port, err := net.SplitHostPort(p); err != nil || port == "" {
			return fmt.Errorf("settings: public %q: want host:port", p)
		}
	}
	if err := s.validateCover(); err != nil {
		return err
	}
	if _, err := s.idleTimeout(); err != nil {
		return err
	}
	_, err := s.table()
	return err
}

// Bounds on Settings.IdleTimeout: web servers close idle connections
// after seconds to minutes.
const (
	minIdleTimeout = time.Second
	maxIdleTimeout = time.Hour
)

// idleTimeout returns IdleTimeout parsed: zero when empty.
func (s *Settings) idleTimeout() (time.Duration, error) {
	if s.IdleTimeout == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s.IdleTimeout)
	if err != nil {
		return 0, fmt.Errorf("settings: idle_timeout %q: want a duration such as \"75s\"", s.IdleTimeout)
	}
	if d < minIdleTimeout || d > maxIdleTimeout {
		return 0, fmt.Errorf("settings: idle_timeout %q: want between %v and %v", s.IdleTimeout, minIdleTimeout, maxIdleTimeout)
	}
	return d, nil
}

// validateCover checks the cover site's settings: Cover (and SNI), or
// Domain and what goes with it.
func (s *Settings) validateCover() error {
	if !s.DomainMode() {
		for _, f := range []struct{ name, value string }{
			{"site", s.Site}, {"acme_ca", s.ACMECA}, {"acme_email", s.ACMEEmail}, {"acme_roots", s.ACMERoots},
			{"http_listen", s.HTTPListen},
		} {
			if f.value != "" {
				return fmt.Errorf("settings: %s: only with domain (the relay's own cover site)", f.name)
			}
		}
		if s.Cover == "" {
			return errors.New("settings: cover or domain: set one (a cover site's https:// URL, or the relay's own site's name)")
		}
		if _, err := s.CoverAddr(); err != nil {
			return fmt.Errorf("settings: %w", err)
		}
		if net.ParseIP(s.ServerName()) != nil || s.ServerName() == "" {
			return fmt.Errorf("settings: sni: the cover URL has no host name; set sni")
		}
		return nil
	}
	if s.Cover != "" {
		return errors.New("settings: set cover or domain, not both")
	}
	if s.HTTPListen != "" {
		if _, port, err := net.SplitHostPort(s.HTTPListen); err != nil || port == "" {
			return fmt.Errorf("settings: http_listen %q: want host:port, such as \":80\"", s.HTTPListen)
		}
	}
	if s.SNI != "" && !strings.EqualFold(s.SNI, s.Domain) {
		return fmt.Errorf("settings: sni %q: with domain, clients send the domain's name %q; remove sni", s.SNI, s.Domain)
	}
	// The site's own checks, with stand-ins for the paths, which are
	// checked when the site starts.
	c := selfsite.Config{Domain: s.Domain, Dir: SiteDir, Storage: ACMEDir, CA: s.ACMECA, Email: s.ACMEEmail}
	if err := c.Validate(); err != nil {
		return fmt.Errorf("settings: domain, acme_ca or acme_email: %w", err)
	}
	return nil
}

func (s *Settings) table() (*dc.Table, error) {
	t := dc.New()
	if err := t.ParseOverrides(s.DC); err != nil {
		return nil, fmt.Errorf("settings: %w", err)
	}
	for _, a := range s.Allow {
		if err := t.Allow(a); err != nil {
			return nil, fmt.Errorf("settings: %w", err)
		}
		if p, _ := netip.ParsePrefix(a); tooWide(p) {
			return nil, fmt.Errorf("settings: allow %q lets every key holder use the relay as an open proxy to %s, "+
				"the relay's own services and its provider's network included; remove it from %s "+
				"(allow is for test labs: name the lab's range, such as 10.201.100.0/24)", a, reach(p), SettingsFile)
		}
	}
	return t, nil
}

// Limits on Settings.Allow ranges: wider than the refusal limit is an open
// proxy and refused; wider than the warning limit is reported by
// [Settings.Warnings].
const (
	refuseAllowBits4, refuseAllowBits6 = 8, 16
	warnAllowBits4, warnAllowBits6     = 16, 48
)

func tooWide(p netip.Prefix) bool {
	if p.Addr().Is4() {
		return p.Bits() < refuseAllowBits4
	}
	return p.Bits() < refuseAllowBits6
}

// reach describes the addresses p opens.
func reach(p netip.Prefix) string {
	if p.Bits() == 0 {
		return "the whole Internet"
	}
	return fmt.Sprintf("%s (every port)", p.Masked())
}

// Warnings returns what is unwise, though allowed, in s, each with how to
// fix it: ranges in Allow that are huge, or that reach the relay's own
// machine (loopback), private networks or link-local addresses (cloud
// metadata services).
func (s *Settings) Warnings() []string {
	var out []string
	for _, a := range s.Allow {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			continue
		}
		p = p.Masked()
		fix := fmt.Sprintf("allow is for test labs only: remove it from %s on a real relay", SettingsFile)
		if (p.Addr().Is4() && p.Bits() < warnAllowBits4) || (p.Addr().Is6() && p.Bits() < warnAllowBits6) {
			out = append(out, fmt.Sprintf("allow %q opens %s to every key holder; %s, or narrow it", a, reach(p), fix))
			continue
		}
		for _, sp := range []struct {
			prefix netip.Prefix
			what   string
		}{
			{netip.MustParsePrefix("127.0.0.0/8"), "services on the relay's own machine (loopback)"},
			{netip.MustParsePrefix("::1/128"), "services on the relay's own machine (loopback)"},
			{netip.MustParsePrefix("169.254.0.0/16"), "link-local addresses, such as the cloud metadata service"},
			{netip.MustParsePrefix("fe80::/10"), "link-local addresses"},
			{netip.MustParsePrefix("10.0.0.0/8"), "private networks"},
			{netip.MustParsePrefix("172.16.0.0/12"), "private networks"},
			{netip.MustParsePrefix("192.168.0.0/16"), "private networks"},
			{netip.MustParsePrefix("fc00::/7"), "private networks"},
		} {
			if p.Overlaps(sp.prefix) {
				out = append(out, fmt.Sprintf("allow %q lets every key holder reach %s; %s", a, sp.what, fix))
				break
			}
		}
	}
	return out
}

// A Dir is a loaded relay directory.
type Dir struct {
	// Path is the directory.
	Path string
	// Settings are its relay.json.
	Settings Settings
	// Certificate is the relay's certificate and key.
	Certificate tls.Certificate
	// Pin is the SHA-256 of the certificate's public key.
	Pin [32]byte
	// AuthKey is the relay's static X25519 public key, derived from its
	// private key, which links carry for sealed tokens.
	AuthKey []byte
}

// Init creates a relay directory at dir with settings s, a new certificate
// (an ECDSA P-256 key) and an empty keys file. It refuses to overwrite an
// existing relay.json.
func Init(dir string, s Settings) (*Dir, error) { return InitWithKey(dir, s, "ECDSA-P256") }

// InitWithKey is [Init] with a key of the kind keyKind names (see
// [tlscarrier.NewCertificateLike]): the cover site's, so that key holders'
// CertificateVerify has the size of the cover's.
func InitWithKey(dir string, s Settings, keyKind string) (*Dir, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, SettingsFile)); err == nil {
		return nil, fmt.Errorf("init: %s already exists; refusing to overwrite a relay", filepath.Join(dir, SettingsFile))
	}
	certPEM, keyPEM, err := tlscarrier.NewCertificateLike(s.ServerName(), keyKind)
	if err != nil {
		return nil, fmt.Errorf("init: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, KeyFile), keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, CertFile), certPEM, 0o644); err != nil {
		return nil, err
	}
	if err := access.Save(filepath.Join(dir, KeysFile), nil); err != nil {
		return nil, err
	}
	if s.LegacyTokens == nil {
		// A new relay's links all carry "ak".
		s.LegacyTokens = new(bool)
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := atomicfile.Write(filepath.Join(dir, SettingsFile), append(b, '\n'), 0o600); err != nil {
		return nil, err
	}
	return LoadDir(dir)
}

// LoadDir loads the relay directory at dir.
func LoadDir(dir string) (*Dir, error) {
	b, err := os.ReadFile(filepath.Join(dir, SettingsFile))
	if err != nil {
		return nil, fmt.Errorf("load relay dir: %w (run merpati-relay init first)", err)
	}
	d := &Dir{Path: dir}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d.Settings); err != nil {
		return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, SettingsFile), err)
	}
	if err := d.Settings.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, SettingsFile), err)
	}
	d.Certificate, err = tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("load relay certificate: %w", err)
	}
	ak, err := auth.RelayAuthKey(d.Certificate.PrivateKey)
	if err != nil {
		return nil, err
	}
	d.AuthKey = ak.PublicKey().Bytes()
	d.Pin, err = tlscarrier.Pin(d.Certificate)
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Check looks at the relay directory as [Run] is about to serve it. It
// returns an error for what must not be served (secrets other users of the
// machine can read or change) and warnings, each saying how to fix it, for
// what is only unwise.
func (d *Dir) Check() (warnings []string, err error) {
	for _, f := range []struct{ name, what string }{
		{KeyFile, "the relay's private key (whoever has it can pose as this relay)"},
		{KeysFile, "every access key (whoever has them can use, or share, this relay)"},
	} {
		path := filepath.Join(d.Path, f.name)
		fi, err := os.Stat(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // a missing keys file is the keyring's to report
			}
			return nil, fmt.Errorf("check %s: %w", path, err)
		}
		switch mode := fi.Mode().Perm(); {
		case mode&0o007 != 0:
			return nil, fmt.Errorf("%s holds %s and every user of this machine can access it (mode %04o); fix it with: chmod 600 %s",
				path, f.what, mode, path)
		case mode&0o070 != 0:
			warnings = append(warnings, fmt.Sprintf("%s holds %s and its group can access it (mode %04o); fix it with: chmod 600 %s",
				path, f.what, mode, path))
		}
	}
	return append(warnings, d.Settings.Warnings()...), nil
}

// CheckCover makes one TLS connection to the cover site, as a prober's
// would be forwarded, and reports why it failed: a relay whose cover site
// is down closes every probe right after its ClientHello, which gives the
// relay away. The certificate is not checked (a lab's cover may have its
// own); the handshake is. In domain mode it returns an error wrapping
// [ErrDomainMode] at once: the site starts with the relay, which fails to
// start without it.
func (d *Dir) CheckCover(ctx context.Context) error {
	addr, err := d.Settings.CoverAddr()
	if err != nil {
		return err
	}
	if err := checkCover(ctx, addr, d.Settings.ServerName()); err != nil {
		return fmt.Errorf("cover site %s (%s): %w", d.Settings.Cover, addr, err)
	}
	return nil
}

// checkCover completes one TLS handshake with the cover site at addr,
// sending serverName, without checking its certificate.
func checkCover(ctx context.Context, addr, serverName string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	dialer := tls.Dialer{Config: &tls.Config{ServerName: serverName, InsecureSkipVerify: true}}
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// SitePath returns the directory of the relay's own site (domain mode):
// Settings.Site, by default [SiteDir], from the relay directory.
func (d *Dir) SitePath() string { return d.path(d.Settings.Site, SiteDir) }

// ACMEPath returns the directory where, in domain mode, the ACME account
// and the site's certificate are kept: [ACMEDir] in the relay directory.
func (d *Dir) ACMEPath() string { return filepath.Join(d.Path, ACMEDir) }

// path returns p, or def if p is empty, from the relay directory.
func (d *Dir) path(p, def string) string {
	if p == "" {
		p = def
	}
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(d.Path, p)
}

// SelfSiteConfig returns the configuration of the relay's own site, in
// domain mode, logging to log: Settings.Domain, the site's directory
// ([Dir.SitePath]), the ACME settings with the roots of Settings.ACMERoots
// loaded, the storage [Dir.ACMEPath], and as the public port the one of
// the first public address with the domain as host, else of the first.
// Listen is left to its default (a loopback port free on TCP and UDP). It
// returns an error when the relay is not in domain mode, or when the
// roots file does not load.
func (d *Dir) SelfSiteConfig(log *slog.Logger) (selfsite.Config, error) {
	s := &d.Settings
	if !s.DomainMode() {
		return selfsite.Config{}, errors.New("relay: the relay has a cover site (cover), not a site of its own (domain)")
	}
	c := selfsite.Config{
		Domain:  s.ServerName(),
		Dir:     d.SitePath(),
		CA:      s.ACMECA,
		Email:   s.ACMEEmail,
		Storage: d.ACMEPath(),
		Logger:  log,
	}
	if s.ACMERoots != "" {
		path := d.path(s.ACMERoots, "")
		pem, err := os.ReadFile(path)
		if err != nil {
			return selfsite.Config{}, fmt.Errorf("acme_roots: %w", err)
		}
		c.CARoots = x509.NewCertPool()
		if !c.CARoots.AppendCertsFromPEM(pem) {
			return selfsite.Config{}, fmt.Errorf("acme_roots: %s holds no PEM certificate", path)
		}
	}
	port := ""
	for _, p := range s.Public {
		host, pp, _ := net.SplitHostPort(p)
		if port == "" || strings.EqualFold(host, s.Domain) {
			port = pp
		}
		if strings.EqualFold(host, s.Domain) {
			break
		}
	}
	if n, err := strconv.Atoi(port); err == nil && n > 0 && n <= 65535 {
		c.PublicPort = n
	}
	return c, nil
}

// KeysPath returns the path of the keys file.
func (d *Dir) KeysPath() string { return filepath.Join(d.Path, KeysFile) }

// UsagePath returns the path of the usage file.
func (d *Dir) UsagePath() string { return filepath.Join(d.Path, UsageFile) }

// Link returns the share link for access key e.
func (d *Dir) Link(e access.Entry) *link.Link {
	return &link.Link{
		Relays:   append([]string(nil), d.Settings.Public...),
		Pin:      d.Pin,
		AuthKey:  d.AuthKey,
		SNI:      d.Settings.ServerName(),
		Carriers: d.Settings.carriers(),
		Key:      e.Key,
		Name:     e.Name,
	}
}

// carriers lists the carriers the relay offers, in links' order.
func (s *Settings) carriers() []string {
	if s.NoQUIC {
		return []string{link.CarrierTLS}
	}
	return []string{link.CarrierTLS, link.CarrierQUIC}
}

// Config returns the relay Config for this directory, with a keyring
// loaded from its keys file that logs to log (nil discards). The Config's
// Logger and timeouts are left to the caller, and so, in domain mode, is
// its Cover: the address of the relay's own site once started (see
// [Dir.SelfSiteConfig]).
func (d *Dir) Config(log *slog.Logger) (Config, error) {
	cfg, err := d.settingsConfig()
	if err != nil {
		return Config{}, err
	}
	if cfg.Keys, err = access.NewKeyring(d.KeysPath(), d.UsagePath(), log); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// settingsConfig returns the relay Config for this directory's settings
// and certificate, without keys; in domain mode without Cover.
func (d *Dir) settingsConfig() (Config, error) {
	var cover string
	if !d.Settings.DomainMode() {
		var err error
		if cover, err = d.Settings.CoverAddr(); err != nil {
			return Config{}, err
		}
	}
	table, err := d.Settings.table()
	if err != nil {
		return Config{}, err
	}
	idle, err := d.Settings.idleTimeout()
	if err != nil {
		return Config{}, err
	}
	return Config{
		IdleTimeout:  idle,
		Listen:       d.Settings.Listen,
		Certificate:  d.Certificate,
		Cover:        cover,
		Table:        table,
		ServerName:   d.Settings.ServerName(),
		NoQUIC:       d.Settings.NoQUIC,
		LegacyTokens: d.Settings.legacyTokens(),
	}, nil
}

// legacyTokens returns the effective LegacyTokens: absent means true.
func (s *Settings) legacyTokens() bool { return s.LegacyTokens == nil || *s.LegacyTokens }
