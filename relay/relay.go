// Package relay is the merpati relay node: it accepts carrier connections
// on one TCP port, authenticates them from the ClientHello alone, serves
// authenticated sessions by relaying their streams to Telegram datacenters
// only, and splices every other connection, byte for byte, to the
// operator's cover site, so that to a prober the relay is that web site.
//
// A relay is configured with a [Config] and run with [Run] (or [New] and
// [Relay.Run], or [Relay.Serve] on a listener of the caller's). Some of
// its settings change while it runs, see [Relay.Reload]. The operator's
// files live in one directory; see [Init] and [LoadDir].
package relay

import (
	"context"
	"crypto/ecdh"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/dc"
	"github.com/merpati/merpati/relay/metrics"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/antireplay"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/closeset"
	"github.com/merpati/merpati/transport/h2mux"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/quiccarrier"
	"github.com/merpati/merpati/transport/tlscarrier"
	"github.com/merpati/merpati/transport/warnlimit"
)

// Config configures a relay.
type Config struct {
	// Listen is the TCP address [Run] listens on, such as ":443".
	Listen string
	// Certificate is the relay's own certificate; clients pin its key.
	// Required.
	Certificate tls.Certificate
	// Keys is the live set of access keys. Required.
	Keys *access.Keyring
	// Cover is the "host:port" of the cover site, a real HTTPS server
	// that gets every connection that does not authenticate, on TCP and,
	// for the QUIC carrier, on UDP at the same port number. Required.
	Cover string
	// ServerName is the name clients send in their hellos (the cover
	// site's), for the relay's own checks of the cover site.
	ServerName string
	// Table is where streams may go; nil means dc.New(), Telegram only.
	Table *dc.Table
	// Resolver resolves domain-name targets; nil means the system's.
	Resolver *net.Resolver
	// CoverDelay is how long the front door waits for a complete hello
	// before it dials the cover site anyway; zero means
	// [tlscarrier.DefaultCoverDelay].
	CoverDelay time.Duration
	// HelloTimeout bounds the wait for a complete ClientHello; zero means
	// [tlscarrier.DefaultHelloTimeout]. A connection still incomplete
	// then goes to the cover site with what it sent, as a web server
	// would keep waiting.
	HelloTimeout time.Duration
	// DialTimeout bounds each dial to a datacenter; zero means 10 seconds.
	DialTimeout time.Duration
	// NoQUIC turns off the QUIC carrier: [Run] then listens on TCP only.
	NoQUIC bool
	// LegacyTokens lets clients whose links predate sealed tokens (links
	// without "ak") in, on both carriers: their plain tokens are checked
	// against every key, which costs time that grows with the number of
	// keys, and shows (see [auth.Seal]). Sealed tokens are checked at once
	// either way.
	LegacyTokens bool
	// NoMirror turns off the mirroring of the cover site's TLS flight
	// (see [tlscarrier.Mirror]): key holders then get crypto/tls's own.
	// Mirroring needs ServerName.
	NoMirror bool
	// MaxUnauthConns caps the TCP connections that have not
	// authenticated: those still sending their hello and those spliced
	// to the cover site. Zero means [tlscarrier.DefaultMaxUnauthConns].
	// A connection over the cap is closed at once, without dialling the
	// cover site.
	MaxUnauthConns int
	// MaxUnauthPerSource caps the same connections per source network
	// (an IPv4 /24 or an IPv6 /64); zero means
	// [tlscarrier.DefaultMaxUnauthPerSource].
	MaxUnauthPerSource int
	// IdleTimeout, if positive, is how long a TLS-carrier session may
	// stay without streams before the relay closes it (give or take
	// 2 %, with GOAWAY and close_notify, as a web server does). Zero
	// means the cover site's own idle close, which [Relay.Run] learns
	// (see [Relay.LearnIdle]); until it is learned, and when the cover
	// site keeps idle connections open, [h2mux.DefaultIdleTimeout].
	IdleTimeout time.Duration
	// MaxDialsPerKey caps the streams of one access key dialling a
	// datacenter at once; zero means [DefaultMaxDialsPerKey]. The others
	// wait their turn, for up to DialTimeout, and are then refused with
	// [transport.StatusTooManyDials].
	MaxDialsPerKey int
	// Logger receives the relay's logs; nil discards. Client addresses
	// and secrets are never logged.
	Logger *slog.Logger
	// Metrics, if not nil, counts what the relay does (see package
	// metrics); nil counts nothing.
	Metrics *metrics.Metrics
}

