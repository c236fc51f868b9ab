// Package dnsserver is the authoritative DNS server behind
// `merpati-relay dns`: it publishes signed relay lists (package
// [relaylist]) as TXT records under one zone, so that clients whose relays
// are all blocked can fetch new ones through any recursive resolver.
//
// # Names
//
// The server publishes lists for audiences: each audience is the set of
// people whose share links carry one bootstrap key (bk=), and has one
// signed list, or several for anti-enumeration buckets (below). Under the
// zone ZONE it answers:
//
//	ZONE            SOA, NS (authoritative apex)
//	<ns>.ZONE       A/AAAA glue for in-zone name servers (Config.NSAddrs)
//	<label>.ZONE    TXT chunk i of an audience's list sealed for period p
//
// where label, the chunk's size and its content are derived from the
// audience's bootstrap key and the day p as described in package
// [relaylist] (section "DNS publication"): labels drawn from a model of
// English words (5 to 16 letters, now and then with a digit or two or a
// hyphen, as host names have) that change daily, and chunks that are
// XChaCha20-Poly1305 ciphertext in standard base64, 272 to 408
// characters in TXT strings of 255 and one shorter. There is no index
// record, no fixed label and no plaintext: without a link of the
// audience nobody can derive the names, enumerate them or read what they
// hold, and no simple pattern on a name tells it from a word. What stays
// visible is what any TXT lookup shows: the zone, and answers of a few
// hundred base64 characters; whoever knows the zone (from one link) sees
// every query under it. The server answers the names of the previous,
// current and next day (clients' clocks are not exact); two chunks whose
// labels collide are both answered under the name. Every other name in
// the zone is NXDOMAIN.
//
// For zones of up to 44 characters every chunk answer fits 512 bytes, so
// it needs no EDNS0 and no DPI engine flags it as oversized (nDPI does
// above 512). Longer zones make larger answers: up to the EDNS0 payload
// size of 1232 bytes (DNS Flag Day 2020) they go over UDP; clients that
// offer less (no EDNS0 means 512) get a truncated answer with the TC bit
// and retry over TCP; the server listens on TCP on the
// same address. TTLs are [Config.TTL] (default one hour), shortened so
// that no cache keeps a chunk past its list's expiry or past the last
// day the server answers its name.
//
// # Anti-enumeration buckets
//
// An audience can have several signed lists, one per bucket, each with a
// few of the operator's relays (`merpati-relay list sign --buckets`). A
// requester asking for the chunks of day p is served the list of bucket
// H(zone, audience, p, network) mod len(lists), where network is the
// client subnet from an EDNS Client Subnet option (RFC 7871) if the
// resolver sends one, else the resolver's own address, each cut to /24
// (IPv4) or /48 (IPv6). So one network sees one bucket of its audience
// per day, and walking every bucket takes many networks or much time. All
// buckets of an audience are sealed to the same number of chunks; a fetch
// whose chunks come from two buckets (a resolver that changes networks
// mid-fetch) fails authentication and the client tries again. The lists
// are signed offline by the operator: the DNS server holds the audiences'
// bootstrap keys (it must, to seal and name) but never the list key, so
// taking it over does not let anyone sign a list.
//
// # Response rate limiting
//
// Over UDP an answer is up to 14 times larger than its query, so a server
// that answered everything would amplify floods sent with a victim's
// address as source. As BIND's RRL does, the server answers each requester
// network (IPv4 /24, IPv6 /56) at most [Config.RateLimit] times a second
// (default 20, with a burst of one second's worth) and drops the rest,
// except that every [Config.Slip]-th (default 2nd) is answered with an
// empty truncated answer: a real resolver in that network then asks again
// over TCP, which is not limited and which a spoofed source cannot use.
// A client fetching a list needs a handful of queries, and resolvers
// cache the answers.
//
// The server is authoritative only: no recursion (RA clear), AA set,
// REFUSED outside the zone, NXDOMAIN or NODATA with the SOA in the
// authority section (RFC 2308), as recursive resolvers such as unbound
// expect of a stub or delegated zone.
package dnsserver

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/relaylist"
)

// MaxUDPSize is the largest UDP answer the server sends, the EDNS0
// payload size recommended by DNS Flag Day 2020.
const MaxUDPSize = 1232

// An Audience is what the server publishes for the holders of one
// bootstrap key.
type Audience struct {
	// Key is the audience's bootstrap key (bk= in its share links).
	Key [link.BootstrapKeySize]byte
	// Lists are signed relay lists, one per anti-enumeration bucket. At
	// least one is required.
	Lists [][]byte
}

