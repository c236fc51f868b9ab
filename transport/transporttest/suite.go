package transporttest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/merpati/merpati/transport"
)

// MakeSessions makes one connected pair of sessions of the carrier under
// test: the client's end and the relay's end of the same session. stop
// closes both, and anything else made for them; it is called once, after
// the subtest, possibly when either end has already been closed.
// MakeSessions fails t if it cannot connect.
type MakeSessions func(t *testing.T) (client transport.Session, relay transport.ServerSession, stop func())

// Connect dials d and accepts on l at the same time, and returns the two
// ends of the new session and a function that closes both. It fails t if
// either side fails within 20 seconds. Only one Connect may run on a
// listener at a time (the session accepted is assumed to be the one just
// dialled), and the carrier's Accept must return before the client opens
// a stream.
func Connect(t testing.TB, d transport.Dialer, l transport.Listener) (transport.Session, transport.ServerSession, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type accepted struct {
		s   transport.ServerSession
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		s, err := l.Accept(ctx)
		ch <- accepted{s, err}
	}()
	c, err := d.Dial(ctx)
	if err != nil {
		cancel()
		if a := <-ch; a.s != nil {
			a.s.Close()
		}
		t.Fatalf("%s dial: %v", d.Carrier(), err)
	}
	a := <-ch
	if a.err != nil {
		c.Close()
		t.Fatalf("%s accept: %v", d.Carrier(), a.err)
	}
	return c, a.s, func() {
		c.Close()
		a.s.Close()
	}
}

// Timing of the suite. Nothing is asserted to happen within less than
// [long]; the short durations only set deadlines or give a call time to
// block, and are long enough that a busy machine does not make a correct
// carrier fail.
const (
	// long bounds every wait for something that must happen.
	long = 10 * time.Second
	// shortDeadline is a deadline that is meant to pass.
	shortDeadline = 100 * time.Millisecond
	// settle gives a goroutine time to block in a call before the test
	// acts on it. A call that has not blocked yet must behave the same,
	// so it only makes the test exercise the blocked case more often.
	settle = 100 * time.Millisecond
	// noBlockLimit is how much a writer may hand a carrier whose peer
	// reads nothing before the suite decides it does not flow-control.
	noBlockLimit = 64 << 20
	// stallTime is how long a writer's progress must stop before the
	// suite takes it as blocked by flow control.
	stallTime = 500 * time.Millisecond
)

// TestStreams runs the stream conformance suite against the carrier whose
// sessions mk makes, each subtest on a fresh session. It checks what
// [transport.Session], [transport.ServerSession] and [transport.Stream]
// promise, as golang.org/x/net/nettest.TestConn does for a net.Conn but
// with merpati's stream semantics: Close is abortive, so the peer's Read
// fails with an error that is not io.EOF; CloseWrite is the graceful
// half-close after which the peer reads io.EOF and this side may still
// read.
//
// The subtests:
//   - BasicIO: 1 MiB echoed, each direction ended with CloseWrite and
//     read to io.EOF.
//   - PingPong: 200 alternating round trips of 8 bytes.
//   - RacyRead, RacyWrite: concurrent Reads (Writes) from 8 goroutines
//     while each keeps changing the deadline; only timeouts may fail them.
//   - ReadTimeout, WriteTimeout: a future deadline passes while a Read
//     waits for data or a Write waits for flow control; the call fails
//     with os.ErrDeadlineExceeded (and a net.Error whose Timeout is
//     true), not before the deadline; the stream still works after the
//     deadline is cleared, and the peer gets exactly the bytes Write
//     reported written (or, as [transport.Stream] allows, the write side
//     stays broken: Writes fail as timed out and the peer sees an abort
//     after no more than Write reported).
//   - PastDeadline: a deadline in the past fails Read and Write at once
//     and sends nothing.
//   - PresentDeadline: setting the deadline to now unblocks a pending
//     Read and a Write blocked by flow control.
//   - DeadlineCleared: a deadline cleared (or moved far away) before it
//     passes does not fail a pending Read or Write.
//   - HalfClose: CloseWrite in either direction first; the other
//     direction goes on; io.EOF is sticky; Write after CloseWrite fails.
//   - CloseAbortsPeer: Close on either end fails the peer's pending Read
//     and Write with an error other than io.EOF, and the closer's own
//     calls.
//   - SlowReader: a writer to a peer that reads nothing blocks before
//     64 MiB (it does not buffer without bound), then 8 MiB
//     and more pass intact through a reader that reads small pieces with
//     pauses.
//   - ManyStreams: 200 concurrent streams each echo their own data, the
//     relay ending each as [transport.Splice] does (CloseWrite, then
//     Close once both directions ended), which must not lose data.
//   - ClientSessionClose, RelaySessionClose: closing either end's
//     session fails pending stream calls and AcceptStream; both Done
//     channels close; the client's Err is nil before and set after;
//     Ping and stream Writes then fail; after the client's own Close,
//     OpenStream fails with net.ErrClosed and a second Close returns nil.
//   - Ping: a live session answers Ping.
//
// The whole suite takes a few seconds; it does not assert any duration
// shorter than 10 seconds.
func TestStreams(t *testing.T, mk MakeSessions) {
	tests := []struct {
		name string
		f    func(*env)
	}{
		{"BasicIO", testBasicIO},
		{"PingPong", testPingPong},
		{"RacyRead", testRacyRead},
		{"RacyWrite", testRacyWrite},
		{"ReadTimeout", testReadTimeout},
		{"WriteTimeout", testWriteTimeout},
		{"PastDeadline", testPastDeadline},
		{"PresentDeadline", testPresentDeadline},
		{"DeadlineCleared", testDeadlineCleared},
		{"HalfClose", testHalfClose},
		{"CloseAbortsPeer", testCloseAbortsPeer},
		{"SlowReader", testSlowReader},
		{"ManyStreams", testManyStreams},
		{"ClientSessionClose", testClientSessionClose},
		{"RelaySessionClose", testRelaySessionClose},
		{"Ping", testPing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.f(newEnv(t, mk))
		})
	}
}

