package h2mux

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/merpati/merpati/transport"
	"go.uber.org/goleak"
	"golang.org/x/net/http2"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// connPair returns the two ends of a connection.
type connPair func(tb testing.TB) (client, server net.Conn)

func pipePair(tb testing.TB) (net.Conn, net.Conn) {
	return net.Pipe()
}

func tcpPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		c.Close()
		tb.Fatal(r.err)
	}
	return c, r.c
}

// waitPair is tcpPair with each end a transport.WaitConn, whose session
// wakes its streams' readers when the socket is drained (see
// Session.wakeReaders).
func waitPair(tb testing.TB) (net.Conn, net.Conn) {
	c, s := tcpPair(tb)
	return transport.NewWaitConn(c), transport.NewWaitConn(s)
}

// forEachTransport runs f over net.Pipe, over loopback TCP, and over
// loopback TCP read by a transport.WaitConn.
func forEachTransport(t *testing.T, f func(t *testing.T, pair connPair)) {
	t.Run("pipe", func(t *testing.T) { f(t, pipePair) })
	t.Run("tcp", func(t *testing.T) { f(t, tcpPair) })
	t.Run("waitconn", func(t *testing.T) { f(t, waitPair) })
}

// newSessions starts a client and a server session on a fresh connection
// and closes both when the test ends.
func newSessions(tb testing.TB, pair connPair, ccfg, scfg Config) (*Session, *Session) {
	tb.Helper()
	c, s := pair(tb)
	cs, err := Client(c, ccfg)
	if err != nil {
		tb.Fatal(err)
	}
	ss, err := Server(s, scfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		cs.Close()
		ss.Close()
	})
	return cs, ss
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// echoServer accepts streams and echoes each until EOF, then half-closes.
func echoServer(tb testing.TB, ss *Session) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			st, err := ss.AcceptStream(context.Background())
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				if _, err := io.Copy(st, st); err != nil {
					return
				}
				st.CloseWrite()
			}()
		}
	}()
	tb.Cleanup(func() {
		ss.Close()
		wg.Wait()
	})
}

func TestConfig(t *testing.T) {
	got, err := Config{}.fill()
	if err != nil {
		t.Fatal(err)
	}
	if got.MaxStreamWindow != DefaultMaxStreamWindow || got.MaxConnWindow != DefaultMaxConnWindow ||
		got.MaxFrameSize != DefaultMaxFrameSize || got.KeepAlive != 0 ||
		got.ReuseProbe != DefaultReuseProbe || got.IdleTimeout != DefaultIdleTimeout ||
		got.Timeout != DefaultTimeout || got.MaxStreams != DefaultMaxStreams || got.Path != "/" || got.Logger == nil {
		t.Errorf("defaults not filled: %+v", got)
	}
	bad := []struct {
		field string
		cfg   Config
	}{
		{"MaxStreamWindow", Config{MaxStreamWindow: 1000}},
		{"MaxStreamWindow", Config{MaxStreamWindow: 1 << 31}},
		{"MaxConnWindow", Config{MaxConnWindow: 65534}},
		{"MaxFrameSize", Config{MaxFrameSize: 16383}},
		{"MaxFrameSize", Config{MaxFrameSize: 1 << 24}},
		{"Timeout", Config{Timeout: -1}},
		{"MaxStreams", Config{MaxStreams: -1}},
	}
	for _, tc := range bad {
		_, err := tc.cfg.fill()
		if err == nil || !strings.Contains(err.Error(), "Config."+tc.field) {
			t.Errorf("%+v: got %v, want error naming %s", tc.cfg, err, tc.field)
		}
		if _, err := Client(nil, tc.cfg); err == nil {
			t.Errorf("Client accepted %+v", tc.cfg)
		}
	}
}

