package dnsserver

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/merpati/merpati/transport/relaylist"
)

// FuzzAnswer feeds arbitrary queries to the server: it must never panic,
// and every answer must pack and, over UDP, fit the requester's size.
func FuzzAnswer(f *testing.F) {
	data := signed(f, 5, 1)
	s, err := New(Config{Zone: "b.test", Audiences: audiences(data, signed(f, 2, 2))})
	if err != nil {
		f.Fatal(err)
	}
	p := relaylist.PeriodOf(time.Now())
	for _, q := range []struct {
		name string
		t    uint16
		edns uint16
	}{
		{audA.Name(p, 0, "b.test"), dns.TypeTXT, 1232},
		{audA.Name(p+1, 0, "b.test"), dns.TypeTXT, 0},
		{"b.test.", dns.TypeANY, 4096},
		{"x.y.b.test.", dns.TypeNS, 512},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.t)
		if q.edns > 0 {
			m.SetEdns0(q.edns, false)
		}
		b, _ := m.Pack()
		f.Add(b, true)
	}
	from := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53}
	f.Fuzz(func(t *testing.T, b []byte, udp bool) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return
		}
		m := s.Answer(req, from, udp)
		out, err := m.Pack()
		if err != nil {
			t.Fatalf("answer does not pack: %v\n%v", err, m)
		}
		limit := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			limit = max(limit, min(int(opt.UDPSize()), MaxUDPSize))
		}
		if udp && len(out) > limit {
			t.Fatalf("UDP answer of %d bytes, limit %d", len(out), limit)
		}
	})
}
