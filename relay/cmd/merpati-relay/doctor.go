package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/dc"
	"github.com/merpati/merpati/relay/selfsite"
	"github.com/merpati/merpati/transport/quiccarrier"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// Doctor's levels: every check prints one of them.
const (
	levelOK   = "OK"
	levelWarn = "WARN"
	levelFail = "FAIL"
)

// maxClockSkew is the largest difference between the cover site's clock
// and this host's that doctor lets pass: tokens are sealed to 1-minute
// slots and accepted within 2 slots either way, so a skew past a minute
// eats most of that slack.
const maxClockSkew = 60 * time.Second

// udpBufferWant is the socket buffer size quic-go asks for (bytes), which
// scripts/install-relay.sh sets in /etc/sysctl.d/60-merpati-relay.conf.
const udpBufferWant = 7500000

// procNetCore is where the kernel shows net.core sysctls; tests change it.
var procNetCore = "/proc/sys/net/core"

// telegramDCs are the production datacenters --dial-telegram connects to.
var telegramDCs = []int32{1, 2, 3, 4, 5, 203}

// doctor prints one line per check and counts the failures.
type doctor struct {
	w       io.Writer
	timeout time.Duration
	fails   int
}

func (doc *doctor) report(level, check, format string, args ...any) {
	if level == levelFail {
		doc.fails++
	}
	fmt.Fprintf(doc.w, "%-4s  %-8s  %s\n", level, check, fmt.Sprintf(format, args...))
}

// ctx returns a context bounded by the doctor's per-check timeout.
func (doc *doctor) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, doc.timeout)
}

func cmdDoctor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("doctor", stderr)
	dir := fs.String("dir", "", "relay directory (required)")
	timeout := fs.Duration("timeout", 10*time.Second, "time allowed for each network check")
	dialTelegram := fs.Bool("dial-telegram", false, "also connect to Telegram's real datacenters (off: only datacenters overridden in relay.json are dialled)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("doctor: --dir is required")
	}
	if *timeout <= 0 {
		return errors.New("doctor: --timeout must be positive")
	}
	doc := &doctor{w: stdout, timeout: *timeout}
	d, err := relay.LoadDir(*dir)
	if err != nil {
		doc.report(levelFail, "settings", "%v; fix it (or run merpati-relay init) before the other checks can run", err)
		return fmt.Errorf("doctor: %d check(s) failed", doc.fails)
	}
	doc.checkDir(d)
	doc.checkTokens(d)
	if d.Settings.DomainMode() {
		doc.checkSite(d)
		doc.checkOwnSite(ctx, d)
	} else {
		doc.checkCover(ctx, &d.Settings)
		doc.checkQUIC(ctx, &d.Settings)
	}
	doc.checkClock(ctx, &d.Settings)
	doc.checkPublic(ctx, &d.Settings)
	doc.checkDCs(ctx, &d.Settings, *dialTelegram)
	doc.checkUDPBuffers(&d.Settings)
	doc.checkListen(d)
	if doc.fails > 0 {
		return fmt.Errorf("doctor: %d check(s) failed", doc.fails)
	}
	return nil
}

// checkDir reports on the settings and the permissions of the secrets,
// as run judges them before serving.
func (doc *doctor) checkDir(d *relay.Dir) {
	doc.report(levelOK, "settings", "%s is valid", filepath.Join(d.Path, relay.SettingsFile))
	warnings, err := d.Check()
	if err != nil {
		doc.report(levelFail, "files", "%v (run refuses to serve until then)", err)
		return
	}
	for _, w := range warnings {
		doc.report(levelWarn, "files", "%s", w)
	}
	if len(warnings) == 0 {
		doc.report(levelOK, "files", "%s and %s are private to the relay's user", relay.KeyFile, relay.KeysFile)
	}
}

// legacyWarnKeys is how many keys make doctor warn, as run does, when
// legacy_tokens is on: checking a hello's plain token against each (about
// 5 us a key) then shows in a prober's time (0.5 ms).
const legacyWarnKeys = 100

