package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/dc"
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
	doc.checkCover(ctx, &d.Settings)
	doc.checkQUIC(ctx, &d.Settings)
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

// checkCover makes the TLS handshake key holders' flight follows: the
// carrier's Chrome hello to the cover site.
func (doc *doctor) checkCover(ctx context.Context, s *relay.Settings) {
	addr, _ := s.CoverAddr()
	ctx, cancel := doc.ctx(ctx)
	defer cancel()
	f, err := tlscarrier.LearnFlight(ctx, addr, s.ServerName())
	if err != nil {
		doc.report(levelFail, "cover", "the cover site %s (%s) did not answer a Chrome hello: %v; probes would see their "+
			"connection closed right after the ClientHello, which gives the relay away: bring the site up, or point "+
			"\"cover\" in %s at one that is up", s.Cover, addr, err, relay.SettingsFile)
		return
	}
	if f.Version != tls.VersionTLS13 {
		doc.report(levelFail, "cover", "the cover site %s answers TLS %#04x, not 1.3, and key holders get 1.3 from the relay: "+
			"turn on TLS 1.3 on the cover site or choose another cover (\"cover\" in %s)", addr, f.Version, relay.SettingsFile)
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
// this host's.
func (doc *doctor) checkClock(ctx context.Context, s *relay.Settings) {
	addr, _ := s.CoverAddr()
	ctx, cancel := doc.ctx(ctx)
	defer cancel()
	skew, err := clockSkew(ctx, addr, s.ServerName())
	switch {
	case err != nil:
		doc.report(levelWarn, "clock", "not checked: %v", err)
	case skew.Abs() > maxClockSkew:
		doc.report(levelWarn, "clock", "this host's clock is %v off the cover site's: access tokens use 1-minute slots "+
			"accepted within 2 slots, and clients with a correct clock may be refused; turn on time sync "+
			"(timedatectl set-ntp true, or chrony) here, or on the cover site if its clock is the wrong one", skew.Round(time.Second))
	default:
		doc.report(levelOK, "clock", "this host's clock is within %v of the cover site's (%v)", maxClockSkew, skew.Round(time.Second))
	}
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