// An env is one subtest's session pair and the goroutines it started.
type env struct {
	t      *testing.T
	client transport.Session
	relay  transport.ServerSession

	wg   sync.WaitGroup
	mu   sync.Mutex
	over bool // the subtest has ended: errors are dropped
}

// newEnv makes the sessions of a subtest. At cleanup it closes them and
// then waits for the goroutines started with [env.goAsync]; a goroutine
// still blocked long after both sessions closed is a contract violation.
func newEnv(t *testing.T, mk MakeSessions) *env {
	e := &env{t: t}
	t.Cleanup(e.wait) // runs after stop, below
	c, r, stop := mk(t)
	e.client, e.relay = c, r
	t.Cleanup(stop)
	return e
}

// goAsync runs f in a goroutine that the subtest waits for.
func (e *env) goAsync(f func()) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		f()
	}()
}

// errorf reports a failure from any goroutine, until the subtest ends.
func (e *env) errorf(format string, args ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.over {
		e.t.Helper()
		e.t.Errorf(format, args...)
	}
}

func (e *env) wait() {
	done := make(chan struct{})
	go func() {
		e.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(long):
		e.t.Errorf("calls still blocked %v after both sessions were closed: closing a session must end every call on its streams", long)
	}
	e.mu.Lock()
	e.over = true
	e.mu.Unlock()
}

// run calls f in a goroutine and returns its error; it fails the subtest
// if f has not returned within long.
func (e *env) run(what string, f func() error) error {
	e.t.Helper()
	ch := make(chan error, 1)
	e.goAsync(func() { ch <- f() })
	select {
	case err := <-ch:
		return err
	case <-time.After(long):
		e.t.Fatalf("%s: still blocked after %v", what, long)
		return nil
	}
}

// must is run that fails the subtest on an error.
func (e *env) must(what string, f func() error) {
	e.t.Helper()
	if err := e.run(what, f); err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// awaitErr waits up to long for an error from ch.
func (e *env) awaitErr(what string, ch <-chan error) error {
	e.t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(long):
		e.t.Fatalf("%s: still blocked after %v", what, long)
		return nil
	}
}

// openMarker is the byte each stream pair begins with: the relay sees a
// stream only once its client has written, as the contract allows.
const openMarker = 0x5a

// pair opens a stream on the client session and accepts it on the relay
// session, after the client's first byte (which it consumes).
func (e *env) pair() (c, r transport.Stream) {
	e.t.Helper()
	e.must("OpenStream", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), long)
		defer cancel()
		var err error
		if c, err = e.client.OpenStream(ctx); err != nil {
			return err
		}
		_, err = c.Write([]byte{openMarker})
		return err
	})
	e.must("AcceptStream", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), long)
		defer cancel()
		var err error
		if r, err = e.relay.AcceptStream(ctx); err != nil {
			return err
		}
		var b [1]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return fmt.Errorf("read the stream's first byte: %w", err)
		}
		if b[0] != openMarker {
			return fmt.Errorf("stream's first byte is %#x, want %#x: streams crossed", b[0], openMarker)
		}
		return nil
	})
	// Closed without waiting: a Close that blocks is reported by
	// [env.wait], after the sessions close, instead of hanging here.
	e.t.Cleanup(func() {
		e.goAsync(func() { c.Close() })
		e.goAsync(func() { r.Close() })
	})
	return c, r
}

