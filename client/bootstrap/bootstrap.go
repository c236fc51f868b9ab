// Package bootstrap fetches a signed relay list over DNS when every relay
// the client knows is blocked.
//
// The list is published by `merpati-relay dns` (package relay/dnsserver)
// sealed for an audience: the link carries the audience's bootstrap key
// (bk=), from which the client derives the names of the day's chunks
// under the bootstrap domain and the key that opens them (see package
// transport/relaylist, "DNS publication"). A fetch asks for chunk 0 of
// today's names (and, when that name does not exist, of yesterday's and
// tomorrow's, for clocks that are off), learns from it how many chunks
// there are, asks for the others and opens the whole. The other queries
// are spread out as a web page's lookups are, not sent in a burst: each
// waits a random time after the one before (on average [Config.Spread],
// 150 ms, so a list of a dozen chunks takes one to two seconds), with at
// most four in flight, and all of them within half of [Config.Timeout].
// Nothing the resolver or an observer sees is fixed: the names change
// daily, differ per audience and read like words, the TXT content is
// ciphertext of a few common lengths, and DoT and DoH queries are padded
// to blocks of 128 bytes (RFC 8467). When two chunks share a name (a rare
// collision of derived labels, which the server answers with both
// records), the chunks of the expected size are tried in turn.
//
// A [Fetcher] asks several resolvers, staggered (the first at once, the
// next after [Config.Stagger] or as soon as an earlier one fails; an
// attempt that has found chunk 0 holds the next one back for as long as
// its queries are spread over, plus Stagger), over these transports:
//
//	https://HOST/PATH   DNS over HTTPS (RFC 8484): GET with the wire-format
//	                    query, HTTP/2 over a TLS connection whose hello
//	                    copies Chromium's (transport/tlscarrier)
//	tls://HOST:PORT     DNS over TLS (RFC 7858), default port 853
//	udp://HOST:PORT     plain DNS over UDP, retried over TCP when truncated
//	                    (also the meaning of a bare "HOST" or "HOST:PORT")
//	tcp://HOST:PORT     plain DNS over TCP
//
// Encrypted resolvers (https, then tls) are always tried before plain
// ones, whatever the order given, and plain ones only if the caller lists
// them: the client's defaults have none, so plain DNS is used only when
// the user asks for it. A censor who watches plain DNS still sees only
// random-looking names under the bootstrap domain.
//
// The first list that opens with the audience key, verifies with the
// link's list key, has not expired and does not roll back the sequence
// number of the cached list wins. It is cached (when [Config.CachePath]
// is set), so later fetches reject anything older. A resolver cannot
// read, forge or alter a list, only withhold it.
//
// [Backoff] spaces automatic fetches while every relay stays blocked:
// exponential, jittered, capped.
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
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	utls "github.com/refraction-networking/utls"
	"golang.org/x/net/http2"

	"github.com/merpati/merpati/transport/atomicfile"
	"github.com/merpati/merpati/transport/link"
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
	// Keys are the audiences' bootstrap keys (the link's BootstrapKeys).
	// At least one is required.
	Keys [][link.BootstrapKeySize]byte
	// Resolvers to ask, in the forms listed in the package documentation.
	// Encrypted ones are asked first (https, then tls, each in the order
	// given), plain ones last. Required.
	Resolvers []string
	// CachePath is the file that keeps the last accepted list; empty
	// means no cache (rollback protection then lasts only as long as the
	// Fetcher).
	CachePath string
	// Stagger is the delay before the next attempt starts while earlier
	// ones are still running and none has found chunk 0; zero means
	// 300 ms.
	Stagger time.Duration
	// Timeout bounds one attempt (one resolver, one domain); zero means
	// 10 seconds.
	Timeout time.Duration
	// Spread is the mean of the random wait before each chunk query after
	// the first (each wait is at least a fifth of it and at most 5.2
	// times it); zero means 150 ms, negative means no wait. The waits of
	// one fetch add up to at most half of the time left to the attempt.
	Spread time.Duration
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
	// Now returns the current time, for the day's names and the expiry
	// check; nil means time.Now.
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
	auds      []*relaylist.Audience

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
	if len(cfg.Keys) == 0 {
		return nil, errors.New("bootstrap: Config.Keys: at least one bootstrap key required")
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
	if cfg.Spread == 0 {
		cfg.Spread = 150 * time.Millisecond
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
	// Encrypted transports first: a censor learns nothing from them, not
	// even that a bootstrap domain is asked.
	slices.SortStableFunc(f.resolvers, func(a, b resolver) int { return a.rank() - b.rank() })
	for _, k := range cfg.Keys {
		f.auds = append(f.auds, relaylist.NewAudience(k))
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
		aud    *relaylist.Audience
	}
	var attempts []attempt
	for _, r := range f.resolvers {
		for _, d := range f.cfg.Domains {
			for _, a := range f.auds {
				attempts = append(attempts, attempt{r, dns.Fqdn(strings.ToLower(d)), a})
			}
		}
	}
	type result struct {
		data []byte
		l    *relaylist.List
		err  error
	}
	results := make(chan result, len(attempts))
	failed := make(chan struct{}, len(attempts))
	// progress carries, once per attempt that found chunk 0, how long its
	// other queries are spread over.
	progress := make(chan time.Duration, len(attempts))
	var wg sync.WaitGroup
	defer f.Close() // runs after wg.Wait: no attempt is left using a connection
	defer wg.Wait()
	defer cancel() // before wg.Wait: the attempts still running give up at once
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
		case d := <-progress:
			// That resolver answers: give it the time its queries are
			// spread over before asking the next one too.
			if launched < len(attempts) {
				timer.Reset(d + f.cfg.Stagger)
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
			data, l, err := f.fetchFrom(actx, a.r, a.domain, a.aud, minSeq, func(d time.Duration) { progress <- d })
			if err != nil {
				err = fmt.Errorf("%s via %s: %w", strings.TrimSuffix(a.domain, "."), a.r.name(), err)
				f.log.Debug("bootstrap attempt failed", "err", err)
			}
			results <- result{data, l, err}
		})
	}
	return nil, fmt.Errorf("%w: %w", ErrNoList, errors.Join(errs...))
}

