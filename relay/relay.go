// Package relay is the merpati relay node: it accepts carrier connections
// on one TCP port, authenticates them from the ClientHello alone, serves
// authenticated sessions by relaying their streams to Telegram datacenters
// only, and splices every other connection, byte for byte, to the
// operator's cover site, so that to a prober the relay is that web site.
//
// A relay is configured with a [Config] and run with [Run] (or [New] and
// [Relay.Serve] on a listener of the caller's). The operator's files live
// in one directory; see [Init] and [LoadDir].
package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/antireplay"
	"github.com/merpati/merpati/relay/dc"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/tlscarrier"
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
	// that gets every connection that does not authenticate. Required.
	Cover string
	// Table is where streams may go; nil means dc.New(), Telegram only.
	Table *dc.Table
	// Resolver resolves domain-name targets; nil means the system's.
	Resolver *net.Resolver
	// HelloTimeout bounds the wait for a complete ClientHello; zero means
	// 10 seconds. A connection still incomplete then goes to the cover
	// site with what it sent, as a web server would keep waiting.
	HelloTimeout time.Duration
	// DialTimeout bounds each dial to a datacenter; zero means 10 seconds.
	DialTimeout time.Duration
	// NoQUIC turns off the QUIC carrier: [Run] then listens on TCP only.
	NoQUIC bool
	// MaxUnauthConns caps the TCP connections that have not
	// authenticated: those still sending their hello and those spliced
	// to the cover site. Zero means [DefaultMaxUnauthConns]. A connection
	// over the cap is closed at once, without dialling the cover site.
	MaxUnauthConns int
	// MaxUnauthPerSource caps the same connections per source network
	// (an IPv4 /24 or an IPv6 /64); zero means
	// [DefaultMaxUnauthPerSource].
	MaxUnauthPerSource int
	// MaxDialsPerKey caps the streams of one access key dialling a
	// datacenter at once; zero means [DefaultMaxDialsPerKey]. The others
	// wait their turn, for up to DialTimeout, and are then refused with
	// [transport.StatusTooManyDials].
	MaxDialsPerKey int
	// Logger receives the relay's logs; nil discards. Client addresses
	// and secrets are never logged.
	Logger *slog.Logger
}

