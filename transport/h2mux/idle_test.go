package h2mux

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/net/http2"

	"github.com/merpati/merpati/transport"
)

// These tests run in a synctest bubble: time is fake, so a session can sit
// idle for minutes with the real defaults, and every frame either side
// writes is recorded with the (fake) time it was written.

// A wireFrame is one frame a session wrote.
type wireFrame struct {
	at      time.Duration // since the wire log began
	typ     http2.FrameType
	flags   http2.Flags
	stream  uint32
	payload []byte
}

func (f wireFrame) String() string {
	return fmt.Sprintf("%v %v stream=%d len=%d", f.at, f.typ, f.stream, len(f.payload))
}

// wireLog records the frames written through a connection.
type wireLog struct {
	mu     sync.Mutex
	start  time.Time
	skip   int // connection preface bytes still to skip
	buf    []byte
	frames []wireFrame
	closed time.Duration // when Close was first called; -1 before
}

// recordConn records in log every frame written through the Conn, and
// when it is closed.
type recordConn struct {
	net.Conn
	log *wireLog
}

func newRecordConn(c net.Conn, client bool) *recordConn {
	l := &wireLog{start: time.Now(), closed: -1}
	if client {
		l.skip = len(http2.ClientPreface)
	}
	return &recordConn{Conn: c, log: l}
}

func (c *recordConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.log.add(p[:n])
	return n, err
}

func (c *recordConn) Close() error {
	c.log.mu.Lock()
	if c.log.closed < 0 {
		c.log.closed = time.Since(c.log.start)
	}
	c.log.mu.Unlock()
	return c.Conn.Close()
}

func (l *wireLog) add(p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.skip > 0 {
		n := min(l.skip, len(p))
		p, l.skip = p[n:], l.skip-n
	}
	l.buf = append(l.buf, p...)
	for len(l.buf) >= frameHeaderSz {
		n := int(l.buf[0])<<16 | int(l.buf[1])<<8 | int(l.buf[2])
		if len(l.buf) < frameHeaderSz+n {
			break
		}
		l.frames = append(l.frames, wireFrame{
			at:      time.Since(l.start),
			typ:     http2.FrameType(l.buf[3]),
			flags:   http2.Flags(l.buf[4]),
			stream:  binary.BigEndian.Uint32(l.buf[5:9]) & maxStreamID,
			payload: bytes.Clone(l.buf[frameHeaderSz : frameHeaderSz+n]),
		})
		l.buf = l.buf[frameHeaderSz+n:]
	}
}

// mark returns how many frames have been written so far.
func (l *wireLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.frames)
}

// from returns the frames written after the first i.
func (l *wireLog) from(i int) []wireFrame {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.frames[i:])
}

func (l *wireLog) closedAt() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// count returns how many of frames have type typ.
func count(frames []wireFrame, typ http2.FrameType) int {
	n := 0
	for _, f := range frames {
		if f.typ == typ {
			n++
		}
	}
	return n
}

// bubbleSessions starts a client and a server session over net.Pipe,
// recording what each writes, inside the caller's synctest bubble.
func bubbleSessions(t *testing.T, ccfg, scfg Config) (cs, ss *Session, cw, sw *wireLog) {
	t.Helper()
	c, s := net.Pipe()
	rc, rs := newRecordConn(c, true), newRecordConn(s, false)
	cs, err := Client(rc, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	ss, err = Server(rs, scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.Close()
		ss.Close()
	})
	return cs, ss, rc.log, rs.log
}

// bubbleEcho echoes every stream ss accepts until ss ends.
func bubbleEcho(t *testing.T, ss *Session) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			st, err := ss.AcceptStream(context.Background())
			if err != nil {
				return
			}
			wg.Go(func() {
				defer st.Close()
				if _, err := io.Copy(st, st); err == nil {
					st.CloseWrite()
				}
			})
		}
	})
	t.Cleanup(func() {
		ss.Close()
		wg.Wait()
	})
}

