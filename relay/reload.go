package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/merpati/merpati/relay/dc"
	"github.com/merpati/merpati/transport/quiccarrier"
)

// liveSettings are the settings [Relay.Reload] changes while the relay
// runs. A value is never changed once stored: a reload stores a new one.
type liveSettings struct {
	// cover is the cover site's "host:port", serverName its name.
	cover, serverName string
	// coverUDP is cover resolved for the QUIC carrier's sockets to it;
	// nil until the carrier starts.
	coverUDP *net.UDPAddr
	// table is where new streams may go.
	table        *dc.Table
	legacyTokens bool
}

// dialCover connects to the cover site in force, for a TCP connection that
// does not authenticate.
func (r *Relay) dialCover(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	return d.DialContext(ctx, "tcp", r.live.Load().cover)
}

// dialCoverUDP opens a socket to the cover site in force, for a QUIC
// client that does not authenticate.
func (r *Relay) dialCoverUDP() (net.Conn, error) {
	live := r.live.Load()
	a := live.coverUDP
	if a == nil {
		var err error
		if a, err = net.ResolveUDPAddr("udp", live.cover); err != nil {
			return nil, err
		}
	}
	return net.DialUDP("udp", nil, a)
}

// Reload applies, while the relay runs, the fields of cfg that can change
// without a restart: Table (datacenter overrides and allowed ranges),
// Cover and ServerName (the cover site), LegacyTokens and IdleTimeout
// (which applies to each session's next idle period). It ignores the
// others, which take a restart ([Relay.ReloadDir] names them). Sessions and
// streams in progress go on: a stream keeps the connection it has, while
// streams that open later dial within the new Table; connections that do
// not authenticate from then on go to the new cover site, whose TLS flight
// key holders' then follows.
//
// A new cover site (or server name) must answer first, as the relay
// expects of its cover: a TLS handshake (learning its flight, when
// mirroring is on) and, while the QUIC carrier runs, an HTTP/3 one. When
// cfg is invalid or the cover site does not answer, Reload returns an
// error and changes nothing. It is safe for concurrent use.
func (r *Relay) Reload(ctx context.Context, cfg Config) error {
	if cfg.Cover == "" {
		return errors.New("relay: reload: Config.Cover: required")
	}
	if _, _, err := net.SplitHostPort(cfg.Cover); err != nil {
		return fmt.Errorf("relay: reload: Config.Cover: %w", err)
	}
	if cfg.Table == nil {
		cfg.Table = dc.New()
	}
	if cfg.IdleTimeout < 0 {
		return errors.New("relay: reload: Config.IdleTimeout: must not be negative")
	}
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	cur := r.live.Load()
	next := &liveSettings{
		cover: cfg.Cover, serverName: cfg.ServerName, coverUDP: cur.coverUDP,
		table: cfg.Table, legacyTokens: cfg.LegacyTokens,
	}
	newCover := cfg.Cover != cur.cover || cfg.ServerName != cur.serverName
	var gaps []string
	if newCover {
		if r.mirror != nil && cfg.ServerName == "" {
			return errors.New("relay: reload: Config.ServerName: required to mirror the cover site")
		}
		next.coverUDP = nil
		// Every check that can fail comes before the mirror's switch,
		// the one change made before the end.
		if err := checkCover(ctx, cfg.Cover, cfg.ServerName); err != nil {
			return fmt.Errorf("relay: reload: the new cover site %s did not complete a TLS handshake: %w", cfg.Cover, err)
		}
		if r.quicIDLen != 0 {
			cctx, cancel := context.WithTimeout(ctx, coverCheckTimeout)
			info, err := quiccarrier.CheckCover(cctx, cfg.Cover, cfg.ServerName)
			cancel()
			if err != nil {
				return fmt.Errorf("relay: reload: the QUIC carrier runs and the new cover site must serve HTTP/3 too "+
					"(else set \"no_quic\": true and restart): %w", err)
			}
			if next.coverUDP, err = net.ResolveUDPAddr("udp", cfg.Cover); err != nil {
				return fmt.Errorf("relay: reload: cover site %s: %w", cfg.Cover, err)
			}
			if info.ConnIDLen != r.quicIDLen {
				r.log.Warn("the new cover site's QUIC connection IDs differ in length from the relay's, "+
					"which a censor can compare: matching them needs a restart",
					"cover_len", info.ConnIDLen, "relay_len", r.quicIDLen)
			}
		}
		if r.mirror != nil {
			var err error
			if gaps, err = r.mirror.Switch(ctx, cfg.Cover, cfg.ServerName); err != nil {
				return fmt.Errorf("relay: reload: the new cover site's TLS flight not learned: %w", err)
			}
		}
	}
	r.live.Store(next)
	r.idleFixed.Store(int64(cfg.IdleTimeout))
	if newCover {
		r.log.Info("cover site changed: connections that do not authenticate now go to it", "cover", cfg.Cover)
		if r.mirror != nil {
			r.log.Info("key holders' TLS flight follows the cover site's", "flight", r.mirror.Flight().String())
			for _, g := range gaps {
				r.log.Warn("TLS flight not mirrored: " + g)
			}
		}
	}
	return nil
}