// checkTokens reports whether plain tokens (legacy_tokens) make a hello's
// check take time that grows with the number of keys, as run warns.
func (doc *doctor) checkTokens(d *relay.Dir) {
	if l := d.Settings.LegacyTokens; l != nil && !*l {
		doc.report(levelOK, "tokens", "legacy_tokens is off: a hello's check takes the same time with any number of keys")
		return
	}
	entries, err := access.Load(d.KeysPath())
	if err != nil {
		doc.report(levelWarn, "tokens", "keys not read: %v", err)
		return
	}
	n := len(entries)
	if n > legacyWarnKeys {
		doc.report(levelWarn, "tokens", "legacy_tokens is on (absent means on) with %d keys: every hello without a sealed token, "+
			"a prober's too, is checked against each key (about %v in all) before the cover site answers, which a prober can time; "+
			"give everyone a current link (link show, links with \"ak\") and set \"legacy_tokens\": false in %s",
			n, time.Duration(n)*5*time.Microsecond, relay.SettingsFile)
		return
	}
	doc.report(levelOK, "tokens", "legacy_tokens is on with %d keys (a warning over %d): links without \"ak\" still work; "+
		"set \"legacy_tokens\": false once everyone has a current link", n, legacyWarnKeys)
}

// A coverTarget is where doctor reaches a cover site, and how its reports
// name it and say to bring it up.
type coverTarget struct {
	addr, serverName string
	// what names the site, fix says what to do when it does not answer.
	what, fix string
}

// coverSite returns the target of the cover site of s, in cover mode.
func coverSite(s *relay.Settings) coverTarget {
	addr, _ := s.CoverAddr()
	return coverTarget{
		addr: addr, serverName: s.ServerName(),
		what: fmt.Sprintf("the cover site %s (%s)", s.Cover, addr),
		fix:  fmt.Sprintf("bring the site up, or point \"cover\" in %s at one that is up", relay.SettingsFile),
	}
}

// checkCover makes the TLS handshake key holders' flight follows: the
// carrier's Chrome hello to the cover site.
func (doc *doctor) checkCover(ctx context.Context, s *relay.Settings) {
	doc.checkCoverAt(ctx, coverSite(s))
}

// checkCoverAt is checkCover of the cover site at t.
func (doc *doctor) checkCoverAt(ctx context.Context, t coverTarget) {
	addr := t.addr
	ctx, cancel := doc.ctx(ctx)
	defer cancel()
	f, err := tlscarrier.LearnFlight(ctx, addr, t.serverName)
	if err != nil {
		doc.report(levelFail, "cover", "%s did not answer a Chrome hello: %v; probes would see their "+
			"connection closed right after the ClientHello, which gives the relay away: %s", t.what, err, t.fix)
		return
	}
	if f.Version != tls.VersionTLS13 {
		doc.report(levelFail, "cover", "%s answers TLS %#04x, not 1.3, and key holders get 1.3 from the relay: "+
			"turn on TLS 1.3 on the cover site or choose another cover (\"cover\" in %s)", t.what, f.Version, relay.SettingsFile)
		return
	}
	doc.report(levelOK, "cover", "%s answers a Chrome hello with TLS 1.3: %s", addr, f)
	for _, g := range f.Gaps() {
		doc.report(levelWarn, "cover", "not mirrored in key holders' flight: %s (a cover site served by Go's crypto/tls has no such gap)", g)
	}
}

// checkQUIC compares the cover site's HTTP/3 with the relay's QUIC
// carrier: the relay's UDP port must answer exactly where the cover's
// does.
func (doc *doctor) checkQUIC(ctx context.Context, s *relay.Settings) {
	addr, _ := s.CoverAddr()
	ctx, cancel := doc.ctx(ctx)
	defer cancel()
	_, err := quiccarrier.CheckCover(ctx, addr, s.ServerName())
	h3 := err == nil
	switch {
	case h3 && !s.NoQUIC:
		doc.report(levelOK, "quic", "the cover site serves HTTP/3 on UDP %s, and so does the relay (QUIC carrier on)", addr)
	case !h3 && s.NoQUIC:
		doc.report(levelOK, "quic", "the cover site serves no HTTP/3 on UDP %s, and the QUIC carrier is off (\"no_quic\")", addr)
	case h3 && s.NoQUIC:
		doc.report(levelWarn, "quic", "the cover site serves HTTP/3 on UDP %s but \"no_quic\" is set in %s: the relay's UDP port "+
			"stays closed where the cover's answers; remove \"no_quic\" and restart the relay, then give people new links "+
			"(link show) to offer QUIC", addr, relay.SettingsFile)
	default:
		doc.report(levelWarn, "quic", "the cover site serves no HTTP/3 on UDP %s (%v) but the QUIC carrier is on: the relay's UDP "+
			"port answers where the cover's does not; set \"no_quic\": true in %s and restart, or turn on HTTP/3 on the cover site",
			addr, err, relay.SettingsFile)
	}
}

