package tlscarrier

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/acceptloop"
	"github.com/merpati/merpati/transport/h2mux"
	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/netrate"
	"github.com/merpati/merpati/transport/warnlimit"
)

// Defaults of [ListenConfig].
//
// Each unauthenticated connection costs two file descriptors once spliced
// to the cover site, and a relay is commonly given 20,000 or more, so 4096
// leaves most of them to users while far exceeding what a cover site's
// real visitors hold open. A browser keeps at most six connections to a
// site, so 64 per source network serves a NAT full of them; one host
// flooding the relay gets no further.
const (
	DefaultMaxUnauthConns     = 4096
	DefaultMaxUnauthPerSource = 64
	DefaultHelloTimeout       = 10 * time.Second
	// DefaultCoverDelay is short enough that a prober's idle connection
	// ends when the cover site's own timer says (nginx: 60 s), give or
	// take less than network jitter, and long enough that a client's
	// hello, sent with the handshake's last ACK, is in before it: the
	// cover site sees none of theirs.
	DefaultCoverDelay = 150 * time.Millisecond
	// DefaultMTProxyChecks is the default [ListenConfig.MTProxyChecks]:
	// far more new connections a second than the apps of a network
	// open (a Telegram app opens a handful at start), and, with 1000
	// secrets at about 1.2 us each, at most a tenth of a core per
	// network.
	DefaultMTProxyChecks = 50
	// DefaultMTProxyCPU is the default [ListenConfig.MTProxyCPU]: half
	// a core, all sources together. At about 1.2 us per secret and
	// hello (BenchmarkMTProxyCheck: 1.1-1.2 ms a hello with 1000
	// secrets), that is some 400 hellos a second with 1000 secrets and
	// 4000 with 100: far more than the apps of a relay's users open,
	// while a flood from many networks, each under its own rate, leaves
	// the relay the other half of a core (and its other cores) for the
	// sessions it serves. The budget counts the time checks take, so it
	// holds whatever the number of secrets.
	DefaultMTProxyCPU = 0.5
	// MTProxyWindow is how far a FakeTLS hello's timestamp may be from
	// the relay's clock. Apps sign with their device clock, which can be
	// off by a minute or so; the relay's MTProxy replay cache must
	// remember accepted hellos for longer than this.
	MTProxyWindow = 2 * time.Minute
)

// mtproxyHandshakeTimeout bounds the FakeTLS and obfuscated2 exchange with
// an app, once its hello is accepted.
const mtproxyHandshakeTimeout = 20 * time.Second

// An MTProxyAuthenticator admits stock Telegram apps by their FakeTLS
// hello (MTProxy "ee" secrets). It must be safe for concurrent use.
type MTProxyAuthenticator interface {
	// AuthenticateMTProxy returns the access key whose MTProxy secret
	// signed h within [MTProxyWindow] of now, and that secret, or an
	// error (no such key, a replayed hello, or a key that may not open
	// another connection): the connection then goes to the cover site.
	AuthenticateMTProxy(h *mtproxy.ClientHello, now time.Time) (transport.Key, mtproxy.Key, error)
}

