// Package telegramtest runs real Telegram protocol peers on loopback for
// end-to-end tests: a gotd tgtest server playing one Telegram datacenter,
// and a real gotd telegram.Client that performs the MTProto auth key
// exchange and a run of RPCs against it.
//
// Nothing here ever talks to Telegram. The client is given an explicit DC
// list naming only the test DC (so gotd never falls back to its built-in
// production list), the test DC's own RSA key (so a real Telegram server
// could not complete the exchange anyway), and every dial made by [Run] is
// checked to target a loopback address.
//
// The DC does not implement Telegram. It answers help.getConfig (so the
// client's initConnection completes and the DC list it learns is loopback
// only), help.getDeepLinkInfo as an echo (path in, message out), and the
// MTProto service messages gotd's tgtest handles itself (ping, future
// salts). Every other method fails with a NOT_IMPLEMENTED RPC error.
//
// gotd logs are off by default. Client and DC records at Info level and
// above are captured and printed only if the test fails; set
// TELEGRAMTEST_DEBUG=1 to capture Debug records as well.
package telegramtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gotd/log"
	"github.com/gotd/log/logslog"
	"github.com/gotd/td/exchange"
	"github.com/gotd/td/mtproxy/obfuscated2"
	"github.com/gotd/td/proto/codec"
	"github.com/gotd/td/telegram/dcs"
	"github.com/gotd/td/tg"
	"github.com/gotd/td/tgtest"
	"github.com/gotd/td/transport"
)

// sniffTimeout bounds how long the DC waits for the first bytes of a new
// connection before dropping it, so silent connections (a half-open relay
// stream, a probe) do not pile up.
const sniffTimeout = 10 * time.Second

// A DC is a gotd tgtest server playing one Telegram datacenter on
// 127.0.0.1 with a kernel-chosen port. It accepts the plain MTProto
// transports (abridged, intermediate, padded intermediate, full) and, like
// Telegram's own DCs, Obfuscated2 without a secret, which is what an
// MTProxy relay speaks to a DC.
//
// Each TCP connection is served by its own tgtest.Server sharing the DC's
// key and handlers (see connServer for why), so an auth key is valid only
// on the connection that created it, unlike real Telegram.
//
// Start one with [StartDC], which stops it when the test ends, or
// [ListenDC] and [DC.Close]. A DC is safe for concurrent use by any number
// of clients.
type DC struct {
	// ID is the datacenter number the server reports as this_dc and that
	// clients put in their DC list (and, in MTProxy mode, send to the
	// proxy).
	ID int
	// Addr is the host:port the DC listens on, always a loopback address
	// (127.0.0.1 for StartDC).
	Addr string
	// Key is the public half of the DC's freshly generated RSA key. Clients
	// must be given it (telegram.Options.PublicKeys) to complete the key
	// exchange; [Run] does this.
	Key exchange.PublicKey

	tb       testing.TB
	list     dcs.List
	logs     *logBuffer
	srv      *connServer // nil for a RemoteDC
	accepted atomic.Int64
	// obfuscated counts connections that arrived with Obfuscated2.
	obfuscated atomic.Int64
}