// Defaults for [Config]'s limits.
//
// Each unauthenticated connection costs two file descriptors once spliced
// to the cover site, and a relay is commonly given 20,000 or more, so 4096
// leaves most of them to users while far exceeding what a cover site's
// real visitors hold open. A browser keeps at most six connections to a
// site, so 64 per source network serves a NAT full of them; one host
// flooding the relay gets no further. 64 dials per key is more than a
// family of Telegram apps starts at once, and bounds the sockets one key
// can hold half-open towards an unresponsive datacenter.
const (
	DefaultMaxUnauthConns     = 4096
	DefaultMaxUnauthPerSource = 64
	DefaultMaxDialsPerKey     = 64
)

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
	if c.HelloTimeout <= 0 {
		c.HelloTimeout = 10 * time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	switch {
	case c.MaxUnauthConns < 0:
		return errors.New("relay: Config.MaxUnauthConns: must not be negative")
	case c.MaxUnauthPerSource < 0:
		return errors.New("relay: Config.MaxUnauthPerSource: must not be negative")
	case c.MaxDialsPerKey < 0:
		return errors.New("relay: Config.MaxDialsPerKey: must not be negative")
	}
	if c.MaxUnauthConns == 0 {
		c.MaxUnauthConns = DefaultMaxUnauthConns
	}
	if c.MaxUnauthPerSource == 0 {
		c.MaxUnauthPerSource = DefaultMaxUnauthPerSource
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
	warns warnLimiter
	// unauth counts the connections not authenticated.
	unauth unauthLimiter
}

// New checks cfg and returns a Relay.
func New(cfg Config) (*Relay, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	return &Relay{
		cfg:    cfg,
		log:    cfg.Logger,
		dialer: &dc.Dialer{Table: cfg.Table, Resolver: cfg.Resolver, Timeout: cfg.DialTimeout},
		unauth: unauthLimiter{max: cfg.MaxUnauthConns, perSource: cfg.MaxUnauthPerSource},
	}, nil
}

// Run listens on cfg.Listen and serves until ctx is done, watching the keys
// file for changes ([access.Keyring.Watch]) and saving usage as it goes.
// It returns once every connection has ended and the usage they counted
// has been saved.
func Run(ctx context.Context, cfg Config) error {
	r, err := New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	r.log.Info("relay listening", "addr", ln.Addr().String())
	var pc net.PacketConn
	if !cfg.NoQUIC {
		// The QUIC carrier listens on UDP at the same port number.
		if pc, err = net.ListenPacket("udp", ln.Addr().String()); err != nil {
			ln.Close()
			return fmt.Errorf("relay: %w", err)
		}
		r.log.Info("relay listening", "addr", pc.LocalAddr().String(), "transport", "quic")
	}
	// The watcher outlives ctx: it is stopped, and makes its last usage
	// save, only after the serving has ended, so that the bytes of
	// sessions closing at shutdown are saved too.
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	var watch sync.WaitGroup
	watch.Go(func() { cfg.Keys.Watch(watchCtx, time.Second) })
	if pc == nil {
		err = r.Serve(ctx, ln)
	} else {
		err = r.ServeBoth(ctx, ln, pc)
	}
	stopWatch()
	watch.Wait()
	return err
}

// Serve accepts connections on ln until ctx is done or ln fails, and
// closes ln. When ctx is done it closes every connection and returns nil
// once they have all ended.
func (r *Relay) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { <-ctx.Done(); ln.Close() }()

	var wg sync.WaitGroup
	defer wg.Wait()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Back off on accept errors such as EMFILE, as
				// net/http does: 5ms doubling to 1s.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				r.log.Warn("accept failed; retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("relay: accept: %w", err)
		}
		delay = 0
		authed, over := r.unauth.acquire(c.RemoteAddr())
		if over != "" {
			// Cheap: no goroutine, no hello read, no cover dial.
			c.Close()
			r.warns.warn(r.log, "connection closed at once: "+over)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer authed()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			r.handleConn(ctx, c, authed)
		}()
	}
}

// isTemporary reports whether err is a temporary accept error, such as
// running out of file descriptors.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// handleConn tells an authenticated carrier connection from everything else
// by its first TLS record. authed, called once the connection has
// authenticated, stops counting it as unauthenticated.
func (r *Relay) handleConn(ctx context.Context, c net.Conn, authed func()) {
	defer c.Close()
	early := r.dialCoverAfter(ctx, coverEarly)
	defer early.drop()
	accepted := func() {
		authed()
		early.drop()
	}
	c.SetReadDeadline(time.Now().Add(r.cfg.HelloTimeout))
	// Read through a buffer so that bytes arriving with the hello (in the
	// same segment) are forwarded with it, in one write: a cover site
	// then sees the same segments as if it had been dialled directly.
	br := bufio.NewReaderSize(c, hello.MaxRecordLen)
	rec, err := hello.ReadRecord(br)
	c.SetReadDeadline(time.Time{})
	extra, _ := br.Peek(br.Buffered())
	first := append(rec, extra...)
	if err != nil {
		r.cover(ctx, c, first, "no complete TLS hello", early)
		return
	}
	h, err := hello.Parse(rec)
	if err != nil {
		r.cover(ctx, c, first, "unparsable hello", early)
		return
	}
	digest, token, ok := tlscarrier.HelloToken(h)
	var u *access.User
	if ok {
		u = r.cfg.Keys.Authenticate(digest, token, time.Now())
	}
	if u == nil {
		// Not our carrier: maybe a stock Telegram app with an MTProxy
		// (FakeTLS) secret, told apart by the hello alone.
		if r.serveMTProxy(ctx, c, br, rec, accepted) {
			return
		}
		r.cover(ctx, c, first, "no valid token or MTProxy hello", early)
		return
	}
	if r.replay.Seen(token) {
		r.warns.warn(r.log, "replayed hello sent to cover site", "key", u.Name())
		r.cover(ctx, c, first, "replay", early)
		return
	}
	accepted()
	// The session counts from here, before the handshake: a key at its
	// limit costs the relay no handshake and no session state.
	untrack, err := u.TrackSession(c)
	if err != nil {
		r.refuseSession(u, "tls", err)
		return
	}
	defer untrack()
	sess, err := tlscarrier.Accept(ctx, c, first, tlscarrier.ServerConfig{Certificate: r.cfg.Certificate})
	if err != nil {
		r.log.Debug("carrier handshake failed", "transport", "tls", "key", u.Name(), "err", err)
		return
	}
	defer sess.Close()
	r.log.Debug("session opened", "transport", "tls", "key", u.Name())
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := sess.AcceptStream(ctx)
		if err != nil {
			r.log.Debug("session ended", "transport", "tls", "key", u.Name(), "err", err)
			sess.Close()
			return
		}
		// Count the stream here, in the order streams open, before
		// any goroutine runs for it.
		if !r.countStream(st, u) {
			st.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer u.ReleaseStream()
			r.serveCounted(ctx, st, u)
		}()
	}
}