// ListenConfig configures the relay side of the carrier: the front door of
// a relay's TCP port.
type ListenConfig struct {
	// Certificate is the relay's own certificate, whose key clients pin.
	// Required.
	Certificate tls.Certificate
	// Auth judges the token in each ClientHello. Required.
	Auth transport.Authenticator
	// MTProxy, if not nil, also admits stock Telegram apps whose FakeTLS
	// hello an access key's MTProxy secret signed. Each such connection
	// is a session of carrier [mtproxy.Carrier] holding one stream, which
	// opens to the datacenter the app asked for.
	MTProxy MTProxyAuthenticator
	// Cover is the "host:port" of the cover site, a real HTTPS server
	// that gets every connection that does not authenticate, byte for
	// byte. Required.
	Cover string
	// DialCover, if not nil, connects to the cover site in place of a TCP
	// dial of Cover (with a 10-second timeout), so that the cover site
	// can change while the listener runs (a relay's settings reloaded).
	// It must be safe for concurrent use.
	DialCover func(ctx context.Context) (net.Conn, error)
	// HelloTimeout bounds the wait for a complete ClientHello; zero means
	// [DefaultHelloTimeout]. A connection still incomplete then goes to
	// the cover site with what it sent, as a web server would keep
	// waiting.
	HelloTimeout time.Duration
	// CoverDelay is how long the front door waits for a complete hello
	// before it dials the cover site anyway (while still waiting, up to
	// HelloTimeout), so that the cover's own timers run from about when
	// the client connected: a prober's idle connection is then closed
	// when the cover would close it. Zero means [DefaultCoverDelay].
	// Clients send their hello at once, so the cover site sees no
	// connection of theirs unless the hello took this long to arrive.
	CoverDelay time.Duration
	// MaxUnauthConns caps the connections that have not authenticated:
	// those still sending their hello and those spliced to the cover
	// site. Zero means [DefaultMaxUnauthConns]. A connection over the cap
	// is closed at once, without dialling the cover site.
	MaxUnauthConns int
	// MaxUnauthPerSource caps the same connections per source network
	// (an IPv4 /24 or an IPv6 /64); zero means
	// [DefaultMaxUnauthPerSource].
	MaxUnauthPerSource int
	// Mux configures the HTTP/2 sessions.
	Mux h2mux.Config
	// MTProxyChecks bounds the hellos per second, per source network
	// (/24, /56; twice as many in a burst), that are checked against the
	// MTProxy secrets, one HMAC each: the CPU a network can make the
	// relay spend. Others go to the cover site untried. Zero means
	// [DefaultMTProxyChecks].
	MTProxyChecks float64
	// MTProxyCPU bounds the time that checking hellos against the
	// MTProxy secrets takes, from all sources together, as a share of
	// one core: a second of checks takes that many seconds, with up to
	// one second's share at once. Checks are timed by the clock, not
	// the CPU, so on a busy machine (or with many checks at once) the
	// budget runs out sooner than a share of a core would. A flood from many networks, each
	// under MTProxyChecks, cannot take more. Hellos over it go to the
	// cover site untried. Zero means [DefaultMTProxyCPU].
	MTProxyCPU float64
	// Mirror, if not nil, shapes key holders' server flight like the
	// cover site's (see [Mirror]).
	Mirror *Mirror
	// Logger receives debug lines and rate-limited warnings (cover site
	// unreachable, caps reached); nil discards. It never gets client
	// addresses.
	Logger *slog.Logger
	// OnCover, if not nil, is told of every connection sent to the cover
	// site, with the reason it is logged with, for metrics. It must not
	// block.
	OnCover func(reason string)
}