// pattern is the data the suite sends: position i of a stream carries
// pattern[i % len(pattern)]. The length is not a power of two, so that
// chunk boundaries drift over it.
var pattern = func() []byte {
	b := make([]byte, 1<<20+7)
	rand.NewChaCha8([32]byte{'m', 'e', 'r', 'p', 'a', 't', 'i'}).Read(b)
	return b
}()

// fillPattern fills b with the pattern from stream offset off.
func fillPattern(b []byte, off int64) {
	for len(b) > 0 {
		i := int(off % int64(len(pattern)))
		n := copy(b, pattern[i:])
		b, off = b[n:], off+int64(n)
	}
}

// patternAt returns n bytes of the pattern from stream offset off.
func patternAt(off int64, n int) []byte {
	b := make([]byte, n)
	fillPattern(b, off)
	return b
}

// matchesPattern reports whether b is the pattern from offset off.
func matchesPattern(b []byte, off int64) bool {
	for len(b) > 0 {
		i := int(off % int64(len(pattern)))
		n := min(len(b), len(pattern)-i)
		if !bytes.Equal(b[:n], pattern[i:i+n]) {
			return false
		}
		b, off = b[n:], off+int64(n)
	}
	return true
}

// isTimeout reports whether err is what a passed deadline must give: an
// error wrapping os.ErrDeadlineExceeded whose Timeout method says so.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) && errors.As(err, &ne) && ne.Timeout()
}

// isAbort reports whether err is what a stream's pending call must get
// when the stream or its session is closed under it: an error, and not
// io.EOF, which would pass a truncated stream off as complete.
//
// It uses errors.Is, as [transport.Splice] does to tell a clean end from
// an abort: an abort error that wraps io.EOF somewhere in its chain is
// passed on as a half-close.
func isAbort(err error) bool {
	return err != nil && !errors.Is(err, io.EOF)
}

// errNoFlowControl is what fillWindow returns when the carrier never
// blocks a writer whose peer reads nothing.
var errNoFlowControl = errors.New("no flow control")

// fillWindow writes the pattern to w in 64 KiB pieces until a Write fails,
// and returns the bytes written and the error. A peer that never reads
// must stop it by flow control: past noBlockLimit it gives up with an
// error saying so.
func fillWindow(w io.Writer) (int64, error) {
	chunk := make([]byte, 64<<10)
	var off int64
	for off < noBlockLimit {
		fillPattern(chunk, off)
		n, err := w.Write(chunk)
		off += int64(n)
		if err != nil {
			return off, err
		}
	}
	return off, fmt.Errorf("wrote %d MiB to a peer that reads nothing without blocking: %w", off>>20, errNoFlowControl)
}

// testBasicIO: 1 MiB goes out, is echoed back, and both directions end
// with CloseWrite and io.EOF.
func testBasicIO(e *env) {
	c, r := e.pair()
	e.goAsync(func() {
		if _, err := io.Copy(r, r); err != nil {
			e.errorf("relay echo: %v", err)
		}
		if err := r.CloseWrite(); err != nil {
			e.errorf("relay CloseWrite: %v", err)
		}
	})
	data := patternAt(0, 1<<20)
	e.goAsync(func() {
		if n, err := c.Write(data); err != nil || n != len(data) {
			e.errorf("client Write: %d, %v; want %d, nil", n, err, len(data))
		}
		if err := c.CloseWrite(); err != nil {
			e.errorf("client CloseWrite: %v", err)
		}
	})
	var got []byte
	e.must("reading the echo to EOF", func() (err error) {
		got, err = io.ReadAll(c)
		return err
	})
	if !bytes.Equal(got, data) {
		e.t.Fatalf("echo: got %d bytes, want the %d sent (equal prefix: %v)", len(got), len(data), bytes.HasPrefix(data, got))
	}
}

// testPingPong: the two ends take turns, each waiting for the other's
// message before answering.
func testPingPong(e *env) {
	c, r := e.pair()
	const rounds = 200
	e.goAsync(func() {
		var b [8]byte
		for {
			if _, err := io.ReadFull(r, b[:]); err != nil {
				if err != io.EOF {
					e.errorf("relay read: %v", err)
				}
				r.CloseWrite()
				return
			}
			binary.BigEndian.PutUint64(b[:], binary.BigEndian.Uint64(b[:])+1)
			if _, err := r.Write(b[:]); err != nil {
				e.errorf("relay write: %v", err)
				return
			}
		}
	})
	e.must("ping-pong", func() error {
		var b [8]byte
		for i := uint64(0); i < rounds; i += 2 {
			binary.BigEndian.PutUint64(b[:], i)
			if _, err := c.Write(b[:]); err != nil {
				return fmt.Errorf("round %d: write: %w", i, err)
			}
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return fmt.Errorf("round %d: read: %w", i, err)
			}
			if got := binary.BigEndian.Uint64(b[:]); got != i+1 {
				return fmt.Errorf("round %d: got %d, want %d", i, got, i+1)
			}
		}
		if err := c.CloseWrite(); err != nil {
			return fmt.Errorf("CloseWrite: %w", err)
		}
		if n, err := c.Read(b[:]); n != 0 || err != io.EOF {
			return fmt.Errorf("after the last round: read %d, %v; want 0, io.EOF", n, err)
		}
		return nil
	})
}