// roundTrip opens a stream on cs, echoes msg through it and ends it.
func roundTrip(t *testing.T, cs *Session, msg string) error {
	t.Helper()
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Write([]byte(msg)); err != nil {
		return err
	}
	if err := st.CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(st)
	if err != nil {
		return err
	}
	if string(got) != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// TestIdleOnTheWire leaves a session idle for five minutes after one
// stream and checks what each side writes: no PING ever (the old
// keep-alive sent one each way every 15 s), and with the default
// IdleTimeout the server's GOAWAY (NO_ERROR, last stream 1) after 62.7–65.3 s
// followed by the close, after which the client's session has ended in
// an orderly way. Without IdleTimeout nothing at all is written.
func TestIdleOnTheWire(t *testing.T) {
	tests := []struct {
		name      string
		idle      time.Duration // server IdleTimeout
		wantClose bool
	}{
		{"defaults", 0, true},
		{"no idle close", -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cs, ss, cw, sw := bubbleSessions(t, Config{}, Config{IdleTimeout: tt.idle})
				bubbleEcho(t, ss)
				if err := roundTrip(t, cs, "hello"); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				quiet := time.Since(cw.start)
				cm, sm := cw.mark(), sw.mark()
				time.Sleep(5 * time.Minute)
				synctest.Wait()
				cf, sf := cw.from(cm), sw.from(sm)
				t.Logf("after the stream, in 5 idle minutes: client wrote %v, server wrote %v", cf, sf)
				if n := count(cw.from(0), http2.FramePing) + count(sw.from(0), http2.FramePing); n != 0 {
					t.Errorf("%d PING frames, want none", n)
				}
				if len(cf) != 0 {
					t.Errorf("client wrote %d frames while idle, want none", len(cf))
				}
				if !tt.wantClose {
					if len(sf) != 0 {
						t.Errorf("server wrote %d frames while idle, want none", len(sf))
					}
					select {
					case <-cs.Done():
						t.Fatalf("client session ended: %v", cs.Err())
					case <-ss.Done():
						t.Fatalf("server session ended: %v", ss.Err())
					default:
					}
					if err := roundTrip(t, cs, "again"); err != nil {
						t.Fatalf("stream after 5 idle minutes: %v", err)
					}
					return
				}
				if len(sf) != 1 || sf[0].typ != http2.FrameGoAway {
					t.Fatalf("server wrote %v while idle, want one GOAWAY", sf)
				}
				ga := sf[0]
				last := binary.BigEndian.Uint32(ga.payload[0:4])
				code := http2.ErrCode(binary.BigEndian.Uint32(ga.payload[4:8]))
				if last != 1 || code != http2.ErrCodeNo {
					t.Errorf("GOAWAY last=%d code=%v, want 1 NO_ERROR", last, code)
				}
				if after := ga.at - quiet; after < DefaultIdleTimeout-DefaultIdleTimeout/idleJitter || after > DefaultIdleTimeout+DefaultIdleTimeout/idleJitter {
					t.Errorf("GOAWAY %v after the last stream, want 62.7–65.3 s", after)
				}
				if c := sw.closedAt(); c < ga.at || c > ga.at+closeTimeout {
					t.Errorf("server closed the connection at %v, GOAWAY at %v: want the close right after", c, ga.at)
				}
				if !errors.Is(ss.Err(), ErrIdleClosed) {
					t.Errorf("server Err = %v, want ErrIdleClosed", ss.Err())
				}
				select {
				case <-cs.Done():
				default:
					t.Fatal("client session still up after the idle close")
				}
				if err := cs.Err(); !errors.Is(err, transport.ErrOrderlyClose) || !errors.Is(err, net.ErrClosed) {
					t.Errorf("client Err = %v, want an orderly close", err)
				}
				_, err := cs.OpenStream(context.Background())
				if !errors.Is(err, transport.ErrOrderlyClose) {
					t.Errorf("OpenStream after the idle close = %v, want ErrOrderlyClose", err)
				}
			})
		})
	}
}