func TestEcho(t *testing.T) {
	forEachTransport(t, func(t *testing.T, pair connPair) {
		cs, ss := newSessions(t, pair, Config{}, Config{})
		echoServer(t, ss)
		st, err := cs.OpenStream(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if _, err := st.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if err := st.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(st)
		if err != nil || string(got) != "hello" {
			t.Fatalf("ReadAll = %q, %v", got, err)
		}
	})
}

// TestManyStreams echoes random-sized payloads on many concurrent streams
// and checks every byte with SHA-256.
func TestManyStreams(t *testing.T) {
	n, size := 100, 1<<20
	if testing.Short() {
		n, size = 20, 256<<10
	}
	for _, tc := range []struct {
		name string
		pair connPair
		n    int
	}{{"tcp", tcpPair, n}, {"pipe", pipePair, n / 4}} {
		t.Run(tc.name, func(t *testing.T) {
			cs, ss := newSessions(t, tc.pair, Config{}, Config{MaxFrameSize: 64 << 10})
			echoServer(t, ss)
			ctx := ctxT(t)
			var wg sync.WaitGroup
			errc := make(chan error, tc.n)
			for i := range tc.n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errc <- echoOne(ctx, cs, i, size)
				}()
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func echoOne(ctx context.Context, cs *Session, seed, maxSize int) error {
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	size := maxSize
	if seed%3 != 0 {
		size = rng.IntN(maxSize + 1) // includes 0
	}
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	st, err := cs.OpenStream(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	werr := make(chan error, 1)
	go func() {
		p := data
		for len(p) > 0 {
			k := min(len(p), 1+rng.IntN(100<<10))
			if _, err := st.Write(p[:k]); err != nil {
				werr <- err
				return
			}
			p = p[k:]
		}
		werr <- st.CloseWrite()
	}()
	h := sha256.New()
	got, err := io.Copy(h, st)
	if err != nil {
		return err
	}
	if err := <-werr; err != nil {
		return err
	}
	want := sha256.Sum256(data)
	if got != int64(size) || !bytes.Equal(h.Sum(nil), want[:]) {
		return errors.New("echo mismatch")
	}
	return nil
}

func TestHalfClose(t *testing.T) {
	forEachTransport(t, func(t *testing.T, pair connPair) {
		cs, ss := newSessions(t, pair, Config{}, Config{})
		ctx := ctxT(t)
		payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB

		t.Run("client first", func(t *testing.T) {
			st, err := cs.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Write([]byte("request")); err != nil {
				t.Fatal(err)
			}
			if err := st.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			srv, err := ss.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			got, err := io.ReadAll(srv)
			if err != nil || string(got) != "request" {
				t.Fatalf("server ReadAll = %q, %v", got, err)
			}
			// The server keeps writing after the client's half-close.
			go func() {
				srv.Write(payload)
				srv.CloseWrite()
			}()
			resp, err := io.ReadAll(st)
			if err != nil || !bytes.Equal(resp, payload) {
				t.Fatalf("client ReadAll = %d bytes, %v", len(resp), err)
			}
			if _, err := st.Write([]byte("x")); err == nil {
				t.Error("Write after CloseWrite succeeded")
			}
		})

		t.Run("server first", func(t *testing.T) {
			st, err := cs.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.Write([]byte("hi")); err != nil {
				t.Fatal(err)
			}
			srv, err := ss.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			if _, err := srv.Write([]byte("bye")); err != nil {
				t.Fatal(err)
			}
			if err := srv.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			resp, err := io.ReadAll(st)
			if err != nil || string(resp) != "bye" {
				t.Fatalf("client ReadAll = %q, %v", resp, err)
			}
			// The client keeps writing after the server's half-close.
			go func() {
				st.Write(payload)
				st.CloseWrite()
			}()
			got, err := io.ReadAll(srv)
			if err != nil || !bytes.Equal(got, append([]byte("hi"), payload...)) {
				t.Fatalf("server ReadAll = %d bytes, %v", len(got), err)
			}
		})
	})
}

func TestReset(t *testing.T) {
	forEachTransport(t, func(t *testing.T, pair connPair) {
		cs, ss := newSessions(t, pair, Config{}, Config{MaxStreamWindow: 65535})
		ctx := ctxT(t)

		t.Run("client closes", func(t *testing.T) {
			st, err := cs.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.Write([]byte("partial"))
			srv, err := ss.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			buf := make([]byte, 7)
			if _, err := io.ReadFull(srv, buf); err != nil {
				t.Fatal(err)
			}
			st.Close()
			_, err = srv.Read(buf)
			if !errors.Is(err, ErrStreamReset) || err == io.EOF {
				t.Fatalf("server Read after reset = %v, want ErrStreamReset", err)
			}
			if _, err := srv.Write([]byte("x")); !errors.Is(err, ErrStreamReset) {
				t.Fatalf("server Write after reset = %v, want ErrStreamReset", err)
			}
			if _, err := st.Read(buf); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("client Read after Close = %v, want net.ErrClosed", err)
			}
		})

		t.Run("server closes while client writes", func(t *testing.T) {
			st, err := cs.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			werr := make(chan error, 1)
			go func() {
				// More than the server's window: blocks until reset.
				_, err := st.Write(make([]byte, 1<<20))
				werr <- err
			}()
			srv, err := ss.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			srv.Close()
			if err := <-werr; !errors.Is(err, ErrStreamReset) {
				t.Fatalf("client Write = %v, want ErrStreamReset", err)
			}
			if _, err := st.Read(make([]byte, 1)); !errors.Is(err, ErrStreamReset) {
				t.Fatalf("client Read = %v, want ErrStreamReset", err)
			}
		})

		t.Run("clean close sends no reset", func(t *testing.T) {
			st, err := cs.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.Write([]byte("a"))
			st.CloseWrite()
			srv, err := ss.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got, err := io.ReadAll(srv); err != nil || string(got) != "a" {
				t.Fatalf("server ReadAll = %q, %v", got, err)
			}
			srv.Write([]byte("b"))
			srv.CloseWrite()
			srv.Close()
			if got, err := io.ReadAll(st); err != nil || string(got) != "b" {
				t.Fatalf("client ReadAll = %q, %v", got, err)
			}
			st.Close()
		})
	})
}

func TestDeadlines(t *testing.T) {
	forEachTransport(t, func(t *testing.T, pair connPair) {
		cs, ss := newSessions(t, pair, Config{}, Config{MaxStreamWindow: 65535})
		ctx := ctxT(t)
		st, err := cs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()

		// Read deadline in the past.
		st.SetReadDeadline(time.Now().Add(-time.Second))
		if _, err := st.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read with past deadline = %v", err)
		}
		// A deadline set while Read is blocked wakes it.
		st.SetReadDeadline(time.Time{})
		rerr := make(chan error, 1)
		go func() {
			_, err := st.Read(make([]byte, 1))
			rerr <- err
		}()
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if err := <-rerr; !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("blocked Read = %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("deadline fired after %v", d)
		}
		var ne net.Error
		if err := os.ErrDeadlineExceeded; !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatal("os.ErrDeadlineExceeded is not a timeout net.Error")
		}

		// Write deadline: the server never reads, so the 64 KiB stream
		// window fills and Write blocks until the deadline.
		st.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := st.Write(make([]byte, 1<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write = %d, %v; want deadline exceeded", n, err)
		}
		if n > 65535 {
			t.Fatalf("Write sent %d bytes beyond the 65535 window", n)
		}
		// Clearing the deadline makes the stream usable again.
		st.SetDeadline(time.Time{})
		srv, err := ss.AcceptStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		go io.Copy(io.Discard, srv)
		if _, err := st.Write(make([]byte, 200<<10)); err != nil {
			t.Fatalf("Write after clearing deadline: %v", err)
		}
	})
}

func TestSessionDeath(t *testing.T) {
	forEachTransport(t, func(t *testing.T, pair connPair) {
		c, s := pair(t)
		// Small windows on both sides, and nobody reads what the other
		// sends, so every pending call below truly blocks.
		cs, err := Client(c, Config{MaxStreamWindow: 65535})
		if err != nil {
			t.Fatal(err)
		}
		defer cs.Close()
		ss, err := Server(s, Config{MaxStreamWindow: 65535})
		if err != nil {
			t.Fatal(err)
		}
		defer ss.Close()
		ctx := ctxT(t)
		const n = 10
		errc := make(chan error, 3*n)
		for range n {
			// On one stream both sides write and neither reads.
			st, err := cs.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			st.Write(nil) // sends HEADERS, so the server accepts st next
			srv, err := ss.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			go func() { // blocks: window exhausted
				_, err := st.Write(make([]byte, 1<<20))
				errc <- err
			}()
			go func() { // blocks: window exhausted
				_, err := srv.Write(make([]byte, 1<<20))
				errc <- err
			}()
			// On another the client reads and nobody writes.
			quiet, err := cs.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer quiet.Close()
			go func() { // blocks: nobody answers
				_, err := quiet.Read(make([]byte, 10))
				errc <- err
			}()
			quietSrv, err := ss.AcceptStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer quietSrv.Close()
		}
		time.Sleep(50 * time.Millisecond)
		c.Close() // kill the client's connection under it
		timeout := time.After(5 * time.Second)
		for range 3 * n {
			select {
			case err := <-errc:
				if err == nil || err == io.EOF {
					t.Fatalf("pending call returned %v, want an error", err)
				}
				if !errors.Is(err, ErrSessionClosed) {
					t.Errorf("pending call returned %v, want ErrSessionClosed", err)
				}
			case <-timeout:
				t.Fatal("pending calls did not fail promptly")
			}
		}
		for _, sess := range []*Session{cs, ss} {
			select {
			case <-sess.Done():
			case <-time.After(5 * time.Second):
				t.Fatal("Done not closed")
			}
			if sess.Err() == nil {
				t.Error("Err() = nil after death")
			}
		}
		if _, err := cs.OpenStream(ctx); !errors.Is(err, net.ErrClosed) {
			t.Errorf("OpenStream on dead session = %v, want net.ErrClosed", err)
		}
	})
}

func TestSessionClose(t *testing.T) {
	forEachTransport(t, func(t *testing.T, pair connPair) {
		cs, ss := newSessions(t, pair, Config{}, Config{})
		ctx := ctxT(t)
		st, err := cs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st.Write([]byte("x"))
		srv, err := ss.AcceptStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.Close(); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(cs.Err(), ErrSessionClosed) {
			t.Errorf("client Err() = %v, want ErrSessionClosed", cs.Err())
		}
		select {
		case <-ss.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("server did not notice the close")
		}
		buf := make([]byte, 1)
		srv.Read(buf)
		if _, err := srv.Read(buf); err == nil || err == io.EOF {
			t.Errorf("server Read after session close = %v, want error", err)
		}
		if _, err := cs.OpenStream(ctx); !errors.Is(err, net.ErrClosed) {
			t.Errorf("OpenStream after Close = %v, want net.ErrClosed", err)
		}
		if _, err := st.Write([]byte("y")); !errors.Is(err, ErrSessionClosed) {
			t.Errorf("Write after Close = %v, want ErrSessionClosed", err)
		}
		if err := cs.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
	})
}

func TestPing(t *testing.T) {
	forEachTransport(t, func(t *testing.T, pair connPair) {
		cs, ss := newSessions(t, pair, Config{}, Config{})
		for _, sess := range []*Session{cs, ss} {
			rtt, err := sess.Ping(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			if rtt <= 0 || rtt > 5*time.Second {
				t.Errorf("rtt = %v", rtt)
			}
		}
	})
}

func TestKeepAliveTimeout(t *testing.T) {
	// The "server" reads and never answers, so the (optional, off by
	// default) keep-alive must give up.
	c, s := net.Pipe()
	defer s.Close()
	go io.Copy(io.Discard, s)
	cs, err := Client(c, Config{KeepAlive: 20 * time.Millisecond, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	select {
	case <-cs.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session did not die")
	}
	if !errors.Is(cs.Err(), ErrKeepAliveTimeout) {
		t.Errorf("Err() = %v, want ErrKeepAliveTimeout", cs.Err())
	}
}

// TestFlowControl checks that a stream whose reader stalls never has more
// than its window buffered, and that other streams keep flowing.
func TestFlowControl(t *testing.T) {
	forEachTransport(t, func(t *testing.T, pair connPair) {
		const win = 65535
		cs, ss := newSessions(t, pair, Config{}, Config{MaxStreamWindow: win, MaxConnWindow: 1 << 20})
		ctx := ctxT(t)
		slow, err := cs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer slow.Close()
		payload := make([]byte, 1<<20)
		for i := range payload {
			payload[i] = byte(i * 7)
		}
		werr := make(chan error, 1)
		go func() {
			_, err := slow.Write(payload)
			werr <- err
		}()
		slowSrv, err := ss.AcceptStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer slowSrv.Close()

		// Meanwhile another stream carries several times the connection
		// window in both directions.
		echoed := make(chan error, 1)
		go func() {
			srv, err := ss.AcceptStream(ctx)
			if err != nil {
				echoed <- err
				return
			}
			defer srv.Close()
			io.Copy(srv, srv)
			srv.CloseWrite()
		}()
		go func() { echoed <- echoOne(ctx, cs, 3, 4<<20) }()
		if err := <-echoed; err != nil {
			t.Fatalf("other stream: %v", err)
		}

		ss.mu.Lock()
		buffered := slowSrv.recv.n
		ss.mu.Unlock()
		if buffered > win {
			t.Fatalf("slow stream buffered %d bytes, window is %d", buffered, win)
		}
		if buffered == 0 {
			t.Fatal("slow stream received nothing")
		}
		select {
		case err := <-werr:
			t.Fatalf("Write finished (%v) although the reader never read", err)
		default:
		}
		got, err := io.ReadAll(io.LimitReader(slowSrv, int64(len(payload))))
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("slow stream ReadAll = %d bytes, %v", len(got), err)
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
	})
}

func TestMaxStreams(t *testing.T) {
	cs, ss := newSessions(t, pipePair, Config{}, Config{MaxStreams: 2})
	ctx := ctxT(t)
	if _, err := cs.Ping(ctx); err != nil { // the server's SETTINGS precede its PING ACK
		t.Fatal(err)
	}
	var open []*Stream
	for range 2 {
		st, err := cs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.Write([]byte("x"))
		open = append(open, st.(*Stream))
		srv, err := ss.AcceptStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := cs.OpenStream(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third OpenStream = %v, want deadline exceeded", err)
	}
	got := make(chan error, 1)
	go func() {
		st, err := cs.OpenStream(ctx)
		if err == nil {
			st.Close()
		}
		got <- err
	}()
	open[0].Close()
	if err := <-got; err != nil {
		t.Fatalf("OpenStream after a slot freed: %v", err)
	}
}

// rawClient speaks HTTP/2 by hand to a server session.
type rawClient struct {
	conn net.Conn
	fr   *http2.Framer
}

func newRawClient(t *testing.T, scfg Config) (*rawClient, *Session) {
	t.Helper()
	c, s := net.Pipe()
	ss, err := Server(s, scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		ss.Close()
	})
	return &rawClient{conn: c, fr: http2.NewFramer(c, c)}, ss
}

// readGoAway reads frames until GOAWAY or an error.
func (rc *rawClient) readGoAway() (http2.ErrCode, bool) {
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			return 0, false
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			return ga.ErrCode, true
		}
	}
}

func TestProtocolErrors(t *testing.T) {
	hdrs := func(rc *rawClient, id uint32, end bool) error {
		// A minimal valid request header block (static table indexes):
		// :method POST (3), :scheme https (7), :path / (4), :authority x.
		block := []byte{0x83, 0x87, 0x84, 0x41, 0x01, 'x'}
		return rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: end})
	}
	tests := []struct {
		name string
		code http2.ErrCode
		send func(rc *rawClient) error
	}{
		{"DATA on idle stream", http2.ErrCodeProtocol, func(rc *rawClient) error {
			return rc.fr.WriteData(1, false, []byte("x"))
		}},
		{"DATA beyond stream window", http2.ErrCodeFlowControl, func(rc *rawClient) error {
			if err := hdrs(rc, 1, false); err != nil {
				return err
			}
			chunk := make([]byte, 16384)
			for range 5 {
				if err := rc.fr.WriteData(1, false, chunk); err != nil {
					return err
				}
			}
			return nil
		}},
		{"connection window overflow", http2.ErrCodeFlowControl, func(rc *rawClient) error {
			return rc.fr.WriteWindowUpdate(0, 1<<31-1)
		}},
		{"frame too large", http2.ErrCodeFrameSize, func(rc *rawClient) error {
			return rc.fr.WriteData(1, false, make([]byte, 20000))
		}},
		{"even stream", http2.ErrCodeProtocol, func(rc *rawClient) error {
			return hdrs(rc, 2, false)
		}},
		{"push promise", http2.ErrCodeProtocol, func(rc *rawClient) error {
			return rc.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, BlockFragment: []byte{0x88}, EndHeaders: true})
		}},
		{"RST_STREAM on idle stream", http2.ErrCodeProtocol, func(rc *rawClient) error {
			return rc.fr.WriteRSTStream(7, http2.ErrCodeCancel)
		}},
		{"bad HPACK", http2.ErrCodeCompression, func(rc *rawClient) error {
			return rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndHeaders: true})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc, ss := newRawClient(t, Config{MaxStreamWindow: 65535})
			go func() {
				io.WriteString(rc.conn, http2.ClientPreface)
				rc.fr.WriteSettings()
				tc.send(rc)
			}()
			code, ok := rc.readGoAway()
			if !ok || code != tc.code {
				t.Errorf("GOAWAY = %v (received %v), want %v", code, ok, tc.code)
			}
			<-ss.Done()
			if !errors.Is(ss.Err(), ErrProtocol) {
				t.Errorf("Err() = %v, want ErrProtocol", ss.Err())
			}
		})
	}

	t.Run("bad preface", func(t *testing.T) {
		rc, ss := newRawClient(t, Config{})
		go io.Copy(io.Discard, rc.conn)
		io.WriteString(rc.conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		<-ss.Done()
		if !errors.Is(ss.Err(), ErrProtocol) {
			t.Errorf("Err() = %v, want ErrProtocol", ss.Err())
		}
	})
	t.Run("first frame not SETTINGS", func(t *testing.T) {
		rc, ss := newRawClient(t, Config{})
		go func() {
			io.WriteString(rc.conn, http2.ClientPreface)
			rc.fr.WritePing(false, [8]byte{})
		}()
		if code, ok := rc.readGoAway(); !ok || code != http2.ErrCodeProtocol {
			t.Errorf("GOAWAY = %v, %v", code, ok)
		}
		<-ss.Done()
	})
	t.Run("stream error keeps session", func(t *testing.T) {
		rc, ss := newRawClient(t, Config{})
		go func() {
			io.WriteString(rc.conn, http2.ClientPreface)
			rc.fr.WriteSettings()
			// A response header on a request stream: refused with
			// RST_STREAM, the session lives on.
			rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0x88}, EndHeaders: true})
			rc.fr.WritePing(false, [8]byte{1})
		}()
		// The PING ACK goes ahead of queued stream frames, so it may
		// come before or after the RST_STREAM: wait for both.
		rc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		var sawRST, sawAck bool
		for !sawRST || !sawAck {
			f, err := rc.fr.ReadFrame()
			if err != nil {
				t.Fatalf("RST_STREAM %v, PING ACK %v: %v", sawRST, sawAck, err)
			}
			if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == 1 {
				sawRST = true
			}
			if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
				sawAck = true
			}
		}
		select {
		case <-ss.Done():
			t.Fatalf("session died: %v", ss.Err())
		default:
		}
	})
}