// checkClock compares the cover site's clock (its Date header) with
// this host's; in domain mode, where the site runs on this host's clock,
// the ACME CA's.
func (doc *doctor) checkClock(ctx context.Context, s *relay.Settings) {
	addr, serverName, whose := "", s.ServerName(), "the cover site's"
	if s.DomainMode() {
		ca := s.ACMECA
		if ca == "" {
			ca = selfsite.LetsEncrypt
		}
		u, err := url.Parse(ca)
		if err != nil {
			doc.report(levelWarn, "clock", "not checked: acme_ca %q: %v", ca, err)
			return
		}
		port := u.Port()
		if port == "" {
			port = "443"
		}
		addr, serverName, whose = net.JoinHostPort(u.Hostname(), port), u.Hostname(), "the ACME CA's ("+u.Hostname()+")"
	} else {
		addr, _ = s.CoverAddr()
	}
	ctx, cancel := doc.ctx(ctx)
	defer cancel()
	skew, err := clockSkew(ctx, addr, serverName)
	switch {
	case err != nil:
		doc.report(levelWarn, "clock", "not checked: %v", err)
	case skew.Abs() > maxClockSkew:
		doc.report(levelWarn, "clock", "this host's clock is %v off %s: access tokens use 1-minute slots "+
			"accepted within 2 slots, and clients with a correct clock may be refused; turn on time sync "+
			"(timedatectl set-ntp true, or chrony) here, or on the cover site if its clock is the wrong one", skew.Round(time.Second), whose)
	default:
		doc.report(levelOK, "clock", "this host's clock is within %v of %s (%v)", maxClockSkew, whose, skew.Round(time.Second))
	}
}

// checkSite reports, in domain mode, on the relay's own site: its
// directory, the ACME storage, the stored certificate, and the port the
// CA checks.
func (doc *doctor) checkSite(d *relay.Dir) {
	s := &d.Settings
	name := s.ServerName()
	ca := s.ACMECA
	if ca == "" {
		ca = selfsite.LetsEncrypt
	}
	doc.report(levelOK, "domain", "the relay is its own cover site for %s (domain mode); certificates from %s", name, ca)

	site := d.SitePath()
	switch fi, err := os.Stat(site); {
	case err != nil:
		doc.report(levelFail, "site", "the site's directory: %v; run fails to start without it: create it and put the "+
			"site's files in it, or set \"site\" in %s", err, relay.SettingsFile)
	case !fi.IsDir():
		doc.report(levelFail, "site", "%s is not a directory; set \"site\" in %s to the site's directory", site, relay.SettingsFile)
	default:
		if _, err := os.Stat(filepath.Join(site, "index.html")); err != nil {
			doc.report(levelWarn, "site", "%s has no index.html (%v): probers get 404 Not Found at /; put the site's "+
				"front page there", site, err)
		} else {
			doc.report(levelOK, "site", "%s has index.html", site)
		}
	}

	storage := d.ACMEPath()
	switch fi, err := os.Stat(storage); {
	case errors.Is(err, os.ErrNotExist):
		doc.report(levelOK, "acme", "%s does not exist yet: run creates it (mode 0700)", storage)
	case err != nil:
		doc.report(levelFail, "acme", "%v", err)
	case fi.Mode().Perm()&0o077 != 0:
		doc.report(levelWarn, "acme", "%s holds the site certificate's private key and the ACME account's, and other "+
			"users can access it (mode %04o); fix it with: chmod -R go-rwx %s", storage, fi.Mode().Perm(), storage)
	default:
		doc.report(levelOK, "acme", "%s is private to the relay's user (mode %04o)", storage, fi.Mode().Perm())
	}
	doc.checkStoredCert(storage, name)

	if !slices.ContainsFunc(s.Public, func(p string) bool {
		host, port, _ := net.SplitHostPort(p)
		return port == "443" && strings.EqualFold(host, name)
	}) && !strings.HasSuffix(s.Listen, ":443") {
		doc.report(levelWarn, "acme", "the relay listens on %s and no public address is %s:443, but the CA checks %s:443 "+
			"(TLS-ALPN-01): unless port 443 of %s is forwarded to the relay, no certificate can be had", s.Listen, name, name, name)
	}
}