// TestStreamsKeepSessionOpen keeps one stream open, silent, for five
// minutes: the server does not close the session, nobody pings, and the
// idle clock starts only when the stream ends.
func TestStreamsKeepSessionOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs, ss, cw, sw := bubbleSessions(t, Config{}, Config{})
		bubbleEcho(t, ss)
		st := openEchoed(t, cs)
		buf := make([]byte, 1)
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		select {
		case <-ss.Done():
			t.Fatalf("server closed a session with an open stream: %v", ss.Err())
		default:
		}
		if n := count(cw.from(0), http2.FramePing) + count(sw.from(0), http2.FramePing); n != 0 {
			t.Errorf("%d PING frames, want none", n)
		}
		if _, err := st.Write([]byte("y")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(st, buf); err != nil || buf[0] != 'y' {
			t.Fatalf("echo after 5 minutes: %q, %v", buf, err)
		}
		st.CloseWrite()
		io.Copy(io.Discard, st)
		st.Close()
		synctest.Wait()
		ended := time.Since(sw.start)
		time.Sleep(DefaultIdleTimeout - DefaultIdleTimeout/idleJitter - time.Second)
		synctest.Wait()
		select {
		case <-ss.Done():
			t.Fatal("server closed the session less than IdleTimeout after its last stream")
		default:
		}
		time.Sleep(2*DefaultIdleTimeout/idleJitter + 2*time.Second)
		synctest.Wait()
		if !errors.Is(ss.Err(), ErrIdleClosed) {
			t.Fatalf("server Err = %v, want ErrIdleClosed %v after the last stream", ss.Err(), time.Since(sw.start)-ended)
		}
	})
}

// TestIdleTimeoutFunc changes a server's idle timeout while its session
// lives, as a relay does once it has learned its cover site's: a stream
// stays open, silent, across the change from the default to 8 s, and when
// it ends, 20 s in, the session closes 8 s ± 2 % later, not at the check
// the default scheduled (64 s in).
func TestIdleTimeoutFunc(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var idle atomic.Int64 // zero: IdleTimeout, the default
		fn := func() time.Duration { return time.Duration(idle.Load()) }
		cs, ss, _, sw := bubbleSessions(t, Config{}, Config{IdleTimeoutFunc: fn})
		bubbleEcho(t, ss)
		st := openEchoed(t, cs)
		time.Sleep(10 * time.Second)
		const learned = 8 * time.Second
		idle.Store(int64(learned))
		time.Sleep(10 * time.Second)
		st.CloseWrite()
		io.Copy(io.Discard, st)
		st.Close()
		synctest.Wait()
		ended := time.Since(sw.start)
		<-ss.Done()
		if !errors.Is(ss.Err(), ErrIdleClosed) {
			t.Fatalf("server Err = %v, want ErrIdleClosed", ss.Err())
		}
		if after := sw.closedAt() - ended; after < learned-learned/idleJitter || after > learned+learned/idleJitter+closeTimeout {
			t.Errorf("server closed %v after the last stream, want 8 s ± 2 %%", after)
		}
	})
}

// TestReuseProbe checks Chrome's ping-before-reuse: a stream opened on a
// session that has heard from the server recently sends no PING; one
// opened after a longer silence sends a PING ahead of its HEADERS, without
// waiting for the answer.
func TestReuseProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs, ss, cw, sw := bubbleSessions(t, Config{}, Config{IdleTimeout: -1})
		bubbleEcho(t, ss)
		for range 5 { // a stream every 9 s: under ReuseProbe
			if err := roundTrip(t, cs, "busy"); err != nil {
				t.Fatal(err)
			}
			time.Sleep(DefaultReuseProbe - time.Second)
		}
		if n := count(cw.from(0), http2.FramePing); n != 0 {
			t.Fatalf("%d PINGs on a session in use, want none", n)
		}
		time.Sleep(DefaultReuseProbe + DefaultReuseProbe/reuseJitter) // silent past the jittered limit
		synctest.Wait()
		before := cw.mark()
		if err := roundTrip(t, cs, "after a pause"); err != nil {
			t.Fatal(err)
		}
		f := cw.from(before)
		if len(f) < 2 || f[0].typ != http2.FramePing || f[0].flags.Has(http2.FlagPingAck) || f[1].typ != http2.FrameHeaders {
			t.Fatalf("client wrote %v after a pause, want PING then HEADERS", f)
		}
		if n := count(f, http2.FramePing); n != 1 {
			t.Errorf("%d PINGs for one reuse, want 1", n)
		}
		synctest.Wait()
		if cs.Err() != nil {
			t.Fatalf("session died after an answered probe: %v", cs.Err())
		}
		if n := count(sw.from(0), http2.FramePing); n != 1 {
			t.Errorf("server wrote %d PING ACKs, want 1", n)
		}
		cs.mu.Lock()
		left := len(cs.pings)
		cs.mu.Unlock()
		if left != 0 {
			t.Errorf("%d PINGs still awaited after the answer", left)
		}
	})
}