// racers and racyRounds size RacyRead and RacyWrite.
const (
	racers     = 8
	racyRounds = 40
)

// racyDeadline returns a deadline from now to a few milliseconds ahead:
// some pass while the call waits, some before it starts.
func racyDeadline(rng *rand.Rand) time.Time {
	return time.Now().Add(time.Duration(rng.IntN(5000)) * time.Microsecond)
}

// testRacyRead: goroutines read concurrently while setting deadlines, as
// the relay writes without pause. Only timeouts may fail a Read.
func testRacyRead(e *env) {
	c, r := e.pair()
	e.goAsync(func() {
		chunk := patternAt(0, 32<<10)
		for {
			if _, err := r.Write(chunk); err != nil {
				return // the subtest closed the stream
			}
		}
	})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			buf := make([]byte, 1+rng.IntN(16<<10))
			for range racyRounds {
				c.SetReadDeadline(racyDeadline(rng))
				if _, err := c.Read(buf); err != nil && !isTimeout(err) {
					e.errorf("concurrent Read: %v (want nil or a timeout)", err)
					return
				}
			}
		})
	}
	e.must("concurrent Reads", func() error { wg.Wait(); return nil })
}

// testRacyWrite: goroutines write concurrently while setting deadlines,
// as the relay reads without pause. Only timeouts may fail a Write.
func testRacyWrite(e *env) {
	c, r := e.pair()
	e.goAsync(func() { io.Copy(io.Discard, r) })
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 2))
			buf := patternAt(0, 1+rng.IntN(16<<10))
			for range racyRounds {
				c.SetWriteDeadline(racyDeadline(rng))
				if _, err := c.Write(buf); err != nil && !isTimeout(err) {
					e.errorf("concurrent Write: %v (want nil or a timeout)", err)
					return
				}
			}
		})
	}
	e.must("concurrent Writes", func() error { wg.Wait(); return nil })
}

// testReadTimeout: a Read waiting for data fails once its deadline
// passes, not before, and the stream still reads after the deadline is
// cleared.
func testReadTimeout(e *env) {
	c, r := e.pair()
	dl := time.Now().Add(shortDeadline)
	c.SetReadDeadline(dl)
	var n int
	err := e.run("Read with a deadline", func() (err error) {
		n, err = c.Read(make([]byte, 16))
		return err
	})
	if now := time.Now(); now.Before(dl) {
		e.t.Errorf("Read returned %v before its deadline", dl.Sub(now))
	}
	if n != 0 || !isTimeout(err) {
		e.t.Fatalf("Read past its deadline: %d, %v; want 0 and a timeout wrapping os.ErrDeadlineExceeded", n, err)
	}
	if _, err := c.Read(make([]byte, 16)); !isTimeout(err) {
		e.t.Errorf("second Read past the deadline: %v, want a timeout", err)
	}
	c.SetReadDeadline(time.Time{})
	e.must("relay Write", func() error { _, err := r.Write([]byte("after")); return err })
	var got [5]byte
	e.must("Read after clearing the deadline", func() error {
		_, err := io.ReadFull(c, got[:])
		return err
	})
	if string(got[:]) != "after" {
		e.t.Fatalf("read %q after the timeout, want %q", got, "after")
	}
}

