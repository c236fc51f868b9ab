package dnsserver

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/merpati/merpati/transport/relaylist"
)

var listKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))

// Two audiences' bootstrap keys.
var (
	keyA = [32]byte(bytes.Repeat([]byte{0xa}, 32))
	keyB = [32]byte(bytes.Repeat([]byte{0xb}, 32))
	audA = relaylist.NewAudience(keyA)
	audB = relaylist.NewAudience(keyB)
)

// audiences publishes lists as audience A's buckets.
func audiences(lists ...[]byte) []Audience {
	return []Audience{{Key: keyA, Lists: lists}}
}

// signed returns a signed list of n entries.
func signed(t testing.TB, n int, seq uint64) []byte {
	t.Helper()
	l := &relaylist.List{Seq: seq, Expires: time.Now().Add(time.Hour)}
	for i := range n {
		e := relaylist.Entry{Relays: []string{fmt.Sprintf("relay%d.example:443", i)}, SNI: "www.example.com", Carriers: []string{"tls"}}
		e.Pin[0], e.Key[0], e.Key[1] = 1, 2, byte(i)
		l.Entries = append(l.Entries, e)
	}
	data, err := relaylist.Sign(l, listKey)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// startServer serves lists on a loopback port and returns the address.
func startServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Serve(ctx, pc, ln); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return s, pc.LocalAddr().String()
}

func query(t *testing.T, addr, net, name string, qtype uint16, edns uint16) *dns.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	if edns > 0 {
		q.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: net, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], net, err)
	}
	return r
}