// TestReuseProbeSilentPeer checks that a session whose server has gone
// silent dies when reused: the PING ahead of the stream gets no answer
// within Timeout.
func TestReuseProbeSilentPeer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, s := net.Pipe()
		cs, err := Client(c, Config{})
		if err != nil {
			t.Fatal(err)
		}
		defer cs.Close()
		var wg sync.WaitGroup
		defer wg.Wait()
		defer s.Close()
		// A server that answers the preface with SETTINGS and then
		// reads everything and says nothing, as a blackholed relay.
		wg.Go(func() {
			preface := make([]byte, len(http2.ClientPreface))
			if _, err := io.ReadFull(s, preface); err != nil {
				return
			}
			fr := http2.NewFramer(s, s)
			wg.Go(func() { io.Copy(io.Discard, s) })
			fr.WriteSettings()
		})
		time.Sleep(time.Minute)
		synctest.Wait()
		if cs.Err() != nil {
			t.Fatalf("idle session died without being used: %v", cs.Err())
		}
		st, err := cs.OpenStream(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		opened := time.Now()
		if _, err := st.Write([]byte("x")); err != nil {
			t.Fatalf("the open waited for the probe: %v", err)
		}
		<-cs.Done()
		if took := time.Since(opened); took < DefaultTimeout || took > DefaultTimeout+time.Second {
			t.Errorf("session died %v after the reuse, want after Timeout (%v)", took, DefaultTimeout)
		}
		if !errors.Is(cs.Err(), ErrKeepAliveTimeout) {
			t.Errorf("Err = %v, want ErrKeepAliveTimeout", cs.Err())
		}
		if _, err := st.Read(make([]byte, 1)); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("Read on the dead session = %v, want an error", err)
		}
	})
}

// rawGoAwayServer is a hand-written server for the GOAWAY tests: it
// answers the preface, then runs script with a framer on the connection
// and a channel of the frames the client sends.
func rawGoAwayServer(t *testing.T, script func(fr *http2.Framer, frames <-chan http2.Frame, conn net.Conn)) *Session {
	t.Helper()
	c, s := net.Pipe()
	cs, err := Client(c, Config{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cs.Close()
		s.Close()
		wg.Wait()
	})
	wg.Go(func() {
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(s, preface); err != nil {
			return
		}
		fr := http2.NewFramer(s, nil)
		frames := make(chan http2.Frame, 64)
		wg.Go(func() {
			defer close(frames)
			rd := http2.NewFramer(nil, s)
			for {
				f, err := rd.ReadFrame()
				if err != nil {
					return
				}
				frames <- f
			}
		})
		if err := fr.WriteSettings(); err != nil {
			return
		}
		script(fr, frames, s)
	})
	return cs
}

// nextHeaders returns the next HEADERS frame's stream from frames.
func nextHeaders(frames <-chan http2.Frame) (uint32, bool) {
	for f := range frames {
		if h, ok := f.(*http2.HeadersFrame); ok {
			return h.StreamID, true
		}
	}
	return 0, false
}

// respond writes a :status 200 response on stream id.
func respond(fr *http2.Framer, id uint32, end bool) error {
	return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: []byte{0x88}, EndHeaders: true, EndStream: end})
}