// StartDC starts a DC with the given datacenter number on 127.0.0.1:0 and
// registers its shutdown with tb.Cleanup. It fails the test if the DC
// cannot start. id must be positive. See also [ListenDC].
func StartDC(tb testing.TB, id int) *DC {
	tb.Helper()
	d, err := ListenDC(context.Background(), id, "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	d.tb = tb
	tb.Cleanup(func() {
		d.Close()
		if tb.Failed() {
			d.logs.dump(tb, fmt.Sprintf("DC %d", id))
		}
	})
	return d
}

// List returns a DC list naming only this DC, for telegram.Options.DCList.
func (d *DC) List() dcs.List {
	opts := make([]tg.DCOption, len(d.list.Options))
	copy(opts, d.list.Options)
	return dcs.List{Options: opts}
}

// Accepted reports how many TCP connections the DC has accepted so far.
func (d *DC) Accepted() int64 { return d.accepted.Load() }

// echo answers help.getDeepLinkInfo with the requested path as the message,
// giving tests an RPC whose answer they can check byte for byte.
func echo(srv *tgtest.Server, req *tgtest.Request) error {
	var r tg.HelpGetDeepLinkInfoRequest
	if err := r.Decode(req.Buf); err != nil {
		return err
	}
	return srv.SendResult(req, &tg.HelpDeepLinkInfo{Message: r.Path})
}

// connServer accepts TCP connections, sniffs each one's transport (see
// [sniffTransport]) and serves it with its own tgtest.Server.
//
// One tgtest.Server per connection works around a data race in gotd
// v0.162.0: tgtest's users.getSession reads the session map under the
// connection mutex while addSession writes it under the session mutex, so
// a key exchange finishing on one connection races with every message read
// on another. The cost is that an auth key is known only on the connection
// that created it; a client reconnecting with an old key is told
// AUTH_KEY not found (-404) and must exchange a new one.
//
// Serving each connection separately also keeps one silent connection from
// stalling the rest: tgtest reads the transport header inside its accept
// loop.
type connServer struct {
	ln         net.Listener
	accepted   *atomic.Int64
	obfuscated *atomic.Int64
	newServer  func() *tgtest.Server

	ctx    context.Context
	cancel context.CancelFunc
	// wg counts the accept loop and per-connection goroutines.
	wg sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	// closed is set by close; later connections are closed at once.
	closed bool
}

func newConnServer(ln net.Listener, accepted, obfuscated *atomic.Int64, newServer func() *tgtest.Server) *connServer {
	ctx, cancel := context.WithCancel(context.Background())
	s := &connServer{
		ln:         ln,
		accepted:   accepted,
		obfuscated: obfuscated,
		newServer:  newServer,
		ctx:        ctx,
		cancel:     cancel,
		conns:      make(map[net.Conn]struct{}),
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s
}

func (s *connServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			// Closed, or a resource error a test can do nothing about;
			// either way the DC stops accepting.
			return
		}
		s.accepted.Add(1)
		if !s.track(c) {
			return
		}
		s.wg.Add(1)
		go s.serve(c)
	}
}

// track records c for close. It reports false, closing c, after close.
func (s *connServer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *connServer) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

func (s *connServer) serve(c net.Conn) {
	defer s.wg.Done()
	defer s.untrack(c)
	defer c.Close()

	conn, obfuscated, err := sniffTransport(c)
	if err != nil {
		return
	}
	if obfuscated {
		s.obfuscated.Add(1)
	}
	// tgtest's Serve returns only once its ctx is done, so end the ctx
	// when tgtest closes the connection (peer gone, or a fatal error).
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	l := &oneConnListener{conn: &closeNotifyConn{Conn: conn, onClose: cancel}, done: ctx.Done()}
	// Serve's only errors come from Accept, which sniffTransport already
	// made safe; a failing connection is dropped either way.
	_ = s.newServer().Serve(ctx, transport.ListenCodec(nil, l))
}