func TestAnswers(t *testing.T) {
	checkLeaks(t)
	data := signed(t, 20, 7) // several chunks
	other := signed(t, 3, 8)
	now := time.Now()
	p := relaylist.PeriodOf(now)
	n, _ := audA.Chunks(p, len(data))
	if n < 2 {
		t.Fatalf("list has %d chunks, want several", n)
	}
	s, addr := startServer(t, Config{Zone: "B.Merpati.Test",
		Audiences: []Audience{{Key: keyA, Lists: [][]byte{data}}, {Key: keyB, Lists: [][]byte{other}}},
		NS:        []string{"ns1.b.merpati.test"}, NSAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	zone := "b.merpati.test."
	upper := strings.ToUpper(audA.Label(p, 0)) + ".B.merpati.TEST."

	for _, tt := range []struct {
		name    string
		qname   string
		qtype   uint16
		rcode   int
		aa      bool
		answers int
		soaAuth bool
	}{
		{"apex SOA", zone, dns.TypeSOA, dns.RcodeSuccess, true, 1, false},
		{"apex NS", zone, dns.TypeNS, dns.RcodeSuccess, true, 1, false},
		{"apex A nodata", zone, dns.TypeA, dns.RcodeSuccess, true, 0, true},
		{"glue", "ns1." + zone, dns.TypeA, dns.RcodeSuccess, true, 1, false},
		{"chunk 0", audA.Name(p, 0, zone), dns.TypeTXT, dns.RcodeSuccess, true, 1, false},
		{"chunk 0 case", upper, dns.TypeTXT, dns.RcodeSuccess, true, 1, false},
		{"chunk A nodata", audA.Name(p, 0, zone), dns.TypeA, dns.RcodeSuccess, true, 0, true},
		{"last chunk", audA.Name(p, n-1, zone), dns.TypeTXT, dns.RcodeSuccess, true, 1, false},
		{"chunk past end", audA.Name(p, n, zone), dns.TypeTXT, dns.RcodeNameError, true, 0, true},
		{"previous day", audA.Name(p-1, 0, zone), dns.TypeTXT, dns.RcodeSuccess, true, 1, false},
		{"next day", audA.Name(p+1, 0, zone), dns.TypeTXT, dns.RcodeSuccess, true, 1, false},
		{"two days ago", audA.Name(p-2, 0, zone), dns.TypeTXT, dns.RcodeNameError, true, 0, true},
		{"other audience", audB.Name(p, 0, zone), dns.TypeTXT, dns.RcodeSuccess, true, 1, false},
		{"unknown audience", relaylist.NewAudience([32]byte{1}).Name(p, 0, zone), dns.TypeTXT, dns.RcodeNameError, true, 0, true},
		{"old index", "_n." + zone, dns.TypeTXT, dns.RcodeNameError, true, 0, true},
		{"below a chunk", "x." + audA.Name(p, 0, zone), dns.TypeTXT, dns.RcodeNameError, true, 0, true},
		{"nxdomain", "nope." + zone, dns.TypeTXT, dns.RcodeNameError, true, 0, true},
		{"out of zone", "example.com.", dns.TypeA, dns.RcodeRefused, false, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := query(t, addr, "udp", tt.qname, tt.qtype, 1232)
			if r.Rcode != tt.rcode || r.Authoritative != tt.aa || len(r.Answer) != tt.answers || r.RecursionAvailable {
				t.Errorf("rcode %s aa %v ra %v answers %d, want %s aa %v answers %d\n%v",
					dns.RcodeToString[r.Rcode], r.Authoritative, r.RecursionAvailable, len(r.Answer),
					dns.RcodeToString[tt.rcode], tt.aa, tt.answers, r)
			}
			if got := len(r.Ns) == 1 && r.Ns[0].Header().Rrtype == dns.TypeSOA; got != tt.soaAuth {
				t.Errorf("SOA in authority: %v, want %v", got, tt.soaAuth)
			}
		})
	}

	// The chunks put together open to the list, over UDP with EDNS0 and
	// without (every answer fits 512 bytes on the wire), and over TCP.
	var chunks [][]byte
	for i := range n {
		name := audA.Name(p, i, zone)
		r := query(t, addr, "udp", name, dns.TypeTXT, 1232)
		if r.Truncated || r.Len() > MaxUDPSize || len(r.Answer) != 1 {
			t.Fatalf("chunk %d: %d bytes, truncated %v", i, r.Len(), r.Truncated)
		}
		c, err := relaylist.DecodeTXT(r.Answer[0].(*dns.TXT).Txt)
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		if ttl := r.Answer[0].Header().Ttl; ttl == 0 || ttl > 3600 {
			t.Errorf("chunk %d: TTL %d", i, ttl)
		}
		chunks = append(chunks, c)
		if n := wireLen(t, r); n > dns.MinMsgSize {
			t.Errorf("chunk %d: %d bytes on the wire, more than 512", i, n)
		}
		r = query(t, addr, "udp", name, dns.TypeTXT, 0)
		if r.Truncated || len(r.Answer) != 1 || wireLen(t, r) > dns.MinMsgSize {
			t.Errorf("chunk %d without EDNS0: %d bytes, truncated %v", i, wireLen(t, r), r.Truncated)
		}
		r = query(t, addr, "tcp", name, dns.TypeTXT, 0)
		if r.Truncated || len(r.Answer) != 1 {
			t.Errorf("chunk %d over TCP: truncated %v, %d answers", i, r.Truncated, len(r.Answer))
		}
	}
	got, err := audA.Open(p, chunks)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("open: %v", err)
	}
	if _, err := audB.Open(p, chunks); err == nil {
		t.Fatal("another audience's key opened the list")
	}

	// A new publication replaces the names' contents.
	if err := s.SetAudiences([]Audience{{Key: keyA, Lists: [][]byte{other}}}); err != nil {
		t.Fatal(err)
	}
	n2, _ := audA.Chunks(p, len(other))
	chunks = nil
	for i := range n2 {
		r := query(t, addr, "udp", audA.Name(p, i, zone), dns.TypeTXT, 1232)
		c, err := relaylist.DecodeTXT(r.Answer[0].(*dns.TXT).Txt)
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, c)
	}
	if got, err := audA.Open(p, chunks); err != nil || !bytes.Equal(got, other) {
		t.Fatalf("after SetAudiences: %v", err)
	}
	if r := query(t, addr, "udp", audB.Name(p, 0, zone), dns.TypeTXT, 1232); r.Rcode != dns.RcodeNameError {
		t.Errorf("audience B after it was dropped: %s", dns.RcodeToString[r.Rcode])
	}
}

// wireLen is r's length as the server sends it (compressed).
func wireLen(t *testing.T, r *dns.Msg) int {
	t.Helper()
	r = r.Copy()
	r.Compress = true
	b, err := r.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return len(b)
}

// TestLongZone: under a long zone chunk answers exceed 512 bytes; without
// EDNS0 they come back truncated, and TCP works.
func TestLongZone(t *testing.T) {
	checkLeaks(t)
	zone := strings.Repeat("long-zone.", 10) + "merpati.test."
	_, addr := startServer(t, Config{Zone: zone, Audiences: audiences(signed(t, 5, 1))})
	p := relaylist.PeriodOf(time.Now())
	truncated := 0
	n, _ := audA.Chunks(p, len(signed(t, 5, 1)))
	for i := range n {
		name := audA.Name(p, i, zone)
		r := query(t, addr, "udp", name, dns.TypeTXT, 1232)
		if r.Truncated || len(r.Answer) != 1 {
			t.Errorf("chunk %d with EDNS0: truncated", i)
		}
		r = query(t, addr, "udp", name, dns.TypeTXT, 0)
		if r.Truncated {
			truncated++
			if wireLen(t, r) > dns.MinMsgSize {
				t.Errorf("truncated answer of %d bytes", wireLen(t, r))
			}
		}
		if r := query(t, addr, "tcp", name, dns.TypeTXT, 0); r.Truncated || len(r.Answer) != 1 {
			t.Errorf("chunk %d over TCP: truncated %v", i, r.Truncated)
		}
	}
	if truncated == 0 {
		t.Error("no answer truncated without EDNS0 under a long zone")
	}
}