func TestOpenStreamOnServer(t *testing.T) {
	cs, ss := newSessions(t, pipePair, Config{}, Config{})
	if _, err := ss.OpenStream(ctxT(t)); !errors.Is(err, ErrWrongSide) {
		t.Errorf("server OpenStream = %v", err)
	}
	if _, err := cs.AcceptStream(ctxT(t)); !errors.Is(err, ErrWrongSide) {
		t.Errorf("client AcceptStream = %v", err)
	}
}

// TestResetAfterEnd checks RFC 9113 section 8.1: data followed by
// END_STREAM and then RST_STREAM stays readable to io.EOF; only writes fail.
func TestResetAfterEnd(t *testing.T) {
	cli, srv := newSessions(t, tcpPair, Config{}, Config{})
	cs, err := cli.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cs.Write([]byte("request"))
	ss, err := srv.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ss.Write([]byte("answer"))
	ss.CloseWrite()
	ss.Close() // the client had not ended its side: this resets
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := cs.Write([]byte("x")); err != nil {
			if !errors.Is(err, ErrStreamReset) {
				t.Fatalf("write after reset: %v", err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes still succeed after the peer's reset")
		}
		time.Sleep(5 * time.Millisecond)
	}
	got, err := io.ReadAll(cs)
	if err != nil || string(got) != "answer" {
		t.Fatalf("read %q, %v; want the answer and EOF", got, err)
	}
}

// TestWriteThenReset checks that a Write whose bytes all went out
// succeeds even when the peer answers and resets the stream before the
// writing goroutine runs again, as a relay refusing a target does: the
// reset concerns later writes. Many rounds, since the window is narrow.
func TestWriteThenReset(t *testing.T) {
	cli, srv := newSessions(t, tcpPair, Config{}, Config{})
	ctx := ctxT(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 16)
		for {
			ss, err := srv.AcceptStream(ctx)
			if err != nil {
				return
			}
			io.ReadFull(ss, buf)
			ss.Write([]byte("no"))
			ss.CloseWrite()
			ss.Close()
		}
	}()
	for i := range 500 {
		cs, err := cli.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.Write(make([]byte, 16)); err != nil {
			t.Fatalf("round %d: write that went out: %v", i, err)
		}
		if got, err := io.ReadAll(cs); err != nil || string(got) != "no" {
			t.Fatalf("round %d: read %q, %v", i, got, err)
		}
		cs.Close()
	}
	cli.Close()
	srv.Close()
	<-done
}