// checkStoredCert reports the certificate for name kept in certmagic's
// file storage at storage (certificates/ISSUER/NAME/NAME.crt), the one
// that expires last if there are several.
func (doc *doctor) checkStoredCert(storage, name string) {
	files, _ := filepath.Glob(filepath.Join(storage, "certificates", "*", name, name+".crt"))
	var leaf *x509.Certificate
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			doc.report(levelWarn, "cert", "%v", err)
			continue
		}
		block, _ := pem.Decode(b)
		if block == nil {
			doc.report(levelWarn, "cert", "%s holds no PEM certificate", f)
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			doc.report(levelWarn, "cert", "%s: %v", f, err)
			continue
		}
		if leaf == nil || c.NotAfter.After(leaf.NotAfter) {
			leaf = c
		}
	}
	const obtain = "run obtains one once the DNS A/AAAA records of %s point at this host and its port 443 is " +
		"reachable from the Internet (its log says what failed)"
	switch left := time.Until(leafNotAfter(leaf)); {
	case leaf == nil:
		doc.report(levelWarn, "cert", "no certificate for %s stored yet: probers see a self-signed one until "+obtain, name, name)
	case left <= 0:
		doc.report(levelFail, "cert", "the certificate for %s expired on %s: probers see it refused; "+obtain,
			name, leaf.NotAfter.UTC().Format(time.DateTime), name)
	case left < 7*24*time.Hour:
		doc.report(levelWarn, "cert", "the certificate for %s expires on %s, in %v, and is not renewed yet "+
			"(renewal starts a third of its lifetime before): look at the relay's log", name,
			leaf.NotAfter.UTC().Format(time.DateTime), left.Round(time.Hour))
	default:
		doc.report(levelOK, "cert", "certificate for %s stored, issued by %s, expires on %s (in %d days)", name,
			leaf.Issuer.CommonName, leaf.NotAfter.UTC().Format(time.DateTime), int(left.Hours()/24))
	}
}

// leafNotAfter returns c's NotAfter, or the zero time for nil.
func leafNotAfter(c *x509.Certificate) time.Time {
	if c == nil {
		return time.Time{}
	}
	return c.NotAfter
}

// checkOwnSite checks, in domain mode, the relay's own site as probers
// reach it: through the relay's front door, TLS and HTTP/3, when the
// relay runs (the site runs inside it).
func (doc *doctor) checkOwnSite(ctx context.Context, d *relay.Dir) {
	s := &d.Settings
	name := s.ServerName()
	if s.NoQUIC {
		doc.report(levelWarn, "quic", "the relay's own site serves HTTP/3 and says so (Alt-Svc), but \"no_quic\" is set in %s: "+
			"the relay's UDP port stays closed where the site advertises HTTP/3; remove \"no_quic\" and restart the relay, "+
			"then give people new links (link show) to offer QUIC", relay.SettingsFile)
	}
	if _, err := queryStatus(d.Path); err != nil {
		doc.report(levelOK, "cover", "the relay's own site for %s not checked: it runs inside the relay, which is not "+
			"running; start it, then run doctor again", name)
		return
	}
	addr := frontDoor(s.Listen)
	t := coverTarget{
		addr: addr, serverName: name,
		what: fmt.Sprintf("the relay's own site for %s, through the relay at %s,", name, addr),
		fix:  "look at the relay's log",
	}
	doc.checkCoverAt(ctx, t)
	if s.NoQUIC {
		return
	}
	qctx, cancel := doc.ctx(ctx)
	defer cancel()
	if _, err := quiccarrier.CheckCover(qctx, addr, name); err != nil {
		doc.report(levelWarn, "quic", "the relay's own site did not answer HTTP/3 through the relay's UDP %s (%v): "+
			"look at the relay's log (QUIC carrier)", addr, err)
		return
	}
	doc.report(levelOK, "quic", "the relay's own site answers HTTP/3 through the relay's UDP %s (QUIC carrier on)", addr)
}

