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
	ix := relaylist.IndexOf(data)
	if ix.Chunks < 3 {
		t.Fatalf("list has %d chunks, want several", ix.Chunks)
	}
	_, addr := startServer(t, Config{Zone: "B.Merpati.Test", Lists: [][]byte{data},
		NS: []string{"ns1.b.merpati.test"}, NSAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	zone := "b.merpati.test."

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
		{"index", "_n." + zone, dns.TypeTXT, dns.RcodeSuccess, true, 1, false},
		{"index case", "_N.B.merpati.TEST.", dns.TypeTXT, dns.RcodeSuccess, true, 1, false},
		{"index A nodata", "_n." + zone, dns.TypeA, dns.RcodeSuccess, true, 0, true},
		{"empty non-terminal", ix.HashLabel() + "." + zone, dns.TypeTXT, dns.RcodeSuccess, true, 0, true},
		{"chunk 0", ix.ChunkName(0, zone), dns.TypeTXT, dns.RcodeSuccess, true, 1, false},
		{"chunk past end", ix.ChunkName(ix.Chunks, zone), dns.TypeTXT, dns.RcodeNameError, true, 0, true},
		{"chunk 00", "00." + ix.HashLabel() + "." + zone, dns.TypeTXT, dns.RcodeNameError, true, 0, true},
		{"unknown hash", "0.00000000000000000000." + zone, dns.TypeTXT, dns.RcodeNameError, true, 0, true},
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

	// The chunks put together are the list, over UDP with EDNS0; without
	// EDNS0 they come back truncated and TCP works.
	r := query(t, addr, "udp", "_n."+zone, dns.TypeTXT, 1232)
	got, err := relaylist.ParseIndex(strings.Join(r.Answer[0].(*dns.TXT).Txt, ""))
	if err != nil || got != ix {
		t.Fatalf("index %v, %v; want %v", got, err, ix)
	}
	for i := range ix.Chunks {
		r := query(t, addr, "udp", ix.ChunkName(i, zone), dns.TypeTXT, 1232)
		if r.Truncated || r.Len() > MaxUDPSize {
			t.Errorf("chunk %d: %d bytes, truncated %v", i, r.Len(), r.Truncated)
		}
		r = query(t, addr, "udp", ix.ChunkName(i, zone), dns.TypeTXT, 0)
		if !r.Truncated || r.Len() > dns.MinMsgSize {
			t.Errorf("chunk %d without EDNS0: %d bytes, truncated %v", i, r.Len(), r.Truncated)
		}
		r = query(t, addr, "tcp", ix.ChunkName(i, zone), dns.TypeTXT, 0)
		if r.Truncated || len(r.Answer) != 1 {
			t.Errorf("chunk %d over TCP: truncated %v, %d answers", i, r.Truncated, len(r.Answer))
		}
	}
}

func TestBuckets(t *testing.T) {
	var lists [][]byte
	for i := range 4 {
		lists = append(lists, signed(t, 1+i, uint64(i+1)))
	}
	now := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	s, err := New(Config{Zone: "b.test", Lists: lists, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	index := func(from string, ecs string) (string, *dns.EDNS0_SUBNET) {
		q := new(dns.Msg)
		q.SetQuestion("_n.b.test.", dns.TypeTXT)
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
		return r.Answer[0].(*dns.TXT).Txt[0], echo
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
		t.Errorf("ECS: bucket %q (want %q), echo %+v", c, a, echo)
	}
	// Another period may move the network.
	moved := false
	for range 16 {
		now = now.Add(24 * time.Hour)
		if txt, _ := index("192.0.2.1:53", ""); txt != a {
			moved = true
		}
	}
	if !moved {
		t.Error("bucket never changes between periods")
	}
}

// checkLeaks fails t if goroutines started during the test outlive it.
// Call it first, so its cleanup runs after every other.
func checkLeaks(t *testing.T) {
	t.Helper()
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) })
}
