// Package bootstrap fetches a signed relay list over DNS when every relay
// the client knows is blocked.
//
// The list is published by `merpati-relay dns` (package relay/dnsserver)
// as TXT records under the link's bootstrap domains: an index record at
// _n.DOMAIN and base64 chunks at <i>.<hash>.DOMAIN. A [Fetcher] asks
// several resolvers at once, staggered (the first at once, the next after
// [Config.Stagger] or as soon as an earlier one fails), over the
// transports a censor is least likely to block all of:
//
//	udp://HOST:PORT     plain DNS over UDP, retried over TCP when truncated
//	                    (also the meaning of a bare "HOST" or "HOST:PORT")
//	tcp://HOST:PORT     plain DNS over TCP
//	tls://HOST:PORT     DNS over TLS (RFC 7858), default port 853
//	https://HOST/PATH   DNS over HTTPS (RFC 8484): GET with the wire-format
//	                    query, HTTP/2 over a TLS connection whose hello
//	                    copies Chromium's (transport/tlscarrier)
//
// The first list that arrives whole, matches its index hash, verifies with
// the link's list key, has not expired and does not roll back the
// sequence number of the cached list wins. It is cached (when
// [Config.CachePath] is set), so later fetches reject anything older.
//
// Resolvers see the bootstrap domain; the list itself is public to anyone
// who asks from the same network (see relay/dnsserver for buckets). The
// resolver cannot forge or alter a list, only withhold it.
package bootstrap

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	utls "github.com/refraction-networking/utls"
	"golang.org/x/net/http2"

	"github.com/merpati/merpati/transport/atomicfile"
	"github.com/merpati/merpati/transport/relaylist"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// Errors of a fetch, wrapped with details.
var (
	// ErrNoList means no resolver returned a list: the index record is
	// missing, or every attempt failed. The error joins each attempt's.
	ErrNoList = errors.New("bootstrap: no relay list found")
	// ErrAnswer means a resolver's answer was unusable: an error rcode, no
	// TXT record, or a chunk that is not base64.
	ErrAnswer = errors.New("bootstrap: bad DNS answer")
)

// Config configures a [Fetcher].
type Config struct {
	// Domains are the bootstrap domains (the link's Bootstrap). Required.
	Domains []string
	// ListKey is the ed25519 key that signs the list (the link's
	// ListKey). Required.
	ListKey ed25519.PublicKey
	// Resolvers to ask, in order of preference, in the forms listed in
	// the package documentation. Required.
	Resolvers []string
	// CachePath is the file that keeps the last accepted list; empty
	// means no cache (rollback protection then lasts only as long as the
	// Fetcher).
	CachePath string
	// Stagger is the delay before the next attempt starts while earlier
	// ones are still running; zero means 300 ms.
	Stagger time.Duration
	// Timeout bounds one attempt (one resolver, one domain); zero means
	// 10 seconds.
	Timeout time.Duration
	// UDPSize is the EDNS0 payload size offered over UDP; zero means
	// 1232, and 512 or less sends no EDNS0 option at all (so long answers
	// come back truncated and are retried over TCP).
	UDPSize uint16
	// TLSConfig verifies DoT and DoH servers (RootCAs; ServerName
	// overrides the resolver's host name); nil means the system roots.
	TLSConfig *tls.Config
	// DialContext opens connections to resolvers; nil means a
	// net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now returns the current time for the expiry check; nil means
	// time.Now.
	Now func() time.Time
	// Logger receives the fetcher's logs; nil discards.
	Logger *slog.Logger
}

// A Fetcher fetches and verifies relay lists. It is safe for concurrent
// use.
type Fetcher struct {
	cfg       Config
	log       *slog.Logger
	resolvers []resolver

	mu     sync.Mutex
	minSeq uint64
	cached *relaylist.List
}