// TestWriteSize checks that a write of WriteSize bytes, framed, fills
// whole TLS records: 4 × 16384 bytes with the frame headers.
func TestWriteSize(t *testing.T) {
	for _, tc := range []struct{ maxFrame, want int }{
		{minFrameSize, 65500}, // four frames: 3 × 16384 + 16348 payload
		{1 << 20, 65527},      // one frame
		{maxFrameSize, 65527}, // one frame
		{65527, 65527},        // exactly one frame
		{32759, 65518},        // two frames
	} {
		n := writeSizeFor(tc.maxFrame)
		if n != tc.want {
			t.Errorf("writeSizeFor(%d) = %d, want %d", tc.maxFrame, n, tc.want)
		}
		frames := (n + tc.maxFrame - 1) / tc.maxFrame
		if got := n + frames*frameHeaderSz; got != recordsPerWrite*tlsRecord {
			t.Errorf("maxFrame %d: %d bytes in %d frames make %d bytes on the wire, want %d",
				tc.maxFrame, n, frames, got, recordsPerWrite*tlsRecord)
		}
	}
}

// TestServeStreams: ServeStreams hands the server every stream the client
// opens, those waiting before it was called first, in the order they
// opened, and calls end once, after the last, when the session ends.
func TestServeStreams(t *testing.T) {
	cs, ss := newSessions(t, tcpPair, Config{}, Config{})
	if err := cs.ServeStreams(func(*Stream) {}, func() {}); !errors.Is(err, ErrWrongSide) {
		t.Errorf("ServeStreams on a client: %v, want ErrWrongSide", err)
	}
	open := func() {
		st, err := cs.OpenStream(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if _, err := st.Write([]byte{1}); err != nil { // HEADERS go with the first bytes
			t.Fatal(err)
		}
	}
	for range 3 {
		open()
	}
	for waiting := 0; waiting < 3; time.Sleep(time.Millisecond) {
		ss.mu.Lock()
		waiting = len(ss.acceptQ)
		ss.mu.Unlock()
	}
	var mu sync.Mutex
	var ids []uint32
	ended := make(chan int, 2)
	handle := func(st *Stream) {
		mu.Lock()
		ids = append(ids, st.id)
		mu.Unlock()
		st.Close()
	}
	if err := ss.ServeStreams(handle, func() {
		mu.Lock()
		ended <- len(ids)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if len(ids) != 3 {
		t.Errorf("ServeStreams returned having handed %d of the 3 waiting streams", len(ids))
	}
	mu.Unlock()
	if err := ss.ServeStreams(handle, func() {}); err == nil {
		t.Error("a second ServeStreams succeeded")
	}
	for range 2 {
		open()
	}
	for n := 0; n < 5; time.Sleep(time.Millisecond) {
		mu.Lock()
		n = len(ids)
		mu.Unlock()
	}
	select {
	case <-ended:
		t.Fatal("end called while the session lives")
	default:
	}
	cs.Close()
	select {
	case n := <-ended:
		if n != 5 {
			t.Errorf("end called after %d streams, want 5", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("end not called 10 s after the session ended")
	}
	if !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != 5 {
		t.Errorf("streams handed in the order %v", ids)
	}
	select {
	case <-ended:
		t.Error("end called twice")
	case <-time.After(100 * time.Millisecond):
	}

	// On a session that has already ended, end is called all the same.
	_, ss2 := newSessions(t, tcpPair, Config{}, Config{})
	ss2.Close()
	ended2 := make(chan struct{})
	if err := ss2.ServeStreams(func(*Stream) {}, func() { close(ended2) }); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ended2:
	case <-time.After(10 * time.Second):
		t.Fatal("end not called for a session that had ended")
	}
}

// countingConn counts the bytes written to it.
type countingConn struct {
	net.Conn
	n atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// TestPrefaceNow: with PrefaceNow, Server and Client have written their
// first flight when they return, and the sessions then work as usual.
func TestPrefaceNow(t *testing.T) {
	c, s := tcpPair(t)
	cc, sc := &countingConn{Conn: c}, &countingConn{Conn: s}
	ss, err := Server(sc, Config{PrefaceNow: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Close() })
	// SETTINGS with MAX_CONCURRENT_STREAMS and INITIAL_WINDOW_SIZE at
	// least, and a WINDOW_UPDATE.
	if n := sc.n.Load(); n < 9+12+13 {
		t.Errorf("server wrote %d bytes before Server returned, want its first flight", n)
	}
	cs, err := Client(cc, Config{PrefaceNow: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	if n := cc.n.Load(); n < int64(len(http2.ClientPreface))+9 {
		t.Errorf("client wrote %d bytes before Client returned, want its first flight", n)
	}
	echoServer(t, ss)
	if err := roundTrip(t, cs, "ping"); err != nil {
		t.Fatal(err)
	}
}

// TestHeaderTableSize: the server's HPACK encoder, made at its first
// response, heeds the client's HEADER_TABLE_SIZE as if made at once: a
// limit at or above the default size changes nothing; a smaller one, even
// if raised again before the response, makes the response's header block
// begin with a dynamic table size update to the smallest (RFC 7541
// section 4.2).
func TestHeaderTableSize(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits []uint32
		update bool // the response begins with a size update to 0
	}{
		{"raised", []uint32{65536}, false},
		{"lowered", []uint32{0}, true},
		{"lowered, then raised", []uint32{0, 65536}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, ss := newRawClient(t, Config{})
			go func() {
				io.WriteString(rc.conn, http2.ClientPreface)
				for _, l := range tc.limits {
					rc.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: l})
				}
				// :method POST, :scheme https, :path /, :authority x.
				block := []byte{0x83, 0x87, 0x84, 0x41, 0x01, 'x'}
				rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true})
			}()
			go func() {
				st, err := ss.AcceptStream(ctxT(t))
				if err == nil {
					st.Write([]byte("x"))
				}
			}()
			for {
				rc.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				f, err := rc.fr.ReadFrame()
				if err != nil {
					t.Fatal(err)
				}
				h, ok := f.(*http2.HeadersFrame)
				if !ok {
					continue
				}
				b := h.HeaderBlockFragment()
				if got := len(b) > 0 && b[0] == 0x20; got != tc.update {
					t.Errorf("response header block %x: begins with a size update to 0: %v, want %v", b, got, tc.update)
				}
				return
			}
		})
	}
}

// readRecorder counts the bytes that reads of at most small bytes took
// from the connection.
type readRecorder struct {
	net.Conn
	small int
	n     atomic.Int64
}

func (c *readRecorder) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if len(p) <= c.small {
		c.n.Add(int64(n))
	}
	return n, err
}

