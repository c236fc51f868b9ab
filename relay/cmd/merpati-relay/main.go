// Command merpati-relay runs a merpati relay: a server outside the censored
// network that forwards its users' Telegram traffic to Telegram's
// datacenters, and only there, while looking like an ordinary web site to
// everyone else.
//
// Usage:
//
//	merpati-relay init --dir DIR --public HOST:PORT [--listen ADDR] [--cover URL] [--sni NAME] [--name NAME]
//	                   [--quic auto|on|off] [--offline] [--dc ID=HOST:PORT]... [--allow CIDR]...
//	merpati-relay init --dir DIR --domain NAME [--site DIR] [--acme-ca URL] [--acme-email ADDR] [--acme-roots FILE]
//	                   [--public HOST:PORT] [--listen ADDR] [--name NAME] [--quic on|off]
//	merpati-relay run --dir DIR [--metrics ADDR] [--log-level LEVEL] [--log-format text|json]
//	merpati-relay status --dir DIR
//	merpati-relay doctor --dir DIR [--timeout 10s] [--dial-telegram]
//	merpati-relay link add NAME --dir DIR [--quota BYTES] [--max-sessions N] [--max-streams N] [--expires DURATION]
//	                   [--mtproxy-secret SECRET | --no-mtproxy]
//	merpati-relay link list --dir DIR
//	merpati-relay link show NAME --dir DIR
//	merpati-relay link revoke NAME --dir DIR
//	merpati-relay list keygen --out FILE
//	merpati-relay list add --in relays.json (--link LINK | --link-file FILE | --dir DIR --name KEYNAME)
//	merpati-relay list audience --out FILE
//	merpati-relay list sign --key FILE --audience FILE --in relays.json --seq N [--ttl 168h] --out list.pem [--buckets N --per-bucket K]
//	merpati-relay list pub --key FILE | list show --in list.pem [--lk PUBKEY]
//	merpati-relay list share --link LINK --zone ZONE (--key FILE | --lk PUBKEY) --audience FILE...
//	merpati-relay dns --zone ZONE --list FILE... [--listen ADDR] [--ns NAME]... [--ns-addr IP]...
//	                  [--rate-limit 20] [--slip 2]
//
// init creates DIR with the relay's settings (relay.json), its certificate
// and key (key.pem, mode 0600) and its access keys (keys.json, 0600), makes
// a first access key, and prints its share link and QR code. --public is
// the address users reach the relay at (repeatable); --cover is the https://
// URL of the real web site that everyone without a key is shown (default
// https://www.example.com; choose a site on your own server or one that is
// plausible for your relay's address); --sni overrides the server name
// clients send (default: the cover URL's host). The QUIC carrier runs only
// in front of a cover site that serves HTTP/3 on UDP (at its TCP port
// number): a relay whose UDP port answers where the cover site's does not
// stands out. --quic auto (the default) makes one QUIC handshake with the
// cover site and turns the carrier off ("no_quic" in relay.json, links
// offering TLS only) when it fails; run checks again at every start. init
// also learns the cover site's TLS flight (which key holders' flight
// follows, see run) and gives the relay a key of the cover's kind (RSA or
// ECDSA), so that its signatures are the cover's size; it prints what
// cannot be mirrored. --offline contacts nobody (--quic auto then means
// on, and the key is ECDSA P-256).
//
// init --domain NAME, instead of --cover, makes the relay its own cover
// site ("self-steal"): it serves a small static site itself, from --site
// (default: DIR/site; an empty or missing directory gets a plausible
// default page, and no file of the operator's is ever overwritten), for
// NAME, under a certificate obtained by ACME from --acme-ca (default:
// Let's Encrypt) with the TLS-ALPN-01 challenge, which the CA checks at
// NAME:443 through the relay's own front door. --public defaults to
// NAME at the --listen port; the relay's key is ECDSA P-256, the
// certificate's kind, and the QUIC carrier is on (the site serves
// HTTP/3) unless --quic off. init contacts nobody; it prints what to do:
// point NAME's DNS A/AAAA records at this host and open port 443 on TCP
// and UDP. --acme-email gives the CA a contact address, --acme-roots the
// roots of a lab CA's HTTPS (such as pebble's). Plain HTTP on
// --http-listen (default :80; none for no listener) gets the redirect to
// https:// that a web site's port 80 gives. relay.json then has "domain",
// and "site", "acme_*" and "http_listen" if set, instead of "cover".
//
// run serves. It reloads keys.json when it changes, and on SIGHUP: a revoked
// key's sessions end at once, and nobody else notices. A keys.json that is
// missing or empty (zero bytes) is not reloaded: the keys in force stay,
// and an error is logged. SIGHUP also reloads relay.json: a file that does
// not parse or validate, or a new cover site that does not answer (TLS,
// and HTTP/3 while the QUIC carrier runs), is refused with an error and
// the settings in force stay; otherwise dc, allow, cover, sni and
// legacy_tokens apply at once, with no session or stream dropped (streams
// already open keep their datacenter connection; new ones use the new
// table). listen, no_quic and the certificate need a restart, which the
// log says; public needs none, as only links carry it. run saves the
// bytes used per key to usage.json every 5 seconds and when it stops. It
// refuses to serve while key.pem or keys.json can be read by every user of
// the machine, and logs an error when it starts with no keys or when the
// cover site is down.
//
// In domain mode run starts the relay's own site on a loopback port (its
// cover site), then the relay, and once the relay listens has the site
// obtain its certificate (or load the stored one from DIR/acme, renewing
// it if due), retrying with a wait from 1 minute doubling to 1 hour and
// logging what to check (NAME's DNS, port 443 from the Internet, the CA)
// until it succeeds; key holders' flight then follows the certificate's.
// Until then the site shows a self-signed certificate. The site renews the
// certificate in the background. SIGHUP leaves the site in force: changes
// of domain, site and acme_*, and switching between cover and domain,
// need a restart, which the log says.
//
// run --metrics ADDR serves Prometheus metrics at http://ADDR/metrics (off
// unless set; give a local address such as 127.0.0.1:9464). run also
// answers on a unix socket in DIR (admin.sock, mode 0600), through which
// status prints each key's live sessions, streams and usage, and link list
// adds the live counts.
//
// doctor checks a relay directory and what it depends on (settings, file
// permissions, the cover site's TLS 1.3 and HTTP/3, clock skew, public
// addresses, datacenters overridden with --dc, UDP buffer sysctls, the
// listen port) and prints one line per check, OK, WARN or FAIL, with what
// to fix; it fails if any check does. Telegram's own datacenters are
// dialled only with --dial-telegram. In domain mode it checks the site's
// directory, the ACME storage's mode and the stored certificate (and its
// expiry), and the site's TLS, HTTP/3 and clock through the relay's front
// door while the relay runs.
//
// link add and revoke, and list add, lock the file they change, so that
// concurrent runs never lose each other's changes.
//
// link manages per-person access keys: give every person their own, so any
// one can be revoked without disturbing the others. add and show also print
// the person's tg://proxy and https://t.me/proxy links (an "ee" FakeTLS
// MTProxy secret: stock Telegram apps use the relay directly, on the same
// port, under the same key and limits); --no-mtproxy makes a key without
// one (every MTProxy secret costs an HMAC over every app-like hello, which
// a prober can time once there are hundreds; run warns); --mtproxy-secret
// keeps a secret the
// person already has (hex or base64url).
//
// Every key has limits, defaults included: --max-sessions caps its
// concurrent sessions (carrier connections; default 64) and --max-streams
// its concurrent streams, each a Telegram connection, counted from the
// moment it opens (default 1024; --max-conns is its former name). --quota
// caps the bytes relayed for the key (default: none). A stream or session
// over a limit is refused, and the relay's log names the limit.
//
// --dc and --allow exist for test labs: --dc points a datacenter number at
// another address (allowed on that port only), --allow adds a target range
// (every port). On a real relay leave them out: the built-in table allows
// only Telegram's ranges, on Telegram's MTProto ports.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/metrics"
	"github.com/merpati/merpati/relay/selfsite"
	"github.com/merpati/merpati/transport/cmdmain"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/quiccarrier"
	"github.com/merpati/merpati/transport/tlscarrier"
)

