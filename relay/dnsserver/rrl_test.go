package dnsserver

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/merpati/merpati/transport/relaylist"
)

// TestRateLimitUDP floods the server with 100 chunk queries from one
// network, over real UDP: it answers 20 in full, every second one of the
// rest with an empty truncated answer no larger than the query, and
// nothing else; TCP still answers in full.
func TestRateLimitUDP(t *testing.T) {
	checkLeaks(t)
	data := signed(t, 20, 7)
	now := time.Now() // frozen: no tokens come back during the test
	_, addr := startServer(t, Config{Zone: "b.merpati.test", Audiences: audiences(data),
		Now: func() time.Time { return now }, RateLimitExempt: []netip.Prefix{}})
	name := audA.Name(relaylist.PeriodOf(now), 0, "b.merpati.test")

	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const queries = 100
	q := new(dns.Msg)
	q.SetQuestion(name, dns.TypeTXT)
	q.SetEdns0(1232, false)
	var qlen int
	for i := range queries {
		q.Id = uint16(i + 1)
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		qlen = len(b)
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	full, truncated, fullBytes, truncBytes := 0, 0, 0, 0
	buf := make([]byte, 65536)
	for {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		switch {
		case r.Truncated && len(r.Answer) == 0:
			truncated++
			truncBytes += n
			if n > qlen {
				t.Errorf("truncated answer of %d bytes to a query of %d", n, qlen)
			}
		case !r.Truncated && len(r.Answer) == 1:
			full++
			fullBytes += n
		default:
			t.Errorf("unexpected answer: %v", r)
		}
	}
	t.Logf("%d queries of %d bytes (%d bytes): %d full answers (%d bytes), %d truncated (%d bytes), %d dropped; amplification %.2fx",
		queries, qlen, queries*qlen, full, fullBytes, truncated, truncBytes, queries-full-truncated,
		float64(fullBytes+truncBytes)/float64(queries*qlen))
	if full != DefaultRateLimit || truncated != (queries-DefaultRateLimit)/DefaultSlip {
		t.Errorf("%d full and %d truncated answers, want %d and %d", full, truncated,
			DefaultRateLimit, (queries-DefaultRateLimit)/DefaultSlip)
	}
	// The way out for a real resolver: TCP is not limited.
	if r := query(t, addr, "tcp", name, dns.TypeTXT, 0); r.Truncated || len(r.Answer) != 1 {
		t.Errorf("over TCP: truncated %v, %d answers", r.Truncated, len(r.Answer))
	}
}

func TestLimiter(t *testing.T) {
	now := time.Unix(1700000000, 0)
	count := func(l *limiter, addr string, n int) (sent int) {
		for range n {
			if l.check(netip.MustParseAddr(addr), now) == verdictSend {
				sent++
			}
		}
		return sent
	}
	l := newLimiter(20, 2, nil)
	if n := count(l, "192.0.2.1", 30); n != 20 {
		t.Errorf("first network: %d of 30 answered, want 20", n)
	}
	if n := count(l, "192.0.2.77", 5); n != 0 {
		t.Errorf("same /24: %d answered, want 0", n)
	}
	if n := count(l, "::ffff:192.0.2.9", 5); n != 0 {
		t.Errorf("same /24, IPv4-mapped: %d answered, want 0", n)
	}
	if n := count(l, "198.51.100.1", 20); n != 20 {
		t.Errorf("another network: %d of 20 answered, want 20", n)
	}
	if n := count(l, "2001:db8:0:1::1", 20) + count(l, "2001:db8:0:ff::2", 20); n != 20 {
		t.Errorf("one IPv6 /56: %d of 40 answered, want 20", n)
	}
	if n := count(l, "2001:db8:0:100::1", 20); n != 20 {
		t.Errorf("next IPv6 /56: %d of 20 answered, want 20", n)
	}
	// Tokens come back at the rate, up to one second's worth.
	now = now.Add(250 * time.Millisecond)
	if n := count(l, "192.0.2.1", 20); n != 5 {
		t.Errorf("after 250ms: %d answered, want 5", n)
	}
	now = now.Add(time.Hour)
	if n := count(l, "192.0.2.1", 30); n != 20 {
		t.Errorf("after an hour: %d of 30 answered, want 20", n)
	}
	// Slip: every second limited response is a truncated one.
	verdicts := map[verdict]int{}
	for range 10 {
		verdicts[l.check(netip.MustParseAddr("192.0.2.1"), now)]++
	}
	if verdicts[verdictSlip] != 5 || verdicts[verdictDrop] != 5 {
		t.Errorf("10 limited responses: %v, want 5 slipped and 5 dropped", verdicts)
	}
	// The default exempts loopback.
	s, err := New(Config{Zone: "b.test", Audiences: audiences(signed(t, 1, 1))})
	if err != nil {
		t.Fatal(err)
	}
	if n := count(s.rrl, "127.0.0.1", 100) + count(s.rrl, "::1", 100); n != 200 {
		t.Errorf("loopback: %d of 200 answered", n)
	}
	if n := count(s.rrl, "203.0.113.5", 100); n != DefaultRateLimit {
		t.Errorf("default limit: %d of 100 answered", n)
	}
	if s, _ := New(Config{Zone: "b.test", Audiences: audiences(signed(t, 1, 1)), RateLimit: -1}); s.rrl != nil {
		t.Error("negative RateLimit did not turn the limit off")
	}
}
