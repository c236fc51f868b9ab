package bootstrap_test

import (
	"bytes"
	"net"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/merpati/merpati/client/bootstrap"
	"github.com/merpati/merpati/relay/dnsserver"
	"github.com/merpati/merpati/transport/relaylist"
)

// wire is what an observer of plain DNS records of one fetch.
type wire struct {
	byName  map[string][]string // TXT strings per query name
	names   []string
	txt     []string
	qsizes  []int
	asizes  []int
	times   []time.Time // when each answer passed, in order
	answers int
}

// recorder is a UDP proxy in front of a DNS server that keeps what
// passes, as a censor's capture would.
type recorder struct {
	mu  sync.Mutex
	cur *wire
}

func (rec *recorder) start(t *testing.T, upstream string) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := append([]byte(nil), buf[:n]...)
			go func() {
				c, err := net.Dial("udp", upstream)
				if err != nil {
					return
				}
				defer c.Close()
				c.Write(q)
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				ab := make([]byte, 65536)
				an, err := c.Read(ab)
				if err != nil {
					return
				}
				rec.record(q, ab[:an])
				pc.WriteTo(ab[:an], from)
			}()
		}
	}()
	return pc.LocalAddr().String()
}

func (rec *recorder) record(q, a []byte) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	w := rec.cur
	if w == nil {
		return
	}
	var qm, am dns.Msg
	var qname string
	if qm.Unpack(q) == nil && len(qm.Question) == 1 {
		qname = strings.ToLower(qm.Question[0].Name)
		w.names = append(w.names, qname)
	}
	w.qsizes = append(w.qsizes, len(q))
	w.asizes = append(w.asizes, len(a))
	w.times = append(w.times, time.Now())
	if am.Unpack(a) == nil {
		for _, rr := range am.Answer {
			if t, ok := rr.(*dns.TXT); ok {
				w.answers++
				w.txt = append(w.txt, t.Txt...)
				w.byName[qname] = t.Txt
			}
		}
	}
}

// TestWireNoRepeats fetches the lists of two audiences on one day and of
// one audience on the next, over plain UDP through a recording proxy,
// and checks that nothing an observer sees repeats: no query name, no
// TXT string, and not the same sequence of query and answer sizes; that
// nothing of the old format is left; and that the captured answers open
// to nothing without the audience's key.
func TestWireNoRepeats(t *testing.T) {
	checkLeaks(t)
	keyB := [32]byte(bytes.Repeat([]byte{0x43}, 32))
	now := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	hour := now.Add(72 * time.Hour)
	listA := makeList(t, listKey, 20, 1, hour)
	listB := makeList(t, listKey, 20, 2, hour)
	addr := startDNSConfig(t, dnsserver.Config{Zone: zone, Now: clock, Audiences: []dnsserver.Audience{
		{Key: bootKey, Lists: [][]byte{listA}}, {Key: keyB, Lists: [][]byte{listB}}}}, nil)
	rec := &recorder{}
	proxy := rec.start(t, addr)

	capture := func(name string, key [32]byte, wantSeq uint64) *wire {
		t.Helper()
		w := &wire{byName: map[string][]string{}}
		rec.mu.Lock()
		rec.cur = w
		rec.mu.Unlock()
		f := fetcher(t, []string{"udp://" + proxy}, func(c *bootstrap.Config) { c.Keys = [][32]byte{key}; c.Now = clock })
		l, _, err := fetch(t, f)
		if err != nil || l.Seq != wantSeq {
			t.Fatalf("%s: %v", name, err)
		}
		rec.mu.Lock()
		rec.cur = nil
		rec.mu.Unlock()
		if w.answers < 2 {
			t.Fatalf("%s: %d answers captured, want several", name, w.answers)
		}
		t.Logf("%s: %d queries of %v bytes, answers of %v bytes", name, len(w.names), w.qsizes, w.asizes)
		return w
	}
	caps := map[string]*wire{}
	caps["A day 1"] = capture("A day 1", bootKey, 1)
	caps["B day 1"] = capture("B day 1", keyB, 2)
	mu.Lock()
	now = now.Add(24 * time.Hour)
	mu.Unlock()
	caps["A day 2"] = capture("A day 2", bootKey, 1)

	names := map[string]string{}
	txts := map[string]string{}
	var shapes []string
	label := regexp.MustCompile(`^[a-z]{3,}(-[a-z]{3,})?[0-9]{0,2}$`)
	for c, w := range caps {
		for _, n := range w.names {
			if l := strings.TrimSuffix(n, "."+zone+"."); !label.MatchString(l) || len(l) > 16 {
				t.Errorf("%s: query name %s is not one word-like label under the zone", c, n)
			}
			if prev, ok := names[n]; ok && prev != c {
				t.Errorf("query name %s seen in %s and %s", n, prev, c)
			}
			names[n] = c
		}
		for _, s := range w.txt {
			if prev, ok := txts[s]; ok && prev != c {
				t.Errorf("TXT string seen in %s and %s", prev, c)
			}
			txts[s] = c
			if strings.Contains(s, "merpati") || strings.HasPrefix(s, "TVJMMQ") {
				t.Errorf("%s: TXT string with a fixed prefix: %.20s", c, s)
			}
		}
		shape := ""
		for i := range w.qsizes {
			shape += string(rune(w.qsizes[i])) + string(rune(w.asizes[i]))
		}
		if slices.Contains(shapes, shape) {
			t.Errorf("%s: same sequence of sizes as another capture", c)
		}
		shapes = append(shapes, shape)
	}
	// Without a link's bootstrap key, what the resolver holds is useless:
	// another audience's key and today's key on yesterday's chunks fail.
	p := relaylist.PeriodOf(now) - 1
	var chunks [][]byte
	for i := 0; ; i++ {
		txt, ok := caps["A day 1"].byName[relaylist.NewAudience(bootKey).Name(p, i, zone)]
		if !ok {
			break
		}
		c, err := relaylist.DecodeTXT(txt)
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, c)
	}
	if _, err := relaylist.NewAudience(bootKey).Open(p, chunks); err != nil {
		t.Fatalf("captured chunks do not open with their key: %v", err)
	}
	if _, err := relaylist.NewAudience(keyB).Open(p, chunks); err == nil {
		t.Error("captured chunks open with another audience's key")
	}
	if _, err := relaylist.NewAudience(bootKey).Open(p+1, chunks); err == nil {
		t.Error("captured chunks open with the next day's key")
	}
}

