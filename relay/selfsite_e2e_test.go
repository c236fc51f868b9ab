package relay_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
)

// TestDomainSettings checks relay.json's domain mode: what validates, the
// server name, and that the cover's address is not known from settings.
func TestDomainSettings(t *testing.T) {
	good := relay.Settings{Listen: ":443", Public: []string{"Relay.Example.net:443"}, Domain: "Relay.Example.net"}
	if err := good.Validate(); err != nil {
		t.Fatalf("domain settings: %v", err)
	}
	if !good.DomainMode() || good.ServerName() != "relay.example.net" {
		t.Errorf("domain mode %v, server name %q", good.DomainMode(), good.ServerName())
	}
	if _, err := good.CoverAddr(); !errors.Is(err, relay.ErrDomainMode) {
		t.Errorf("CoverAddr in domain mode: %v, want ErrDomainMode", err)
	}
	for name, mod := range map[string]func(*relay.Settings){
		"sni, same name": func(s *relay.Settings) { s.SNI = "relay.example.NET" },
		"site and acme_*": func(s *relay.Settings) {
			s.Site, s.ACMECA, s.ACMEEmail, s.ACMERoots = "/srv/site", "https://ca.lab/dir", "ops@example.net", "roots.pem"
		},
		"no public on 443":  func(s *relay.Settings) { s.Public = []string{"203.0.113.7:8443"} },
		"listen elsewhere":  func(s *relay.Settings) { s.Listen = "127.0.0.1:8443" },
		"no_quic":           func(s *relay.Settings) { s.NoQUIC = true },
		"lab dc and allow":  func(s *relay.Settings) { s.DC, s.Allow = []string{"2=127.0.0.1:4430"}, []string{"127.0.0.0/8"} },
		"acme_ca with port": func(s *relay.Settings) { s.ACMECA = "https://127.0.0.1:14000/dir" },
	} {
		s := good
		mod(&s)
		if err := s.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, bad := range map[string]struct {
		mod func(*relay.Settings)
		err string
	}{
		"cover and domain":   {func(s *relay.Settings) { s.Cover = "https://www.example.org" }, "set cover or domain, not both"},
		"neither":            {func(s *relay.Settings) { s.Domain = "" }, "cover or domain"},
		"other sni":          {func(s *relay.Settings) { s.SNI = "www.example.org" }, "sni"},
		"ip domain":          {func(s *relay.Settings) { s.Domain = "203.0.113.7" }, "IP address"},
		"one label":          {func(s *relay.Settings) { s.Domain = "localhost" }, "not a fully qualified name"},
		"wildcard":           {func(s *relay.Settings) { s.Domain = "*.example.net" }, "bad label"},
		"http acme_ca":       {func(s *relay.Settings) { s.ACMECA = "http://ca.example/dir" }, "not an https URL"},
		"bad acme_email":     {func(s *relay.Settings) { s.ACMEEmail = "nobody" }, "not an address"},
		"site without":       {func(s *relay.Settings) { s.Domain, s.Cover, s.Site = "", "https://www.example.org", "site" }, "site: only with domain"},
		"acme_ca without":    {func(s *relay.Settings) { s.Domain, s.Cover, s.ACMECA = "", "https://www.example.org", "https://ca/dir" }, "acme_ca: only with domain"},
		"acme_roots without": {func(s *relay.Settings) { s.Domain, s.Cover, s.ACMERoots = "", "https://www.example.org", "r.pem" }, "acme_roots: only with domain"},
	} {
		s := good
		bad.mod(&s)
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), bad.err) {
			t.Errorf("%s: %v, want an error saying %q", name, err, bad.err)
		}
	}
}