// testWriteTimeout: a Write blocked by flow control (the relay reads
// nothing) fails once its deadline passes, not before; after the deadline
// is cleared the relay gets exactly the bytes Write reported written, and
// then what is written next; or the write side stays broken and the relay
// sees an abort after at most those bytes.
func testWriteTimeout(e *env) {
	c, r := e.pair()
	dl := time.Now().Add(2 * shortDeadline)
	c.SetWriteDeadline(dl)
	var written int64
	err := e.run("Write with a deadline to a peer that reads nothing", func() (err error) {
		written, err = fillWindow(c)
		return err
	})
	if now := time.Now(); now.Before(dl) {
		e.t.Errorf("Write returned %v before its deadline", dl.Sub(now))
	}
	if !isTimeout(err) {
		e.t.Fatalf("Write past its deadline after %d bytes: %v; want a timeout wrapping os.ErrDeadlineExceeded", written, err)
	}
	if n, err := c.Write([]byte("lost")); n != 0 || !isTimeout(err) {
		e.t.Errorf("second Write past the deadline: %d, %v; want 0 and a timeout", n, err)
	}
	c.SetWriteDeadline(time.Time{})
	var got []byte
	done := make(chan error, 1)
	e.goAsync(func() {
		var err error
		got, err = io.ReadAll(r)
		done <- err
	})
	if _, err := c.Write([]byte("tail")); err != nil {
		// A carrier whose framing cannot resume a write cut short
		// may break the write side instead, as crypto/tls does: then
		// every later Write fails as timed out, and the peer sees
		// the stream abort after at most what Write reported.
		if !isTimeout(err) {
			e.t.Fatalf("Write after clearing the deadline: %v; want success, or a timeout if the write side broke", err)
		}
		rerr := e.awaitErr("relay reading to the abort", done)
		if !isAbort(rerr) {
			e.t.Fatalf("relay read after the write side broke: %v; want an abort", rerr)
		}
		if len(got) > int(written) || !bytes.Equal(got, patternAt(0, len(got))) {
			e.t.Fatalf("relay got %d bytes of a stream whose Write reported %d before breaking", len(got), written)
		}
		return
	}
	e.must("CloseWrite after clearing the deadline", c.CloseWrite)
	if err := e.awaitErr("relay reading to EOF", done); err != nil {
		e.t.Fatalf("relay read: %v", err)
	}
	want := append(patternAt(0, int(written)), "tail"...)
	if !bytes.Equal(got, want) {
		e.t.Fatalf("relay got %d bytes, want the %d Write reported written plus 4: a timed-out Write must deliver what it reported and nothing else", len(got), written)
	}
}

// testPastDeadline: with a deadline in the past Read and Write fail at
// once, Write sends nothing, and the stream works once it is cleared.
func testPastDeadline(e *env) {
	c, r := e.pair()
	c.SetDeadline(time.Now().Add(-time.Hour))
	for i := range 2 {
		if n, err := c.Read(make([]byte, 8)); n != 0 || !isTimeout(err) {
			e.t.Errorf("Read %d with a past deadline: %d, %v; want 0 and a timeout", i, n, err)
		}
		if n, err := c.Write([]byte("never")); n != 0 || !isTimeout(err) {
			e.t.Errorf("Write %d with a past deadline: %d, %v; want 0 and a timeout", i, n, err)
		}
	}
	c.SetDeadline(time.Time{})
	var got []byte
	done := make(chan error, 1)
	e.goAsync(func() {
		var err error
		got, err = io.ReadAll(r)
		if err == nil {
			_, err = r.Write([]byte("back"))
		}
		done <- err
	})
	e.must("Write after clearing", func() error {
		if _, err := c.Write([]byte("ok")); err != nil {
			return err
		}
		return c.CloseWrite()
	})
	if err := e.awaitErr("relay", done); err != nil {
		e.t.Fatalf("relay: %v", err)
	}
	if string(got) != "ok" {
		e.t.Fatalf("relay got %q, want %q: a Write that timed out sent bytes", got, "ok")
	}
	var b [4]byte
	e.must("Read after clearing", func() error { _, err := io.ReadFull(c, b[:]); return err })
}

// testPresentDeadline: setting the deadline to now wakes a Read waiting
// for data and a Write waiting for flow control.
func testPresentDeadline(e *env) {
	c, _ := e.pair()
	rerr := make(chan error, 1)
	e.goAsync(func() {
		_, err := c.Read(make([]byte, 8))
		rerr <- err
	})
	werr := make(chan error, 1)
	e.goAsync(func() {
		_, err := fillWindow(c)
		werr <- err
	})
	time.Sleep(settle)
	c.SetReadDeadline(time.Now())
	if err := e.awaitErr("Read after SetReadDeadline(now)", rerr); !isTimeout(err) {
		e.t.Errorf("pending Read after SetReadDeadline(now): %v, want a timeout", err)
	}
	time.Sleep(settle)
	c.SetWriteDeadline(time.Now())
	if err := e.awaitErr("Write after SetWriteDeadline(now)", werr); !isTimeout(err) {
		e.t.Errorf("blocked Write after SetWriteDeadline(now): %v, want a timeout", err)
	}
}