// mtproxyWarnSecrets is how many MTProxy secrets make the relay warn
// that their check shows in a prober's time (about 0.3 ms).
const mtproxyWarnSecrets = 200

// legacyWarnKeys is how many keys make the relay warn, when legacy tokens
// are allowed, that checking a hello's plain token against each shows in
// a prober's time (about 5 us a key, BenchmarkAuthenticate: 0.5 ms).
const legacyWarnKeys = 100

// warnCheckCosts warns when checking a hello costs enough to show in the
// time a prober waits for the cover site's answer.
func (r *Relay) warnCheckCosts() {
	if n := r.cfg.Keys.MTProxySecrets(); n > mtproxyWarnSecrets {
		r.log.Warn("many MTProxy secrets: stock apps name no secret in their hello, so the relay checks every hello "+
			"against each (about 1.2 us apiece) before the cover site's answer goes out, which a prober can time; "+
			"give MTProxy secrets only to people whose apps need them (link add --no-mtproxy)",
			"secrets", n, "per_hello", time.Duration(n)*1200*time.Nanosecond)
	}
	if n := r.cfg.Keys.Len(); n > legacyWarnKeys && r.live.Load().legacyTokens {
		r.log.Warn("legacy_tokens is on with many keys: a hello that carries no sealed token (a probe, or a link "+
			"without \"ak\") is checked against every key (about 5 us apiece) before the cover site's answer goes out, "+
			"which a prober can time; give everyone a current link (link show) and set \"legacy_tokens\": false in "+SettingsFile,
			"keys", n, "per_hello", time.Duration(n)*5*time.Microsecond)
	}
}

// DefaultMaxDialsPerKey is the default [Config.MaxDialsPerKey]: more than
// a family of Telegram apps starts at once, and a bound on the sockets one
// key can hold half-open towards an unresponsive datacenter. The caps on
// unauthenticated connections are the front door's
// ([tlscarrier.DefaultMaxUnauthConns]).
const DefaultMaxDialsPerKey = 64