// Config configures a [Server].
type Config struct {
	// Zone is the zone the server is authoritative for, e.g.
	// "b.example.net". Required.
	Zone string
	// Audiences are the lists to publish, each for the holders of one
	// bootstrap key. At least one is required; two may not share a key.
	Audiences []Audience
	// NS are the zone's name server names; empty means "ns.<Zone>".
	NS []string
	// NSAddrs are the addresses served as A/AAAA for in-zone NS names.
	NSAddrs []netip.Addr
	// TTL is the TTL of chunk, SOA, NS and glue records; zero means 1
	// hour. Chunk TTLs are cut short so that no cache keeps a chunk past
	// its list's expiry or past the last day its name is answered.
	TTL time.Duration
	// NegativeTTL is the TTL of negative answers (the SOA minimum); zero
	// means 5 minutes.
	NegativeTTL time.Duration
	// RateLimit is how many UDP responses per second one requester
	// network (IPv4 /24, IPv6 /56) gets, with a burst of one second's
	// worth, as with BIND's response rate limiting (RRL): a 60-byte query
	// draws up to 500 bytes or more, which a flood with a spoofed source would
	// otherwise turn on its victim. Zero means [DefaultRateLimit] (20);
	// negative turns the limit off. TCP is never limited.
	RateLimit int
	// Slip is how often a response over the limit is sent all the same as
	// a truncated answer with no records (TC set, no larger than the
	// query), so that a real resolver in a limited network retries over
	// TCP: every Slip-th one, the others being dropped. Zero means
	// [DefaultSlip] (2); negative means never.
	Slip int
	// RateLimitExempt lists requester networks never rate-limited. Nil
	// means loopback (127.0.0.0/8, ::1), where a resolver on the same
	// machine sends from and which a spoofed packet cannot come from; an
	// empty, non-nil list exempts nobody.
	RateLimitExempt []netip.Prefix
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// Logger receives the server's logs; nil discards. Requester
	// addresses and bootstrap keys are never logged.
	Logger *slog.Logger
}

// A Server answers DNS queries for one zone. It is safe for concurrent
// use; [Server.SetAudiences] swaps the published lists while serving.
type Server struct {
	cfg  Config
	zone string // canonical FQDN, lowercase
	ns   []string
	log  *slog.Logger
	pub  atomic.Pointer[published]
	rrl  *limiter // nil: no rate limit

	mu    sync.Mutex                // serializes building names
	names atomic.Pointer[nameTable] // names of pub around the current period
}

// published is one set of audiences as served.
type published struct {
	auds   []*audience
	serial uint32
}

type audience struct {
	a       *relaylist.Audience
	lists   [][]byte
	expires []time.Time // per bucket
}

// nameTable maps the labels of the periods around period to their chunks
// (usually one; more when derived labels collide).
type nameTable struct {
	pub    *published
	period int64
	labels map[string][]*chunk
}

