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
	"crypto/rand"
	"crypto/rsa"
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
	"github.com/gotd/td/crypto"
	"github.com/gotd/td/exchange"
	"github.com/gotd/td/mtproxy/obfuscated2"
	"github.com/gotd/td/proto/codec"
	"github.com/gotd/td/telegram/dcs"
	"github.com/gotd/td/tg"
	"github.com/gotd/td/tgtest"
	"github.com/gotd/td/tgtest/services"
	"github.com/gotd/td/tgtest/services/config"
	"github.com/gotd/td/transport"
)

// sniffTimeout bounds how long the DC waits for the first bytes of a new
// connection before dropping it. gotd's tgtest reads the transport header
// inside its accept loop, so without this a single silent connection (a
// half-open relay stream, a probe) would stop the DC accepting anyone.
const sniffTimeout = 10 * time.Second

// A DC is a gotd tgtest server playing one Telegram datacenter on
// 127.0.0.1 with a kernel-chosen port. It accepts the plain MTProto
// transports (abridged, intermediate, padded intermediate, full) and, like
// Telegram's own DCs, Obfuscated2 without a secret, which is what an
// MTProxy relay speaks to a DC.
//
// Start one with [StartDC]; it stops when the test ends. A DC is safe for
// concurrent use by any number of clients.
type DC struct {
	// ID is the datacenter number the server reports as this_dc and that
	// clients put in their DC list (and, in MTProxy mode, send to the
	// proxy).
	ID int
	// Addr is the host:port the DC listens on, always on 127.0.0.1.
	Addr string
	// Key is the public half of the DC's freshly generated RSA key. Clients
	// must be given it (telegram.Options.PublicKeys) to complete the key
	// exchange; [Run] does this.
	Key exchange.PublicKey

	tb       testing.TB
	list     dcs.List
	logs     *logBuffer
	accepted atomic.Int64
	// obfuscated counts connections that arrived with Obfuscated2.
	obfuscated atomic.Int64
}

// StartDC starts a DC with the given datacenter number on 127.0.0.1:0 and
// registers its shutdown with tb.Cleanup. It fails the test if the DC
// cannot start. id must be positive.
func StartDC(tb testing.TB, id int) *DC {
	tb.Helper()
	if id <= 0 {
		tb.Fatalf("telegramtest: DC id must be positive, got %d", id)
	}

	key, err := rsa.GenerateKey(rand.Reader, crypto.RSAKeyBits)
	if err != nil {
		tb.Fatalf("telegramtest: generate DC RSA key: %v", err)
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("telegramtest: listen: %v", err)
	}
	tcpAddr := ln.Addr().(*net.TCPAddr)

	d := &DC{
		ID:   id,
		Addr: tcpAddr.String(),
		tb:   tb,
		logs: newLogBuffer(),
		list: dcs.List{Options: []tg.DCOption{{
			ID:        id,
			Static:    true,
			IPAddress: tcpAddr.IP.String(),
			Port:      tcpAddr.Port,
		}}},
	}

	// The config the DC hands out names only itself, so a client that
	// refreshes its DC list from help.getConfig still sees only loopback.
	cfg := &tg.Config{DCOptions: d.list.Options, ThisDC: id}
	dispatch := tgtest.NewDispatcher()
	config.NewService(cfg, &tg.CDNConfig{}).Register(dispatch)
	dispatch.HandleFunc(tg.HelpGetDeepLinkInfoRequestTypeID, echo)
	dispatch.Fallback(tgtest.HandlerFunc(services.NotImplemented))

	priv := tgtest.NewPrivateKey(key)
	d.Key = priv.Public()
	srv := tgtest.NewServer(priv, tgtest.UnpackInvoke(dispatch), tgtest.ServerOptions{
		DC:     id,
		Logger: log.With(d.logs.logger(), log.String("peer", "dc"), log.Int("dc", id)),
	})

	sl := newSniffListener(ln, &d.accepted, &d.obfuscated)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, transport.ListenCodec(nil, sl)) }()

	tb.Cleanup(func() {
		// Cancelling makes tgtest close the listener, but its per-connection
		// goroutines wait in reads with a 30 s deadline, so close the
		// connections too or shutdown would wait for the peers.
		cancel()
		sl.closeConns()
		if err := <-served; err != nil {
			tb.Errorf("telegramtest: DC %d: serve: %v", id, err)
		}
		sl.wait()
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

// sniffListener hands tgtest only connections whose transport header has
// already arrived, and strips Obfuscated2 so tgtest sees a plain transport.
// It remembers accepted connections so shutdown can close them.
type sniffListener struct {
	net.Listener
	accepted   *atomic.Int64
	obfuscated *atomic.Int64
	ready      chan net.Conn
	done       chan struct{}
	once       sync.Once

	// wg counts the accept loop and sniffing goroutines.
	wg sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	// closed is set by closeConns; later connections are closed at once.
	closed bool
}

func newSniffListener(ln net.Listener, accepted, obfuscated *atomic.Int64) *sniffListener {
	l := &sniffListener{
		Listener:   ln,
		accepted:   accepted,
		obfuscated: obfuscated,
		ready:      make(chan net.Conn),
		done:       make(chan struct{}),
		conns:      make(map[net.Conn]struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *sniffListener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			// Closed, or a resource error a test can do nothing about;
			// either way the DC stops accepting.
			return
		}
		l.accepted.Add(1)
		if !l.track(c) {
			return
		}
		l.wg.Add(1)
		go l.sniff(c)
	}
}

// track records c for closeConns. It reports false, closing c, after
// closeConns.
func (l *sniffListener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *sniffListener) sniff(c net.Conn) {
	defer l.wg.Done()
	conn, obfuscated, err := sniffTransport(c)
	if err != nil {
		c.Close()
		return
	}
	if obfuscated {
		l.obfuscated.Add(1)
	}
	select {
	case l.ready <- conn:
	case <-l.done:
		c.Close()
	}
}

// Accept returns the next connection whose transport header has arrived.
func (l *sniffListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting. Established connections stay open.
func (l *sniffListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// closeConns closes every accepted connection, and any accepted later.
func (l *sniffListener) closeConns() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
}

// wait waits for the listener's goroutines to end, after Close and
// closeConns.
func (l *sniffListener) wait() { l.wg.Wait() }

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