// TestPeriodSkew: a client whose clock is a day off still finds the
// list (yesterday's or tomorrow's names); two days off it does not.
func TestPeriodSkew(t *testing.T) {
	checkLeaks(t)
	now := time.Date(2026, 11, 23, 3, 0, 0, 0, time.UTC)
	addr := startDNSConfig(t, dnsserver.Config{Zone: zone, Now: func() time.Time { return now },
		Audiences: []dnsserver.Audience{{Key: bootKey, Lists: [][]byte{makeList(t, listKey, 2, 1, now.Add(96*time.Hour))}}}}, nil)
	for _, tt := range []struct {
		skew time.Duration
		ok   bool
	}{
		{0, true},
		{-22 * time.Hour, true}, // the server's previous day
		{26 * time.Hour, true},  // the server's next day
		{47 * time.Hour, true},  // two days on, early: tries the day before second
		{-28 * time.Hour, true}, // two days back, late: tries the day after second
		{-46 * time.Hour, true}, // two days back, early: tries the day after third
		{-74 * time.Hour, false},
		{80 * time.Hour, false},
	} {
		f := fetcher(t, []string{addr}, func(c *bootstrap.Config) { c.Now = func() time.Time { return now.Add(tt.skew) } })
		_, _, err := fetch(t, f)
		if (err == nil) != tt.ok {
			t.Errorf("clock %v off: %v", tt.skew, err)
		}
	}
}

// TestResolverOrder: encrypted resolvers are asked first, whatever the
// order given.
func TestResolverOrder(t *testing.T) {
	f := fetcher(t, []string{"udp://127.0.0.1:1", "tcp://127.0.0.1:2", "tls://127.0.0.1:3", "https://127.0.0.1:4/dns-query", "tls://127.0.0.1:5"}, nil)
	want := []string{"https://127.0.0.1:4/dns-query", "tls://127.0.0.1:3", "tls://127.0.0.1:5", "udp://127.0.0.1:1", "tcp://127.0.0.1:2"}
	if got := bootstrap.ResolverOrder(f); !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}

// TestPadding: DoT and DoH queries are padded to 128-byte blocks, so
// their length does not tell the name's.
func TestPadding(t *testing.T) {
	a := relaylist.NewAudience(bootKey)
	for i := range 20 {
		q := new(dns.Msg)
		q.SetQuestion(a.Name(int64(i), i, "x"+strings.Repeat("y", i*3)+".example"), dns.TypeTXT)
		p := bootstrap.Padded(q)
		b, err := p.Pack()
		if err != nil {
			t.Fatalf("%v: %v", p, err)
		}
		if len(b)%128 != 0 {
			t.Errorf("padded query of %d bytes", len(b))
		}
		if opt := p.IsEdns0(); opt == nil || opt.UDPSize() != 1232 {
			t.Errorf("no EDNS0 1232")
		}
	}
}