// TestLargeDataSkipsReadBuffer: a large DATA frame that arrives at an idle
// session is read straight into its chunk; only its header goes through
// small reads (were the read buffer to fetch the header, it would take the
// first 4 KiB of the payload along, which would be copied twice).
func TestLargeDataSkipsReadBuffer(t *testing.T) {
	var rec *readRecorder
	cs, ss := newSessions(t, func(testing.TB) (net.Conn, net.Conn) {
		c, s := net.Pipe()
		rec = &readRecorder{Conn: s, small: readBufSize}
		return c, rec
	}, Config{}, Config{})
	// Past the padded first writes, whose padding may cut a frame in two.
	st, server := pastPaddedWrites(t, cs, ss)
	buf := make([]byte, 16<<10)
	rec.n.Store(0)
	payload := bytes.Repeat([]byte{7}, len(buf))
	go st.Write(payload)
	if _, err := io.ReadFull(server, buf); err != nil || !bytes.Equal(buf, payload) {
		t.Fatalf("read %v", err)
	}
	if n := rec.n.Load(); n > frameHeaderSz {
		t.Errorf("small reads took %d bytes of a %d-byte DATA frame, want its %d-byte header only", n, len(payload), frameHeaderSz)
	}
}

// TestWriteWithHeadroom: a write with free bytes before its data goes to
// the connection a DATA frame per Write, each frame's header right before
// its payload, a frame of 16,375 bytes filling a TLS record with its
// header; the stream's window and the session's 256 KiB pieces cut it
// without losing or reordering a byte, and the bytes before the data are
// all the free room it needs.
func TestWriteWithHeadroom(t *testing.T) {
	var rec *writeRecorder
	cs, ss := newSessions(t, func(testing.TB) (net.Conn, net.Conn) {
		c, s := net.Pipe()
		rec = &writeRecorder{Conn: c}
		return rec, s
	}, Config{}, Config{MaxStreamWindow: 100_000})
	// Past the padded first writes, which take the buffered path.
	tst, server := pastPaddedWrites(t, cs, ss)
	st := tst.(*Stream)
	buf := make([]byte, 1<<20)
	if st.WriteHeadroom() != frameHeaderSz {
		t.Fatalf("WriteHeadroom = %d", st.WriteHeadroom())
	}

	// 65,500 bytes first, while the stream window (100,000) has room for
	// all, once the server's SETTINGS have raised it from the default
	// 65,535 (the stream may have opened before they came).
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		cs.mu.Lock()
		win := st.sendWin
		cs.mu.Unlock()
		if win >= 65500 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the stream's send window stayed at %d", win)
		}
	}
	for _, size := range []int{65500, 1, 300_000} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*31 + size)
		}
		b := append(bytes.Repeat([]byte{0xaa}, frameHeaderSz), data...)
		rec.reset()
		errc := make(chan error, 1)
		go func() {
			n, err := st.WriteWithHeadroom(b, frameHeaderSz)
			if err == nil && n != size {
				err = fmt.Errorf("wrote %d of %d bytes", n, size)
			}
			errc <- err
		}()
		if _, err := io.ReadFull(server, buf[:size]); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:size], data) {
			t.Fatalf("%d bytes: the server read other bytes", size)
		}
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		var sizes []int
		total := 0
		for i, w := range rec.take() {
			if w.typ != http2.FrameData {
				continue // a WINDOW_UPDATE or SETTINGS ACK
			}
			if w.id != st.id || w.length+frameHeaderSz != w.n || w.length > tlsRecord-frameHeaderSz {
				t.Fatalf("%d bytes: write %d is %d bytes starting with a DATA frame of %d for stream %d; want one whole frame of at most %d for stream %d",
					size, i, w.n, w.length, w.id, tlsRecord-frameHeaderSz, st.id)
			}
			sizes = append(sizes, w.n)
			total += w.length
		}
		if total != size {
			t.Fatalf("%d bytes: DATA frames carried %d", size, total)
		}
		// Nothing cuts 65,500 bytes: four whole records.
		if size == 65500 && !slices.Equal(sizes, []int{tlsRecord, tlsRecord, tlsRecord, tlsRecord}) {
			t.Errorf("65,500 bytes went out in writes of %v bytes, want 4 of %d", sizes, tlsRecord)
		}
	}
}