func (c *ListenConfig) fill() error {
	switch {
	case len(c.Certificate.Certificate) == 0:
		return errors.New("tlscarrier: ListenConfig.Certificate: required")
	case c.Auth == nil:
		return errors.New("tlscarrier: ListenConfig.Auth: required")
	case c.Cover == "":
		return errors.New("tlscarrier: ListenConfig.Cover: required")
	case c.MaxUnauthConns < 0:
		return errors.New("tlscarrier: ListenConfig.MaxUnauthConns: must not be negative")
	case c.MaxUnauthPerSource < 0:
		return errors.New("tlscarrier: ListenConfig.MaxUnauthPerSource: must not be negative")
	case c.MTProxyCPU < 0:
		return errors.New("tlscarrier: ListenConfig.MTProxyCPU: must not be negative")
	}
	if _, _, err := net.SplitHostPort(c.Cover); err != nil {
		return fmt.Errorf("tlscarrier: ListenConfig.Cover: %w", err)
	}
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = DefaultHelloTimeout
	}
	if c.CoverDelay <= 0 {
		c.CoverDelay = DefaultCoverDelay
	}
	if c.MTProxyChecks <= 0 {
		c.MTProxyChecks = DefaultMTProxyChecks
	}
	if c.MTProxyCPU == 0 {
		c.MTProxyCPU = DefaultMTProxyCPU
	}
	if c.MaxUnauthConns == 0 {
		c.MaxUnauthConns = DefaultMaxUnauthConns
	}
	if c.MaxUnauthPerSource == 0 {
		c.MaxUnauthPerSource = DefaultMaxUnauthPerSource
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// A Listener is the front door of a relay's TCP port, the relay side of
// the carrier: it reads each connection's ClientHello, hands the ones that
// authenticate a TLS handshake and an HTTP/2 session (or, for stock apps,
// the MTProxy handshake), and splices every other connection to the cover
// site itself. It implements [transport.Listener]. Create one with
// [Listen].
type Listener struct {
	cfg    ListenConfig
	log    *slog.Logger
	ln     net.Listener
	unauth unauthLimiter
	warns  warnlimit.Limiter
	// mtChecks bounds the MTProxy secret checks per source network.
	mtChecks *netrate.Limiter
	// mtBudget bounds the time all MTProxy secret checks take.
	mtBudget *timeBudget
	// mtCost is a moving average of what an MTProxy check takes, in
	// nanoseconds.
	mtCost atomic.Int64

	sessions chan transport.ServerSession
	ctx      context.Context // done when the listener closes
	cancel   context.CancelFunc
	loopDone chan struct{} // closed when the accept loop has returned
	loopErr  error         // set before loopDone is closed
}

var _ transport.Listener = (*Listener)(nil)

// Listen starts the front door on ln, which it then owns.
func Listen(ln net.Listener, cfg ListenConfig) (*Listener, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		cfg:      cfg,
		log:      cfg.Logger.With("transport", "tls"),
		ln:       ln,
		unauth:   unauthLimiter{max: cfg.MaxUnauthConns, perSource: cfg.MaxUnauthPerSource},
		mtChecks: netrate.New(cfg.MTProxyChecks, 2*cfg.MTProxyChecks),
		mtBudget: newTimeBudget(cfg.MTProxyCPU),
		sessions: make(chan transport.ServerSession),
		ctx:      ctx,
		cancel:   cancel,
		loopDone: make(chan struct{}),
	}
	go func() {
		defer close(l.loopDone)
		l.loopErr = acceptloop.Serve(ctx, admitListener{ln, l}, cfg.Logger, l.handle)
		cancel()
	}()
	return l, nil
}

// Accept waits for the next authenticated session.
func (l *Listener) Accept(ctx context.Context) (transport.ServerSession, error) {
	select {
	case s := <-l.sessions:
		return s, nil
	case <-l.ctx.Done():
		<-l.loopDone
		if l.loopErr != nil {
			return nil, fmt.Errorf("tlscarrier: %w", l.loopErr)
		}
		return nil, fmt.Errorf("tlscarrier: accept: %w", net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("tlscarrier: accept: %w", ctx.Err())
	}
}

// Close stops listening and ends every connection the listener serves,
// accepted sessions included, and returns once they have all ended.
func (l *Listener) Close() error {
	l.cancel()
	<-l.loopDone
	return nil
}

// Addr returns the listener's network address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// helloReaders lends handle its buffer for a first record, which can be
// as long as 16 KiB: one per connection was the largest allocation of a
// new session.
var helloReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, hello.MaxRecordLen) }}

