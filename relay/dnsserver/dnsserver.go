// Package dnsserver is the authoritative DNS server behind
// `merpati-relay dns`: it publishes signed relay lists (package
// [relaylist]) as TXT records under one zone, so that clients whose relays
// are all blocked can fetch new ones through any recursive resolver.
//
// # Names
//
// Under the zone ZONE the server answers:
//
//	ZONE              SOA, NS (authoritative apex)
//	<ns>.ZONE         A/AAAA glue for in-zone name servers (Config.NSAddrs)
//	_n.ZONE           TXT "v=merpati1 n=<chunks> len=<bytes> h=<hash>"
//	<i>.<hash>.ZONE   TXT chunk i (0-based) of the list named by hash
//
// hash is the first [relaylist.HashLen] bytes of the SHA-256 of the signed
// list, in lowercase hex. A chunk is [relaylist.ChunkSize] bytes of the list in standard
// base64, split into TXT strings of at most 255 characters, so every chunk
// answer (about 900 bytes) fits the EDNS0 payload size of 1232 bytes
// recommended by DNS Flag Day 2020. Clients that offer less (no EDNS0
// means 512) get a truncated answer with the TC bit and retry over TCP;
// the server listens on TCP on the same address.
//
// Chunk names are content-addressed, so resolvers can cache them for long
// ([Config.ChunkTTL]) and a client can never stitch together chunks of two
// different lists; only the small index record changes when the operator
// publishes a new list, and it has a short TTL ([Config.IndexTTL]).
//
// # Anti-enumeration buckets
//
// The server can hold several signed lists, one per bucket, each with a
// few of the operator's relays (`merpati-relay list sign --buckets`). The
// index record a requester sees names the list of the bucket
// H(zone, period, network) mod len(Lists), where network is the client
// subnet from an EDNS Client Subnet option (RFC 7871) if the resolver sends
// one, else the resolver's own address, each cut to /24 (IPv4) or /48
// (IPv6), and period is the current [Config.Period]. So one network sees
// one bucket per period, and walking every bucket takes many networks or
// much time. The lists are signed offline by the operator: the DNS server
// never holds the list key, so taking it over does not let anyone sign a
// list. Chunks of every bucket stay reachable by their hash (which is
// learned only from an index answer), so a bucket change in the middle of
// a fetch never mixes lists.
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
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/merpati/merpati/transport/relaylist"
)

// MaxUDPSize is the largest UDP answer the server sends, the EDNS0
// payload size recommended by DNS Flag Day 2020.
const MaxUDPSize = 1232

// Config configures a [Server].
type Config struct {
	// Zone is the zone the server is authoritative for, e.g.
	// "b.example.net". Required.
	Zone string
	// Lists are signed relay lists, one per anti-enumeration bucket. At
	// least one is required.
	Lists [][]byte
	// NS are the zone's name server names; empty means "ns.<Zone>".
	NS []string
	// NSAddrs are the addresses served as A/AAAA for in-zone NS names.
	NSAddrs []netip.Addr
	// Period is how long a network stays in one bucket; zero means 24
	// hours. Only used with several lists.
	Period time.Duration
	// IndexTTL is the TTL of the index record and of negative answers
	// (the SOA minimum); zero means 5 minutes.
	IndexTTL time.Duration
	// ChunkTTL is the TTL of chunk, SOA, NS and glue records; zero means
	// 1 hour.
	ChunkTTL time.Duration
	// RateLimit is how many UDP responses per second one requester
	// network (IPv4 /24, IPv6 /56) gets, with a burst of one second's
	// worth, as with BIND's response rate limiting (RRL): a 63-byte query
	// draws about 900 bytes, which a flood with a spoofed source would
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
	// addresses are never logged.
	Logger *slog.Logger
}

// A Server answers DNS queries for one zone. It is safe for concurrent
// use; [Server.SetLists] swaps the published lists while serving.
type Server struct {
	cfg  Config
	zone string // canonical FQDN, lowercase
	ns   []string
	log  *slog.Logger
	pub  atomic.Pointer[published]
	rrl  *limiter // nil: no rate limit
}

// published is one set of lists as served.
type published struct {
	buckets []*list
	byHash  map[string]*list
	serial  uint32
}