// writeRecorder is a conn that notes each Write: its size, and the header
// of the frame it starts with.
type writeRecorder struct {
	net.Conn
	mu     sync.Mutex
	writes []recordedWrite
}

type recordedWrite struct {
	n, length int
	typ       http2.FrameType
	id        uint32
}

func (c *writeRecorder) Write(p []byte) (int, error) {
	c.mu.Lock()
	w := recordedWrite{n: len(p)}
	if len(p) >= frameHeaderSz {
		w.length = int(p[0])<<16 | int(p[1])<<8 | int(p[2])
		w.typ = http2.FrameType(p[3])
		w.id = binary.BigEndian.Uint32(p[5:]) & maxStreamID
	}
	c.writes = append(c.writes, w)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *writeRecorder) reset() { c.take() }

func (c *writeRecorder) take() []recordedWrite {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.writes
	c.writes = nil
	return w
}

// TestDeliverSmallMessages: with its connection read through a
// transport.WaitConn, the read loop writes a small message for a stream
// whose splice waits itself, to the splice's socket; every byte arrives
// once and in order, counted by the splice's count, also when the socket
// takes only part (the splice writes the rest) and among large writes
// that the splice writes; the windows come back, so that more than a
// window's worth goes through.
func TestDeliverSmallMessages(t *testing.T) {
	cs, ss := newSessions(t, waitPair, Config{}, Config{MaxStreamWindow: 65535, MaxConnWindow: 65535})
	cst, sst := openAccepted(t, cs, ss)
	dst, peer := tcpPair(t)
	defer peer.Close()
	// A small send buffer, so that a burst fills the socket and a
	// message the read loop writes goes in part.
	dst.(*net.TCPConn).SetWriteBuffer(4096)
	var counted atomic.Int64
	spliced := make(chan error, 1)
	var total int64
	go func() {
		var err error
		total, err = sst.SpliceTo(dst, func(n int) { counted.Add(int64(n)) })
		dst.Close()
		spliced <- err
	}()
	if _, err := cst.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 5)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "hello" {
		t.Fatalf("first message: %q, %v", got, err)
	}

	// Messages one at a time, each answered: the read loop writes them.
	var want bytes.Buffer
	want.WriteString("hello")
	msg := make([]byte, 300)
	for i := range 50 {
		for j := range msg {
			msg[j] = byte(i + j)
		}
		want.Write(msg)
		if _, err := cst.Write(msg); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(peer, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	ss.mu.Lock()
	delivered := ss.delivered
	ss.mu.Unlock()
	if delivered < 25 {
		t.Errorf("the read loop wrote %d of 50 messages itself, want most", delivered)
	}

	// Now a burst of small and large writes while the peer does not
	// read: the socket fills, and what the read loop cannot write, the
	// splice does, after the windows came back many times.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		for i := range 400 {
			size := 100 + i%7*500
			if i%50 == 0 {
				size = 100_000
			}
			b := make([]byte, size)
			for j := range b {
				b[j] = byte(i*13 + j)
			}
			want.Write(b)
			if _, err := cst.Write(b); err != nil {
				t.Error(err)
				return
			}
		}
		cst.CloseWrite()
	}()
	time.Sleep(100 * time.Millisecond)
	all, err := io.ReadAll(peer)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-spliced; err != nil {
		t.Fatalf("SpliceTo: %v", err)
	}
	<-wrote
	if !bytes.Equal(all, want.Bytes()[len("hello")+50*300:]) {
		t.Fatalf("the socket got %d bytes, not the %d written in order", len(all), want.Len()-len("hello")-50*300)
	}
	if n := counted.Load(); n != int64(want.Len()) || total != n {
		t.Errorf("count saw %d bytes and SpliceTo returned %d, want %d", n, total, want.Len())
	}
}

