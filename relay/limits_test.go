package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest/coversite"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/quiccarrier"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// limitsLab is a relay serving the TLS carrier on 127.0.0.1:0, with a
// cover site that accepts and holds connections (as a web server keeps an
// idle connection) and counts them, and an echo server as DC 2.
type limitsLab struct {
	dir   *Dir
	r     *Relay
	addr  string // TCP, the TLS carrier
	quic  string // UDP, the QUIC carrier
	keys  map[string]access.Entry
	cover *holdServer
	logs  *syncBuffer
}

// startLimitsLab starts a lab with one access key per entry of keys
// (named by the map key). mod, if not nil, adjusts the Config before the
// relay is made, and modRelay the Relay before it serves.
func startLimitsLab(t *testing.T, keys map[string]access.Entry, mod func(*Config), modRelay func(*Relay)) *limitsLab {
	t.Helper()
	echo := startHoldServer(t, func(c net.Conn) { io.Copy(c, c) })
	cover := startHoldServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	serveHTTP3At(t, cover.addr) // the QUIC carrier runs only in front of HTTP/3
	d, err := Init(filepath.Join(t.TempDir(), "relay"), Settings{
		Listen: "127.0.0.1:0",
		Public: []string{"127.0.0.1:443"},
		Cover:  "https://" + cover.addr,
		SNI:    "cover.example.org",
		DC:     []string{"2=" + echo.addr},
	})
	if err != nil {
		t.Fatal(err)
	}
	lab := &limitsLab{dir: d, keys: make(map[string]access.Entry), cover: cover, logs: &syncBuffer{}}
	for name, lim := range keys {
		e, err := access.Add(d.KeysPath(), name, lim)
		if err != nil {
			t.Fatal(err)
		}
		lab.keys[name] = e
	}
	cfg, err := d.Config(nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(lab.logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if mod != nil {
		mod(&cfg)
	}
	lab.r, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if modRelay != nil {
		modRelay(lab.r)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.addr = ln.Addr().String()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.quic = pc.LocalAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := lab.r.ServeBoth(ctx, ln, pc); err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return lab
}

// session opens a TLS-carrier session with key name, from the loopback
// address local ("" for the default).
func (l *limitsLab) session(t *testing.T, name, local string) (transport.Session, error) {
	t.Helper()
	nd := &net.Dialer{}
	if local != "" {
		nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	d, err := tlscarrier.NewDialer(tlscarrier.ClientConfig{
		Addr:        l.addr,
		ServerName:  l.dir.Settings.ServerName(),
		Pin:         l.dir.Pin,
		Key:         l.keys[name].Key,
		AuthKey:     l.dir.AuthKey,
		DialContext: nd.DialContext,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := d.Dial(ctx)
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

// quicSession opens a QUIC-carrier session with key name.
func (l *limitsLab) quicSession(t *testing.T, name string) transport.Session {
	t.Helper()
	d, err := quiccarrier.NewDialer(quiccarrier.ClientConfig{
		Addr:       l.quic,
		ServerName: l.dir.Settings.ServerName(),
		Pin:        l.dir.Pin,
		Key:        l.keys[name].Key,
		AuthKey:    l.dir.AuthKey,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := d.Dial(ctx) // the token goes with the first stream
	if err != nil {
		t.Fatalf("quic handshake: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// open opens a stream to DC 2 on s and returns it with the relay's reply.
// early is written before the reply is read.
func open(t *testing.T, s transport.Session, early []byte) (transport.Stream, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := s.OpenStream(ctx)
	if err != nil {
		return nil, err // a session the relay closed at once
	}
	t.Cleanup(func() { st.Close() })
	st.SetDeadline(time.Now().Add(20 * time.Second))
	req, _ := transport.OpenRequest{Target: transport.DCTarget(2)}.AppendBinary(nil)
	go st.Write(append(req, early...))
	_, err = transport.ReadOpenReply(st)
	return st, err
}

func statusOf(err error) transport.Status {
	var se *transport.StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return transport.StatusOK
}

// echoes checks that st, an open stream to the echo DC, carries bytes.
func echoes(t *testing.T, st transport.Stream) {
	t.Helper()
	if _, err := st.Write([]byte("ping")); err != nil {
		t.Fatalf("write: %v", err)
	}
	var b [4]byte
	if _, err := io.ReadFull(st, b[:]); err != nil || string(b[:]) != "ping" {
		t.Fatalf("echo: %q %v", b, err)
	}
}

// TestSessionLimit: a key may hold at most its session limit at once; the
// extra ones are closed as soon as they are made (which one is closed
// depends on the order their handshakes complete), the log names the
// limit, and a session that ends frees its place. The default cap applies
// to a key with no limits of its own.
func TestSessionLimit(t *testing.T) {
	lab := startLimitsLab(t, map[string]access.Entry{
		"capped":  {MaxSessions: 3},
		"default": {},
	}, nil, nil)
	// served opens n sessions of key and returns those that serve a
	// stream.
	served := func(key string, n int) []transport.Session {
		var ok []transport.Session
		for i := range n {
			s, err := lab.session(t, key, "")
			if err != nil {
				continue // refused before or during the handshake
			}
			if st, err := open(t, s, nil); err == nil {
				echoes(t, st)
				ok = append(ok, s)
			} else if i < n-1 && statusOf(err) != transport.StatusOK {
				t.Fatalf("session %d of %s: %v", i, key, err)
			}
		}
		return ok
	}
	open4 := served("capped", 4)
	if len(open4) != 3 {
		// The old relay served any number of sessions.
		t.Fatalf("%d sessions served with max_sessions 3", len(open4))
	}
	if !lab.logs.waitFor("session refused: key at its session limit", 10*time.Second) {
		t.Errorf("no log line names the session limit:\n%s", lab.logs)
	}
	if !strings.Contains(lab.logs.String(), "key=capped") {
		t.Errorf("the refusal does not name the key:\n%s", lab.logs)
	}
	open4[0].Close()
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var s transport.Session
		if s, err = lab.session(t, "capped", ""); err == nil {
			if _, err = open(t, s, nil); err == nil {
				break
			}
		}
	}
	if err != nil {
		t.Fatalf("a session ended, but a new one is still refused: %v", err)
	}

	if n := len(served("default", access.DefaultMaxSessions+1)); n != access.DefaultMaxSessions {
		t.Fatalf("%d sessions served for a key with the default limit of %d", n, access.DefaultMaxSessions)
	}
	if n := lab.cover.accepted.Load(); n != 0 {
		t.Errorf("the cover site got %d connections from a key holder", n)
	}
}

// TestSessionLimitAcrossCarriers: the session cap counts QUIC and TLS
// sessions together, and a QUIC session over it is closed.
func TestSessionLimitAcrossCarriers(t *testing.T) {
	lab := startLimitsLab(t, map[string]access.Entry{"k": {MaxSessions: 1}}, nil, nil)
	q := lab.quicSession(t, "k")
	st, err := open(t, q, nil)
	if err != nil {
		t.Fatalf("first QUIC session: %v", err)
	}
	echoes(t, st)
	if _, err := open(t, lab.quicSession(t, "k"), nil); err == nil {
		t.Fatal("a second QUIC session was served with max_sessions 1")
	}
	if s, err := lab.session(t, "k", ""); err == nil {
		if _, err := open(t, s, nil); err == nil {
			t.Fatal("a TLS session was served beside a QUIC one with max_sessions 1")
		}
	}
	if !lab.logs.waitFor("transport=quic", 10*time.Second) {
		t.Errorf("no log line for the refused QUIC session:\n%s", lab.logs)
	}
	q.Close()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		s, err := lab.session(t, "k", "")
		if err == nil {
			if _, err = open(t, s, nil); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the QUIC session ended, but a TLS one is still refused: %v", err)
		}
	}
}

// TestStreamLimit: streams count from the moment they open, so streams
// that never finish their open request hold their places, and a stream
// over the cap gets StatusTooManyStreams (not StatusQuota) and a log line
// naming the limit. MaxConns still works as the stream cap's former name.
func TestStreamLimit(t *testing.T) {
	lab := startLimitsLab(t, map[string]access.Entry{
		"capped": {MaxStreams: 4},
		"legacy": {MaxConns: 2},
	}, nil, nil)
	s, err := lab.session(t, "capped", "")
	if err != nil {
		t.Fatal(err)
	}
	var half []transport.Stream
	for range 4 {
		st, err := s.OpenStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte{transport.Version}) // half an open request
		half = append(half, st)
	}
	if _, err := open(t, s, nil); statusOf(err) != transport.StatusTooManyStreams {
		t.Fatalf("fifth stream with max_streams 4 and four half-sent streams: %v, want %v", err, transport.StatusTooManyStreams)
	}
	if !lab.logs.waitFor("stream refused: key at its stream limit (max_streams)", 10*time.Second) {
		t.Errorf("no log line names the stream limit:\n%s", lab.logs)
	}
	half[0].Close()
	var st transport.Stream
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if st, err = open(t, s, nil); statusOf(err) != transport.StatusTooManyStreams {
			break
		}
	}
	if err != nil {
		t.Fatalf("a stream ended, but a new one is still refused: %v", err)
	}
	echoes(t, st)

	ls, err := lab.session(t, "legacy", "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := open(t, ls, nil); err != nil {
			t.Fatalf("legacy key stream %d: %v", i, err)
		}
	}
	if _, err := open(t, ls, nil); statusOf(err) != transport.StatusTooManyStreams {
		t.Fatalf("third stream with max_conns 2: %v, want %v", err, transport.StatusTooManyStreams)
	}
}

// stuckDialer is a datacenter dialer that never connects: each dial waits
// until the relay cancels it or, ignoring its timeout as a dial through
// several addresses in turn can, until the test ends. It counts the dials
// running at once.
type stuckDialer struct {
	gate             chan struct{}
	now, peak, total atomic.Int32
}

// stuckLab starts a lab with one key, "k", whose relay dials through a
// stuckDialer, and returns both.
func stuckLab(t *testing.T, mod func(*Config)) (*limitsLab, *stuckDialer) {
	d := &stuckDialer{gate: make(chan struct{})}
	lab := startLimitsLab(t, map[string]access.Entry{"k": {}}, mod, func(r *Relay) { r.dialer.DialContext = d.dial })
	// Registered after the relay started, this runs before it stops, so
	// that no dial holds up its shutdown.
	t.Cleanup(func() { close(d.gate) })
	return lab, d
}

func (d *stuckDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.total.Add(1)
	n := d.now.Add(1)
	defer d.now.Add(-1)
	for p := d.peak.Load(); n > p && !d.peak.CompareAndSwap(p, n); p = d.peak.Load() {
	}
	select {
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.Canceled) {
			return nil, ctx.Err()
		}
		<-d.gate
	case <-d.gate:
	}
	return nil, errors.New("stuck dialer: no route")
}

// waitZero waits up to d for n to reach zero and reports whether it did.
func waitZero(n *atomic.Int32, d time.Duration) bool {
	for deadline := time.Now().Add(d); n.Load() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

// TestEarlyDataWhileDialling: a stream waiting on a datacenter that does
// not answer may not park more than maxEarlyData at the relay. One that
// sends more is refused at once, and its dial is cancelled, instead of
// pinning its data (up to the session's 15 MiB HTTP/2 window) until the
// dial times out.
func TestEarlyDataWhileDialling(t *testing.T) {
	lab, sd := stuckLab(t, func(c *Config) { c.DialTimeout = time.Minute })
	s, err := lab.session(t, "k", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err = open(t, s, make([]byte, 1<<20)); statusOf(err) != transport.StatusBadRequest {
		t.Fatalf("1 MiB sent before the reply while the dial hangs: %v, want %v", err, transport.StatusBadRequest)
	}
	if !waitZero(&sd.now, 10*time.Second) {
		t.Errorf("the dial of a refused stream still runs")
	}
	if !lab.logs.waitFor("stream refused: data beyond the allowance sent before the reply", 10*time.Second) {
		t.Errorf("no log line names the early-data limit:\n%s", lab.logs)
	}
}

// TestDialEndsWithStream: a client that gives up on a stream (resets it)
// while the relay dials ends the dial, rather than leaving it to run for
// DialTimeout.
func TestDialEndsWithStream(t *testing.T) {
	lab, sd := stuckLab(t, func(c *Config) { c.DialTimeout = time.Minute })
	s, err := lab.session(t, "k", "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := s.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	(transport.OpenRequest{Target: transport.DCTarget(2)}).WriteTo(st)
	for deadline := time.Now().Add(10 * time.Second); sd.total.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the relay never dialled")
		}
	}
	st.Close()
	if !waitZero(&sd.now, 10*time.Second) {
		t.Error("a dial ran on after its stream was reset")
	}
}

// TestDialLimit: no more than MaxDialsPerKey of a key's streams dial at
// once; the others wait their turn and, when none comes within
// DialTimeout, are refused with StatusTooManyDials.
func TestDialLimit(t *testing.T) {
	lab, sd := stuckLab(t, func(c *Config) { c.MaxDialsPerKey, c.DialTimeout = 2, 2*time.Second })
	s, err := lab.session(t, "k", "")
	if err != nil {
		t.Fatal(err)
	}
	results := make(chan transport.Status, 4)
	for range 4 {
		go func() {
			_, err := open(t, s, nil)
			results <- statusOf(err)
		}()
	}
	// Two dials start and never end before the test does, so the two
	// other streams wait DialTimeout and are refused.
	var statuses []transport.Status
	busy := 0
	for timeout := time.After(15 * time.Second); len(statuses) < 2; {
		select {
		case st := <-results:
			statuses = append(statuses, st)
			if st == transport.StatusTooManyDials {
				busy++
			}
		case <-timeout:
			t.Fatalf("statuses %v after 15s: streams waiting for a dial slot were not refused", statuses)
		}
	}
	if p := sd.peak.Load(); p > 2 {
		t.Errorf("%d dials of one key ran at once with MaxDialsPerKey 2", p)
	}
	if busy != 2 {
		t.Errorf("statuses %v: want two streams refused with %v", statuses, transport.StatusTooManyDials)
	}
	if !lab.logs.waitFor("stream refused: too many of the key's streams waiting on a dial", 10*time.Second) {
		t.Errorf("no log line names the dial limit:\n%s", lab.logs)
	}
}

// TestEarlyDataForwarded: bytes a client sends with its open request (up
// to the allowance) reach the datacenter once it is connected.
func TestEarlyDataForwarded(t *testing.T) {
	lab := startLimitsLab(t, map[string]access.Entry{"k": {}}, nil, nil)
	s, err := lab.session(t, "k", "")
	if err != nil {
		t.Fatal(err)
	}
	early := bytes.Repeat([]byte("x"), maxEarlyData)
	st, err := open(t, s, early)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(early))
	if _, err := io.ReadFull(st, got); err != nil || !bytes.Equal(got, early) {
		t.Fatalf("early data echoed: %v", err)
	}
	echoes(t, st)
}

// TestUnauthLimits: unauthenticated connections over the per-source cap
// are closed at once, without a cover dial, while a client from another
// network still authenticates; over the global cap every new connection
// is closed at once. Ending a held connection frees its place.
func TestUnauthLimits(t *testing.T) {
	lab := startLimitsLab(t, map[string]access.Entry{"k": {}}, func(c *Config) {
		c.HelloTimeout = time.Minute // idle connections stay unauthenticated for the whole test
		c.MaxUnauthPerSource = 4
		c.MaxUnauthConns = 6
	}, nil)
	dialFrom := func(local string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		c, err := d.Dial("tcp", lab.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closedAtOnce reports whether the relay closes c within a few
	// seconds (it would otherwise hold it for a minute).
	closedAtOnce := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		return err != nil && !(errors.As(err, &ne) && ne.Timeout())
	}

	var held []net.Conn
	for range 4 {
		held = append(held, dialFrom("127.0.0.1"))
	}
	if !closedAtOnce(dialFrom("127.0.0.1")) {
		t.Fatal("a fifth idle connection from one /24 was held with MaxUnauthPerSource 4")
	}
	if !lab.logs.waitFor("MaxUnauthPerSource", 10*time.Second) {
		t.Errorf("no log line names the per-source limit:\n%s", lab.logs)
	}
	// A user on another network is not locked out.
	s, err := lab.session(t, "k", "127.0.1.1")
	if err != nil {
		t.Fatalf("authenticated client while one /24 is at its cap: %v", err)
	}
	if _, err := open(t, s, nil); err != nil {
		t.Fatalf("stream while one /24 is at its cap: %v", err)
	}
	held = append(held, dialFrom("127.0.2.1"), dialFrom("127.0.3.1")) // 6 in all: the global cap
	// Each held connection reaches the cover site after coverEarly.
	for deadline := time.Now().Add(10 * time.Second); lab.cover.accepted.Load() < 6; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the cover site got %d of the 6 idle connections", lab.cover.accepted.Load())
		}
	}
	if !closedAtOnce(dialFrom("127.0.4.1")) {
		t.Fatal("a seventh idle connection was held with MaxUnauthConns 6")
	}
	if n := lab.cover.accepted.Load(); n != 6 {
		t.Errorf("the cover site got %d connections, want the 6 held; refused ones must not reach it", n)
	}
	held[0].Close()
	var ok bool
	for deadline := time.Now().Add(10 * time.Second); !ok && time.Now().Before(deadline); {
		c := dialFrom("127.0.0.1")
		c.SetReadDeadline(time.Now().Add(time.Second))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		ok = errors.As(err, &ne) && ne.Timeout() // held, not closed
	}
	if !ok {
		t.Error("a held connection ended, but new ones from its network are still closed at once")
	}
}

// TestCoverTiming: an idle connection reaches the cover site CoverDelay
// (the production default, 150 ms) after it arrives, while the relay
// still waits for its hello, so the cover's own idle timeout governs it
// (the relay used to dial the cover only once HelloTimeout had passed: a
// connection nginx closes after 60 s was closed after 70). Bytes sent
// meanwhile still reach the cover.
func TestCoverTiming(t *testing.T) {
	got := make(chan []byte, 1)
	cover := startHoldServer(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		got <- b
	})
	serveHTTP3At(t, cover.addr)
	lab := startLimitsLab(t, map[string]access.Entry{"k": {}}, func(c *Config) {
		c.Cover = cover.addr
		c.HelloTimeout = time.Minute
		c.CoverDelay = tlscarrier.DefaultCoverDelay
	}, nil)
	c, err := net.Dial("tcp", lab.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	// 5 s: far past 150 ms even on a busy machine, far below HelloTimeout.
	for deadline := start.Add(5 * time.Second); cover.accepted.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the cover site was not dialled within 5 s of an idle connection (CoverDelay %v, HelloTimeout 1m)", tlscarrier.DefaultCoverDelay)
		}
	}
	took := time.Since(start)
	t.Logf("the cover site was dialled %v after an idle connection arrived (CoverDelay %v)", took.Round(time.Millisecond), tlscarrier.DefaultCoverDelay)
	// Never earlier: a client's hello, late by less, must find no cover
	// connection made for it (the bound only errs late on a busy machine).
	if took < tlscarrier.DefaultCoverDelay*2/3 {
		t.Errorf("the cover site was dialled %v after an idle connection arrived, before CoverDelay %v", took, tlscarrier.DefaultCoverDelay)
	}
	c.Write([]byte("\x16\x03\x01")) // the start of a TLS record, never finished
	c.(*net.TCPConn).CloseWrite()
	select {
	case b := <-got:
		if string(b) != "\x16\x03\x01" {
			t.Errorf("cover site got %q", b)
		}
	case <-time.After(20 * time.Second):
		t.Error("the bytes of a half-sent hello never reached the cover site")
	}
}

// TestRefusalLogsPerKey: refusals a key holder provokes by the thousand
// are logged once per key and interval, and one key's flood does not hide
// another key's lines.
func TestRefusalLogsPerKey(t *testing.T) {
	lab := startLimitsLab(t, map[string]access.Entry{"flood": {MaxStreams: 2}, "other": {}}, nil, nil)
	try := func(s transport.Session, target transport.Target) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		st, err := s.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.SetDeadline(time.Now().Add(20 * time.Second))
		(transport.OpenRequest{Target: target}).WriteTo(st)
		if _, err := transport.ReadOpenReply(st); statusOf(err) == transport.StatusOK {
			t.Fatalf("stream to %v: %v, want a refusal", target, err)
		}
	}
	s, err := lab.session(t, "flood", "")
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		try(s, transport.DCTarget(7)) // not a datacenter the table knows
	}
	for range 2 {
		// The refused streams may not all have been released yet.
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err = open(t, s, nil); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		try(s, transport.DCTarget(2)) // over the stream limit
	}
	o, err := lab.session(t, "other", "")
	if err != nil {
		t.Fatal(err)
	}
	try(o, transport.DCTarget(7))
	if !lab.logs.waitFor("key=other", 10*time.Second) {
		t.Errorf("another key's refusal was not logged:\n%s", lab.logs)
	}
	lines := strings.Split(lab.logs.String(), "\n")
	for _, msg := range []string{"stream refused: not a Telegram datacenter", "stream refused: key at its stream limit"} {
		n := 0
		for _, l := range lines {
			if strings.Contains(l, msg) && strings.Contains(l, "key=flood") {
				n++
			}
		}
		// One line per 10 seconds; a slow machine may need two intervals.
		if n < 1 || n > 2 {
			t.Errorf("%q logged %d times for 100 refusals of one key, want 1:\n%s", msg, n, lab.logs)
		}
	}
}

// holdServer is a TCP server on 127.0.0.1:0 that runs serve for each
// connection and counts them.
type holdServer struct {
	addr     string
	accepted atomic.Int32
}

// serveHTTP3At serves an HTTP/3 page on UDP at addr until the test ends.
func serveHTTP3At(t *testing.T, addr string) {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatalf("HTTP/3 beside the cover site: %v", err)
	}
	certPEM, keyPEM, err := tlscarrier.NewCertificate("cover.example.org")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		coversite.ServeHTTP3(ctx, pc, cert, coversite.Handler("cover"))
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func startHoldServer(t *testing.T, serve func(net.Conn)) *holdServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &holdServer{addr: ln.Addr().String()}
	var mu sync.Mutex
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { defer c.Close(); serve(c) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return h
}

// syncBuffer is a bytes.Buffer safe for concurrent use, for logs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor reports whether s shows up in the log within d.
func (b *syncBuffer) waitFor(s string, d time.Duration) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if strings.Contains(b.String(), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