// handle tells an authenticated connection from everything else by its
// first TLS record. It runs in the accept loop's goroutine for c, which
// closes c when handle returns or the listener closes.
func (l *Listener) handle(ctx context.Context, c net.Conn) {
	release := c.(*admittedConn).release
	defer release()
	early := l.dialCoverAfter(ctx, l.cfg.CoverDelay)
	defer early.drop()

	c.SetReadDeadline(time.Now().Add(l.cfg.HelloTimeout))
	// Read through a buffer so that bytes arriving with the hello (in the
	// same segment) are forwarded with it, in one write: a cover site
	// then sees the same segments as if it had been dialled directly.
	br := helloReaders.Get().(*bufio.Reader)
	br.Reset(c)
	rec, err := hello.ReadRecord(br)
	c.SetReadDeadline(time.Time{})
	extra, _ := br.Peek(br.Buffered())
	first := append(rec, extra...)
	// Only an MTProxy check reads on through br; everyone else has all
	// of its bytes in first.
	freeReader := func() {
		br.Reset(nil)
		helloReaders.Put(br)
	}
	if err != nil {
		freeReader()
		l.cover(ctx, c, first, "no complete TLS hello", early)
		return
	}
	h, err := hello.Parse(rec)
	if err != nil {
		freeReader()
		l.cover(ctx, c, first, "unparsable hello", early)
		return
	}
	if digest, token, ok := HelloToken(h); ok {
		key, err := l.cfg.Auth.Authenticate(transport.Proof{Carrier: "tls", Digest: digest, Token: token, Random: h.Random, KeyShare: h.X25519Share})
		if err == nil {
			freeReader()
			release()
			early.drop()
			l.serveCarrier(ctx, c, first, key)
			return
		}
		l.log.Debug("token refused", "err", err)
	}
	if l.cfg.MTProxy == nil {
		freeReader()
	}
	// Not a key holder's hello (a sealed token costs the same to check
	// whatever the number of keys). Checking it for an MTProxy secret
	// costs an HMAC per secret: where that takes long enough to show in
	// the time a prober waits, the cover site gets the hello first and
	// answers while the relay checks it.
	if l.cfg.MTProxy != nil && l.mtCost.Load() > mtSlowCheck.Nanoseconds() {
		early.sendNow(first)
	}
	if l.cfg.MTProxy != nil && l.mtCheckAllowed(c) {
		// Not our carrier: maybe a stock Telegram app with an MTProxy
		// (FakeTLS) secret, told apart by the hello alone.
		mh, err := mtproxy.ParseClientHello(rec)
		if err == nil {
			err = l.checkMTProxy(ctx, c, br, mh, release, early)
		}
		if err == nil {
			return
		}
	}
	l.cover(ctx, c, first, "no valid token or MTProxy hello", early)
}

// checkMTProxy checks h against the MTProxy secrets, if the time budget
// of those checks allows, and serves c as the app whose secret signed h,
// returning nil, if one did.
func (l *Listener) checkMTProxy(ctx context.Context, c net.Conn, br *bufio.Reader, h *mtproxy.ClientHello, release func(), early *earlyCover) error {
	est, ok := l.mtBudget.take(time.Now(), time.Duration(l.mtCost.Load()))
	if !ok {
		l.warns.Warn(l.log, "MTProxy checks over their CPU budget: hellos sent to the cover site untried",
			"cpu", l.cfg.MTProxyCPU)
		return errMTBudget
	}
	start := time.Now()
	key, secret, err := l.cfg.MTProxy.AuthenticateMTProxy(h, start)
	took := time.Since(start)
	l.noteMTCost(took)
	l.mtBudget.settle(est, took)
	if err != nil {
		return err
	}
	release()
	early.drop()
	l.serveMTProxy(ctx, c, br, key, secret, h)
	return nil
}

// errMTBudget means a hello was not checked against the MTProxy secrets:
// their checks had taken their share of the CPU ([ListenConfig.MTProxyCPU]).
var errMTBudget = errors.New("tlscarrier: MTProxy check budget spent")

// A timeBudget is a token bucket of time: it lets work start while the
// time earlier work took, counted against a refill of rate seconds a
// second up to a second's worth, has not run out. Work reserves its
// expected time when it starts (so that many starting at once cannot all
// pass) and settles the difference when done. It is safe for concurrent
// use.
type timeBudget struct {
	rate  float64 // seconds of work a second
	burst float64 // nanoseconds

	mu     sync.Mutex
	tokens float64 // nanoseconds; negative while in debt
	last   time.Time
}

func newTimeBudget(rate float64) *timeBudget {
	burst := rate * float64(time.Second)
	return &timeBudget{rate: rate, burst: burst, tokens: burst}
}

// take reports whether work may start at now and, if so, reserves est of
// the budget for it, which it returns for [timeBudget.settle].
func (b *timeBudget) take(now time.Time, est time.Duration) (time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch d := now.Sub(b.last); {
	case b.last.IsZero():
		b.last = now
	case d > 0: // a caller whose now is behind last refills nothing
		b.tokens = min(b.burst, b.tokens+b.rate*float64(d))
		b.last = now
	}
	if b.tokens <= 0 {
		return 0, false
	}
	b.tokens -= float64(est)
	return est, true
}