// New checks cfg, reads the cache if there is one, and returns a Fetcher.
// An unreadable or invalid cache file is logged and ignored.
func New(cfg Config) (*Fetcher, error) {
	if len(cfg.Domains) == 0 {
		return nil, errors.New("bootstrap: Config.Domains: required")
	}
	if len(cfg.ListKey) != ed25519.PublicKeySize {
		return nil, errors.New("bootstrap: Config.ListKey: required (32 bytes)")
	}
	if len(cfg.Resolvers) == 0 {
		return nil, errors.New("bootstrap: Config.Resolvers: at least one required")
	}
	if cfg.Stagger <= 0 {
		cfg.Stagger = 300 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.UDPSize == 0 {
		cfg.UDPSize = 1232
	}
	if cfg.DialContext == nil {
		var d net.Dialer
		cfg.DialContext = d.DialContext
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &Fetcher{cfg: cfg, log: cfg.Logger}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	for _, s := range cfg.Resolvers {
		r, err := f.parseResolver(s)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: Config.Resolvers: %w", err)
		}
		f.resolvers = append(f.resolvers, r)
	}
	if cfg.CachePath != "" {
		data, err := os.ReadFile(cfg.CachePath)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			f.log.Warn("relay list cache unreadable", "err", err)
		default:
			// The zero Now skips the expiry check: an expired cached list
			// still sets the floor for sequence numbers.
			l, err := relaylist.Decode(data, relaylist.Verify{Key: cfg.ListKey})
			if err != nil {
				f.log.Warn("relay list cache ignored", "err", err)
				break
			}
			f.minSeq = l.Seq
			f.cached = l
		}
	}
	return f, nil
}

// Cached returns the cached list if it has not expired, or nil.
func (f *Fetcher) Cached() *relaylist.List {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cached == nil || !f.cfg.Now().Before(f.cached.Expires) {
		return nil
	}
	return f.cached
}

// Fetch asks the resolvers for the list, as described in the package
// documentation, and returns the first valid one. It caches the list
// before returning it.
func (f *Fetcher) Fetch(ctx context.Context) (*relaylist.List, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f.mu.Lock()
	minSeq := f.minSeq
	f.mu.Unlock()

	type attempt struct {
		r      resolver
		domain string
	}
	var attempts []attempt
	for _, r := range f.resolvers {
		for _, d := range f.cfg.Domains {
			attempts = append(attempts, attempt{r, dns.Fqdn(strings.ToLower(d))})
		}
	}
	type result struct {
		data []byte
		l    *relaylist.List
		err  error
	}
	results := make(chan result, len(attempts))
	failed := make(chan struct{}, len(attempts))
	var wg sync.WaitGroup
	defer f.Close() // runs after wg.Wait: no attempt is left using a connection
	defer wg.Wait()
	start := time.Now()
	var errs []error
	pending := 0
	launched := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for launched < len(attempts) || pending > 0 {
		var next <-chan time.Time
		if launched < len(attempts) {
			next = timer.C
		}
		select {
		case <-next:
		case <-failed:
			if launched < len(attempts) {
				timer.Reset(0)
			}
			continue
		case res := <-results:
			pending--
			if res.err != nil {
				errs = append(errs, res.err)
				failed <- struct{}{}
				continue
			}
			f.mu.Lock()
			if res.l.Seq < f.minSeq {
				f.mu.Unlock()
				errs = append(errs, fmt.Errorf("%w: got %d, already accepted %d", relaylist.ErrRollback, res.l.Seq, f.minSeq))
				failed <- struct{}{}
				continue
			}
			f.minSeq = res.l.Seq
			f.cached = res.l
			f.mu.Unlock()
			f.log.Info("relay list fetched", "seq", res.l.Seq, "entries", len(res.l.Entries),
				"expires", res.l.Expires, "took", time.Since(start).Round(time.Millisecond))
			if err := f.save(res.data); err != nil {
				f.log.Warn("relay list not cached", "err", err)
			}
			return res.l, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrNoList, errors.Join(append(errs, ctx.Err())...))
		}
		a := attempts[launched]
		launched++
		pending++
		timer.Reset(f.cfg.Stagger)
		wg.Go(func() {
			actx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
			defer cancel()
			data, l, err := f.fetchFrom(actx, a.r, a.domain, minSeq)
			if err != nil {
				err = fmt.Errorf("%s via %s: %w", strings.TrimSuffix(a.domain, "."), a.r.name(), err)
				f.log.Debug("bootstrap attempt failed", "err", err)
			}
			results <- result{data, l, err}
		})
	}
	return nil, fmt.Errorf("%w: %w", ErrNoList, errors.Join(errs...))
}