// TestSpread: the chunk queries of one fetch are spread out, not sent in
// a burst: from the first answer to the last there is at least the
// shortest wait (a fifth of the 150 ms mean) before each chunk after the
// first. (A lower bound holds however busy the machine is; before the
// waits a fetch of 16 chunks took about a millisecond.)
func TestSpread(t *testing.T) {
	checkLeaks(t)
	hour := time.Now().Add(time.Hour)
	addr := startDNS(t, makeList(t, listKey, 20, 1, hour), nil)
	rec := &recorder{}
	proxy := rec.start(t, addr)
	w := &wire{byName: map[string][]string{}}
	rec.mu.Lock()
	rec.cur = w
	rec.mu.Unlock()
	f := fetcher(t, []string{"udp://" + proxy}, func(c *bootstrap.Config) { c.Timeout = 20 * time.Second })
	if _, _, err := fetch(t, f); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	n := len(w.times)
	if n < 8 {
		t.Fatalf("%d queries, want a list of several chunks", n)
	}
	span := w.times[n-1].Sub(w.times[0])
	var gaps []time.Duration
	for i := 1; i < n; i++ {
		gaps = append(gaps, w.times[i].Sub(w.times[i-1]).Round(time.Millisecond))
	}
	t.Logf("%d queries over %v, gaps %v", n, span.Round(time.Millisecond), gaps)
	if min := time.Duration(n-1) * 150 * time.Millisecond / 5; span < min {
		t.Errorf("%d queries over %v, want at least %v", n, span, min)
	}
}

// TestStaggerWaitsForSpread: while the first resolver answers, its
// spread-out queries do not make the fetcher ask the next resolver too.
func TestStaggerWaitsForSpread(t *testing.T) {
	checkLeaks(t)
	hour := time.Now().Add(time.Hour)
	addr := startDNS(t, makeList(t, listKey, 20, 1, hour), nil)
	first, second := &recorder{}, &recorder{}
	w1, w2 := &wire{byName: map[string][]string{}}, &wire{byName: map[string][]string{}}
	first.cur, second.cur = w1, w2
	p1, p2 := first.start(t, addr), second.start(t, addr)
	f := fetcher(t, []string{"udp://" + p1, "udp://" + p2}, func(c *bootstrap.Config) {
		c.Stagger = 100 * time.Millisecond
		c.Timeout = 20 * time.Second
	})
	_, took, err := fetch(t, f)
	if err != nil {
		t.Fatal(err)
	}
	first.mu.Lock()
	second.mu.Lock()
	defer first.mu.Unlock()
	defer second.mu.Unlock()
	t.Logf("fetch took %v: %d queries to the first resolver, %d to the second", took, len(w1.names), len(w2.names))
	if took < 300*time.Millisecond || len(w1.names) < 8 {
		t.Fatalf("fetch took %v with %d queries: the test needs a spread-out fetch", took, len(w1.names))
	}
	if len(w2.names) != 0 {
		t.Errorf("the second resolver was asked %d times while the first answered", len(w2.names))
	}
}

// TestSharedLabel: two audiences whose chunk 0 labels collide today (see
// relay/dnsserver's TestSharedLabel) are both served under the name, and
// the clients of each keep their own chunk.
func TestSharedLabel(t *testing.T) {
	checkLeaks(t)
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	keyX := [32]byte{0x77, 7297 & 0xff, 7297 >> 8}
	keyY := [32]byte{0x77, 14944 & 0xff, 14944 >> 8}
	p := relaylist.PeriodOf(now)
	if x, y := relaylist.NewAudience(keyX).Label(p, 0), relaylist.NewAudience(keyY).Label(p, 0); x != y {
		t.Fatalf("labels %s and %s do not collide", x, y)
	}
	exp := now.Add(72 * time.Hour)
	clock := func() time.Time { return now }
	for _, order := range [][2][32]byte{{keyX, keyY}, {keyY, keyX}} {
		addr := startDNSConfig(t, dnsserver.Config{Zone: zone, Now: clock, Audiences: []dnsserver.Audience{
			{Key: order[0], Lists: [][]byte{makeList(t, listKey, 5, 1, exp)}},
			{Key: order[1], Lists: [][]byte{makeList(t, listKey, 9, 2, exp)}}}}, nil)
		for i, key := range order {
			f := fetcher(t, []string{addr}, func(c *bootstrap.Config) { c.Keys = [][32]byte{key}; c.Now = clock })
			l, _, err := fetch(t, f)
			if err != nil {
				t.Fatalf("audience %d of 2: %v", i+1, err)
			}
			if l.Seq != uint64(i+1) {
				t.Errorf("audience %d of 2 got list %d", i+1, l.Seq)
			}
		}
	}
}