// settle counts work that took took against the budget, of which est was
// reserved when it started.
func (b *timeBudget) settle(est, took time.Duration) {
	b.mu.Lock()
	b.tokens -= float64(took - est)
	b.mu.Unlock()
}

// mtSlowCheck is how long an MTProxy check may take before the front
// door forwards a prober's hello to the cover site ahead of it: far below
// the jitter of any path across the Internet.
const mtSlowCheck = 300 * time.Microsecond

// noteMTCost folds the duration of one MTProxy check into a moving
// average.
func (l *Listener) noteMTCost(d time.Duration) {
	old := l.mtCost.Load()
	l.mtCost.Store(old + (d.Nanoseconds()-old)/8)
}

// mtCheckAllowed takes a token for checking a hello from c's network
// against the MTProxy secrets, and logs (rate-limited) when there is none.
func (l *Listener) mtCheckAllowed(c net.Conn) bool {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return true
	}
	if l.mtChecks.Allow(ta.AddrPort().Addr(), time.Now()) {
		return true
	}
	// The network is not logged: client addresses never are.
	l.warns.Warn(l.log, "hellos from one network over the MTProxy check rate: sent to the cover site untried",
		"rate", l.cfg.MTProxyChecks)
	return false
}

// An admitListener counts each connection it accepts against the caps on
// unauthenticated connections, in the order they arrive, and closes the
// ones over a cap at once: no goroutine, no hello read, no cover dial.
type admitListener struct {
	net.Listener
	l *Listener
}

func (a admitListener) Accept() (net.Conn, error) {
	for {
		c, err := a.Listener.Accept()
		if err != nil {
			return nil, err
		}
		release, over := a.l.unauth.acquire(c.RemoteAddr())
		if over == "" {
			return &admittedConn{Conn: c, release: release}, nil
		}
		c.Close()
		a.l.warns.Warn(a.l.log, "connection closed at once: "+over)
	}
}

// An admittedConn is a connection counted as unauthenticated until
// release is called (more than once is fine).
type admittedConn struct {
	net.Conn
	release func()
}