func (c *Config) fill() error {
	switch {
	case len(c.Certificate.Certificate) == 0:
		return errors.New("relay: Config.Certificate: required")
	case c.Keys == nil:
		return errors.New("relay: Config.Keys: required")
	case c.Cover == "":
		return errors.New("relay: Config.Cover: required")
	}
	if _, _, err := net.SplitHostPort(c.Cover); err != nil {
		return fmt.Errorf("relay: Config.Cover: %w", err)
	}
	if c.Table == nil {
		c.Table = dc.New()
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	// The front door fills its own defaults; negative caps are refused
	// here already, so that New names the field.
	switch {
	case c.MaxUnauthConns < 0:
		return errors.New("relay: Config.MaxUnauthConns: must not be negative")
	case c.MaxUnauthPerSource < 0:
		return errors.New("relay: Config.MaxUnauthPerSource: must not be negative")
	case c.MaxDialsPerKey < 0:
		return errors.New("relay: Config.MaxDialsPerKey: must not be negative")
	case c.IdleTimeout < 0:
		return errors.New("relay: Config.IdleTimeout: must not be negative")
	}
	if c.MaxDialsPerKey == 0 {
		c.MaxDialsPerKey = DefaultMaxDialsPerKey
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// A Relay serves carrier connections. Create one with [New].
type Relay struct {
	cfg    Config
	log    *slog.Logger
	dialer *dc.Dialer
	replay antireplay.Cache
	// mtReplay remembers accepted FakeTLS hellos (by client random),
	// apart from the carrier's tokens.
	mtReplay antireplay.Cache
	// warns rate-limits the warnings a prober or a key holder can
	// provoke.
	warns warnlimit.Limiter
	// mirror shapes key holders' TLS flight like the cover site's; nil
	// when off.
	mirror *tlscarrier.Mirror
	// authKey is the relay's static X25519 key, which opens sealed
	// tokens.
	authKey *ecdh.PrivateKey
	// live holds the settings that [Relay.Reload] changes while the
	// relay runs; cfg's Cover, ServerName, Table and LegacyTokens are
	// only their first values.
	live atomic.Pointer[liveSettings]
	// reloadMu serializes the changes of live, and orders them with the
	// QUIC carrier's start, which checks the cover site.
	reloadMu sync.Mutex
	// quicIDLen is the connection ID length of the QUIC carrier's
	// listener, zero while none was started. reloadMu guards it.
	quicIDLen int
	// ready is closed by Run once its listeners are up.
	ready chan struct{}
	// quicOff says why Run left the QUIC carrier off although the
	// settings ask for it ("" while it is on or not asked for).
	quicOff atomic.Pointer[string]
	// idleFixed is Config.IdleTimeout in force, idleLearned the cover
	// site's idle close as last learned (zero: none), both in
	// nanoseconds; see [Relay.IdleTimeout].
	idleFixed, idleLearned atomic.Int64
}

// New checks cfg and returns a Relay.
func New(cfg Config) (*Relay, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	r := &Relay{
		cfg:    cfg,
		log:    cfg.Logger,
		dialer: &dc.Dialer{Table: cfg.Table, Resolver: cfg.Resolver, Timeout: cfg.DialTimeout},
		ready:  make(chan struct{}),
	}
	r.live.Store(&liveSettings{cover: cfg.Cover, serverName: cfg.ServerName, table: cfg.Table, legacyTokens: cfg.LegacyTokens})
	r.idleFixed.Store(int64(cfg.IdleTimeout))
	if cfg.Certificate.PrivateKey != nil {
		ak, err := auth.RelayAuthKey(cfg.Certificate.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		r.authKey = ak
	}
	if !cfg.NoMirror && cfg.ServerName != "" {
		m, err := tlscarrier.NewMirror(tlscarrier.MirrorConfig{
			Cover: cfg.Cover, ServerName: cfg.ServerName, Certificate: cfg.Certificate, Logger: cfg.Logger,
		})
		if err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		r.mirror = m
	}
	return r, nil
}

// LearnCover learns the cover site's TLS flight, which key holders' flight
// then follows, and logs what cannot be mirrored. It does nothing when
// mirroring is off. [Run] calls it at start, then keeps it fresh.
func (r *Relay) LearnCover(ctx context.Context) error {
	if r.mirror == nil {
		return nil
	}
	gaps, err := r.mirror.Learn(ctx)
	if err != nil {
		r.log.Warn("cover site's TLS flight not learned: key holders get the relay's own, which a censor can tell from the cover site's", "err", err)
		return err
	}
	r.log.Info("key holders' TLS flight follows the cover site's", "flight", r.mirror.Flight().String())
	mtproxy := r.cfg.Keys.MTProxySecrets() > 0
	for _, g := range gaps {
		// What MTProxy mode cannot copy (the apps take exactly its
		// answer) matters only where apps use it.
		if strings.HasPrefix(g, tlscarrier.MTProxyGap) && !mtproxy {
			r.log.Info("TLS flight not mirrored (no MTProxy secrets now): " + g)
			continue
		}
		r.log.Warn("TLS flight not mirrored: " + g)
	}
	return nil
}

// QUICOff says why the running relay left its QUIC carrier off although
// its settings ask for it, or returns "" if it did not: share links made
// meanwhile should offer TLS only.
func (r *Relay) QUICOff() string {
	if p := r.quicOff.Load(); p != nil {
		return *p
	}
	return ""
}

// MirrorGaps returns what key holders' TLS flight still differs in from
// the cover site's, as last learned.
func (r *Relay) MirrorGaps() []string {
	if r.mirror == nil {
		return []string{"mirroring is off"}
	}
	return r.mirror.Gaps()
}

// Run listens on cfg.Listen and serves until ctx is done, watching the keys
// file for changes ([access.Keyring.Watch]) and saving usage as it goes.
// It returns once every connection has ended and the usage they counted
// has been saved. It is [New] and [Relay.Run].
func Run(ctx context.Context, cfg Config) error {
	r, err := New(cfg)
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// Ready returns a channel that [Relay.Run] closes once the relay listens
// on every carrier it serves (TCP, and UDP for the QUIC carrier), right
// before it serves them: from then on a connection to the Listen address
// reaches the front door, and, when it does not authenticate, the cover
// site (the relay's own site learns its certificate this way, see package
// selfsite). It is never closed if Run fails before, or is not called.
func (r *Relay) Ready() <-chan struct{} { return r.ready }

// Run listens on the Config's Listen address and serves until ctx is done,
// as [Run] does, closing [Relay.Ready]'s channel once it listens. Call it
// once.
func (r *Relay) Run(ctx context.Context) error {
	cfg := r.cfg
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	r.log.Info("relay listening", "addr", ln.Addr().String())
	r.warnCheckCosts()
	r.LearnCover(ctx)
	lctx, stopLearning := context.WithCancel(ctx)
	var learning sync.WaitGroup
	defer learning.Wait()
	defer stopLearning()
	if r.mirror != nil {
		learning.Go(func() { r.mirror.Run(lctx) })
	}
	learning.Go(func() { r.keepIdleLearned(lctx) })
	tl, err := r.ListenTLS(ln)
	if err != nil {
		ln.Close()
		return fmt.Errorf("relay: %w", err)
	}
	ls := []transport.Listener{tl}
	if !cfg.NoQUIC {
		// The QUIC carrier listens on UDP at the same port number, in
		// front of a cover site that serves HTTP/3.
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err != nil {
			tl.Close()
			return fmt.Errorf("relay: %w", err)
		}
		ql, err := r.ListenQUIC(pc)
		switch {
		case errors.Is(err, quiccarrier.ErrNoHTTP3):
			why := "the cover site does not serve HTTP/3"
			r.quicOff.Store(&why)
			r.log.Error("QUIC carrier off: the cover site does not serve HTTP/3 on UDP, so neither does the relay "+
				"(its UDP port stays closed, as the cover site's is); clients fall back to TLS. "+
				"Set \"no_quic\": true in relay.json and share links again (link show) so that they skip QUIC, "+
				"or give the cover site HTTP/3", "err", err)
		case err != nil:
			tl.Close()
			return fmt.Errorf("relay: %w", err)
		default:
			r.log.Info("relay listening", "addr", pc.LocalAddr().String(), "transport", "quic")
			ls = append(ls, ql)
		}
	}
	// The watcher outlives ctx: it is stopped, and makes its last usage
	// save, only after the serving has ended, so that the bytes of
	// sessions closing at shutdown are saved too.
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	var watch sync.WaitGroup
	watch.Go(func() { cfg.Keys.Watch(watchCtx, time.Second) })
	close(r.ready)
	err = r.ServeListeners(ctx, ls...)
	stopWatch()
	watch.Wait()
	return err
}

// ListenTLS starts the relay's front door on ln (which it then owns): the
// TLS carrier, MTProxy mode for stock apps, and the cover site for
// everyone else. Serve its sessions with [Relay.ServeListeners].
func (r *Relay) ListenTLS(ln net.Listener) (*tlscarrier.Listener, error) {
	return tlscarrier.Listen(ln, tlscarrier.ListenConfig{
		Certificate:        r.cfg.Certificate,
		Auth:               authenticator{r},
		MTProxy:            authenticator{r},
		Cover:              r.live.Load().cover,
		DialCover:          r.dialCover,
		HelloTimeout:       r.cfg.HelloTimeout,
		CoverDelay:         r.cfg.CoverDelay,
		MaxUnauthConns:     r.cfg.MaxUnauthConns,
		MaxUnauthPerSource: r.cfg.MaxUnauthPerSource,
		Mux:                h2mux.Config{IdleTimeoutFunc: r.sessionIdle},
		Mirror:             r.mirror,
		Logger:             r.log,
		OnCover:            r.countCover,
	})
}

// Serve serves the relay's front door on ln (see [Relay.ListenTLS]) until
// ctx is done or ln fails, and closes ln. When ctx is done it closes every
// connection and returns nil once they have all ended.
func (r *Relay) Serve(ctx context.Context, ln net.Listener) error {
	l, err := r.ListenTLS(ln)
	if err != nil {
		ln.Close()
		return fmt.Errorf("relay: %w", err)
	}
	return r.ServeListeners(ctx, l)
}

// ServeListeners serves the sessions of every carrier listener in ls until
// ctx is done or one of them fails: this is the relay's one session loop,
// where keys, limits and usage apply alike to every carrier. It closes
// every listener and session, and returns once all have ended: nil when
// ctx is done, else the first listener's failure.
func (r *Relay) ServeListeners(ctx context.Context, ls ...transport.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		once sync.Once
		ferr error
		live closeset.Set[*servedSession]
	)
	// One hook closes every session when ctx is done, rather than one
	// per session: an idle session costs the relay only what it must.
	defer context.AfterFunc(ctx, live.CloseAll)()
	for _, l := range ls {
		wg.Go(func() {
			defer l.Close()
			var sessions sync.WaitGroup
			defer sessions.Wait()
			for {
				sess, err := l.Accept(ctx)
				if err != nil {
					if ctx.Err() == nil {
						once.Do(func() { ferr = err })
						cancel()
					}
					return
				}
				// Admit the session here, in the order sessions
				// arrive, so that a key at its session limit has
				// its newest session refused.
				untrack, ok := r.admit(sess)
				if !ok {
					r.cfg.Metrics.SessionRefused(sess.Carrier())
					sess.Close()
					continue
				}
				sessions.Add(1)
				ss := &servedSession{
					r:        r,
					ctx:      ctx,
					sess:     sess,
					u:        sess.Key().(*access.User),
					carrier:  sess.Carrier(),
					untrack:  untrack,
					closed:   r.cfg.Metrics.SessionOpened(sess.Carrier(), sess.Key().Name(), sess.Carrier() != mtproxy.Carrier),
					sessions: &sessions,
					live:     &live,
				}
				ss.serve()
			}
		})
	}
	wg.Wait()
	return ferr
}

// admit registers a new session with its key, so that revoking the key
// closes it, and counts it against the key's session limit. It reports
// false if the session may not go on; otherwise the caller calls untrack
// once the session has ended.
func (r *Relay) admit(sess transport.ServerSession) (untrack func(), ok bool) {
	u := sess.Key().(*access.User)
	if sess.Carrier() == mtproxy.Carrier {
		// A stock app opens one connection per MTProto connection, each
		// a session of one stream: it counts as a stream of its key
		// (in serveSession), not as a session.
		return u.Track(sess)
	}
	untrack, err := u.TrackSession(sess)
	if err != nil {
		r.refuseSession(u, sess.Carrier(), err)
		return nil, false
	}
	return untrack, true
}

// A servedSession is an admitted session while the relay serves it (see
// [servedSession.serve]). It holds all the relay keeps per session, in
// one allocation.
type servedSession struct {
	r       *Relay
	ctx     context.Context
	sess    transport.ServerSession
	u       *access.User
	carrier string
	// untrack and closed end the session's count against its key and in
	// the metrics; sessions is ServeListeners' count of live sessions.
	untrack, closed func()
	sessions        *sync.WaitGroup
	live            *closeset.Set[*servedSession]
	streams         sync.WaitGroup
}

// serve serves the session: it enforces the key's stream limit and
// serves each stream, and ends the session's counts once it and all its
// streams have ended. A session that can hand over its streams
// ([transport.StreamServer]) holds no goroutine of its own while idle;
// any other gets one that waits for its streams.
func (s *servedSession) serve() {
	s.r.log.Debug("session opened", "transport", s.carrier, "key", s.u.Name())
	if !s.live.Add(s) {
		// The relay is stopping.
		s.end(context.Canceled)
		return
	}
	if ss, ok := s.sess.(transport.StreamServer); ok {
		err := ss.ServeStreams(s.start, s.ended)
		if err == nil {
			return
		}
		s.r.log.Debug("serve streams", "err", err)
	}
	go func() {
		for {
			st, err := s.sess.AcceptStream(s.ctx)
			if err != nil {
				s.end(err)
				return
			}
			s.start(st)
		}
	}()
}

// start serves a new stream. Each stream is counted in the order streams
// open, before any goroutine runs for it.
func (s *servedSession) start(st transport.Stream) {
	if !s.u.AcquireStream() {
		s.r.cfg.Metrics.StreamRefused("stream_limit")
		s.streams.Go(func() { // the answer is a write, which may wait
			s.r.refuseStream(st, s.u)
			st.Close()
		})
		return
	}
	closed := s.r.cfg.Metrics.StreamOpened(s.carrier, s.u.Name())
	s.streams.Go(func() {
		defer s.u.ReleaseStream()
		defer closed()
		s.r.serveCounted(s.ctx, st, s.u, s.carrier)
	})
}

// Close closes the session (the relay stops); end follows.
func (s *servedSession) Close() error { return s.sess.Close() }

// ended is end for a session that handed over its streams: it reports
// no error.
func (s *servedSession) ended() { s.end(nil) }

// end waits for the session's streams, closes it and ends its counts.
// The session stays in the set the relay closes when it stops until its
// streams have ended: a stop while they finish closes it.
func (s *servedSession) end(err error) {
	s.streams.Wait()
	s.live.Remove(s)
	s.sess.Close()
	s.r.log.Debug("session ended", "transport", s.carrier, "key", s.u.Name(), "err", err)
	s.untrack()
	s.closed()
	s.sessions.Done()
}

// authenticator is the relay's [transport.Authenticator] and
// [tlscarrier.MTProxyAuthenticator]: access keys, replay caches and the
// limits that decide before a handshake.
type authenticator struct{ r *Relay }

// errReplay means a proof or hello was seen before.
var errReplay = errors.New("relay: replayed")

// Authenticate returns the *access.User whose key made p.
func (a authenticator) Authenticate(p transport.Proof) (transport.Key, error) {
	start := time.Now()
	k, err := a.authenticate(p)
	a.r.cfg.Metrics.HelloChecked(p.Carrier, metrics.CheckToken, checkResult(err, metrics.KeyHolder), time.Since(start))
	return k, err
}

func (a authenticator) authenticate(p transport.Proof) (transport.Key, error) {
	r := a.r
	now := time.Now()
	var u *access.User
	// A sealed token names its key: one X25519, one AES-GCM and a few
	// HMACs whatever the number of keys.
	if p.KeyShare != nil && r.authKey != nil {
		sealed, digest := p.Token, p.Digest
		if p.Sealed != nil {
			sealed, digest = p.Sealed, p.SealDigest
		}
		if id, tok, err := auth.Open(r.authKey, p.KeyShare, p.Random, sealed); err == nil {
			u = r.cfg.Keys.AuthenticateID(id, digest, tok, now)
		}
	}
	if u == nil && r.live.Load().legacyTokens {
		u = r.cfg.Keys.Authenticate(p.Digest, p.Token, now)
	}
	if u == nil {
		return nil, transport.ErrUnauthenticated
	}
	if r.replay.Seen(p.Token) {
		r.warns.Warn(r.log, "replayed hello sent to cover site", "transport", p.Carrier, "key", u.Name())
		return nil, fmt.Errorf("%w: %w", transport.ErrUnauthenticated, errReplay)
	}
	return u, nil
}

// AuthenticateMTProxy returns the *access.User whose MTProxy secret signed
// h. An app over its limits looks, to anyone watching, like a wrong
// secret: the cover site.
func (a authenticator) AuthenticateMTProxy(h *mtproxy.ClientHello, now time.Time) (transport.Key, mtproxy.Key, error) {
	start := time.Now()
	k, key, err := a.authenticateMTProxy(h, now)
	a.r.cfg.Metrics.HelloChecked(mtproxy.Carrier, metrics.CheckMTProxy, checkResult(err, metrics.MTProxyApp), time.Since(start))
	return k, key, err
}

func (a authenticator) authenticateMTProxy(h *mtproxy.ClientHello, now time.Time) (transport.Key, mtproxy.Key, error) {
	r := a.r
	u, key := r.cfg.Keys.MatchMTProxy(h, now, tlscarrier.MTProxyWindow)
	if u == nil {
		return nil, key, transport.ErrUnauthenticated
	}
	if r.mtReplay.Seen(h.Random[:]) {
		r.warns.Warn(r.log, "replayed MTProxy hello sent to cover site", "key", u.Name())
		return nil, key, fmt.Errorf("%w: %w", transport.ErrUnauthenticated, errReplay)
	}
	if u.OverQuota() {
		r.warns.KeyInfo(r.log, u.Name(), "MTProxy connection refused: key over its byte quota (quota_bytes)",
			"quota", u.Entry().QuotaBytes)
		return nil, key, fmt.Errorf("%w: %w", transport.ErrUnauthenticated, access.ErrOverQuota)
	}
	if u.Streams() >= u.Entry().StreamLimit() {
		r.warns.KeyInfo(r.log, u.Name(), "MTProxy connection refused: key at its stream limit (max_streams)",
			"limit", u.Entry().StreamLimit())
		return nil, key, fmt.Errorf("%w: %w", transport.ErrUnauthenticated, access.ErrTooManyStreams)
	}
	return u, key, nil
}

// checkResult names the result of a hello check that returned err, ok
// when it passed.
func checkResult(err error, ok string) string {
	switch {
	case err == nil:
		return ok
	case errors.Is(err, errReplay):
		return metrics.Replay
	case errors.Is(err, access.ErrOverQuota):
		return metrics.OverQuota
	case errors.Is(err, access.ErrTooManyStreams):
		return metrics.StreamLimit
	}
	return metrics.NoKey
}

// countCover counts a TCP connection the front door sent to the cover
// site, by the reason it logs.
func (r *Relay) countCover(why string) {
	reason := "not_key_holder"
	switch why {
	case "no complete TLS hello":
		reason = "no_hello"
	case "unparsable hello":
		reason = "unparsable_hello"
	}
	r.cfg.Metrics.Cover(reason)
}

// refuseSession logs, at most once per warnlimit.Every and key, that a session
// of u was refused because of err, from [access.User.TrackSession].
func (r *Relay) refuseSession(u *access.User, carrier string, err error) {
	if errors.Is(err, access.ErrTooManySessions) {
		r.warns.KeyInfo(r.log, u.Name(), "session refused: key at its session limit (max_sessions)",
			"transport", carrier, "limit", u.Entry().SessionLimit())
		return
	}
	r.log.Debug("session refused", "transport", carrier, "key", u.Name(), "err", err)
}

// maxEarlyData is the most a client may send on a stream before the
// relay's reply. The relay holds these bytes while it dials and forwards
// them once connected; a stream that sends more is refused. A merpati
// client sends nothing before the reply: the allowance is for a first
// packet sent optimistically. It bounds what a stream waiting on a dial
// pins: a key's streams waiting on a blackholed datacenter hold at most
// its stream limit times 16 KiB, where each session used to fill its whole
// HTTP/2 connection window (15 MiB).
const maxEarlyData = 16 << 10

// errEarlyData means a client sent more than maxEarlyData before the reply.
var errEarlyData = errors.New("relay: more data than allowed before the reply")

// refuseStream answers a stream of u, which has just opened over the key's
// stream limit, with StatusTooManyStreams. (A stream counts from the moment
// it opens, before its request is read, so a key cannot hold more
// half-sent streams than open ones.) The caller closes st.
func (r *Relay) refuseStream(st transport.Stream, u *access.User) {
	r.warns.KeyInfo(r.log, u.Name(), "stream refused: key at its stream limit (max_streams)",
		"limit", u.Entry().StreamLimit())
	refuse(st, transport.StatusTooManyStreams)
}

// serveCounted reads the target of a counted stream, dials it if it is
// Telegram, answers with a status and relays bytes. It closes st.
func (r *Relay) serveCounted(ctx context.Context, st transport.Stream, u *access.User, carrier string) {
	m := r.cfg.Metrics
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(30 * time.Second))
	req, err := transport.ReadOpenRequest(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		r.log.Debug("bad open request", "key", u.Name(), "err", err)
		m.StreamRefused("bad_request")
		refuse(st, transport.StatusBadRequest)
		return
	}
	log := r.log.With("key", u.Name(), "dc", req.Target.String())
	if u.OverQuota() {
		r.warns.KeyInfo(r.log, u.Name(), "stream refused: key over its byte quota (quota_bytes)",
			"quota", u.Entry().QuotaBytes)
		m.StreamRefused("quota")
		refuse(st, transport.StatusQuota)
		return
	}
	up, early, status, err := r.dialStream(ctx, st, u, req.Target)
	if err != nil {
		switch status {
		case transport.StatusNotAllowed:
			m.StreamRefused("not_allowed")
			r.warns.KeyWarn(r.log, u.Name(), "stream refused: not a Telegram datacenter",
				"dc", req.Target.String(), "err", err)
		case transport.StatusTooManyDials:
			m.StreamRefused("too_many_dials")
			r.warns.KeyInfo(r.log, u.Name(), "stream refused: too many of the key's streams waiting on a dial",
				"limit", r.cfg.MaxDialsPerKey)
		case transport.StatusBadRequest:
			m.StreamRefused("early_data")
			r.warns.KeyInfo(r.log, u.Name(), "stream refused: data beyond the allowance sent before the reply",
				"limit", maxEarlyData)
		case transport.StatusOK:
			log.Debug("stream ended while dialling", "err", err)
		default:
			m.DialError(req.Target.DC)
			log.Debug("dial failed", "err", err)
		}
		if status != transport.StatusOK {
			refuse(st, status)
		}
		return
	}
	if _, err := (transport.OpenReply{Status: transport.StatusOK}).WriteTo(st); err != nil {
		up.Close()
		return
	}
	if len(early) > 0 {
		u.AddBytes(int64(len(early)))
		m.Bytes(carrier, len(early))
		if _, err := up.Write(early); err != nil {
			up.Close()
			return
		}
	}
	log.Debug("stream open")
	transport.Splice(st, up, func(n int) {
		u.AddBytes(int64(n))
		m.Bytes(carrier, n)
		if u.OverQuota() {
			st.Close()
			up.Close()
		}
	})
}

// dialStream connects target for a stream of u once the key has a dial
// slot, watching the stream meanwhile: what the client sends is held, up
// to maxEarlyData, and returned as early (an io.EOF from the client is
// left for the splice to read again). A stream that sends more gets
// StatusBadRequest, and one the client resets or closes ends the wait and
// the dial at once (status StatusOK with an error: there is no one left
// to answer), so no dial outlives its stream. A stream that waits
// DialTimeout for a slot gets StatusTooManyDials.
func (r *Relay) dialStream(ctx context.Context, st transport.Stream, u *access.User, target transport.Target) (up net.Conn, early []byte, status transport.Status, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type result struct {
		data []byte
		err  error
	}
	watched := make(chan result, 1)
	go func() {
		var data []byte
		var buf [4 << 10]byte
		for {
			n, err := st.Read(buf[:])
			data = append(data, buf[:n]...)
			if err == nil && len(data) > maxEarlyData {
				err = errEarlyData
			}
			switch {
			case err == nil:
				continue
			case errors.Is(err, os.ErrDeadlineExceeded):
				err = nil // stopped below
			case errors.Is(err, io.EOF):
			default:
				cancel(err)
			}
			watched <- result{data, err}
			return
		}
	}()
	stopWatch := func() result {
		st.SetReadDeadline(time.Unix(1, 0))
		res := <-watched
		st.SetReadDeadline(time.Time{})
		return res
	}

	wctx, wcancel := context.WithTimeout(ctx, r.cfg.DialTimeout)
	err = u.AcquireDial(wctx, r.cfg.MaxDialsPerKey)
	wcancel()
	if err == nil {
		// The table in force now: a reload changes it for the streams
		// that open after, never for those connected.
		d := *r.dialer
		d.Table = r.live.Load().table
		up, status, err = d.Dial(ctx, target)
		u.ReleaseDial()
	} else {
		status = transport.StatusTooManyDials
	}
	res := stopWatch()
	if res.err != nil && !errors.Is(res.err, io.EOF) {
		if up != nil {
			up.Close()
		}
		if errors.Is(res.err, errEarlyData) {
			return nil, nil, transport.StatusBadRequest, res.err
		}
		return nil, nil, transport.StatusOK, fmt.Errorf("stream ended while dialling: %w", res.err)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, transport.StatusOK, fmt.Errorf("relay stopping: %w", err)
		}
		return nil, nil, status, err
	}
	return up, res.data, transport.StatusOK, nil
}

// refuse answers a stream with a failure status and ends it cleanly, so
// the client reads the status before the stream goes away.
func refuse(st transport.Stream, status transport.Status) {
	if _, err := (transport.OpenReply{Status: status}).WriteTo(st); err == nil {
		st.CloseWrite()
	}
}