type list struct {
	index   relaylist.Index
	hash    string
	chunks  [][]string // TXT strings per chunk
	seq     uint64
	expires time.Time
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
	if cfg.Period <= 0 {
		cfg.Period = 24 * time.Hour
	}
	if cfg.IndexTTL <= 0 {
		cfg.IndexTTL = 5 * time.Minute
	}
	if cfg.ChunkTTL <= 0 {
		cfg.ChunkTTL = time.Hour
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
	if err := s.SetLists(cfg.Lists); err != nil {
		return nil, err
	}
	return s, nil
}

// SetLists replaces the published lists (one per bucket). Each must parse
// as a relay list; signatures are not checked (the server does not know
// the list key).
func (s *Server) SetLists(lists [][]byte) error {
	if len(lists) == 0 {
		return errors.New("dnsserver: Config.Lists: at least one list required")
	}
	p := &published{byHash: make(map[string]*list)}
	var maxSeq uint64
	for i, data := range lists {
		l, err := relaylist.ParseUnverified(data)
		if err != nil {
			return fmt.Errorf("dnsserver: list %d: %w", i, err)
		}
		ix := relaylist.IndexOf(data)
		pl := &list{index: ix, hash: ix.HashLabel(), seq: l.Seq, expires: l.Expires}
		for off := 0; off < len(data); off += relaylist.ChunkSize {
			enc := base64.StdEncoding.EncodeToString(data[off:min(off+relaylist.ChunkSize, len(data))])
			var strs []string
			for len(enc) > 255 {
				strs = append(strs, enc[:255])
				enc = enc[255:]
			}
			pl.chunks = append(pl.chunks, append(strs, enc))
		}
		p.buckets = append(p.buckets, pl)
		p.byHash[pl.hash] = pl
		maxSeq = max(maxSeq, l.Seq)
		if !l.Expires.After(s.cfg.Now()) {
			s.log.Warn("serving an expired list", "bucket", i, "seq", l.Seq, "expired", l.Expires)
		}
		s.log.Info("list published", "bucket", i, "seq", l.Seq, "entries", len(l.Entries),
			"bytes", len(data), "chunks", len(pl.chunks), "expires", l.Expires)
	}
	// The SOA serial follows the lists' sequence numbers so that
	// secondaries (if any) notice a new list.
	p.serial = uint32(maxSeq)
	s.pub.Store(p)
	return nil
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
	var labels []string
	if rel != "" {
		labels = strings.Split(rel, ".")
	}
	chunkTTL := uint32(s.cfg.ChunkTTL / time.Second)
	want := func(t uint16) bool { return q.Qtype == t || q.Qtype == dns.TypeANY }
	exists := false
	switch {
	case len(labels) == 0:
		exists = true
		if want(dns.TypeSOA) {
			m.Answer = append(m.Answer, s.soa(p))
		}
		if want(dns.TypeNS) {
			for _, n := range s.ns {
				m.Answer = append(m.Answer, &dns.NS{Hdr: s.hdr(s.zone, dns.TypeNS, chunkTTL), Ns: n})
			}
			m.Extra = append(m.Extra, s.glue(chunkTTL)...)
		}
	case len(labels) == 1 && labels[0] == relaylist.IndexLabel:
		exists = true
		if want(dns.TypeTXT) {
			l := p.buckets[s.bucket(p, from, ecs)]
			txt := l.index.String()
			m.Answer = append(m.Answer, &dns.TXT{Hdr: s.hdr(name, dns.TypeTXT, s.ttl(s.cfg.IndexTTL, l)), Txt: []string{txt}})
		}
	case len(labels) == 1 && p.byHash[labels[0]] != nil:
		exists = true // an empty non-terminal: NODATA
	case len(labels) == 2 && p.byHash[labels[1]] != nil:
		l := p.byHash[labels[1]]
		i, err := strconv.Atoi(labels[0])
		if err != nil || i < 0 || i >= len(l.chunks) || strconv.Itoa(i) != labels[0] {
			break
		}
		exists = true
		if want(dns.TypeTXT) {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: s.hdr(name, dns.TypeTXT, s.ttl(s.cfg.ChunkTTL, l)), Txt: l.chunks[i]})
		}
	default:
		for _, rr := range s.glue(chunkTTL) {
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

// ttl caps want so that no cache keeps a record past its list's expiry.
func (s *Server) ttl(want time.Duration, l *list) uint32 {
	left := l.expires.Sub(s.cfg.Now())
	return uint32(max(0, min(want, left)) / time.Second)
}

func (s *Server) hdr(name string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

func (s *Server) soa(p *published) dns.RR {
	neg := uint32(s.cfg.IndexTTL / time.Second)
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

// bucket picks the list a requester sees; see the package documentation.
// It narrows ecs's scope to the prefix it used.
func (s *Server) bucket(p *published, from net.Addr, ecs *dns.EDNS0_SUBNET) int {
	if len(p.buckets) == 1 {
		if ecs != nil {
			ecs.SourceScope = 0 // the answer is the same for everyone
		}
		return 0
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
		ecs.SourceScope = uint8(bits)
	}
	prefix, _ := addr.Prefix(bits)
	period := s.cfg.Now().UnixNano() / int64(s.cfg.Period)
	h := sha256.New()
	h.Write([]byte(s.zone))
	h.Write(binary.BigEndian.AppendUint64(nil, uint64(period)))
	pb, _ := prefix.MarshalBinary()
	h.Write(pb)
	return int(binary.BigEndian.Uint64(h.Sum(nil)) % uint64(len(p.buckets)))
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