// frontDoor returns the address at which doctor reaches the relay
// listening on listen: loopback for a wildcard address.
func frontDoor(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// clockSkew makes one HTTPS GET / to the cover site at addr (the
// certificate is not verified) and returns how far this host's clock is
// ahead of the cover's Date header.
func clockSkew(ctx context.Context, addr, serverName string) (time.Duration, error) {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{ServerName: serverName, InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+"/", nil)
	if err != nil {
		return 0, fmt.Errorf("clock: %w", err)
	}
	req.Host = serverName
	start := time.Now()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, fmt.Errorf("GET / from the cover site %s: %w", addr, err)
	}
	end := time.Now()
	resp.Body.Close()
	date := resp.Header.Get("Date")
	remote, err := http.ParseTime(date)
	if err != nil {
		return 0, fmt.Errorf("the cover site %s sent no usable Date header (%q)", addr, date)
	}
	local := start.Add(end.Sub(start) / 2)
	// Date has a resolution of one second.
	return local.Sub(remote).Truncate(time.Second), nil
}

// checkPublic checks that every public address leads to this host.
func (doc *doctor) checkPublic(ctx context.Context, s *relay.Settings) {
	local := localAddrs()
	for _, p := range s.Public {
		host, _, _ := net.SplitHostPort(p)
		var addrs []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			addrs = []netip.Addr{ip}
		} else {
			lctx, cancel := doc.ctx(ctx)
			addrs, err = net.DefaultResolver.LookupNetIP(lctx, "ip", host)
			cancel()
			if err != nil {
				doc.report(levelOK, "public", "%s not checked: %s did not resolve (%v)", p, host, err)
				continue
			}
		}
		if slices.ContainsFunc(addrs, func(a netip.Addr) bool { return local[a.Unmap()] }) {
			doc.report(levelOK, "public", "%s is this host (%v)", p, addrs)
			continue
		}
		doc.report(levelWarn, "public", "%s (%v) is on none of this host's interfaces: fine behind NAT or a port forward "+
			"to this host; otherwise fix the DNS record or \"public\" in %s (links carry it)", p, addrs, relay.SettingsFile)
	}
}

// localAddrs returns the addresses of this host's interfaces.
func localAddrs() map[netip.Addr]bool {
	out := make(map[netip.Addr]bool)
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out[ip.Unmap()] = true
			}
		}
	}
	return out
}

// checkDCs connects to the datacenters overridden in the settings and,
// only with dialTelegram, to Telegram's own.
func (doc *doctor) checkDCs(ctx context.Context, s *relay.Settings, dialTelegram bool) {
	t := dc.New()
	if err := t.ParseOverrides(s.DC); err != nil {
		doc.report(levelFail, "dc", "%v: fix \"dc\" in %s", err, relay.SettingsFile)
		return
	}
	var ids []int32
	overridden := make(map[int32]bool)
	for _, spec := range s.DC {
		idStr, _, _ := strings.Cut(spec, "=")
		id, _ := strconv.ParseInt(idStr, 10, 32)
		if !overridden[int32(id)] {
			overridden[int32(id)] = true
			ids = append(ids, int32(id))
		}
	}
	var skipped []int32
	for _, id := range telegramDCs {
		if overridden[id] {
			continue
		}
		if dialTelegram {
			ids = append(ids, id)
		} else {
			skipped = append(skipped, id)
		}
	}
	for _, id := range ids {
		addrs, err := t.DC(id)
		if err != nil {
			doc.report(levelFail, "dc", "DC %d: %v", id, err)
			continue
		}
		var failed []string
		answered := ""
		for _, a := range addrs {
			dctx, cancel := doc.ctx(ctx)
			c, err := (&net.Dialer{}).DialContext(dctx, "tcp", a.String())
			cancel()
			if err != nil {
				failed = append(failed, err.Error())
				continue
			}
			c.Close()
			answered = a.String()
			break
		}
		fix := "check that the lab's datacenter is up, or fix \"dc\" in " + relay.SettingsFile
		if !overridden[id] {
			fix = "check this host's firewall and its provider's routing to Telegram"
		}
		switch {
		case answered != "" && len(failed) > 0:
			doc.report(levelOK, "dc", "DC %d answers at %s (not at the others tried: %s)", id, answered, strings.Join(failed, "; "))
		case answered != "":
			doc.report(levelOK, "dc", "DC %d answers at %s", id, answered)
		default:
			doc.report(levelFail, "dc", "DC %d does not answer (%s): %s", id, strings.Join(failed, "; "), fix)
		}
	}
	if len(skipped) > 0 {
		doc.report(levelOK, "dc", "Telegram's datacenters %v not checked (add --dial-telegram to connect to them)", skipped)
	}
}