// TestPeriods: names move with the day; the server follows its clock
// without a reload, answering yesterday's, today's and tomorrow's names,
// and no TTL outlives the last day a name is answered.
func TestPeriods(t *testing.T) {
	now := time.Date(2026, 11, 23, 23, 59, 0, 0, time.UTC)
	data := signed(t, 3, 1)
	s, err := New(Config{Zone: "b.test", Audiences: audiences(data), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ask := func(name string) *dns.Msg {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeTXT)
		return s.Answer(q, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5353}, false)
	}
	p := relaylist.PeriodOf(now)
	if r := ask(audA.Name(p-1, 0, "b.test")); len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 60 {
		t.Errorf("yesterday's name a minute before it expires: %v", r)
	}
	now = now.Add(2 * time.Minute)
	if r := ask(audA.Name(p-1, 0, "b.test")); r.Rcode != dns.RcodeNameError {
		t.Errorf("name of two days ago: %s", dns.RcodeToString[r.Rcode])
	}
	if r := ask(audA.Name(p+2, 0, "b.test")); len(r.Answer) != 1 {
		t.Errorf("tomorrow's name: %v", r)
	}
}

func TestBuckets(t *testing.T) {
	var lists [][]byte
	for i := range 4 {
		lists = append(lists, signed(t, 1+i, uint64(i+1)))
	}
	now := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	s, err := New(Config{Zone: "b.test", Audiences: audiences(lists...), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	// All buckets are sealed to the same number of chunks.
	p := relaylist.PeriodOf(now)
	n, _ := audA.Chunks(p, len(lists[3]))
	index := func(from string, ecs string) (string, *dns.EDNS0_SUBNET) {
		q := new(dns.Msg)
		q.SetQuestion(audA.Name(relaylist.PeriodOf(now), 0, "b.test"), dns.TypeTXT)
		q.SetEdns0(1232, false)
		if ecs != "" {
			p := netip.MustParsePrefix(ecs)
			fam := uint16(1)
			if p.Addr().Is6() {
				fam = 2
			}
			q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: fam,
				SourceNetmask: uint8(p.Bits()), Address: net.IP(p.Addr().AsSlice())})
		}
		r := s.Answer(q, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(from)), true)
		var echo *dns.EDNS0_SUBNET
		for _, o := range r.IsEdns0().Option {
			echo, _ = o.(*dns.EDNS0_SUBNET)
		}
		c, err := relaylist.DecodeTXT(r.Answer[0].(*dns.TXT).Txt)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := audA.Count(relaylist.PeriodOf(now), c); err != nil || got != n {
			t.Errorf("bucket sealed to %d chunks (%v), want %d", got, err, n)
		}
		return strings.Join(r.Answer[0].(*dns.TXT).Txt, ""), echo
	}
	// Same /24, same bucket; many networks spread over all buckets.
	a, _ := index("192.0.2.1:53", "")
	b, _ := index("192.0.2.200:53", "")
	if a != b {
		t.Error("one /24 sees two buckets")
	}
	seen := map[string]bool{}
	for i := range 64 {
		txt, _ := index(fmt.Sprintf("10.%d.%d.1:53", i, (i*7)%256), "")
		seen[txt] = true
	}
	if len(seen) != len(lists) {
		t.Errorf("64 networks saw %d of %d buckets", len(seen), len(lists))
	}
	// ECS wins over the resolver's address and is echoed with our scope.
	c, echo := index("198.51.100.1:53", "192.0.2.0/24")
	if c != a || echo == nil || echo.SourceScope != 24 {
		t.Errorf("ECS: bucket %q (want %q), echo %+v", c[:10], a[:10], echo)
	}
	// Another period may move the network (the chunk differs every day
	// anyway; compare which list it opens to).
	open := func() []byte {
		var chunks [][]byte
		p := relaylist.PeriodOf(now)
		n, _ := audA.Chunks(p, len(lists[3]))
		for i := range n {
			q := new(dns.Msg)
			q.SetQuestion(audA.Name(p, i, "b.test"), dns.TypeTXT)
			r := s.Answer(q, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53}, false)
			c, err := relaylist.DecodeTXT(r.Answer[0].(*dns.TXT).Txt)
			if err != nil {
				t.Fatal(err)
			}
			chunks = append(chunks, c)
		}
		l, err := audA.Open(p, chunks)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	first := open()
	moved := false
	for range 16 {
		now = now.Add(24 * time.Hour)
		if !bytes.Equal(open(), first) {
			moved = true
		}
	}
	if !moved {
		t.Error("bucket never changes between periods")
	}
}