// TestDeliverToFullSocket: a small message the read loop cannot write
// (the splice's socket is full) stays the stream's, whole, for the splice
// (here a Read) to take.
func TestDeliverToFullSocket(t *testing.T) {
	cs, ss := newSessions(t, waitPair, Config{}, Config{})
	cst, sst := openAccepted(t, cs, ss)

	// A socket whose peer does not read, filled until it takes nothing.
	dst, peer := tcpPair(t)
	defer dst.Close()
	defer peer.Close()
	dst.(*net.TCPConn).SetWriteBuffer(4096)
	peer.(*net.TCPConn).SetReadBuffer(4096)
	dst.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := dst.Write(make([]byte, 8<<20)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("filling the socket: %v", err)
	}
	rc, err := dst.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	counted := 0
	ss.mu.Lock()
	sst.sink, sst.sinkCount, sst.spliceIdle = rc, func(n int) { counted += n }, true
	ss.mu.Unlock()

	msg := bytes.Repeat([]byte("m"), 300)
	if _, err := cst.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	sst.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(sst, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("the stream kept %q, %v", got, err)
	}
	ss.mu.Lock()
	delivered := ss.delivered
	ss.mu.Unlock()
	if delivered != 1 || counted != 0 {
		t.Errorf("the read loop tried %d messages and counted %d bytes written; want 1 tried, 0 written", delivered, counted)
	}
}

// pastPaddedWrites opens a stream from cs and returns both ends once
// the stream's padded first writes (paddedWrites) have crossed.
func pastPaddedWrites(t *testing.T, cs, ss *Session) (transport.Stream, *Stream) {
	t.Helper()
	ctx := ctxT(t)
	st, err := cs.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sst := make(chan *Stream, 1)
	go func() {
		st, _ := ss.AcceptStream(ctx)
		sst <- st
	}()
	for range paddedWrites + 1 {
		if _, err := st.Write([]byte("open")); err != nil {
			t.Fatal(err)
		}
	}
	server := <-sst
	if server == nil {
		t.Fatal("no stream accepted")
	}
	if _, err := io.ReadFull(server, make([]byte, 4*(paddedWrites+1))); err != nil {
		t.Fatal(err)
	}
	return st, server
}