// checkUDPBuffers reads the kernel's limits on socket buffers, which
// QUIC needs large.
func (doc *doctor) checkUDPBuffers(s *relay.Settings) {
	for _, name := range []string{"rmem_max", "wmem_max"} {
		sysctl := "net.core." + name
		b, err := os.ReadFile(filepath.Join(procNetCore, name))
		if err != nil {
			doc.report(levelWarn, "udp", "%s not checked: %v", sysctl, err)
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		switch {
		case err != nil:
			doc.report(levelWarn, "udp", "%s not checked: %q is not a number", sysctl, strings.TrimSpace(string(b)))
		case n >= udpBufferWant:
			doc.report(levelOK, "udp", "%s = %d", sysctl, n)
		case s.NoQUIC:
			doc.report(levelOK, "udp", "%s = %d, below the %d QUIC wants, but the QUIC carrier is off", sysctl, n, udpBufferWant)
		default:
			doc.report(levelWarn, "udp", "%s = %d, below the %d QUIC needs to keep up: run sysctl -w %s=%d and keep it in "+
				"/etc/sysctl.d/60-merpati-relay.conf (scripts/install-relay.sh writes it)", sysctl, n, udpBufferWant, sysctl, udpBufferWant)
		}
	}
}

// checkListen checks that the listen port is free for the relay, or
// held by the relay itself.
func (doc *doctor) checkListen(d *relay.Dir) {
	addr := d.Settings.Listen
	if _, err := queryStatus(d.Path); err == nil {
		doc.report(levelOK, "listen", "%s served by the running relay", addr)
		return
	}
	networks := []string{"tcp"}
	if !d.Settings.NoQUIC {
		networks = append(networks, "udp")
	}
	for _, network := range networks {
		var err error
		if network == "tcp" {
			var ln net.Listener
			if ln, err = net.Listen(network, addr); err == nil {
				ln.Close()
			}
		} else {
			var pc net.PacketConn
			if pc, err = net.ListenPacket(network, addr); err == nil {
				pc.Close()
			}
		}
		_, port, _ := net.SplitHostPort(addr)
		switch {
		case err == nil:
			doc.report(levelOK, "listen", "%s/%s is free for the relay (which is not running)", addr, network)
		case errors.Is(err, syscall.EADDRINUSE):
			doc.report(levelFail, "listen", "%s/%s is taken by another program: find it with ss -%slnp 'sport = :%s' and "+
				"stop it, or change \"listen\" in %s", addr, network, network[:1], port, relay.SettingsFile)
		case errors.Is(err, syscall.EACCES):
			doc.report(levelWarn, "listen", "%s/%s not checked: this user may not bind it (%v); the relay needs "+
				"CAP_NET_BIND_SERVICE for ports below 1024 (the systemd unit gives it): run doctor as root to check", addr, network, err)
		default:
			doc.report(levelFail, "listen", "%s/%s cannot be bound: %v; fix \"listen\" in %s", addr, network, err, relay.SettingsFile)
		}
	}
}
