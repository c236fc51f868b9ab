// Package client is the merpati client: it runs next to the Telegram app,
// accepts the app's connections on a local SOCKS5 port, and carries each as
// a stream of one long-lived, authenticated session to a relay named in the
// user's share link.
//
// Configure it with a [Config] and start it with [Run], or with [New] and
// [Client.ServeSOCKS] (and [Client.ServeMTProxy]) on listeners of the
// caller's.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/merpati/merpati/client/pick"
	"github.com/merpati/merpati/client/socks5"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/antireplay"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/quiccarrier"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// DefaultListen is where the SOCKS5 front listens unless told otherwise.
const DefaultListen = "127.0.0.1:1080"

// Config configures a client.
type Config struct {
	// Link is the user's share link. Required.
	Link *link.Link
	// Listen is the SOCKS5 address for [Run]; empty means DefaultListen.
	// An IPv4 address, 0.0.0.0 included, is listened on over IPv4 only.
	Listen string
	// SocksUsers, if not empty, requires SOCKS5 username/password
	// authentication (RFC 1929) with one of these user → password pairs.
	SocksUsers map[string]string
	// AllowNoAuth lets [Run] serve SOCKS5 without SocksUsers on an
	// address other machines can reach. Without it Run refuses that with
	// [ErrOpenProxy]: anyone who reached the port would use the relay
	// with this link's key.
	AllowNoAuth bool
	// MTProxyListen, if not empty, is where [Run] also serves a local
	// MTProxy front (see [Client.ServeMTProxy]).
	MTProxyListen string
	// MTProxySecret is the MTProxy front's secret; required with
	// MTProxyListen.
	MTProxySecret mtproxy.Secret
	// Ready, if not nil, is called by [Run] once every listener is up
	// and before any connection is served, with the SOCKS5 and MTProxy
	// addresses (mtproxy is nil without MTProxyListen): the place to
	// show the user where to point Telegram. An error from it ends Run,
	// which returns it.
	Ready func(socks, mtproxy net.Addr) error
	// DialContext opens TCP connections to relays; nil means a
	// net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// OpenTimeout bounds opening one stream, from session to the relay's
	// answer; zero means 20 seconds.
	OpenTimeout time.Duration
	// Resolvers are the DNS resolvers asked for the link's signed relay
	// list when no known relay works (see [Client.Refresh] and package
	// client/bootstrap for the forms: udp://, tcp://, tls://, https://).
	// Empty means no bootstrap, even if the link names bootstrap domains.
	Resolvers []string
	// ListCache is the file that keeps the last relay list accepted;
	// empty means none (the list and its sequence number are then kept
	// in memory only).
	ListCache string
	// Logger receives the client's logs; nil discards.
	Logger *slog.Logger
}

// A Client carries streams to relays. It is safe for concurrent use.
type Client struct {
	cfg    Config
	log    *slog.Logger
	picker *pick.Picker
	boot   *booter // nil without bootstrap

	mtReplay   antireplay.Cache // randoms of the hellos the MTProxy front accepted
	refusedLog atomic.Int64     // Unix nanoseconds of the last "key refused" log
}

// ErrOpenProxy is returned by [Run] for a SOCKS5 address other machines
// can reach (not a loopback address) when SOCKS5 asks for no password
// (Config.SocksUsers is empty) and Config.AllowNoAuth is not set.
var ErrOpenProxy = errors.New("SOCKS5 without a password on an address other machines can reach: anyone who reaches it would use the relay with this link's key")

// keyRefusedEvery is how often at most the client logs that the relay
// refused the link's key: every stream open fails the same way until the
// user changes the link.
const keyRefusedEvery = time.Minute