// errNoName means a chunk name does not exist (NXDOMAIN): the list is
// not published under that period's names.
var errNoName = errors.New("no such name")

// periods returns the periods whose names a fetch at now tries, in
// order: the current one, then the neighbour nearer in time, then the
// other.
func periods(now time.Time) []int64 {
	p := relaylist.PeriodOf(now)
	if now.Sub(relaylist.PeriodStart(p)) < relaylist.Period/2 {
		return []int64{p, p - 1, p + 1}
	}
	return []int64{p, p + 1, p - 1}
}

// fetchFrom fetches aud's list under zone from one resolver. It calls
// found, once chunk 0 is in, with the time its other queries are spread
// over.
func (f *Fetcher) fetchFrom(ctx context.Context, r resolver, zone string, aud *relaylist.Audience, minSeq uint64, found func(time.Duration)) ([]byte, *relaylist.List, error) {
	var (
		p     int64
		cands [][]byte
		err   error
	)
	for _, p = range periods(f.cfg.Now()) {
		cands, err = f.chunk(ctx, r, aud.Name(p, 0, zone))
		if !errors.Is(err, errNoName) {
			break
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("chunk 0: %w", err)
	}
	var n int
	for _, c := range sized(cands, aud.ChunkSize(p, 0)) {
		if n, err = aud.Count(p, c); err == nil {
			cands = [][]byte{c}
			break
		}
	}
	if err != nil {
		return nil, nil, err
	}
	chunks := make([][][]byte, n) // candidates for each chunk
	chunks[0] = cands
	waits := f.waits(ctx, n-1)
	var spread time.Duration
	for _, w := range waits {
		spread += w
	}
	found(spread)

	qctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	next := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
launch:
	for i := 1; i < n; i++ {
		next = next.Add(waits[i-1])
		timer.Reset(time.Until(next))
		select {
		case <-timer.C:
		case <-qctx.Done():
			break launch
		}
		select {
		case sem <- struct{}{}:
		case <-qctx.Done():
			break launch
		}
		// The next wait counts from now if this query waited for a
		// slot: the ones after it must not leave back to back.
		if now := time.Now(); now.After(next) {
			next = now
		}
		wg.Go(func() {
			defer func() { <-sem }()
			cs, err := f.chunk(qctx, r, aud.Name(p, i, zone))
			if err != nil {
				cancel(fmt.Errorf("chunk %d: %w", i, err))
				return
			}
			chunks[i] = sized(cs, aud.ChunkSize(p, i))
		})
	}
	wg.Wait()
	if err := context.Cause(qctx); err != nil {
		return nil, nil, err
	}
	data, err := open(aud, p, chunks)
	if err != nil {
		return nil, nil, err
	}
	l, err := relaylist.Decode(data, relaylist.Verify{Key: f.cfg.ListKey, Now: f.cfg.Now(), MinSeq: minSeq})
	if err != nil {
		return nil, nil, err
	}
	return data, l, nil
}

// waits returns the random waits before each of k chunk queries (see
// [Config.Spread]): a fifth of the mean plus an exponential wait, cut at
// five times the mean, scaled down to fit half of the time ctx has left.
func (f *Fetcher) waits(ctx context.Context, k int) []time.Duration {
	ws := make([]time.Duration, max(k, 0))
	mean := f.cfg.Spread
	if mean <= 0 || k <= 0 {
		return ws
	}
	var total time.Duration
	for i := range ws {
		ws[i] = mean/5 + min(time.Duration(rand.ExpFloat64()*float64(mean*4/5)), 5*mean)
		total += ws[i]
	}
	if dl, ok := ctx.Deadline(); ok {
		if limit := time.Until(dl) / 2; total > limit {
			for i := range ws {
				ws[i] = time.Duration(float64(ws[i]) * float64(max(limit, 0)) / float64(total))
			}
		}
	}
	return ws
}

// sized returns the chunks of cands that have size bytes, or cands
// itself if none has (so that opening fails as it should).
func sized(cands [][]byte, size int) [][]byte {
	if len(cands) < 2 {
		return cands
	}
	var ok [][]byte
	for _, c := range cands {
		if len(c) == size {
			ok = append(ok, c)
		}
	}
	if len(ok) == 0 {
		return cands
	}
	return ok
}

// maxTries bounds the combinations of candidate chunks open tries.
const maxTries = 64

// open opens the chunks of period p, trying each combination of
// candidates when some name held several (up to maxTries of them).
func open(aud *relaylist.Audience, p int64, cands [][][]byte) ([]byte, error) {
	pick := make([]int, len(cands))
	chunks := make([][]byte, len(cands))
	var err error
	for range maxTries {
		for i, c := range cands {
			chunks[i] = c[pick[i]]
		}
		var data []byte
		if data, err = aud.Open(p, chunks); err == nil {
			return data, nil
		}
		// The next combination, as an odometer counts.
		i := 0
		for ; i < len(pick); i++ {
			if pick[i]++; pick[i] < len(cands[i]) {
				break
			}
			pick[i] = 0
		}
		if i == len(pick) {
			break
		}
	}
	return nil, err
}

// chunk queries name's TXT records through r and decodes them: usually
// one, but two chunks that share a name are both answered.
func (f *Fetcher) chunk(ctx context.Context, r resolver, name string) ([][]byte, error) {
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeTXT)
	q.RecursionDesired = true
	resp, err := r.exchange(ctx, q)
	if err != nil {
		return nil, err
	}
	switch resp.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, fmt.Errorf("%w: %w", ErrAnswer, errNoName)
	default:
		return nil, fmt.Errorf("%w: %s", ErrAnswer, dns.RcodeToString[resp.Rcode])
	}
	var (
		chunks [][]byte
		bad    error
	)
	for _, rr := range resp.Answer {
		if t, ok := rr.(*dns.TXT); ok && strings.EqualFold(t.Hdr.Name, name) {
			b, err := relaylist.DecodeTXT(t.Txt)
			if err != nil {
				bad = fmt.Errorf("%w: %w", ErrAnswer, err)
				continue
			}
			chunks = append(chunks, b)
		}
	}
	switch {
	case len(chunks) > 0:
		return chunks, nil
	case bad != nil:
		return nil, bad
	}
	return nil, fmt.Errorf("%w: no TXT record", ErrAnswer)
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
	// rank orders resolvers: encrypted first.
	rank() int
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