// TestGoAwayWithOpenStream checks a GOAWAY (NO_ERROR, last stream 1)
// arriving while stream 1 is open and stream 3's HEADERS is already on
// its way: stream 1 carries on to its end, stream 3 and new opens fail
// with an orderly error (retry elsewhere), and once stream 1 has ended
// the client closes the session itself, in an orderly way.
func TestGoAwayWithOpenStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		proceed := make(chan struct{})
		cs := rawGoAwayServer(t, func(fr *http2.Framer, frames <-chan http2.Frame, conn net.Conn) {
			id1, ok := nextHeaders(frames)
			if !ok || respond(fr, id1, false) != nil {
				return
			}
			if _, ok := nextHeaders(frames); !ok {
				return
			}
			if fr.WriteGoAway(id1, http2.ErrCodeNo, nil) != nil {
				return
			}
			<-proceed
			fr.WriteData(id1, true, []byte("rest of 1"))
			for range frames { // until the client closes
			}
		})
		ctx := context.Background()
		st1, err := cs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer st1.Close()
		if _, err := st1.Write([]byte("one")); err != nil {
			t.Fatal(err)
		}
		st1.CloseWrite()
		st3, err := cs.OpenStream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer st3.Close()
		// The GOAWAY may already refuse the Write (after its bytes were
		// handed over); the Read fails either way.
		_, werr := st3.Write([]byte("three"))
		_, rerr := st3.Read(make([]byte, 1))
		for i, err := range []error{werr, rerr} {
			if i == 0 && err == nil {
				continue
			}
			if !errors.Is(err, ErrStreamReset) || !errors.Is(err, transport.ErrOrderlyClose) || !errors.Is(err, net.ErrClosed) {
				t.Errorf("stream above GOAWAY's last: %v, want a refused stream, orderly", err)
			}
		}
		if _, err := cs.OpenStream(ctx); !errors.Is(err, transport.ErrOrderlyClose) {
			t.Errorf("OpenStream after GOAWAY = %v, want ErrOrderlyClose", err)
		}
		synctest.Wait()
		select {
		case <-cs.Done():
			t.Fatalf("session closed with stream 1 still open: %v", cs.Err())
		default:
		}
		close(proceed)
		got, err := io.ReadAll(st1)
		if err != nil || string(got) != "rest of 1" {
			t.Fatalf("stream 1 after GOAWAY: %q, %v", got, err)
		}
		synctest.Wait()
		select {
		case <-cs.Done():
		default:
			t.Fatal("session still up after its last stream ended")
		}
		if err := cs.Err(); !errors.Is(err, transport.ErrOrderlyClose) {
			t.Errorf("Err = %v, want an orderly close", err)
		}
	})
}

// TestGoAwayCutsStream checks that a GOAWAY followed by the connection's
// end while a stream is still open is not an orderly close: the stream
// was cut short (a relay shutting down), so the client must fail over.
// A GOAWAY with an error code is not orderly either.
func TestGoAwayCutsStream(t *testing.T) {
	for _, code := range []http2.ErrCode{http2.ErrCodeNo, http2.ErrCodeInternal} {
		t.Run(code.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cs := rawGoAwayServer(t, func(fr *http2.Framer, frames <-chan http2.Frame, conn net.Conn) {
					id, ok := nextHeaders(frames)
					if !ok || respond(fr, id, false) != nil {
						return
					}
					fr.WriteGoAway(id, code, nil)
					conn.Close()
				})
				st, err := cs.OpenStream(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				st.Write([]byte("x"))
				if _, err := io.ReadAll(st); err == nil {
					t.Error("stream cut by the connection's end read to EOF")
				}
				<-cs.Done()
				if err := cs.Err(); errors.Is(err, transport.ErrOrderlyClose) {
					t.Errorf("Err = %v: a cut stream is not an orderly close", err)
				}
			})
		})
	}
}

// openEchoed opens a stream on cs and has a byte echoed on it (by
// bubbleEcho), so that the stream is open on both sides.
func openEchoed(t *testing.T, cs *Session) transport.Stream {
	t.Helper()
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(st, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestIdleTimerStaysStopped: a stream that ends after its session died
// does not arm the idle timer again (which would keep the dead session in
// memory until it ran).
func TestIdleTimerStaysStopped(t *testing.T) {
	c, s := tcpPair(t)
	cs, err := Client(c, Config{})
	if err != nil {
		t.Fatal(err)
	}
	ss, err := Server(s, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	_, st := openAccepted(t, cs, ss)
	c.Close() // the client's connection drops with the stream open
	<-ss.Done()
	st.Close()
	cs.Close()
	ss.mu.Lock()
	armed := ss.idleTimer.Stop()
	ss.mu.Unlock()
	if armed {
		t.Error("a stream ending after its session died armed the idle timer again")
	}
}

// openAccepted opens a stream from cs, accepts it on ss, and returns
// both ends once a byte has crossed.
func openAccepted(t *testing.T, cs, ss *Session) (transport.Stream, *Stream) {
	t.Helper()
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	sst, err := ss.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(sst, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	return st, sst
}