// New checks cfg and returns a Client. It connects to nothing until the
// first stream is opened.
func New(cfg Config) (*Client, error) {
	if cfg.Link == nil {
		return nil, errors.New("client: Config.Link: required")
	}
	if err := cfg.Link.Validate(); err != nil {
		return nil, fmt.Errorf("client: Config.Link: %w", err)
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.OpenTimeout <= 0 {
		cfg.OpenTimeout = 20 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var cands []pick.Candidate
	for _, relay := range cfg.Link.Relays {
		for _, carrier := range cfg.Link.CarrierList() {
			d, err := dialerFor(cfg.Link, relay, carrier, cfg.DialContext, log)
			if err != nil {
				return nil, fmt.Errorf("client: relay %s: %w", relay, err)
			}
			if d != nil {
				cands = append(cands, pick.Candidate{Relay: relay, Dialer: d})
			}
		}
	}
	if len(cands) == 0 {
		return nil, errors.New("client: the link offers no carrier this client supports (tls, quic)")
	}
	p, err := pick.New(pick.Config{Candidates: cands, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c := &Client{
		cfg: cfg, log: log, picker: p,
		mtReplay: antireplay.Cache{TTL: mtproxyReplayTTL, MaxEntries: mtproxyReplayMax},
	}
	if err := c.initBootstrap(); err != nil {
		p.Close()
		return nil, err
	}
	return c, nil
}

// dialerFor returns the dialer for relay over carrier with l's name, pin
// and key, or nil for a carrier this client does not know.
func dialerFor(l *link.Link, relay, carrier string, dial func(ctx context.Context, network, addr string) (net.Conn, error), log *slog.Logger) (transport.Dialer, error) {
	switch carrier {
	case link.CarrierTLS:
		return tlscarrier.NewDialer(tlscarrier.ClientConfig{
			Addr:        relay,
			ServerName:  l.SNI,
			Pin:         l.Pin,
			Key:         auth.Key(l.Key),
			AuthKey:     l.AuthKey,
			DialContext: dial,
			Logger:      log,
		})
	case link.CarrierQUIC:
		return quiccarrier.NewDialer(quiccarrier.ClientConfig{
			Addr:       relay,
			ServerName: l.SNI,
			Pin:        l.Pin,
			Key:        auth.Key(l.Key),
			AuthKey:    l.AuthKey,
			Logger:     log,
		})
	}
	return nil, nil
}

// Run listens on cfg.Listen (and cfg.MTProxyListen), calls cfg.Ready, and
// serves SOCKS5 (and the MTProxy front) until ctx is done or a listener
// fails for good. It listens on every address before calling Ready, so a
// busy port is reported before the user is shown any address.
//
// Run refuses with [ErrOpenProxy] to serve SOCKS5 without SocksUsers on an
// address that is not a loopback one, unless cfg.AllowNoAuth is set.
func Run(ctx context.Context, cfg Config) error {
	if cfg.MTProxyListen != "" && cfg.MTProxySecret.Key.IsZero() {
		return errors.New("client: Config.MTProxySecret: required with MTProxyListen")
	}
	c, err := New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	ln, err := listen(c.cfg.Listen)
	if err != nil {
		return fmt.Errorf("client: SOCKS5: %w", err)
	}
	if len(c.cfg.SocksUsers) == 0 && !c.cfg.AllowNoAuth && !isLoopback(ln.Addr()) {
		ln.Close()
		return fmt.Errorf("client: Config.Listen %s: %w", ln.Addr(), ErrOpenProxy)
	}
	var mln net.Listener
	var mtAddr net.Addr
	if c.cfg.MTProxyListen != "" {
		if mln, err = listen(c.cfg.MTProxyListen); err != nil {
			ln.Close()
			return fmt.Errorf("client: MTProxy: %w", err)
		}
		mtAddr = mln.Addr()
	}
	if c.cfg.Ready != nil {
		if err := c.cfg.Ready(ln.Addr(), mtAddr); err != nil {
			ln.Close()
			if mln != nil {
				mln.Close()
			}
			return err
		}
	}
	attrs := []any{"socks", ln.Addr().String(), "relays", len(c.cfg.Link.Relays)}
	if mtAddr != nil {
		attrs = append(attrs, "mtproxy", mtAddr.String())
	}
	c.log.Info("client started", attrs...)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var mtErr error
	if mln != nil {
		wg.Go(func() {
			mtErr = c.ServeMTProxy(ctx, mln, c.cfg.MTProxySecret)
			cancel()
		})
	}
	err = c.ServeSOCKS(ctx, ln)
	cancel()
	wg.Wait()
	return errors.Join(err, mtErr)
}

// listen listens on addr over TCP: over IPv4 only for an IPv4 address
// (0.0.0.0 means every IPv4 address, not every address), over both where
// addr has no host or an IPv6 or name one.
func listen(addr string) (net.Listener, error) {
	network := "tcp"
	if host, _, err := net.SplitHostPort(addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.To4() != nil && !strings.Contains(host, ":") {
			network = "tcp4"
		}
	}
	return net.Listen(network, addr)
}

// isLoopback reports whether a is a loopback address (127.0.0.0/8, ::1),
// one no other machine can reach.
func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// Close closes the session to the relay.
func (c *Client) Close() error { return c.picker.Close() }

// Active returns the session in use, or nil.
func (c *Client) Active() *pick.Active { return c.picker.Current() }

// Status describes the session in use (relay, carrier, RTT, bytes); ok is
// false when there is none. The same line is logged at Info every minute.
func (c *Client) Status(ctx context.Context) (st pick.Status, ok bool) { return c.picker.Status(ctx) }

// ServeSOCKS serves SOCKS5 on ln until ctx is done, and closes ln.
func (c *Client) ServeSOCKS(ctx context.Context, ln net.Listener) error {
	srv := &socks5.Server{Config: socks5.Config{Users: c.cfg.SocksUsers}, Logger: c.log}
	return srv.Serve(ctx, ln, c.handleSOCKS)
}

func (c *Client) handleSOCKS(ctx context.Context, conn net.Conn, req *socks5.Request) {
	target := transport.AddrTarget(req.Host, req.Port)
	st, err := c.OpenStream(ctx, target)
	if err != nil {
		c.log.Debug("stream not opened", "dc", target.String(), "err", err)
		socks5.Reply(conn, replyCode(err), nil)
		return
	}
	if err := socks5.Reply(conn, socks5.ReplySucceeded, nil); err != nil {
		st.Close()
		return
	}
	transport.Splice(conn, st, nil)
}

// replyCode maps a stream-opening error to the SOCKS5 reply the app sees.
func replyCode(err error) socks5.ReplyCode {
	var se *transport.StatusError
	if !errors.As(err, &se) {
		return socks5.ReplyGeneralFailure
	}
	switch se.Status {
	case transport.StatusNotAllowed:
		return socks5.ReplyNotAllowed
	case transport.StatusUnreachable:
		return socks5.ReplyHostUnreachable
	case transport.StatusRefused:
		return socks5.ReplyConnectionRefused
	case transport.StatusTimeout:
		return socks5.ReplyTTLExpired
	default:
		return socks5.ReplyGeneralFailure
	}
}

// OpenStream opens a stream to target through the relay and waits for the
// relay's answer. A *transport.StatusError says the relay refused it, and
// an error wrapping [transport.ErrKeyRefused] that no relay accepted the
// link's key (the client then also logs, at most once a minute, that the
// user needs a new link). If the session turns out to be dead, it is
// replaced and the open retried once (once more if the relay had closed
// it in an orderly way, as it closes an idle session); any other failure
// leaves the session alone.
func (c *Client) OpenStream(ctx context.Context, target transport.Target) (transport.Stream, error) {
	st, err := c.openStream(ctx, target)
	if err != nil && errors.Is(err, transport.ErrKeyRefused) {
		c.keyRefused(err)
	}
	return st, err
}

// keyRefused tells the user, at most every keyRefusedEvery, that the
// relay refused the link's key and what to do about it.
func (c *Client) keyRefused(err error) {
	now := time.Now().UnixNano()
	last := c.refusedLog.Load()
	if last != 0 && now-last < int64(keyRefusedEvery) || !c.refusedLog.CompareAndSwap(last, now) {
		return
	}
	c.log.Error("the relay did not accept this link's key: it was revoked or has expired, or the link is wrong "+
		"(or this device's clock is more than two minutes off, or something in the path answered in the relay's place). "+
		"Check the clock, then ask whoever gave you the link for a new one and run: merpati import NEW-LINK",
		"err", err)
}

func (c *Client) openStream(ctx context.Context, target transport.Target) (transport.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.OpenTimeout)
	defer cancel()
	var lastErr error
	retries := 1         // a session that died: replace it and try once more
	orderlyRetry := true // and once more if the relay had closed it in an orderly way
	for {
		a, err := c.session(ctx)
		if err != nil && c.rescue(ctx) {
			// No known relay works, but the bootstrap list named new
			// ones: try them.
			a, err = c.picker.Session(ctx)
		}
		if err != nil {
			return nil, err
		}
		// A relay that stops answering is noticed here, within about
		// a second, and the open retried on the next one.
		stopWatch := c.picker.Watch(a)
		st, sessionErr, err := c.open(ctx, a.Session, target)
		stopWatch()
		if err == nil {
			return st, nil
		}
		// A stream refused because the session is closing (an HTTP/2
		// GOAWAY: the relay never saw it) fails with net.ErrClosed.
		dead := (sessionErr || errors.Is(err, net.ErrClosed)) && ctx.Err() == nil
		select {
		case <-a.Session.Done():
			dead = true
		default:
		}
		if !dead {
			// The relay refused or reset this stream; the session is
			// fine and stays.
			return nil, err
		}
		// The session died under us (it may not know yet: a stream
		// that cannot even be opened or written is proof enough):
		// replace it and try once more. If the relay closed it in an
		// orderly way (an idle session's close crossing this open),
		// Fail only drops it, quietly, and that costs no retry.
		orderly := errors.Is(err, transport.ErrOrderlyClose) || errors.Is(a.Session.Err(), transport.ErrOrderlyClose)
		c.picker.Fail(a, err)
		lastErr = err
		switch {
		case orderly && orderlyRetry:
			orderlyRetry = false
		case retries > 0:
			retries--
		default:
			return nil, lastErr
		}
	}
}

// open opens one stream on s and waits for the relay's answer. sessionErr
// reports that the failure came before the relay could have answered
// (opening or writing the stream), which means the session is broken.
func (c *Client) open(ctx context.Context, s transport.Session, target transport.Target) (st transport.Stream, sessionErr bool, err error) {
	st, err = s.OpenStream(ctx)
	if err != nil {
		return nil, true, err
	}
	stop := context.AfterFunc(ctx, func() { st.SetDeadline(time.Now()) })
	defer stop()
	req := transport.OpenRequest{Target: target, Padding: rand.IntN(64)}
	if _, err := req.WriteTo(st); err != nil {
		st.Close()
		return nil, true, fmt.Errorf("open stream: %w", err)
	}
	if _, err := transport.ReadOpenReply(st); err != nil {
		st.Close()
		return nil, false, err
	}
	if !stop() {
		st.Close()
		return nil, false, ctx.Err()
	}
	return st, false, nil
}