// padBlock is the block size encrypted queries are padded to, as RFC
// 8467 section 4.1 recommends for clients.
const padBlock = 128

// padded returns a copy of q with EDNS0 (payload size 1232) and a Padding
// option (RFC 7830) that makes its wire length a multiple of padBlock, so
// that the length of an encrypted query does not tell its name's.
func padded(q *dns.Msg) *dns.Msg {
	q = q.Copy()
	q.SetEdns0(1232, false)
	opt := q.IsEdns0()
	pad := &dns.EDNS0_PADDING{}
	opt.Option = append(opt.Option, pad)
	if n := q.Len() % padBlock; n != 0 {
		pad.Padding = make([]byte, padBlock-n)
	}
	return q
}

// exchangeConn sends q on c and reads the answer, checking its ID. It
// gives up as soon as ctx is done (the DNS client heeds only its deadline).
func exchangeConn(ctx context.Context, c net.Conn, q *dns.Msg, udpSize uint16) (*dns.Msg, error) {
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
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

func (p *plain) rank() int { return 2 }

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

func (d *dot) rank() int { return 1 }

func (d *dot) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	q = padded(q)
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

func (d *doh) rank() int { return 0 }

func (d *doh) closeIdle() { d.hc.CloseIdleConnections() }

func (d *doh) exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	q = padded(q)
	q.Id = 0 // RFC 8484 section 4.1: ID 0 for cache friendliness
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