func TestConfigErrors(t *testing.T) {
	data := signed(t, 1, 1)
	for _, tt := range []struct {
		name string
		auds []Audience
	}{
		{"none", nil},
		{"no list", []Audience{{Key: keyA}}},
		{"zero key", []Audience{{Lists: [][]byte{data}}}},
		{"same key twice", []Audience{{Key: keyA, Lists: [][]byte{data}}, {Key: keyA, Lists: [][]byte{data}}}},
		{"not a list", []Audience{{Key: keyA, Lists: [][]byte{[]byte("MRL1 garbage")}}}},
	} {
		if _, err := New(Config{Zone: "b.test", Audiences: tt.auds}); err == nil {
			t.Errorf("%s: New succeeded", tt.name)
		}
	}
}

// checkLeaks fails t if goroutines started during the test outlive it.
// Call it first, so its cleanup runs after every other.
func checkLeaks(t *testing.T) {
	t.Helper()
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) })
}

// TestSharedLabel: two audiences whose chunk 0 labels collide on one
// day (found by search; derived labels collide about once in 10^8 pairs)
// are both answered under the name, and the ECS scope is that of the
// bucketed one, whichever comes first.
func TestSharedLabel(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	p := relaylist.PeriodOf(now)
	keyX := [32]byte{0x77, 7297 & 0xff, 7297 >> 8}
	keyY := [32]byte{0x77, 14944 & 0xff, 14944 >> 8}
	audX, audY := relaylist.NewAudience(keyX), relaylist.NewAudience(keyY)
	name := audX.Name(p, 0, "b.test")
	if other := audY.Name(p, 0, "b.test"); other != name {
		t.Fatalf("labels %s and %s do not collide: search again for two keys that do", name, other)
	}
	bucketsX := [][]byte{signed(t, 4, 1), signed(t, 9, 2)}
	listY := signed(t, 6, 3)
	var nX int
	for _, l := range bucketsX {
		c, _ := audX.Chunks(p, len(l))
		nX = max(nX, c)
	}
	var wantX [][]byte
	for _, l := range bucketsX {
		chunks, err := audX.Seal(p, l, nX)
		if err != nil {
			t.Fatal(err)
		}
		wantX = append(wantX, chunks[0])
	}
	nY, _ := audY.Chunks(p, len(listY))
	chunksY, err := audY.Seal(p, listY, nY)
	if err != nil {
		t.Fatal(err)
	}
	for _, order := range [][]Audience{
		{{Key: keyX, Lists: bucketsX}, {Key: keyY, Lists: [][]byte{listY}}},
		{{Key: keyY, Lists: [][]byte{listY}}, {Key: keyX, Lists: bucketsX}},
	} {
		s, err := New(Config{Zone: "b.test", Audiences: order, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeTXT)
		q.SetEdns0(1232, false)
		q.IsEdns0().Option = append(q.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1,
			SourceNetmask: 24, Address: net.IPv4(198, 51, 100, 0).To4()})
		r := s.Answer(q, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53}, false)
		var got [][]byte
		for _, rr := range r.Answer {
			c, err := relaylist.DecodeTXT(rr.(*dns.TXT).Txt)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, c)
		}
		if len(got) != 2 {
			t.Fatalf("%d TXT records under the shared name, want 2", len(got))
		}
		hasX := bytes.Equal(got[0], wantX[0]) || bytes.Equal(got[0], wantX[1]) || bytes.Equal(got[1], wantX[0]) || bytes.Equal(got[1], wantX[1])
		hasY := bytes.Equal(got[0], chunksY[0]) || bytes.Equal(got[1], chunksY[0])
		if !hasX || !hasY {
			t.Errorf("shared name answers audience X's chunk %v, Y's %v", hasX, hasY)
		}
		var ecs *dns.EDNS0_SUBNET
		for _, o := range r.IsEdns0().Option {
			if e, ok := o.(*dns.EDNS0_SUBNET); ok {
				ecs = e
			}
		}
		if ecs == nil || ecs.SourceScope != 24 {
			t.Errorf("ECS scope %v, want 24 (one of the chunks depends on the network)", ecs)
		}
	}
}
