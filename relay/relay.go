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
	"log/slog"
	"net"
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
	// Logger receives the relay's logs; nil discards. Client addresses
	// and secrets are never logged.
	Logger *slog.Logger
}

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
	// warns rate-limits the warnings a prober can provoke.
	warns warnLimiter
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
	}, nil
}

// Run listens on cfg.Listen and serves until ctx is done, watching the keys
// file for changes.
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
	go cfg.Keys.Watch(ctx, time.Second)
	if cfg.NoQUIC {
		return r.Serve(ctx, ln)
	}
	// The QUIC carrier listens on UDP at the same port number.
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		ln.Close()
		return fmt.Errorf("relay: %w", err)
	}
	r.log.Info("relay listening", "addr", pc.LocalAddr().String(), "transport", "quic")
	return r.ServeBoth(ctx, ln, pc)
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			r.handleConn(ctx, c)
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
// by its first TLS record.
func (r *Relay) handleConn(ctx context.Context, c net.Conn) {
	defer c.Close()
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
		r.cover(ctx, c, first, "no complete TLS hello")
		return
	}
	h, err := hello.Parse(rec)
	if err != nil {
		r.cover(ctx, c, first, "unparsable hello")
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
		if r.serveMTProxy(ctx, c, br, rec) {
			return
		}
		r.cover(ctx, c, first, "no valid token or MTProxy hello")
		return
	}
	if r.replay.Seen(token) {
		r.warns.warn(r.log, "replayed hello sent to cover site", "key", u.Name())
		r.cover(ctx, c, first, "replay")
		return
	}
	sess, err := tlscarrier.Accept(ctx, c, first, tlscarrier.ServerConfig{Certificate: r.cfg.Certificate})
	if err != nil {
		r.log.Debug("carrier handshake failed", "transport", "tls", "key", u.Name(), "err", err)
		return
	}
	defer sess.Close()
	untrack, ok := u.Track(sess)
	defer untrack()
	if !ok {
		return
	}
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
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.serveStream(ctx, st, u)
		}()
	}
}

// serveStream reads a stream's target, dials it if it is Telegram, answers
// with a status and relays bytes.
func (r *Relay) serveStream(ctx context.Context, st transport.Stream, u *access.User) {
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
	if u.OverQuota() || !u.AcquireStream() {
		log.Info("stream refused: key over its limits")
		refuse(st, transport.StatusQuota)
		return
	}
	defer u.ReleaseStream()
	up, status, err := r.dialer.Dial(ctx, req.Target)
	if err != nil {
		if status == transport.StatusNotAllowed {
			log.Warn("stream refused: not a Telegram datacenter", "err", err)
		} else {
			log.Debug("dial failed", "err", err)
		}
		refuse(st, status)
		return
	}
	if _, err := (transport.OpenReply{Status: transport.StatusOK}).WriteTo(st); err != nil {
		up.Close()
		return
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

// refuse answers a stream with a failure status and ends it cleanly, so
// the client reads the status before the stream goes away.
func refuse(st transport.Stream, status transport.Status) {
	if _, err := (transport.OpenReply{Status: status}).WriteTo(st); err == nil {
		st.CloseWrite()
	}
}

// cover splices c to the cover site, sending first the bytes already read.
func (r *Relay) cover(ctx context.Context, c net.Conn, read []byte, why string) {
	r.log.Debug("connection sent to cover site", "why", why)
	d := net.Dialer{Timeout: 10 * time.Second}
	cc, err := d.DialContext(ctx, "tcp", r.cfg.Cover)
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