// NetConn returns the connection c counts.
func (c *admittedConn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the connection, as a *net.TCPConn can: the cover
// splice passes a half-close on.
func (c *admittedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("tlscarrier: connection cannot half-close")
}

// WaitRead waits for the connection to have something to read (see
// [transport.ReadWaiter]).
func (c *admittedConn) WaitRead() bool { return transport.WaitRead(c.Conn) }

// serveCarrier completes an authenticated connection (TLS handshake, then
// HTTP/2) and hands the session to Accept. The connection outlives the
// handler (acceptloop.Keep): a relay keeps thousands of idle sessions,
// and a goroutine parked for each, with the stack its handshake grew,
// would cost more than the session itself.
func (l *Listener) serveCarrier(ctx context.Context, c net.Conn, first []byte, key transport.Key) {
	mux := l.cfg.Mux
	release, kept := acceptloop.Keep(ctx)
	if kept {
		mux.OnClose = release
	}
	sess, err := Accept(ctx, c, first, ServerConfig{Certificate: l.cfg.Certificate, Mux: mux, Mirror: l.cfg.Mirror})
	if err != nil {
		if kept {
			release()
			c.Close()
		}
		l.log.Debug("carrier handshake failed", "key", key.Name(), "err", err)
		return
	}
	l.handOn(ctx, &serverSession{Session: sess, key: key}, kept)
}

// handOn hands s to Accept. The handler returns at once if its
// connection was kept ([acceptloop.Keep]: s releases it as it ends), and
// waits for s to end ([Listener.deliver]) if not.
func (l *Listener) handOn(ctx context.Context, s transport.ServerSession, kept bool) {
	if !kept {
		l.deliver(ctx, s)
		return
	}
	select {
	case l.sessions <- s:
	case <-ctx.Done():
		s.Close()
	}
}

// serveMTProxy completes the FakeTLS and obfuscated2 handshakes of an app
// whose hello secret signed, hands its one-stream session to Accept, and
// waits for it to end. Once the hello is accepted there is no way back to
// the cover site (the server hello has been sent): failures just close
// the connection.
func (l *Listener) serveMTProxy(ctx context.Context, c net.Conn, br *bufio.Reader, key transport.Key, secret mtproxy.Key, h *mtproxy.ClientHello) {
	c.SetDeadline(time.Now().Add(mtproxyHandshakeTimeout))
	appData := 0
	if l.cfg.Mirror != nil {
		appData = l.cfg.Mirror.MTProxyAppData()
	}
	// br holds what came after the hello; the app's TLSConn reads it
	// first, then lets it go and reads c straight into the relay's
	// buffers, several records at a time.
	app, in, err := mtproxy.AcceptAppSized(c, br, secret, h, appData)
	c.SetDeadline(time.Time{})
	if err != nil {
		l.log.Debug("MTProxy handshake failed", "transport", mtproxy.Carrier, "key", key.Name(), "err", err)
		return
	}
	st, err := mtproxy.NewRelayStream(app, in)
	if err != nil {
		l.log.Debug("MTProxy init refused", "transport", mtproxy.Carrier, "key", key.Name(), "err", err)
		return
	}
	s := newOneStreamSession(st, key)
	// As a carrier session, the connection outlives the handler: no
	// goroutine (with the hello's record on its stack) waits for it.
	release, kept := acceptloop.Keep(ctx)
	s.onEnd = release
	l.handOn(ctx, s, kept)
}

// deliver hands s to Accept and waits until s has ended, or closes it if
// the listener closes first.
func (l *Listener) deliver(ctx context.Context, s transport.ServerSession) {
	select {
	case l.sessions <- s:
	case <-ctx.Done():
		s.Close()
		return
	}
	select {
	case <-s.Done():
	case <-ctx.Done():
		s.Close()
	}
}

// cover splices c to the cover site, sending first the bytes already read,
// over early's connection if it made one.
func (l *Listener) cover(ctx context.Context, c net.Conn, read []byte, why string, early *earlyCover) {
	l.log.Debug("connection sent to cover site", "why", why)
	if l.cfg.OnCover != nil {
		l.cfg.OnCover(why)
	}
	cc, sent, err := early.take(ctx)
	if err != nil {
		l.warns.Warn(l.log, "cover site unreachable", "err", err)
		return
	}
	stop := context.AfterFunc(ctx, func() { cc.Close() })
	defer stop()
	if len(read) > sent {
		if _, err := cc.Write(read[sent:]); err != nil {
			cc.Close()
			return
		}
	}
	transport.Splice(c, cc, nil)
}

// dialCover connects to the cover site.
func (l *Listener) dialCover(ctx context.Context) (net.Conn, error) {
	if l.cfg.DialCover != nil {
		return l.cfg.DialCover(ctx)
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	return d.DialContext(ctx, "tcp", l.cfg.Cover)
}

// An earlyCover is a connection to the cover site dialled after a delay
// unless the front door no longer wants it by then. Its methods are for
// one goroutine.
type earlyCover struct {
	l      *Listener
	ctx    context.Context
	cancel context.CancelFunc
	timer  *time.Timer
	state  int           // 0: undecided; 1: the dial never started; 2: it started
	done   chan struct{} // closed when a started dial has returned
	conn   net.Conn
	err    error
	// sent is what sendNow wrote to conn.
	sent int
}

// dialCoverAfter starts an earlyCover that dials after d.
func (l *Listener) dialCoverAfter(ctx context.Context, d time.Duration) *earlyCover {
	ctx, cancel := context.WithCancel(ctx)
	e := &earlyCover{l: l, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	e.timer = time.AfterFunc(d, func() {
		defer close(e.done)
		e.conn, e.err = l.dialCover(ctx)
	})
	return e
}

// started stops the timer unless it has fired, and reports whether the
// dial started.
func (e *earlyCover) started() bool {
	if e.state == 0 {
		e.state = 1
		if !e.timer.Stop() {
			e.state = 2
		}
	}
	return e.state == 2
}

// sendNow dials the cover site at once, unless the dial has started, and
// sends it first, the client's hello: while the hello is checked, the
// cover site is already answering it, so that a prober's time to the
// cover's first byte does not depend on how long the check takes (REALITY
// does the same). If the hello turns out to be a key holder's, drop
// closes the connection and the cover's answer is never read.
func (e *earlyCover) sendNow(first []byte) {
	if e.state != 0 || !e.timer.Stop() {
		return // dialling already
	}
	e.state = 2
	first = append([]byte(nil), first...)
	go func() {
		defer close(e.done)
		e.conn, e.err = e.l.dialCover(e.ctx)
		if e.err != nil {
			return
		}
		if _, e.err = e.conn.Write(first); e.err != nil {
			e.conn.Close()
			e.conn = nil
			return
		}
		e.sent = len(first)
	}()
}

// take returns the cover connection, the early one if it was dialled
// (else a new one), and how many bytes of the client's were already sent
// on it. It hands the connection over to the caller.
func (e *earlyCover) take(ctx context.Context) (net.Conn, int, error) {
	if !e.started() {
		c, err := e.l.dialCover(ctx)
		return c, 0, err
	}
	<-e.done
	c, sent, err := e.conn, e.sent, e.err
	e.conn, e.err = nil, errors.New("tlscarrier: cover connection already taken")
	return c, sent, err
}

// drop cancels the dial, waits for it and closes the connection it made,
// unless taken. It may be called more than once.
func (e *earlyCover) drop() {
	e.cancel()
	if e.started() {
		<-e.done
		if e.conn != nil {
			e.conn.Close()
			e.conn = nil
		}
	}
}

// serverSession is an authenticated HTTP/2 session, as the relay sees it.
type serverSession struct {
	*h2mux.Session
	key transport.Key
}

var _ transport.StreamServer = (*serverSession)(nil)

func (s *serverSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
	return s.Session.AcceptStream(ctx)
}

func (s *serverSession) ServeStreams(handle func(transport.Stream), end func()) error {
	return s.Session.ServeStreams(func(st *h2mux.Stream) { handle(st) }, end)
}
func (s *serverSession) Key() transport.Key { return s.key }
func (s *serverSession) Carrier() string    { return "tls" }

// oneStreamSession is a session of exactly one stream, already open: a
// stock app's MTProxy connection.
type oneStreamSession struct {
	key       transport.Key
	st        transport.Stream
	mu        sync.Mutex
	given     bool
	done      chan struct{}
	closeOnce sync.Once
	onEnd     func() // if not nil, called once when the session ends
}

func newOneStreamSession(st transport.Stream, key transport.Key) *oneStreamSession {
	s := &oneStreamSession{key: key, done: make(chan struct{})}
	s.st = &closeNotifyStream{Stream: st, onClose: func() { s.Close() }}
	return s
}

// AcceptStream returns the stream the first time and then waits for the
// session to end.
func (s *oneStreamSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
	s.mu.Lock()
	if !s.given {
		s.given = true
		s.mu.Unlock()
		return s.st, nil
	}
	s.mu.Unlock()
	select {
	case <-s.done:
		return nil, fmt.Errorf("tlscarrier: accept stream: %w", net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("tlscarrier: accept stream: %w", ctx.Err())
	}
}

func (s *oneStreamSession) Key() transport.Key    { return s.key }
func (s *oneStreamSession) Carrier() string       { return mtproxy.Carrier }
func (s *oneStreamSession) Done() <-chan struct{} { return s.done }

// Close closes the stream and ends the session.
func (s *oneStreamSession) Close() error {
	s.closeOnce.Do(func() {
		s.st.(*closeNotifyStream).Stream.Close()
		close(s.done)
		if s.onEnd != nil {
			s.onEnd()
		}
	})
	return nil
}

// closeNotifyStream calls onClose when closed: the session of a single
// stream ends with it.
type closeNotifyStream struct {
	transport.Stream
	onClose func()
}

// WaitRead waits for the stream to have something to read, where it can
// (see [transport.ReadWaiter]).
func (c *closeNotifyStream) WaitRead() bool { return transport.WaitRead(c.Stream) }

func (c *closeNotifyStream) Close() error {
	err := c.Stream.Close()
	c.onClose()
	return err
}