// close stops the server: no more accepts, every connection closed (tgtest
// waits in reads with a 30 s deadline, so cancelling alone would wait for
// the peers), all goroutines ended.
func (s *connServer) close() {
	s.cancel()
	s.ln.Close()
	s.mu.Lock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// oneConnListener is a net.Listener that yields conn once, then blocks
// until done is closed.
type oneConnListener struct {
	conn net.Conn
	done <-chan struct{}
	used atomic.Bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.used.Swap(true) {
		return l.conn, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

// Close does nothing: the connection is tgtest's to close, and Accept ends
// with done.
func (l *oneConnListener) Close() error { return nil }

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

// closeNotifyConn calls onClose when closed.
type closeNotifyConn struct {
	net.Conn
	onClose func()
}

func (c *closeNotifyConn) Close() error {
	c.onClose()
	return c.Conn.Close()
}

// sniffTransport waits for the start of the first packet and decides how to
// read the connection. Plain transports begin with a known tag (abridged
// 0xef, intermediate 0xeeeeeeee, padded intermediate 0xdddddddd) or, for the
// full transport, with a length followed by sequence number 0. Anything
// else is taken as a 64-byte Obfuscated2 header: clients must avoid those
// prefixes, and a zero second word, precisely so servers can tell them
// apart (core.telegram.org/mtproto/mtproto-transports#transport-obfuscation).
func sniffTransport(c net.Conn) (conn net.Conn, obfuscated bool, err error) {
	if err := c.SetReadDeadline(time.Now().Add(sniffTimeout)); err != nil {
		return nil, false, err
	}
	br := bufio.NewReader(c)
	plain := func() (net.Conn, bool, error) {
		if err := c.SetReadDeadline(time.Time{}); err != nil {
			return nil, false, err
		}
		return &prefixedConn{Conn: c, r: br}, false, nil
	}

	b, err := br.Peek(1)
	if err != nil {
		return nil, false, err
	}
	if b[0] == codec.AbridgedClientStart[0] {
		return plain()
	}
	if b, err = br.Peek(4); err != nil {
		return nil, false, err
	}
	if [4]byte(b) == codec.IntermediateClientStart || [4]byte(b) == codec.PaddedIntermediateClientStart {
		return plain()
	}
	if b, err = br.Peek(8); err != nil {
		return nil, false, err
	}
	if bytes.Equal(b[4:8], []byte{0, 0, 0, 0}) {
		return plain()
	}

	rw, md, err := obfuscated2.Accept(&prefixedConn{Conn: c, r: br}, nil)
	if err != nil {
		return nil, false, fmt.Errorf("obfuscated2 header: %w", err)
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return nil, false, err
	}
	// Hand tgtest the transport tag the client put inside the obfuscated
	// header, followed by the deobfuscated stream. Abridged's tag is one
	// byte.
	tag := md.Protocol[:]
	switch {
	case md.Protocol == [4]byte{0xef, 0xef, 0xef, 0xef}:
		tag = codec.AbridgedClientStart[:]
	case md.Protocol == codec.IntermediateClientStart, md.Protocol == codec.PaddedIntermediateClientStart:
	default:
		return nil, false, fmt.Errorf("obfuscated2: unknown transport tag %x", md.Protocol)
	}
	return &prefixedConn{Conn: c, r: io.MultiReader(bytes.NewReader(tag), rw), w: rw}, true, nil
}

// prefixedConn is a net.Conn whose reads (and optionally writes) go through
// another stream: bytes already buffered while sniffing, or Obfuscated2.
type prefixedConn struct {
	net.Conn
	r io.Reader
	w io.Writer // nil means write to Conn
}

func (c *prefixedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *prefixedConn) Write(p []byte) (int, error) {
	if c.w == nil {
		return c.Conn.Write(p)
	}
	return c.w.Write(p)
}

// logBufferLimit caps captured gotd logs per DC.
const logBufferLimit = 1 << 20

// logBuffer collects gotd log records for printing if the test fails.
type logBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	truncated bool
	level     slog.Level
}

func newLogBuffer() *logBuffer {
	b := &logBuffer{level: slog.LevelInfo}
	if os.Getenv("TELEGRAMTEST_DEBUG") != "" {
		b.level = slog.LevelDebug
	}
	return b
}

// Write implements io.Writer for slog's text handler.
func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len()+len(p) > logBufferLimit {
		b.truncated = true
		return len(p), nil
	}
	return b.buf.Write(p)
}

// logger returns a gotd logger writing into b.
func (b *logBuffer) logger() log.Logger {
	h := slog.NewTextHandler(b, &slog.HandlerOptions{Level: b.level})
	return logslog.New(slog.New(h))
}

func (b *logBuffer) dump(tb testing.TB, name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() == 0 {
		return
	}
	note := ""
	if b.truncated {
		note = " (truncated)"
	}
	tb.Logf("telegramtest: gotd logs of %s%s:\n%s", name, note, b.buf.String())
}