// chunk is chunk i of an audience's lists in one period.
type chunk struct {
	aud    *audience
	period int64
	txt    [][]string // per bucket
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Zone == "" {
		return nil, errors.New("dnsserver: Config.Zone: required")
	}
	zone := dns.CanonicalName(cfg.Zone)
	if _, ok := dns.IsDomainName(zone); !ok || zone == "." {
		return nil, fmt.Errorf("dnsserver: Config.Zone: %q is not a domain name", cfg.Zone)
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = 5 * time.Minute
	}
	if cfg.TTL <= 0 {
		cfg.TTL = time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RateLimit == 0 {
		cfg.RateLimit = DefaultRateLimit
	}
	if cfg.Slip == 0 {
		cfg.Slip = DefaultSlip
	}
	if cfg.RateLimitExempt == nil {
		cfg.RateLimitExempt = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	s := &Server{cfg: cfg, zone: zone, log: cfg.Logger}
	if cfg.RateLimit > 0 {
		s.rrl = newLimiter(cfg.RateLimit, max(cfg.Slip, 0), cfg.RateLimitExempt)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	for _, n := range cfg.NS {
		n = dns.CanonicalName(n)
		if _, ok := dns.IsDomainName(n); !ok {
			return nil, fmt.Errorf("dnsserver: Config.NS: %q is not a domain name", n)
		}
		s.ns = append(s.ns, n)
	}
	if len(s.ns) == 0 {
		s.ns = []string{"ns." + zone}
	}
	if err := s.SetAudiences(cfg.Audiences); err != nil {
		return nil, err
	}
	return s, nil
}

// SetAudiences replaces the published lists. Each list must parse as a
// relay list and fit [relaylist.MaxChunks] chunks; signatures are not
// checked (the server does not know the list key).
func (s *Server) SetAudiences(auds []Audience) error {
	if len(auds) == 0 {
		return errors.New("dnsserver: Config.Audiences: at least one required")
	}
	p := &published{serial: uint32(s.cfg.Now().Unix())}
	period := relaylist.PeriodOf(s.cfg.Now())
	for i, in := range auds {
		if in.Key == [link.BootstrapKeySize]byte{} {
			return fmt.Errorf("dnsserver: audience %d: zero bootstrap key", i)
		}
		for _, prev := range auds[:i] {
			if prev.Key == in.Key {
				return fmt.Errorf("dnsserver: audience %d: same bootstrap key as another", i)
			}
		}
		if len(in.Lists) == 0 {
			return fmt.Errorf("dnsserver: audience %d: no list", i)
		}
		a := &audience{a: relaylist.NewAudience(in.Key)}
		for b, data := range in.Lists {
			l, err := relaylist.ParseUnverified(data)
			if err != nil {
				return fmt.Errorf("dnsserver: audience %s list %d: %w", a.a.ID(), b, err)
			}
			n, err := a.a.Chunks(period, len(data))
			if err != nil {
				return fmt.Errorf("dnsserver: audience %s list %d: %w", a.a.ID(), b, err)
			}
			a.lists = append(a.lists, data)
			a.expires = append(a.expires, l.Expires)
			if !l.Expires.After(s.cfg.Now()) {
				s.log.Warn("serving an expired list", "audience", a.a.ID(), "bucket", b, "seq", l.Seq, "expired", l.Expires)
			}
			s.log.Info("list published", "audience", a.a.ID(), "bucket", b, "seq", l.Seq, "entries", len(l.Entries),
				"bytes", len(data), "chunks", n, "expires", l.Expires)
		}
		p.auds = append(p.auds, a)
	}
	t, err := s.build(p, period)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.pub.Store(p)
	s.names.Store(t)
	s.mu.Unlock()
	return nil
}

// table returns the names of the current publication for the periods
// around the current one, building them when the period or the
// publication changed.
func (s *Server) table() (*nameTable, error) {
	period := relaylist.PeriodOf(s.cfg.Now())
	if t := s.names.Load(); t != nil && t.period == period && t.pub == s.pub.Load() {
		return t, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pub.Load()
	if t := s.names.Load(); t != nil && t.period == period && t.pub == p {
		return t, nil
	}
	t, err := s.build(p, period)
	if err != nil {
		return nil, err
	}
	s.names.Store(t)
	return t, nil
}

// build seals p's lists for the periods around period and names their
// chunks.
func (s *Server) build(p *published, period int64) (*nameTable, error) {
	t := &nameTable{pub: p, period: period, labels: make(map[string][]*chunk)}
	for _, a := range p.auds {
		for q := period - 1; q <= period+1; q++ {
			n := 0
			for _, data := range a.lists {
				c, err := a.a.Chunks(q, len(data))
				if err != nil {
					return nil, fmt.Errorf("dnsserver: audience %s: %w", a.a.ID(), err)
				}
				n = max(n, c)
			}
			cs := make([]*chunk, n)
			for i := range cs {
				cs[i] = &chunk{aud: a, period: q}
			}
			for _, data := range a.lists {
				sealed, err := a.a.Seal(q, data, n)
				if err != nil {
					return nil, fmt.Errorf("dnsserver: audience %s: %w", a.a.ID(), err)
				}
				for i, c := range sealed {
					cs[i].txt = append(cs[i].txt, relaylist.EncodeTXT(c))
				}
			}
			for i, c := range cs {
				label := a.a.Label(q, i)
				if len(t.labels[label]) > 0 {
					// Two derived labels collide (about one chance in
					// 10^8 per pair): the name is answered with both
					// chunks, and clients keep the one that opens.
					s.log.Debug("chunk label shared", "audience", a.a.ID(), "period", q, "chunk", i)
				}
				t.labels[label] = append(t.labels[label], c)
			}
		}
	}
	return t, nil
}

// Zone returns the zone served, as a canonical FQDN.
func (s *Server) Zone() string { return s.zone }

// ServeDNS answers one query, within the UDP response rate limit
// ([Config.RateLimit]); it implements [dns.Handler].
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	ua, udp := w.RemoteAddr().(*net.UDPAddr)
	if udp && s.rrl != nil {
		now := s.cfg.Now()
		v := s.rrl.check(ua.AddrPort().Addr(), now)
		if v != verdictSend {
			if n := s.rrl.report(now); n > 0 {
				s.log.Info("DNS responses rate-limited", "responses", n)
			}
		}
		switch v {
		case verdictDrop:
			return
		case verdictSlip:
			m := new(dns.Msg)
			m.SetReply(req)
			m.Truncated = true
			if err := w.WriteMsg(m); err != nil {
				s.log.Debug("write answer", "err", err)
			}
			return
		}
	}
	m := s.Answer(req, w.RemoteAddr(), udp)
	if err := w.WriteMsg(m); err != nil {
		s.log.Debug("write answer", "err", err)
	}
}

// Answer builds the answer to req from a resolver at from (used for
// buckets only). For UDP (udp true) it truncates the answer to the
// requester's EDNS0 payload size (512 without EDNS0, at most
// [MaxUDPSize]) and sets TC when records had to be dropped.
func (s *Server) Answer(req *dns.Msg, from net.Addr, udp bool) *dns.Msg {
	m := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery {
		m.SetRcode(req, dns.RcodeNotImplemented)
		return m
	}
	if len(req.Question) != 1 {
		m.SetRcode(req, dns.RcodeFormatError)
		return m
	}
	m.SetReply(req)
	m.RecursionAvailable = false
	size := dns.MinMsgSize
	var ecs *dns.EDNS0_SUBNET
	if opt := req.IsEdns0(); opt != nil {
		if opt.Version() != 0 {
			// RFC 6891 section 6.1.3: BADVERS, with our OPT.
			m.SetRcode(req, dns.RcodeBadVers)
			m.SetEdns0(MaxUDPSize, false)
			return m
		}
		size = max(dns.MinMsgSize, min(int(opt.UDPSize()), MaxUDPSize))
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_SUBNET); ok {
				ecs = e
			}
		}
	}
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	if !dns.IsSubDomain(s.zone, name) || (q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY) {
		m.SetRcode(req, dns.RcodeRefused)
		m.Authoritative = false
	} else {
		m.Authoritative = true
		s.answerZone(m, q, name, from, ecs)
	}
	if req.IsEdns0() != nil {
		m.SetEdns0(MaxUDPSize, false)
		if ecs != nil {
			// RFC 7871 section 7.2.1: echo the option with the scope
			// we used, so the resolver caches per network.
			m.IsEdns0().Option = append(m.IsEdns0().Option, ecs)
		}
	}
	if udp {
		m.Truncate(size)
	}
	m.Compress = true
	return m
}

func (s *Server) answerZone(m *dns.Msg, q dns.Question, name string, from net.Addr, ecs *dns.EDNS0_SUBNET) {
	p := s.pub.Load()
	rel := strings.TrimSuffix(strings.TrimSuffix(name, s.zone), ".")
	ttl := uint32(s.cfg.TTL / time.Second)
	want := func(t uint16) bool { return q.Qtype == t || q.Qtype == dns.TypeANY }
	exists := false
	switch {
	case rel == "":
		exists = true
		if want(dns.TypeSOA) {
			m.Answer = append(m.Answer, s.soa(p))
		}
		if want(dns.TypeNS) {
			for _, n := range s.ns {
				m.Answer = append(m.Answer, &dns.NS{Hdr: s.hdr(s.zone, dns.TypeNS, ttl), Ns: n})
			}
			m.Extra = append(m.Extra, s.glue(ttl)...)
		}
	case !strings.Contains(rel, "."):
		t, err := s.table()
		if err != nil {
			s.log.Warn("names not built", "err", err)
			m.Rcode = dns.RcodeServerFailure
			return
		}
		cs := t.labels[rel]
		if len(cs) == 0 {
			break
		}
		exists = true
		if want(dns.TypeTXT) {
			scope := 0
			for _, c := range cs {
				b, sc := s.bucket(c, from, ecs)
				scope = max(scope, sc)
				m.Answer = append(m.Answer, &dns.TXT{Hdr: s.hdr(name, dns.TypeTXT, s.chunkTTL(c, b)), Txt: c.txt[b]})
			}
			if ecs != nil {
				// RFC 7871 section 7.2.1: the prefix the answer depends
				// on (zero: the same for everyone).
				ecs.SourceScope = uint8(scope)
			}
		}
	}
	if !exists {
		for _, rr := range s.glue(ttl) {
			if rr.Header().Name == name {
				exists = true
				if want(rr.Header().Rrtype) {
					m.Answer = append(m.Answer, rr)
				}
			}
		}
	}
	if !exists {
		m.Rcode = dns.RcodeNameError
	}
	if len(m.Answer) == 0 {
		// RFC 2308 section 3: the SOA in the authority section carries
		// the negative TTL.
		m.Ns = append(m.Ns, s.soa(p))
	}
}

// chunkTTL is Config.TTL cut so that no cache keeps c past its list's
// expiry or past the last period its name is answered in (the one after
// its own).
func (s *Server) chunkTTL(c *chunk, bucket int) uint32 {
	now := s.cfg.Now()
	left := min(c.aud.expires[bucket].Sub(now), relaylist.PeriodStart(c.period+2).Sub(now))
	return uint32(max(0, min(s.cfg.TTL, left)) / time.Second)
}

func (s *Server) hdr(name string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

func (s *Server) soa(p *published) dns.RR {
	neg := uint32(s.cfg.NegativeTTL / time.Second)
	return &dns.SOA{
		Hdr:     s.hdr(s.zone, dns.TypeSOA, neg),
		Ns:      s.ns[0],
		Mbox:    "hostmaster." + s.zone,
		Serial:  p.serial,
		Refresh: 3600,
		Retry:   600,
		Expire:  604800,
		Minttl:  neg,
	}
}

// glue returns A/AAAA records for the in-zone NS names.
func (s *Server) glue(ttl uint32) []dns.RR {
	var rrs []dns.RR
	for _, n := range s.ns {
		if !dns.IsSubDomain(s.zone, n) {
			continue
		}
		for _, a := range s.cfg.NSAddrs {
			if a.Is4() || a.Is4In6() {
				rrs = append(rrs, &dns.A{Hdr: s.hdr(n, dns.TypeA, ttl), A: net.IP(a.Unmap().AsSlice())})
			} else {
				rrs = append(rrs, &dns.AAAA{Hdr: s.hdr(n, dns.TypeAAAA, ttl), AAAA: net.IP(a.AsSlice())})
			}
		}
	}
	return rrs
}

// bucket picks the list of c's audience a requester sees; see the
// package documentation. It also returns the ECS scope of that choice:
// the prefix length it used, or 0 when c has one list.
func (s *Server) bucket(c *chunk, from net.Addr, ecs *dns.EDNS0_SUBNET) (int, int) {
	if len(c.txt) == 1 {
		return 0, 0
	}
	var addr netip.Addr
	if ecs != nil {
		addr, _ = netip.AddrFromSlice(ecs.Address)
	} else if ap, err := netip.ParseAddrPort(from.String()); err == nil {
		addr = ap.Addr()
	}
	addr = addr.Unmap()
	bits := 24
	if addr.Is6() {
		bits = 48
	}
	if ecs != nil {
		bits = min(bits, int(ecs.SourceNetmask))
	}
	prefix, _ := addr.Prefix(bits)
	h := sha256.New()
	h.Write([]byte(s.zone))
	h.Write([]byte(c.aud.a.ID()))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(c.period)))
	pb, _ := prefix.MarshalBinary()
	h.Write(pb)
	return int(binary.BigEndian.Uint64(h.Sum(nil)) % uint64(len(c.txt))), bits
}