// fetchFrom fetches the list of zone from one resolver.
func (f *Fetcher) fetchFrom(ctx context.Context, r resolver, zone string, minSeq uint64) ([]byte, *relaylist.List, error) {
	txt, err := f.txt(ctx, r, relaylist.IndexLabel+"."+zone)
	if err != nil {
		return nil, nil, fmt.Errorf("index: %w", err)
	}
	ix, err := relaylist.ParseIndex(txt)
	if err != nil {
		return nil, nil, err
	}
	chunks := make([][]byte, ix.Chunks)
	errc := make(chan error, ix.Chunks)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i := range ix.Chunks {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			name := ix.ChunkName(i, zone)
			txt, err := f.txt(ctx, r, name)
			if err == nil {
				chunks[i], err = base64.StdEncoding.DecodeString(txt)
				if err != nil {
					err = fmt.Errorf("%w: %s: chunk is not base64", ErrAnswer, name)
				}
			}
			if err != nil {
				errc <- fmt.Errorf("chunk %d: %w", i, err)
			}
		})
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, nil, err
	}
	data := make([]byte, 0, ix.Size)
	for _, c := range chunks {
		data = append(data, c...)
	}
	if err := ix.Check(data); err != nil {
		return nil, nil, err
	}
	l, err := relaylist.Decode(data, relaylist.Verify{Key: f.cfg.ListKey, Now: f.cfg.Now(), MinSeq: minSeq})
	if err != nil {
		return nil, nil, err
	}
	return data, l, nil
}

// txt queries name's TXT record through r and returns its strings joined.
func (f *Fetcher) txt(ctx context.Context, r resolver, name string) (string, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeTXT)
	q.RecursionDesired = true
	resp, err := r.exchange(ctx, q)
	if err != nil {
		return "", err
	}
	if resp.Rcode != dns.RcodeSuccess {
		return "", fmt.Errorf("%w: %s: %s", ErrAnswer, name, dns.RcodeToString[resp.Rcode])
	}
	for _, rr := range resp.Answer {
		if t, ok := rr.(*dns.TXT); ok && strings.EqualFold(t.Hdr.Name, name) {
			return strings.Join(t.Txt, ""), nil
		}
	}
	return "", fmt.Errorf("%w: %s: no TXT record", ErrAnswer, name)
}

// save writes data to the cache file atomically, mode 0600.
func (f *Fetcher) save(data []byte) error {
	if f.cfg.CachePath == "" {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(f.cfg.CachePath), 0o700); err != nil {
		return err
	}
	return atomicfile.Write(f.cfg.CachePath, data, 0o600)
}

// A resolver sends one query and returns the answer.
type resolver interface {
	exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error)
	name() string
	// closeIdle closes connections kept for later queries.
	closeIdle()
}

func (f *Fetcher) parseResolver(s string) (resolver, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		scheme, rest = "udp", s
	}
	withPort := func(def string) (string, error) {
		if _, _, err := net.SplitHostPort(rest); err == nil {
			return rest, nil
		}
		h := strings.Trim(rest, "[]")
		if h == "" || strings.ContainsAny(h, "/?#") {
			return "", fmt.Errorf("%q: bad address", s)
		}
		return net.JoinHostPort(h, def), nil
	}
	switch scheme {
	case "udp", "tcp":
		addr, err := withPort("53")
		if err != nil {
			return nil, err
		}
		return &plain{f: f, addr: addr, tcpOnly: scheme == "tcp"}, nil
	case "tls":
		addr, err := withPort("853")
		if err != nil {
			return nil, err
		}
		return &dot{f: f, addr: addr}, nil
	case "https":
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("%q: bad URL", s)
		}
		return f.newDoH(u), nil
	default:
		return nil, fmt.Errorf("%q: unknown scheme (want udp, tcp, tls or https)", s)
	}
}

// tlsConfig returns the TLS settings for a server named host.
func (f *Fetcher) tlsConfig(host string, alpn ...string) *tls.Config {
	cfg := &tls.Config{}
	if f.cfg.TLSConfig != nil {
		cfg = f.cfg.TLSConfig.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	cfg.NextProtos = alpn
	cfg.MinVersion = tls.VersionTLS12
	return cfg
}

// exchangeConn sends q on c and reads the answer, checking its ID.
func exchangeConn(ctx context.Context, c net.Conn, q *dns.Msg, udpSize uint16) (*dns.Msg, error) {
	co := &dns.Conn{Conn: c, UDPSize: udpSize}
	cl := &dns.Client{UDPSize: udpSize}
	if _, ok := c.(net.PacketConn); !ok {
		cl.Net = "tcp"
	}
	r, _, err := cl.ExchangeWithConnContext(ctx, q, co)
	return r, err
}

// plain is DNS over UDP (with TCP on truncation) or over TCP.
type plain struct {
	f       *Fetcher
	addr    string
	tcpOnly bool
}

func (p *plain) name() string {
	if p.tcpOnly {
		return "tcp://" + p.addr
	}
	return "udp://" + p.addr
}

func (p *plain) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	if !p.tcpOnly {
		q := q.Copy()
		if p.f.cfg.UDPSize > dns.MinMsgSize {
			q.SetEdns0(p.f.cfg.UDPSize, false)
		}
		r, err := p.once(ctx, "udp", q)
		if err != nil || !r.Truncated {
			return r, err
		}
		p.f.log.Debug("truncated over UDP, retrying over TCP", "name", q.Question[0].Name)
	}
	q = q.Copy()
	q.SetEdns0(1232, false)
	return p.once(ctx, "tcp", q)
}