// ReloadDir reads the relay directory at cur.Path again, as [LoadDir] does,
// and applies its settings with [Relay.Reload] to r, which runs with those
// of cur. It logs what it applied and, naming each, the changed settings
// that need a restart: listen, no_quic and the certificate (cert.pem,
// key.pem), whose old values stay in force until then. A change of public
// needs none: only share links carry it.
//
// In domain mode (cur's Settings.Domain) the cover site in force stays the
// relay's own site, which the caller started: a change of domain, site or
// acme_* needs a restart, as does a switch between a cover site (cover)
// and the relay's own site (domain) either way; the cover settings in
// force (cover, sni, domain, site, acme_*) then stay cur's, and the
// others reload as in cover mode.
//
// It returns the directory now in force: the new one, with the settings
// that need a restart as in cur. When the new files do not load (relay.json
// does not parse or validate) or [Relay.Reload] refuses them, it changes
// nothing and returns cur with the error.
func (r *Relay) ReloadDir(ctx context.Context, cur *Dir) (*Dir, error) {
	nd, err := LoadDir(cur.Path)
	if err != nil {
		return cur, err
	}
	cfg, err := nd.settingsConfig()
	if err != nil {
		return cur, err
	}
	old, s := &cur.Settings, &nd.Settings
	// The relay's own site is the caller's, started once: it stays the
	// cover site in force, and only a restart changes it, or switches
	// between it and a cover site elsewhere.
	keepCover := old.DomainMode() || s.DomainMode()
	if keepCover {
		live := r.live.Load()
		cfg.Cover, cfg.ServerName = live.cover, live.serverName
	}
	var applied []string
	for _, f := range []struct {
		name    string
		changed bool
	}{
		{"cover", !keepCover && s.Cover != old.Cover},
		{"sni", !keepCover && s.ServerName() != old.ServerName()},
		{"dc", !slices.Equal(s.DC, old.DC)},
		{"allow", !slices.Equal(s.Allow, old.Allow)},
		{"legacy_tokens", s.legacyTokens() != old.legacyTokens()},
		{"idle_timeout", s.IdleTimeout != old.IdleTimeout},
	} {
		if f.changed {
			applied = append(applied, f.name)
		}
	}
	if err := r.Reload(ctx, cfg); err != nil {
		return cur, err
	}
	inForce := *nd
	inForce.Settings.Listen, inForce.Settings.NoQUIC = old.Listen, old.NoQUIC
	inForce.Certificate, inForce.Pin, inForce.AuthKey = cur.Certificate, cur.Pin, cur.AuthKey
	if keepCover {
		is := &inForce.Settings
		is.Cover, is.SNI, is.Domain, is.Site = old.Cover, old.SNI, old.Domain, old.Site
		is.ACMECA, is.ACMEEmail, is.ACMERoots = old.ACMECA, old.ACMEEmail, old.ACMERoots
		is.HTTPListen = old.HTTPListen
	}

	const restart = " changed in " + SettingsFile + ": it needs a restart to take effect; until then the relay keeps the old value"
	switch {
	case old.DomainMode() != s.DomainMode():
		r.log.Warn("cover and domain changed in "+SettingsFile+": a switch between a cover site (cover) and the relay's own "+
			"site (domain) needs a restart to take effect; until then the relay keeps the old one",
			"field", "domain", "in_force", coverMode(old), "new", coverMode(s))
	case keepCover:
		for _, f := range []struct {
			name     string
			old, new string
		}{
			{"domain", old.Domain, s.Domain},
			{"site", old.Site, s.Site},
			{"acme_ca", old.ACMECA, s.ACMECA},
			{"acme_email", old.ACMEEmail, s.ACMEEmail},
			{"acme_roots", old.ACMERoots, s.ACMERoots},
			{"http_listen", old.HTTPListen, s.HTTPListen},
		} {
			if f.old != f.new {
				r.log.Warn(f.name+restart, "field", f.name, "in_force", f.old, "new", f.new)
			}
		}
	}
	if s.Listen != old.Listen {
		r.log.Warn("listen"+restart, "field", "listen", "in_force", old.Listen, "new", s.Listen)
	}
	if s.NoQUIC != old.NoQUIC {
		r.log.Warn("no_quic"+restart, "field", "no_quic", "in_force", old.NoQUIC, "new", s.NoQUIC)
	}
	if nd.Pin != cur.Pin {
		r.log.Warn("the relay's certificate changed (cert.pem, key.pem): it needs a restart to take effect, "+
			"and links pin the new one (link show); until then the relay keeps the old one", "field", "certificate")
	}
	if !slices.Equal(s.Public, old.Public) {
		r.log.Info("public changed in "+SettingsFile+": it needs no restart, as only share links carry it "+
			"(link show prints them anew)", "field", "public")
	}
	if slices.Contains(applied, "allow") {
		for _, w := range s.Warnings() {
			r.log.Warn(w)
		}
	}
	if len(applied) == 0 {
		r.log.Info(SettingsFile + " reloaded: nothing to apply")
	} else {
		r.log.Info(SettingsFile+" reloaded and applied", "applied", strings.Join(applied, ","))
	}
	return &inForce, nil
}

// coverMode describes the cover site of s for the log: "cover URL" or
// "domain NAME".
func coverMode(s *Settings) string {
	if s.DomainMode() {
		return "domain " + s.Domain
	}
	return "cover " + s.Cover
}