func main() { os.Exit(cmdmain.Main("merpati-relay", run)) }

const usage = `usage:
  merpati-relay init --dir DIR --public HOST:PORT [--listen ADDR] [--cover URL] [--sni NAME] [--name NAME]
  merpati-relay init --dir DIR --domain NAME [--site DIR] [--acme-email ADDR]   (the relay is its own cover site)
  merpati-relay run --dir DIR [--metrics 127.0.0.1:9464]
  merpati-relay status --dir DIR
  merpati-relay doctor --dir DIR [--timeout 10s] [--dial-telegram]
  merpati-relay link add|list|show|revoke [NAME] --dir DIR
  merpati-relay list keygen|pub|audience|add|sign|show|share ...   (the signed relay lists for DNS bootstrap)
  merpati-relay dns --zone ZONE --list FILE [--listen ADDR] [--ns NAME --ns-addr IP]
Run "merpati-relay COMMAND -h" for a command's flags.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "init":
		return cmdInit(args[1:], stdout, stderr)
	case "run":
		return cmdRun(ctx, args[1:], stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "doctor":
		return cmdDoctor(ctx, args[1:], stdout, stderr)
	case "link":
		if len(args) < 2 {
			fmt.Fprintln(stderr, usage)
			return flag.ErrHelp
		}
		return cmdLink(args[1], args[2:], stdout, stderr)
	case "list":
		return cmdList(args[1:], stdout, stderr)
	case "dns":
		return cmdDNS(ctx, args[1:], stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintln(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// parse parses args with fs, allowing positional arguments before, between
// and after flags ("link add alice --dir d"), and returns the positional
// ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("merpati-relay "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func cmdInit(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("init", stderr)
	dir := fs.String("dir", "", "relay directory to create (required)")
	var public, dcs, allow listFlag
	fs.Var(&public, "public", "HOST:PORT users reach the relay at (repeatable; required)")
	listen := fs.String("listen", ":443", "TCP address to listen on")
	cover := fs.String("cover", "https://www.example.com", "https:// URL of the cover site shown to everyone without a key")
	sni := fs.String("sni", "", "server name clients send (default: the cover URL's host)")
	name := fs.String("name", "owner", "name of the first access key")
	fs.Var(&dcs, "dc", "override a datacenter: ID=HOST:PORT (test labs only; repeatable)")
	fs.Var(&allow, "allow", "allow an extra target range: CIDR (test labs only; repeatable)")
	quicMode := fs.String("quic", "auto", "QUIC carrier: auto (on if the cover site serves HTTP/3 on UDP), on, or off")
	offline := fs.Bool("offline", false, "contact nobody: no check of the cover site (--quic auto means on) and an ECDSA P-256 key")
	domain := fs.String("domain", "", "instead of --cover: the relay is its own cover site for this name (its DNS points here), "+
		"a small site served under a certificate run obtains by ACME on port 443")
	siteDir := fs.String("site", "", "with --domain: directory of the relay's own site (default: site in DIR; an empty one gets a default site)")
	acmeCA := fs.String("acme-ca", "", "with --domain: ACME directory URL (default: Let's Encrypt)")
	acmeEmail := fs.String("acme-email", "", "with --domain: contact address given to the CA (default: none)")
	acmeRoots := fs.String("acme-roots", "", "with --domain: PEM file of the roots trusted for the CA's HTTPS (test labs, such as pebble)")
	httpListen := fs.String("http-listen", ":80", "with --domain: address of the plain HTTP listener that redirects to https://, as a web site's does (none: no listener)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("init: --dir is required")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	s := relay.Settings{Listen: *listen, Public: public, Cover: *cover, SNI: *sni, DC: dcs, Allow: allow}
	if *domain != "" {
		if set["cover"] {
			return errors.New("init: --cover and --domain: give one, a cover site or the relay's own site")
		}
		if err := domainSettings(&s, *domain, *siteDir, *acmeCA, *acmeEmail, *acmeRoots); err != nil {
			return fmt.Errorf("init: %w", err)
		}
		if *httpListen != "none" {
			s.HTTPListen = *httpListen
		}
	} else {
		for _, f := range []string{"site", "acme-ca", "acme-email", "acme-roots", "http-listen"} {
			if set[f] {
				return fmt.Errorf("init: --%s: only with --domain", f)
			}
		}
	}
	if err := s.Validate(); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	if *quicMode != "auto" && *quicMode != "on" && *quicMode != "off" {
		return fmt.Errorf("init: --quic %q: want auto, on or off", *quicMode)
	}
	s.NoQUIC = *quicMode == "off"
	// With --domain the key is certmagic's default kind, ECDSA P-256, so
	// that the relay's signatures have the size of its site's.
	keyKind := "ECDSA-P256"
	if !*offline && !s.DomainMode() {
		// Refuse an existing relay before contacting anyone.
		if _, err := os.Stat(filepath.Join(*dir, relay.SettingsFile)); err == nil {
			return fmt.Errorf("init: %s already exists; refusing to overwrite a relay", filepath.Join(*dir, relay.SettingsFile))
		}
		keyKind = learnCover(stdout, &s, *quicMode == "auto")
	}
	d, err := relay.InitWithKey(*dir, s, keyKind)
	if err != nil {
		return err
	}
	if s.DomainMode() {
		if err := selfsite.WriteDefaultSite(d.SitePath()); err != nil {
			return fmt.Errorf("init: %w", err)
		}
	}
	e, err := access.Add(d.KeysPath(), *name, access.Entry{})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Relay created in %s. Start it with: merpati-relay run --dir %s\n\n", *dir, *dir)
	if s.DomainMode() {
		printDomainSteps(stdout, d)
	}
	return printLink(stdout, d, e)
}

// domainSettings makes s the settings of a relay that is its own cover
// site for domain, as init --domain does: no cover, public defaulting to
// domain at the listen port, and the site's directory and the roots file
// as absolute paths (relay.json takes relative ones from the relay
// directory, the command line from the working directory). It contacts
// nobody; it checks that the roots file, if any, holds certificates.
func domainSettings(s *relay.Settings, domain, site, ca, email, roots string) error {
	s.Cover, s.Domain, s.ACMECA, s.ACMEEmail = "", domain, ca, email
	if len(s.Public) == 0 {
		_, port, err := net.SplitHostPort(s.Listen)
		if err != nil {
			return fmt.Errorf("--listen %q: %w", s.Listen, err)
		}
		s.Public = []string{net.JoinHostPort(domain, port)}
	}
	var err error
	if site != "" {
		if s.Site, err = filepath.Abs(site); err != nil {
			return fmt.Errorf("--site: %w", err)
		}
	}
	if roots != "" {
		if s.ACMERoots, err = filepath.Abs(roots); err != nil {
			return fmt.Errorf("--acme-roots: %w", err)
		}
		pem, err := os.ReadFile(s.ACMERoots)
		if err != nil {
			return fmt.Errorf("--acme-roots: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return fmt.Errorf("--acme-roots: %s holds no PEM certificate", s.ACMERoots)
		}
	}
	return nil
}

// printDomainSteps tells the operator of a relay that is its own cover
// site what to do before run.
func printDomainSteps(w io.Writer, d *relay.Dir) {
	s := &d.Settings
	ca := s.ACMECA
	if ca == "" {
		ca = selfsite.LetsEncrypt + " (Let's Encrypt)"
	}
	fmt.Fprintf(w, "The relay is its own cover site for %s: everyone without a key sees the site in %s\n"+
		"(a plausible default; edit or replace its files as you like, they are served as they are).\n"+
		"Before run:\n"+
		"  - point the DNS A record (and AAAA, if this host has IPv6) of %s at this host;\n"+
		"  - open port 443 on TCP and UDP to the Internet (the CA checks %s:443 from outside, over TLS-ALPN-01).\n"+
		"run then obtains the site's certificate from %s and renews it;\n"+
		"until it has one, the site shows a self-signed certificate, and run's log says what to check.\n\n",
		s.ServerName(), d.SitePath(), s.ServerName(), s.ServerName(), ca)
}

// learnCover contacts the cover site of s as init does: it learns its TLS
// flight, returning the kind of key the relay should have to sign like
// it, prints what key holders' flight cannot copy, and, if checkQUIC,
// turns the QUIC carrier off when the cover site does not serve HTTP/3.
func learnCover(w io.Writer, s *relay.Settings, checkQUIC bool) (keyKind string) {
	keyKind = "ECDSA-P256"
	addr, _ := s.CoverAddr()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if f, err := tlscarrier.LearnFlight(ctx, addr, s.ServerName()); err != nil {
		fmt.Fprintf(w, "The cover site %s did not complete a TLS handshake (%v): bring it up before `run`; the relay's key is ECDSA P-256.\n\n", addr, err)
	} else {
		if _, _, err := tlscarrier.NewCertificateLike("x", f.LeafKey); err == nil {
			keyKind = f.LeafKey
		}
		fmt.Fprintf(w, "Cover site's TLS flight: %s.\nKey holders' flight will follow it; the relay's key is %s.\n", f, keyKind)
		for _, g := range f.Gaps() {
			fmt.Fprintf(w, "Not mirrored: %s\n", g)
		}
		fmt.Fprintln(w)
	}
	if checkQUIC {
		if _, err := quiccarrier.CheckCover(ctx, addr, s.ServerName()); err != nil {
			s.NoQUIC = true
			fmt.Fprintf(w, "The cover site does not serve HTTP/3 on UDP %s, so the relay will not either: "+
				"the QUIC carrier is off (\"no_quic\" in %s) and links offer TLS only.\n(%v)\n\n", addr, relay.SettingsFile, err)
		}
	}
	return keyKind
}

func printLink(w io.Writer, d *relay.Dir, e access.Entry) error {
	l := d.Link(e)
	// A running relay that found its cover site without HTTP/3 serves no
	// QUIC: links made meanwhile skip it.
	if reply, err := queryStatus(d.Path); err == nil && reply.QUICOff != "" {
		l.Carriers = slices.DeleteFunc(l.Carriers, func(c string) bool { return c == link.CarrierQUIC })
		fmt.Fprintf(w, "The running relay has its QUIC carrier off (%s): this link offers TLS only.\n"+
			"Set \"no_quic\": true in %s to make that lasting, or give the cover site HTTP/3.\n\n",
			reply.QUICOff, relay.SettingsFile)
	}
	s := l.String()
	qr, err := link.TerminalQR(s)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "Share link for %q (give it to this person only):\n\n%s\n\n%s\n", e.Name, s, qr)
	if err := printProxyLinks(w, d, e); err != nil {
		return err
	}
	printLiveGaps(w, d.Path)
	return nil
}

// printProxyLinks prints the tg://proxy and https://t.me/proxy links with
// which a stock Telegram app uses the relay directly (MTProxy with a
// FakeTLS secret), and a QR code of the first.
func printProxyLinks(w io.Writer, d *relay.Dir, e access.Entry) error {
	secret, ok := d.MTProxySecret(e)
	if !ok {
		return nil
	}
	var first string
	var lines []string
	for _, addr := range d.Settings.Public {
		host, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			continue
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			continue
		}
		tg, https := link.ProxyLink(host, uint16(port), secret.String())
		if first == "" {
			first = tg
		}
		lines = append(lines, tg, https)
	}
	if first == "" {
		return nil
	}
	qr, err := link.TerminalQR(first)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\nFor Telegram apps without merpati (MTProxy, same person, same limits):\n\n%s\n\n%s\n",
		strings.Join(lines, "\n"), qr)
	return nil
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("run", stderr)
	dir := fs.String("dir", "", "relay directory (required)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics, such as 127.0.0.1:9464 (off unless set)")
	logFlags := cmdmain.AddLogFlags(fs, "info")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("run: --dir is required")
	}
	log, err := logFlags.Logger(stderr)
	if err != nil {
		return err
	}
	d, err := relay.LoadDir(*dir)
	if err != nil {
		return err
	}
	warnings, err := d.Check()
	if err != nil {
		return fmt.Errorf("run: refusing to serve: %w", err)
	}
	for _, w := range warnings {
		log.Warn(w)
	}
	cfg, err := d.Config(log)
	if err != nil {
		return err
	}
	cfg.Logger = log
	cfg.Metrics = metrics.New(cfg.Keys.Usage)
	var site *selfsite.Site
	if d.Settings.DomainMode() {
		// The relay's own cover site: on loopback, before the relay, whose
		// cover it is; closed after the relay and the helpers below.
		sc, err := d.SelfSiteConfig(log)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		if site, err = selfsite.Start(ctx, sc); err != nil {
			return fmt.Errorf("run: the relay's own site: %w", err)
		}
		defer site.Close()
		cfg.Cover = site.TCPAddr().String()
		log.Info("cover: the relay's own site for "+sc.Domain, "site", sc.Dir, "addr", cfg.Cover)
		if a := d.Settings.HTTPListen; a != "" {
			stop, err := serveRedirect(a, selfsite.RedirectHandler(sc.Domain, sc.PublicPort), log)
			if err != nil {
				// The relay serves without it; a closed port 80 is a
				// smaller tell than no relay.
				log.Error("no plain HTTP redirect (http_listen): port 80 stays closed, where a web site answers", "err", err)
			} else {
				defer stop()
			}
		}
	}
	// The helpers below end with the relay, and run returns only after
	// them.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if *metricsAddr != "" {
		if err := serveMetrics(ctx, *metricsAddr, cfg.Metrics, log, &wg); err != nil {
			return fmt.Errorf("run: %w", err)
		}
	}
	if site == nil {
		wg.Go(func() {
			if err := d.CheckCover(ctx); err != nil && ctx.Err() == nil {
				log.Error("cover site unreachable: probes will see connections closed right after their ClientHello, "+
					"which gives the relay away; bring the site up, or point \"cover\" in relay.json at one that is up",
					"err", err)
			}
		})
	}
	rl, err := relay.New(cfg)
	if err != nil {
		return err
	}
	if err := serveAdmin(ctx, d.Path, cfg.Metrics, rl, log, &wg); err != nil {
		log.Warn("no live status (merpati-relay status)", "err", err)
	}
	if site != nil {
		wg.Go(func() { obtainCertificate(ctx, rl, site, &d.Settings, log) })
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	wg.Go(func() {
		inForce := d
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if n, err := cfg.Keys.Reload(); err != nil {
					log.Error("keys not reloaded", "err", err)
				} else {
					log.Info("keys reloaded on SIGHUP", "keys", n)
				}
				// The relay logs what it applied and what needs a
				// restart.
				if nd, err := rl.ReloadDir(ctx, inForce); err != nil {
					log.Error(relay.SettingsFile+" not reloaded: the settings in force stay", "err", err)
				} else {
					inForce = nd
				}
			}
		}
	})
	return rl.Run(ctx)
}

// Retries of the relay's own site's first certificate: the wait doubles
// from obtainRetryMin to obtainRetryMax, less up to a quarter at random
// (so that relays that failed together do not retry together).
const (
	obtainRetryMin = time.Minute
	obtainRetryMax = time.Hour
)

// obtainCertificate has the relay's own site obtain its certificate (or
// load or renew the stored one) once the relay listens, since the CA's
// check comes through the relay's front door, retrying until it succeeds
// or ctx is done, and logging what to check on each failure. Then key
// holders' flight is learned anew from the site's, which now sends the
// real certificate's chain.
// serveRedirect serves h, the site's redirect to https://, on the TCP
// address addr until stop is called.
func serveRedirect(addr string, h http.Handler, log *slog.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	log.Info("plain HTTP redirects to https://", "addr", ln.Addr().String())
	return func() {
		srv.Close()
		<-done
	}, nil
}

func obtainCertificate(ctx context.Context, rl *relay.Relay, site *selfsite.Site, s *relay.Settings, log *slog.Logger) {
	select {
	case <-rl.Ready():
	case <-ctx.Done():
		return
	}
	name := s.ServerName()
	ca := s.ACMECA
	if ca == "" {
		ca = selfsite.LetsEncrypt
	}
	for delay := obtainRetryMin; ; delay = min(2*delay, obtainRetryMax) {
		err := site.Obtain(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		wait := delay - rand.N(delay/4)
		log.Error("cover site certificate not obtained, retrying: check that the DNS A/AAAA records of "+name+
			" point at this host, that port 443 (TCP) of "+name+" reaches this relay from the Internet (firewall, "+
			"provider, NAT), and that this host reaches the CA",
			"domain", name, "ca", ca, "retry_in", wait.Round(time.Second), "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
	}
	rl.LearnCover(ctx)
	leaf, err := servedCertificate(ctx, site.TCPAddr().String(), name)
	if err != nil {
		if ctx.Err() == nil {
			log.Warn("cover site certificate not read back", "domain", name, "err", err)
		}
		return
	}
	log.Info("cover site certificate in force", "domain", name, "issuer", leaf.Issuer.String(),
		"expires", leaf.NotAfter.UTC().Format(time.RFC3339))
}

// servedCertificate returns the certificate the TLS server at addr serves
// for name (not verified).
func servedCertificate(ctx context.Context, addr, name string) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{ServerName: name, InsecureSkipVerify: true}}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

func cmdLink(sub string, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("link "+sub, stderr)
	dir := fs.String("dir", "", "relay directory (required)")
	quota := fs.Int64("quota", 0, "add: byte quota for this key (0 = none)")
	maxSessions := fs.Int("max-sessions", 0, fmt.Sprintf("add: maximum concurrent sessions (carrier connections) (0 = default, %d)", access.DefaultMaxSessions))
	maxStreams := fs.Int("max-streams", 0, fmt.Sprintf("add: maximum concurrent streams (Telegram connections) (0 = default, %d)", access.DefaultMaxStreams))
	maxConns := fs.Int("max-conns", 0, "add: former name of --max-streams")
	expires := fs.Duration("expires", 0, "add: key lifetime, such as 720h (0 = never)")
	noMT := fs.Bool("no-mtproxy", false, "add: no MTProxy secret (no tg://proxy link; the relay then checks app hellos against one secret fewer)")
	var mtSecret mtproxy.Key
	fs.Func("mtproxy-secret", "add: use this MTProxy secret (ee secret or its 16-byte key, hex or base64url) instead of a new one", func(v string) error {
		if s, err := mtproxy.ParseSecret(v); err == nil {
			mtSecret = s.Key
			return nil
		}
		return mtSecret.UnmarshalText([]byte(strings.TrimSpace(v)))
	})
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("link %s: --dir is required", sub)
	}
	d, err := relay.LoadDir(*dir)
	if err != nil {
		return err
	}
	needName := func() (string, error) {
		if len(pos) != 1 {
			return "", fmt.Errorf("link %s: want exactly one NAME", sub)
		}
		return pos[0], nil
	}
	switch sub {
	case "add":
		name, err := needName()
		if err != nil {
			return err
		}
		if *quota < 0 || *maxSessions < 0 || *maxStreams < 0 || *maxConns < 0 {
			return errors.New("link add: limits must not be negative")
		}
		streams := *maxStreams
		if *maxConns > 0 {
			if streams > 0 && streams != *maxConns {
				return errors.New("link add: --max-conns is the former name of --max-streams; give one")
			}
			streams = *maxConns
		}
		lim := access.Entry{QuotaBytes: *quota, MaxSessions: *maxSessions, MaxStreams: streams, MTProxySecret: mtSecret}
		if *expires > 0 {
			lim.Expires = time.Now().Add(*expires).UTC().Truncate(time.Second)
		}
		add := access.Add
		if *noMT {
			add = access.AddNoMTProxy
		}
		e, err := add(d.KeysPath(), name, lim)
		if err != nil {
			return err
		}
		return printLink(stdout, d, e)
	case "show":
		name, err := needName()
		if err != nil {
			return err
		}
		entries, err := access.Load(d.KeysPath())
		if err != nil {
			return err
		}
		for _, e := range entries {
			if e.Name == name {
				return printLink(stdout, d, e)
			}
		}
		return fmt.Errorf("%w: %s", access.ErrNotFound, name)
	case "revoke":
		name, err := needName()
		if err != nil {
			return err
		}
		if err := access.Revoke(d.KeysPath(), name); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "Revoked %q. A running relay drops its sessions within a second.\n", name)
		return nil
	case "list":
		entries, err := access.Load(d.KeysPath())
		if err != nil {
			return err
		}
		used, err := access.LoadUsage(d.UsagePath())
		if err != nil {
			return err
		}
		// A running relay adds the live counts, and its usage is
		// fresher than the file's (saved every few seconds).
		live := map[string]keyStatus{}
		status, err := queryStatus(d.Path)
		running := err == nil
		if running {
			for _, k := range status.Keys {
				live[k.Name] = k
				used[k.Name] = k.Used
			}
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		head := "NAME\tCREATED\tUSED\tQUOTA\tMAX-SESSIONS\tMAX-STREAMS\tEXPIRES"
		if running {
			head += "\tSESSIONS\tSTREAMS"
		}
		fmt.Fprintln(tw, head)
		for _, e := range entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s", e.Name, e.Created.Format(time.DateOnly),
				bytesString(used[e.Name]), orNone(e.QuotaBytes > 0, bytesString(e.QuotaBytes)),
				e.SessionLimit(), e.StreamLimit(), orNone(!e.Expires.IsZero(), e.Expires.Format(time.DateTime)))
			if running {
				fmt.Fprintf(tw, "\t%d\t%d", live[e.Name].Sessions, live[e.Name].Streams)
			}
			fmt.Fprintln(tw)
		}
		switch {
		case errors.Is(err, errNotRunning):
			fmt.Fprintln(tw, "(relay not running: no live counts)")
		case err != nil:
			fmt.Fprintf(tw, "(no live counts: %v)\n", err)
		}
		return tw.Flush()
	}
	return fmt.Errorf("unknown link command %q (want add, list, show or revoke)", sub)
}

func orNone(ok bool, s string) string {
	if ok {
		return s
	}
	return "-"
}

func bytesString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