// testDeadlineCleared: a Read and a Write whose deadlines were cleared or
// moved far away before they passed keep waiting past the old deadline,
// and complete once the peer acts.
func testDeadlineCleared(e *env) {
	c, r := e.pair()
	c.SetReadDeadline(time.Now().Add(shortDeadline))
	c.SetReadDeadline(time.Time{})
	c.SetWriteDeadline(time.Now().Add(shortDeadline))
	c.SetWriteDeadline(time.Now().Add(time.Hour))
	rerr := make(chan error, 1)
	e.goAsync(func() {
		var b [4]byte
		_, err := io.ReadFull(c, b[:])
		rerr <- err
	})
	var written atomic.Int64
	werr := make(chan error, 1)
	e.goAsync(func() {
		chunk := make([]byte, 64<<10)
		var off int64
		for off < noBlockLimit {
			fillPattern(chunk, off)
			n, err := c.Write(chunk)
			off += int64(n)
			written.Store(off)
			if err != nil {
				werr <- err
				return
			}
		}
		werr <- c.CloseWrite()
	})
	time.Sleep(3 * shortDeadline)
	select {
	case err := <-rerr:
		e.t.Fatalf("Read whose deadline was cleared returned %v", err)
	case err := <-werr:
		e.t.Fatalf("Write whose deadline was moved an hour away returned %v after %d bytes", err, written.Load())
	default:
	}
	e.must("relay Write", func() error { _, err := r.Write([]byte("late")); return err })
	if err := e.awaitErr("Read after the relay wrote", rerr); err != nil {
		e.t.Errorf("Read whose deadline was cleared: %v, want the relay's bytes", err)
	}
	var got int64
	done := make(chan error, 1)
	e.goAsync(func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			if !matchesPattern(buf[:n], got) {
				done <- fmt.Errorf("bytes %d-%d differ from those written", got, got+int64(n))
				return
			}
			got += int64(n)
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				done <- err
				return
			}
		}
	})
	if err := e.awaitErr("Write once the relay reads", werr); err != nil {
		e.t.Fatalf("Write whose deadline was moved away: %v", err)
	}
	if err := e.awaitErr("relay reading to EOF", done); err != nil {
		e.t.Fatalf("relay read: %v", err)
	}
	if got != written.Load() {
		e.t.Fatalf("relay read %d bytes, client wrote %d", got, written.Load())
	}
}

// testHalfClose: each end in turn half-closes first; the peer reads io.EOF
// (again on every later Read), the other direction carries on, and Write
// after CloseWrite fails.
func testHalfClose(e *env) {
	for _, first := range []string{"client", "relay"} {
		c, r := e.pair()
		a, b := c, r
		if first == "relay" {
			a, b = r, c
		}
		e.must(first+" writes and half-closes", func() error {
			if _, err := a.Write([]byte("request")); err != nil {
				return err
			}
			return a.CloseWrite()
		})
		var got []byte
		e.must("peer reads to EOF", func() (err error) { got, err = io.ReadAll(b); return err })
		if string(got) != "request" {
			e.t.Fatalf("%s half-closed first: peer read %q, want %q", first, got, "request")
		}
		if n, err := b.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			e.t.Errorf("%s half-closed first: peer's Read after EOF: %d, %v; want 0, io.EOF", first, n, err)
		}
		if n, err := a.Write([]byte("x")); n != 0 || err == nil {
			e.t.Errorf("%s: Write after CloseWrite: %d, %v; want an error", first, n, err)
		}
		e.goAsync(func() {
			if _, err := b.Write([]byte("response")); err != nil {
				e.errorf("%s half-closed first: peer's Write: %v", first, err)
			}
			if err := b.CloseWrite(); err != nil {
				e.errorf("%s half-closed first: peer's CloseWrite: %v", first, err)
			}
		})
		e.must(first+" reads the other direction", func() (err error) { got, err = io.ReadAll(a); return err })
		if string(got) != "response" {
			e.t.Fatalf("%s half-closed first: read %q back, want %q", first, got, "response")
		}
		if n, err := a.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			e.t.Errorf("%s: Read after EOF: %d, %v; want 0, io.EOF", first, n, err)
		}
	}
}

// testCloseAbortsPeer: when either end Closes, the peer's pending Read and
// its Write blocked by flow control fail with an error that is not io.EOF,
// and so do the closer's own Read and Write.
func testCloseAbortsPeer(e *env) {
	for _, closer := range []string{"client", "relay"} {
		c, r := e.pair()
		a, b := c, r
		if closer == "relay" {
			a, b = r, c
		}
		rerr := make(chan error, 1)
		e.goAsync(func() {
			buf := make([]byte, 1024)
			for {
				if _, err := b.Read(buf); err != nil {
					rerr <- err
					return
				}
			}
		})
		werr := make(chan error, 1)
		e.goAsync(func() {
			_, err := fillWindow(b)
			werr <- err
		})
		time.Sleep(settle)
		if err := e.run(closer+" stream Close", a.Close); err != nil {
			e.t.Errorf("%s Close: %v", closer, err)
		}
		if err := e.awaitErr("peer's Read after "+closer+" Close", rerr); !isAbort(err) {
			e.t.Errorf("%s closed: peer's pending Read returned %v; want an error other than io.EOF (Close is abortive)", closer, err)
		}
		if err := e.awaitErr("peer's Write after "+closer+" Close", werr); err == nil || errors.Is(err, errNoFlowControl) {
			e.t.Errorf("%s closed: peer's blocked Write returned %v; want an error", closer, err)
		}
		if _, err := a.Read(make([]byte, 8)); !isAbort(err) {
			e.t.Errorf("%s: Read after Close: %v; want an error other than io.EOF", closer, err)
		}
		if _, err := a.Write([]byte("x")); err == nil {
			e.t.Errorf("%s: Write after Close succeeded", closer)
		}
	}
}