// refuseSession logs, at most once per warnEvery and key, that a session
// of u was refused because of err, from [access.User.TrackSession].
func (r *Relay) refuseSession(u *access.User, carrier string, err error) {
	if errors.Is(err, access.ErrTooManySessions) {
		r.warns.keyInfo(r.log, u.Name(), "session refused: key at its session limit (max_sessions)",
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

// serveStream serves a stream of u that has just opened: it counts it
// against the key's stream limit, then serves it as serveCounted does.
func (r *Relay) serveStream(ctx context.Context, st transport.Stream, u *access.User) {
	defer st.Close()
	if !r.countStream(st, u) {
		return
	}
	defer u.ReleaseStream()
	r.serveCounted(ctx, st, u)
}

// countStream counts a stream of u that has just opened against the key's
// stream limit. A stream counts from the moment it opens, before its
// request is read, so a key cannot hold more half-sent streams than open
// ones. Over the limit, it answers StatusTooManyStreams and reports false;
// the caller then closes st. Otherwise the caller must call
// u.ReleaseStream once the stream ends.
func (r *Relay) countStream(st transport.Stream, u *access.User) bool {
	if u.AcquireStream() {
		return true
	}
	r.warns.keyInfo(r.log, u.Name(), "stream refused: key at its stream limit (max_streams)",
		"limit", u.Entry().StreamLimit())
	refuse(st, transport.StatusTooManyStreams)
	return false
}

// serveCounted reads the target of a counted stream, dials it if it is
// Telegram, answers with a status and relays bytes. It closes st.
func (r *Relay) serveCounted(ctx context.Context, st transport.Stream, u *access.User) {
	defer st.Close()
	st.SetReadDeadline(time.Now().Add(30 * time.Second))
	req, err := transport.ReadOpenRequest(st)
	st.SetReadDeadline(time.Time{})
	if err != nil {
		r.log.Debug("bad open request", "key", u.Name(), "err", err)
		refuse(st, transport.StatusBadRequest)
		return
	}
	log := r.log.With("key", u.Name(), "dc", req.Target.String())
	if u.OverQuota() {
		r.warns.keyInfo(r.log, u.Name(), "stream refused: key over its byte quota (quota_bytes)",
			"quota", u.Entry().QuotaBytes)
		refuse(st, transport.StatusQuota)
		return
	}
	up, early, status, err := r.dialStream(ctx, st, u, req.Target)
	if err != nil {
		switch status {
		case transport.StatusNotAllowed:
			r.warns.keyWarn(r.log, u.Name(), "stream refused: not a Telegram datacenter",
				"dc", req.Target.String(), "err", err)
		case transport.StatusTooManyDials:
			r.warns.keyInfo(r.log, u.Name(), "stream refused: too many of the key's streams waiting on a dial",
				"limit", r.cfg.MaxDialsPerKey)
		case transport.StatusBadRequest:
			r.warns.keyInfo(r.log, u.Name(), "stream refused: data beyond the allowance sent before the reply",
				"limit", maxEarlyData)
		default:
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
		if _, err := up.Write(early); err != nil {
			up.Close()
			return
		}
	}
	log.Debug("stream open")
	transport.Splice(st, up, func(n int) {
		u.AddBytes(int64(n))
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
		up, status, err = r.dialer.Dial(ctx, target)
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

// cover splices c to the cover site, sending first the bytes already read,
// over early's connection if it made one.
func (r *Relay) cover(ctx context.Context, c net.Conn, read []byte, why string, early *earlyCover) {
	r.log.Debug("connection sent to cover site", "why", why)
	cc, err := early.take(ctx)
	if err != nil {
		r.warns.warn(r.log, "cover site unreachable", "err", err)
		return
	}
	stop := context.AfterFunc(ctx, func() { cc.Close() })
	defer stop()
	if len(read) > 0 {
		if _, err := cc.Write(read); err != nil {
			cc.Close()
			return
		}
	}
	transport.Splice(c, cc, nil)
}

// dialCover connects to the cover site.
func (r *Relay) dialCover(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	return d.DialContext(ctx, "tcp", r.cfg.Cover)
}

// coverEarly is how long the relay waits for a complete hello before it
// dials the cover site anyway (while still waiting, up to HelloTimeout),
// so that the cover's own timers run from about when the client connected:
// a prober's idle connection is then closed when the cover would close
// it, rather than HelloTimeout later. Clients of the relay send their
// hello at once, so the cover site sees no connection of theirs unless
// their hello took this long to arrive.
const coverEarly = time.Second

// An earlyCover is a connection to the cover site dialled after a delay
// unless the relay no longer wants it by then. Its methods are for one
// goroutine.
type earlyCover struct {
	r      *Relay
	cancel context.CancelFunc
	timer  *time.Timer
	state  int           // 0: undecided; 1: the dial never started; 2: it started
	done   chan struct{} // closed when a started dial has returned
	conn   net.Conn
	err    error
}

// dialCoverAfter starts an earlyCover that dials after d.
func (r *Relay) dialCoverAfter(ctx context.Context, d time.Duration) *earlyCover {
	ctx, cancel := context.WithCancel(ctx)
	e := &earlyCover{r: r, cancel: cancel, done: make(chan struct{})}
	e.timer = time.AfterFunc(d, func() {
		defer close(e.done)
		e.conn, e.err = r.dialCover(ctx)
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

// take returns the cover connection: the early one if it was dialled,
// else a new one. It hands the connection over to the caller.
func (e *earlyCover) take(ctx context.Context) (net.Conn, error) {
	if !e.started() {
		return e.r.dialCover(ctx)
	}
	<-e.done
	c, err := e.conn, e.err
	e.conn, e.err = nil, errors.New("relay: cover connection already taken")
	return c, err
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

// An unauthLimiter counts the connections that have not authenticated, in
// all and per source network, against [Config.MaxUnauthConns] and
// [Config.MaxUnauthPerSource]. It is safe for concurrent use.
type unauthLimiter struct {
	max, perSource int

	mu       sync.Mutex
	n        int
	bySource map[netip.Prefix]int
}

// acquire counts a connection from addr. It returns a function that stops
// counting it (safe to call more than once), or, if a cap is reached,
// counts nothing and says which one in over.
func (l *unauthLimiter) acquire(addr net.Addr) (release func(), over string) {
	src := sourceNet(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.n >= l.max:
		return nil, fmt.Sprintf("too many unauthenticated connections (MaxUnauthConns %d)", l.max)
	case l.bySource[src] >= l.perSource:
		return nil, fmt.Sprintf("too many unauthenticated connections from one network (MaxUnauthPerSource %d)", l.perSource)
	}
	if l.bySource == nil {
		l.bySource = make(map[netip.Prefix]int)
	}
	l.n++
	l.bySource[src]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.n--
			if l.bySource[src]--; l.bySource[src] <= 0 {
				delete(l.bySource, src)
			}
		})
	}, ""
}

// sourceNet returns the network a connection comes from, as the per-source
// cap counts it: the /24 of an IPv4 address, the /64 of an IPv6 one (a
// host is commonly given a whole /64). Addresses that are not IP share
// the zero prefix.
func sourceNet(addr net.Addr) netip.Prefix {
	var ip netip.Addr
	switch a := addr.(type) {
	case nil:
	case *net.TCPAddr:
		ip = a.AddrPort().Addr()
	default:
		if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
			ip = ap.Addr()
		}
	}
	ip = ip.Unmap()
	bits := 64
	if ip.Is4() {
		bits = 24
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{}
	}
	return p
}