// TestDomainModeRun runs a relay from a directory in domain mode, as run
// does, with a lab cover site standing in for the relay's own (package
// selfsite's, which cmd/merpati-relay's tests run): Ready says when it
// listens, and a reload of relay.json keeps the cover site in force while
// domain, site and acme_* changes, and a switch to a cover site, are
// logged as needing a restart, and dc applies at once.
func TestDomainModeRun(t *testing.T) {
	relaytest.CheckLeaks(t)
	named := func(name string) string {
		return relaytest.StartServer(t, func(c net.Conn) {
			c.Write([]byte(name))
			relaytest.ServeEcho(c)
		})
	}
	dcA, dcB := named("A"), named("B")
	site, other := relaytest.StartCover(t), relaytest.StartCover(t)
	addr := relaytest.FreeAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	path := filepath.Join(t.TempDir(), "relay")
	d, err := relay.InitWithKey(path, relay.Settings{
		Listen:    addr,
		Public:    []string{"203.0.113.7:443", "site.merpati.test:" + port},
		Domain:    "site.merpati.test",
		ACMEEmail: "ops@merpati.test",
		DC:        []string{"2=" + dcA},
		Allow:     []string{"127.0.0.0/8"},
	}, "ECDSA-P256")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CheckCover(t.Context()); !errors.Is(err, relay.ErrDomainMode) {
		t.Errorf("CheckCover in domain mode: %v, want ErrDomainMode", err)
	}
	sc, err := d.SelfSiteConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := strconv.Atoi(port); sc.Domain != "site.merpati.test" || sc.Dir != filepath.Join(path, relay.SiteDir) ||
		sc.Storage != filepath.Join(path, relay.ACMEDir) || sc.Email != "ops@merpati.test" || sc.PublicPort != p || sc.CARoots != nil {
		t.Errorf("SelfSiteConfig: %+v", sc)
	}

	logs := &relaytest.Logs{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg, err := d.Config(log)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cover != "" || cfg.ServerName != "site.merpati.test" {
		t.Errorf("Config in domain mode: cover %q, server name %q; want none and the domain", cfg.Cover, cfg.ServerName)
	}
	if _, err := relay.New(cfg); err == nil {
		t.Error("New without the site's address succeeded")
	}
	cfg.Cover, cfg.Logger = site.Addr(), log
	rl, err := relay.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-rl.Ready():
		t.Fatal("Ready before Run")
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rl.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("relay's log:\n%s", logs)
		}
	}()
	select {
	case <-rl.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the relay never became ready")
	}
	// Ready means listening on both carriers: no retries needed.
	probe := func() (toSite, toOther bool) {
		t.Helper()
		s0, o0 := site.Accepted(), other.Accepted()
		relaytest.TLSProbe(t, addr)
		qctx, qcancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer qcancel()
		if _, err := relaytest.ProbeQUIC(qctx, addr); err != nil {
			t.Fatalf("QUIC probe: %v", err)
		}
		return site.Accepted() > s0, other.Accepted() > o0
	}
	if s, o := probe(); !s || o {
		t.Fatalf("probes reached the site %v, the other cover %v", s, o)
	}

	e, err := access.Add(d.KeysPath(), "alice", access.Entry{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.Keys.Reload(); err != nil {
		t.Fatal(err)
	}
	l := d.Link(e)
	l.Relays = []string{addr}
	if l.SNI != "site.merpati.test" {
		t.Errorf("link SNI %q", l.SNI)
	}
	open := func(carrier string) string {
		t.Helper()
		ll := *l
		ll.Carriers = []string{carrier}
		sess, err := relaytest.Session(t, &ll, carrier)
		if err != nil {
			t.Fatalf("%s session: %v", carrier, err)
		}
		defer sess.Close()
		st, err := relaytest.Open(sess, transport.DCTarget(2))
		if err != nil {
			t.Fatalf("%s stream: %v", carrier, err)
		}
		defer st.Close()
		st.SetDeadline(time.Now().Add(30 * time.Second))
		name := make([]byte, 1)
		if _, err := io.ReadFull(st, name); err != nil {
			t.Fatalf("%s stream: %v", carrier, err)
		}
		return string(name)
	}
	for _, carrier := range relaytest.Carriers {
		if got := open(carrier); got != "A" {
			t.Errorf("%s: DC 2 reached %s, want A", carrier, got)
		}
	}

	// The site's settings and dc changed: dc applies, the others need a
	// restart.
	editSettings(t, path, func(s *relay.Settings) {
		s.ACMEEmail, s.Site, s.ACMECA = "new@merpati.test", "/srv/site", "https://127.0.0.1:14000/dir"
		s.DC = []string{"2=" + dcB}
	})
	inForce, err := rl.ReloadDir(t.Context(), d)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	for _, want := range []string{
		`msg="relay.json reloaded and applied" applied=dc` + "\n",
		`msg="acme_email changed in relay.json: it needs a restart to take effect; until then the relay keeps the old value" field=acme_email in_force=ops@merpati.test new=new@merpati.test`,
		`msg="site changed in relay.json: it needs a restart`,
		`msg="acme_ca changed in relay.json: it needs a restart`,
	} {
		if logs.Count(want) != 1 {
			t.Errorf("the relay did not log %s", want)
		}
	}
	if is := inForce.Settings; is.ACMEEmail != "ops@merpati.test" || is.Site != "" || is.ACMECA != "" || inForce.SitePath() != sc.Dir {
		t.Errorf("in force after the reload: %+v", is)
	}
	if got := open(link.CarrierTLS); got != "B" {
		t.Errorf("after the reload DC 2 reached %s, want B", got)
	}
	if s, o := probe(); !s || o {
		t.Errorf("after the reload, probes reached the site %v, the other cover %v; want the site", s, o)
	}

	// A switch to a cover site: needs a restart; the site stays.
	editSettings(t, path, func(s *relay.Settings) {
		s.Domain, s.Site, s.ACMECA, s.ACMEEmail = "", "", "", ""
		s.Cover, s.SNI = "https://"+other.Addr(), relaytest.CoverName
	})
	inForce2, err := rl.ReloadDir(t.Context(), inForce)
	if err != nil {
		t.Fatalf("reload to cover mode: %v", err)
	}
	if logs.Count(`msg="cover and domain changed in relay.json: a switch between a cover site (cover) and the relay's own site (domain) needs a restart`) != 1 ||
		logs.Count("cover site changed") != 0 || logs.Count("applied=cover") != 0 {
		t.Errorf("the switch to a cover site was not logged as needing a restart")
	}
	if s := inForce2.Settings; !s.DomainMode() || s.Cover != "" || s.ServerName() != "site.merpati.test" {
		t.Errorf("in force after the switch: %+v", s)
	}
	if s, o := probe(); !s || o {
		t.Errorf("after the switch, probes reached the site %v, the other cover %v; want the site", s, o)
	}

	// Both cover and domain: refused, nothing changes.
	editSettings(t, path, func(s *relay.Settings) { s.Domain = "site.merpati.test" })
	if got, err := rl.ReloadDir(t.Context(), inForce2); err == nil || !strings.Contains(err.Error(), "not both") || got != inForce2 {
		t.Errorf("reload of cover and domain: %v", err)
	}
}