// testSlowReader: a writer facing a relay that reads nothing blocks
// before noBlockLimit; then at least 8 MiB pass intact through a relay
// that reads small pieces with pauses, and nothing more than was written
// arrives.
func testSlowReader(e *env) {
	c, r := e.pair()
	var written, read atomic.Int64
	var stop atomic.Bool
	werr := make(chan error, 1)
	e.goAsync(func() {
		chunk := make([]byte, 64<<10)
		var off int64
		for !stop.Load() {
			fillPattern(chunk, off)
			n, err := c.Write(chunk)
			off += int64(n)
			written.Store(off)
			if err != nil {
				werr <- err
				return
			}
		}
		werr <- c.CloseWrite()
	})

	// Phase 1: nobody reads. The writer must stall.
	last, since := int64(-1), time.Now()
	for deadline := time.Now().Add(long); ; {
		w := written.Load()
		if w >= noBlockLimit {
			stop.Store(true)
			e.t.Fatalf("wrote %d MiB to a stream nobody reads without blocking: no flow control (memory unbounded)", w>>20)
		}
		if w != last {
			last, since = w, time.Now()
		} else if time.Since(since) >= stallTime {
			break
		}
		if time.Now().After(deadline) {
			stop.Store(true)
			e.t.Fatalf("writer neither blocked nor reached %d MiB in %v (at %d bytes)", noBlockLimit>>20, long, w)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Logf("writer blocked after %d KiB with nobody reading", last>>10)

	// Phase 2: a slow reader.
	rerr := make(chan error, 1)
	e.goAsync(func() {
		rng := rand.New(rand.NewPCG(3, 4))
		buf := make([]byte, 32<<10)
		var off int64
		for i := 0; ; i++ {
			n, err := r.Read(buf[:1+rng.IntN(len(buf))])
			if !matchesPattern(buf[:n], off) {
				rerr <- fmt.Errorf("bytes %d-%d differ from those written", off, off+int64(n))
				return
			}
			off += int64(n)
			read.Store(off)
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				rerr <- err
				return
			}
			if i%4 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	})
	for start := time.Now(); read.Load() < 8<<20; time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 2*long {
			e.t.Fatalf("slow reader got only %d of 8 MiB in %v", read.Load(), 2*long)
		}
	}
	stop.Store(true)
	if err := e.awaitErr("writer finishing", werr); err != nil {
		e.t.Fatalf("writer: %v", err)
	}
	if err := e.awaitErr("slow reader reading to EOF", rerr); err != nil {
		e.t.Fatalf("slow reader: %v", err)
	}
	if read.Load() != written.Load() {
		e.t.Fatalf("slow reader got %d bytes, writer wrote %d", read.Load(), written.Load())
	}
}

// manyStreams is how many streams ManyStreams runs at once.
const manyStreams = 200

// testManyStreams: many concurrent streams each echo their own data. The
// relay ends each stream as transport.Splice does, with CloseWrite after
// the client's EOF and Close right after: once both directions ended
// cleanly, Close must not cut off what was written.
func testManyStreams(e *env) {
	e.goAsync(func() {
		for {
			st, err := e.relay.AcceptStream(context.Background())
			if err != nil {
				return // the session closed
			}
			e.goAsync(func() {
				defer st.Close()
				if _, err := io.Copy(st, st); err != nil {
					e.errorf("relay echo: %v", err)
					return
				}
				if err := st.CloseWrite(); err != nil {
					e.errorf("relay CloseWrite: %v", err)
				}
			})
		}
	})
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := range manyStreams {
		wg.Go(func() {
			if err := echoStream(e.client, int64(i)*7919, 1+(i*4099)%(48<<10)); err != nil {
				if failed.Add(1) <= 3 {
					e.errorf("stream %d: %v", i, err)
				}
			}
		})
	}
	e.must(fmt.Sprintf("%d concurrent echo streams", manyStreams), func() error { wg.Wait(); return nil })
	if n := failed.Load(); n > 0 {
		e.t.Errorf("%d of %d streams failed", n, manyStreams)
	}
}

// echoStream opens a stream on s, writes n bytes of the pattern from off,
// half-closes it and checks that the same bytes come back before io.EOF.
func echoStream(s transport.Session, off int64, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	st, err := s.OpenStream(ctx)
	if err != nil {
		return fmt.Errorf("OpenStream: %w", err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(2 * long))
	wdone := make(chan error, 1)
	go func() {
		_, err := st.Write(patternAt(off, n))
		if err == nil {
			err = st.CloseWrite()
		}
		wdone <- err
	}()
	got, rerr := io.ReadAll(st)
	if err := <-wdone; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read after %d bytes: %w", len(got), rerr)
	}
	if len(got) != n || !matchesPattern(got, off) {
		return fmt.Errorf("echo of %d bytes came back as %d different bytes", n, len(got))
	}
	return nil
}

// testClientSessionClose: closing the client's session ends everything in
// it, on both ends.
func testClientSessionClose(e *env) { sessionClose(e, "client") }

// testRelaySessionClose: closing the relay's session ends everything in
// it, on both ends.
func testRelaySessionClose(e *env) { sessionClose(e, "relay") }

// sessionClose closes the closer's session while a Read waits on each end
// of a stream, a Write waits on flow control and the relay waits in
// AcceptStream, and checks that all of them fail and both ends end.
func sessionClose(e *env, closer string) {
	if err := e.client.Err(); err != nil {
		e.t.Fatalf("client session's Err before Close: %v, want nil", err)
	}
	c, r := e.pair()
	cerr, rerr, aerr, werr := make(chan error, 1), make(chan error, 1), make(chan error, 1), make(chan error, 1)
	readAll := func(st transport.Stream, ch chan<- error) {
		buf := make([]byte, 1024)
		for {
			if _, err := st.Read(buf); err != nil {
				ch <- err
				return
			}
		}
	}
	e.goAsync(func() { readAll(c, cerr) })
	_, r2 := e.pair() // the client never reads: r2's Write blocks
	e.goAsync(func() { _, err := fillWindow(r2); werr <- err })
	e.goAsync(func() { readAll(r, rerr) })
	e.goAsync(func() {
		_, err := e.relay.AcceptStream(context.Background())
		aerr <- err
	})
	time.Sleep(settle)
	closeSession := e.relay.Close
	if closer == "client" {
		closeSession = e.client.Close
	}
	if err := e.run(closer+" session Close", closeSession); err != nil {
		e.t.Errorf("%s session Close: %v", closer, err)
	}
	for _, p := range []struct {
		what string
		ch   chan error
	}{
		{"client stream's pending Read", cerr},
		{"relay stream's pending Read", rerr},
		{"relay stream's blocked Write", werr},
		{"relay's pending AcceptStream", aerr},
	} {
		if err := e.awaitErr(p.what, p.ch); !isAbort(err) || errors.Is(err, errNoFlowControl) {
			e.t.Errorf("%s session closed: %s returned %v; want an error that does not wrap io.EOF (transport.Splice takes io.EOF for a clean end)", closer, p.what, err)
		}
	}
	for _, d := range []struct {
		what string
		ch   <-chan struct{}
	}{{"client session's Done", e.client.Done()}, {"relay session's Done", e.relay.Done()}} {
		select {
		case <-d.ch:
		case <-time.After(long):
			e.t.Errorf("%s session closed: %s not closed after %v", closer, d.what, long)
		}
	}
	if e.client.Err() == nil {
		e.t.Errorf("%s session closed: client session's Err is nil after Done", closer)
	}
	if closer == "client" {
		ctx, cancel := context.WithTimeout(context.Background(), long)
		defer cancel()
		if st, err := e.client.OpenStream(ctx); !errors.Is(err, net.ErrClosed) {
			if st != nil {
				st.Close()
			}
			e.t.Errorf("OpenStream on a closed session: %v, want an error wrapping net.ErrClosed", err)
		}
		if err := e.client.Close(); err != nil {
			e.t.Errorf("second Close of the client session: %v, want nil", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), long)
	defer cancel()
	if _, err := e.client.Ping(ctx); err == nil {
		e.t.Errorf("%s session closed: client Ping succeeded", closer)
	}
	if _, err := c.Write([]byte("x")); err == nil {
		e.t.Errorf("%s session closed: Write on the client's stream succeeded", closer)
	}
}

// testPing: a live session answers Ping.
func testPing(e *env) {
	for i := range 3 {
		e.must(fmt.Sprintf("Ping %d", i), func() error {
			ctx, cancel := context.WithTimeout(context.Background(), long)
			defer cancel()
			rtt, err := e.client.Ping(ctx)
			if err == nil && rtt < 0 {
				err = fmt.Errorf("negative round trip %v", rtt)
			}
			return err
		})
	}
}