func (p *plain) closeIdle() {}

func (p *plain) once(ctx context.Context, network string, q *dns.Msg) (*dns.Msg, error) {
	c, err := p.f.cfg.DialContext(ctx, network, p.addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return exchangeConn(ctx, c, q, p.f.cfg.UDPSize)
}

// dot is DNS over TLS (RFC 7858). It keeps one connection open for the
// queries of a fetch (section 3.4: reuse connections), one query at a
// time, and dials again once if the server closed it.
type dot struct {
	f    *Fetcher
	addr string

	mu   sync.Mutex
	conn net.Conn
}

func (d *dot) name() string { return "tls://" + d.addr }

func (d *dot) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	q = q.Copy()
	q.SetEdns0(1232, false)
	d.mu.Lock()
	defer d.mu.Unlock()
	for try := 0; ; try++ {
		reused := d.conn != nil
		if d.conn == nil {
			c, err := d.dial(ctx)
			if err != nil {
				return nil, err
			}
			d.conn = c
		}
		r, err := exchangeConn(ctx, d.conn, q, 0)
		if err == nil {
			return r, nil
		}
		d.conn.Close()
		d.conn = nil
		if !reused || try > 0 || ctx.Err() != nil {
			return nil, err
		}
	}
}

func (d *dot) dial(ctx context.Context) (net.Conn, error) {
	raw, err := d.f.cfg.DialContext(ctx, "tcp", d.addr)
	if err != nil {
		return nil, err
	}
	host, _, _ := net.SplitHostPort(d.addr)
	c := tls.Client(raw, d.f.tlsConfig(host, "dot"))
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	return c, nil
}

func (d *dot) closeIdle() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
}

// doh is DNS over HTTPS (RFC 8484) over HTTP/2.
type doh struct {
	f  *Fetcher
	u  *url.URL
	hc *http.Client
}

func (f *Fetcher) newDoH(u *url.URL) *doh {
	// net/http speaks HTTP/2 only over a *tls.Conn, not over uTLS, so
	// the x/net transport is the way to put HTTP/2 on a Chrome hello.
	//lint:ignore SA1019 see above
	t := &http2.Transport{
		//lint:ignore SA1019 see above
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			raw, err := f.cfg.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			host, _, _ := net.SplitHostPort(addr)
			sc := f.tlsConfig(host)
			uc, err := tlscarrier.ChromeClient(raw, &utls.Config{
				ServerName: sc.ServerName,
				RootCAs:    sc.RootCAs,
				NextProtos: []string{"h2", "http/1.1"},
			})
			if err == nil {
				err = uc.HandshakeContext(ctx)
			}
			if err == nil && uc.ConnectionState().NegotiatedProtocol != "h2" {
				err = fmt.Errorf("server did not negotiate h2 (got %q)", uc.ConnectionState().NegotiatedProtocol)
			}
			if err != nil {
				raw.Close()
				return nil, fmt.Errorf("tls: %w", err)
			}
			return uc, nil
		},
	}
	return &doh{f: f, u: u, hc: &http.Client{Transport: t}}
}

func (d *doh) name() string { return d.u.String() }

func (d *doh) closeIdle() { d.hc.CloseIdleConnections() }

func (d *doh) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	q = q.Copy()
	q.Id = 0 // RFC 8484 section 4.1: ID 0 for cache friendliness
	q.SetEdns0(1232, false)
	wire, err := q.Pack()
	if err != nil {
		return nil, err
	}
	u := *d.u
	v := u.Query()
	v.Set("dns", base64.RawURLEncoding.EncodeToString(wire))
	u.RawQuery = v.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/dns-message")
	resp, err := d.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, dns.MaxMsgSize))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: HTTP %s", ErrAnswer, resp.Status)
	}
	r := new(dns.Msg)
	if err := r.Unpack(body); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrAnswer, err)
	}
	return r, nil
}

// Close closes the connections kept to DoT and DoH resolvers. The
// Fetcher stays usable.
func (f *Fetcher) Close() {
	for _, r := range f.resolvers {
		r.closeIdle()
	}
}