// Listen opens a UDP socket and a TCP listener on the same address. A port
// of 0 picks one free for both.
func Listen(addr string) (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 10 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dnsserver: listen udp %s: %w", addr, err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = err
		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			break
		}
	}
	return nil, nil, fmt.Errorf("dnsserver: listen tcp %s: %w", addr, lastErr)
}

// Serve answers queries on pc (UDP) and ln (TCP), either of which may be
// nil, until ctx is done, and then closes them.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	var servers []*dns.Server
	if pc != nil {
		servers = append(servers, &dns.Server{PacketConn: pc, Handler: s, UDPSize: MaxUDPSize})
	}
	if ln != nil {
		servers = append(servers, &dns.Server{Listener: ln, Handler: s})
	}
	if len(servers) == 0 {
		return errors.New("dnsserver: Serve: no socket")
	}
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(servers))
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan struct{})
		wg.Go(func() {
			defer close(done)
			if err := srv.ActivateAndServe(); err != nil {
				errc <- err
				cancel() // one socket failed: stop the other too
			}
		})
		wg.Go(func() {
			select {
			case <-started:
			case <-done:
				return
			}
			select {
			case <-ctx.Done():
				srv.Shutdown()
			case <-done:
			}
		})
	}
	s.log.Info("DNS serving", "zone", s.zone)
	wg.Wait()
	select {
	case err := <-errc:
		if parent.Err() == nil {
			return fmt.Errorf("dnsserver: %w", err)
		}
	default:
	}
	return nil
}
