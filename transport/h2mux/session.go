package h2mux

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/merpati/merpati/transport"
)

// Compile-time checks that the types satisfy the transport contract.
var (
	_ transport.Session = (*Session)(nil)
	_ transport.Stream  = (*Stream)(nil)
)

// A Session is one HTTP/2 connection carrying many streams. It is safe for
// concurrent use. Create one with [Client] or [Server].
type Session struct {
	conn   net.Conn
	cfg    Config
	client bool

	// Read side, owned by the readLoop goroutine. br is nil while the
	// loop waits for the peer with nothing buffered (see fillReader);
	// src feeds br the bytes read meanwhile, then the connection.
	br    *bufio.Reader
	src   pendingReader
	first [1]byte
	hdr   [frameHeaderSz]byte // a frame header read on its own (see readData)
	fr    *http2.Framer

	// Write side, owned by the writeLoop goroutine. bw is nil while the
	// writer has nothing to write (see takeWriter).
	wb *writeBuf     // lent from writerPool while writing (see takeWriter)
	bw *bufio.Writer // wb's
	wf *http2.Framer // wb's, writing to bw
	// henc is made for the first header block (see encoder); until then
	// hencLimit keeps the peer's HEADER_TABLE_SIZE, if it raised it.
	henc      *hpack.Encoder
	hencLimit uint32
	hbuf      bytes.Buffer
	dhdr      [frameHeaderSz]byte

	acceptCh chan struct{} // cap 1: acceptQ grew
	// dispatchMu orders the hand-over of accepted streams to onStream
	// (see ServeStreams) between the read loop and ServeStreams.
	dispatchMu sync.Mutex
	slotCh     chan struct{} // client: cap 1: a stream slot was freed or the limit rose; nil on a server, which opens none
	done       chan struct{} // closed when the session is dead
	writerDone chan struct{} // closed when no writer will write again (see writerEnded)
	dieOnce    sync.Once
	writerOnce sync.Once // closes writerDone
	wg         sync.WaitGroup

	mu         sync.Mutex
	err        error         // why the session died; set before done is closed
	closeErr   error         // the reason given to the first shutdown call
	closing    bool          // final GOAWAY queued; no new streams
	goaway     bool          // peer sent GOAWAY
	goawayCode http2.ErrCode // the error code of the peer's GOAWAY (the first error one, if several)
	streams    map[uint32]*Stream
	nextID     uint32 // client: next stream ID to assign
	lastPeerID uint32 // server: highest stream ID the peer opened
	numStreams int    // streams holding a concurrency slot
	acceptQ    []*Stream
	onStream   func(*Stream) // server: takes accepted streams instead of AcceptStream (see ServeStreams)
	onEnd      func()        // server: called once the read loop has ended, after the last onStream
	readEnded  bool          // the read loop has returned
	writing    bool          // the write token: whoever holds it (the writer, or a stream writing directly) owns bw
	writerOn   bool          // a writer goroutine runs (see kickLocked)
	prefaced   bool          // the preface is written; only writers touch it, one at a time
	wq         []writeItem   // frames waiting for the writer, in order
	cq         []writeItem   // connection control frames, written ahead of wq (see enqueueLocked)
	nCtrl      int           // peer-provoked frames in wq and cq
	pings      map[[8]byte]*pingState
	ready      []*Stream          // streams with new data whose readers are not yet woken
	readyBytes int                // bytes received for them
	delivered  int                // small messages the read loop wrote itself (see deliver)
	waitHook   bool               // the connection calls wakeReaders before it waits for bytes (a transport.WaitConn)
	gather     transport.Gatherer // the connection under TLS, if it gathers writes; nil otherwise
	pingSeq    uint64
	rtt        time.Duration // round trip of the latest acknowledged PING; 0 before the first
	heard      chan struct{} // closed (and cleared) when the next frame arrives; nil if nobody waits
	heardAt    time.Time     // client: when the last frame arrived, for ReuseProbe
	probing    bool          // client: a ReuseProbe PING awaits its answer
	idleAt     time.Time     // server: when an idle session closes, if numStreams stays 0
	idleTimer  *time.Timer   // server: runs idleCheck

	// ncq mirrors len(cq), so that the writer can check for control
	// frames between two items of a batch without taking mu.
	ncq atomic.Int32

	// The write gate (see [Stream.WaitWrite]): streams waiting to read
	// their next data, in turn; gateWaiting mirrors len(gateQ) and
	// dataQueued counts the DATA items queued and not yet written, so
	// that the writer checks both without taking mu.
	gateQ       []*Stream
	gateWaiting atomic.Int32
	dataQueued  atomic.Int32

	peerMaxStreams uint32
	peerMaxFrame   uint32
	peerInitWindow int64
	connSend       int64     // bytes we may still send on the connection
	connRecv       int64     // bytes the peer may still send on the connection
	connUnacked    int64     // bytes read by the application but not yet returned with WINDOW_UPDATE
	connUpdated    time.Time // server: when the last connection WINDOW_UPDATE was queued
}

// itemKind says what frame a writeItem produces.
type itemKind uint8

const (
	itemHeaders itemKind = iota // HEADERS (+CONTINUATION) opening a request or response
	itemData                    // DATA, possibly empty with END_STREAM
	itemSettingsAck
	itemWindowUpdate
	itemPing
	itemRST
	itemGoAway // always the last frame; the writer stops after it
)

// urgent reports whether frames of kind k go ahead of queued HEADERS, DATA
// and RST_STREAM (see [Session.enqueueLocked]).
func (k itemKind) urgent() bool {
	return k == itemPing || k == itemSettingsAck || k == itemWindowUpdate
}

// A pingState is a PING waiting for its acknowledgement.
type pingState struct {
	data   [8]byte
	sent   time.Time
	done   chan struct{} // closed when the ACK arrives
	orphan bool          // Ping returned without the ACK; keep only for the RTT
}

// maxOrphanPings bounds the PINGs kept after their Ping call returned
// (answered by other traffic first), which are kept only to measure the
// round trip when their ACK arrives.
const maxOrphanPings = 8

// A writeItem is one frame (or, for data, one run of frames) queued for the
// writer goroutine.
type writeItem struct {
	kind   itemKind
	st     *Stream
	id     uint32
	val    uint32 // WINDOW_UPDATE increment, error code, or header table size
	end    bool   // END_STREAM
	ack    bool   // PING ACK
	table  bool   // SETTINGS ACK: apply val as the peer's HEADER_TABLE_SIZE first
	peer   bool   // provoked by the peer, counts towards maxQueuedCtrl
	notify bool   // signal st.wdone once written
	ping   [8]byte
	data   []byte
	flight int  // HEADERS: the size its stream's first flight is padded to (see writeFlight)
	first  bool // DATA: queued with its stream's HEADERS, whose flight it belongs to
	pad    int  // DATA: padding in the first frame, Pad Length octet included, already taken from the windows
	// DATA: data with frameHeaderSz free bytes before it, to be written
	// by writeFramed; nil for the buffered path (padded or first-flight
	// DATA, or a plain Write)
	framed []byte
}

// Client starts the client side of a session on conn, which the session
// then owns: it writes the HTTP/2 connection preface and SETTINGS (RFC 9113
// section 3.4) without waiting for the server. Client does not block on
// the network; a failed handshake shows up as the session dying.
func Client(conn net.Conn, cfg Config) (*Session, error) {
	return newSession(conn, cfg, true)
}

// Server starts the server side of a session on conn, which the session
// then owns. The client's connection preface is read by the session's
// reading goroutine; if it is wrong the session dies with an error wrapping
// [ErrProtocol]. Server does not block on the network.
func Server(conn net.Conn, cfg Config) (*Session, error) {
	return newSession(conn, cfg, false)
}

func newSession(conn net.Conn, cfg Config, client bool) (*Session, error) {
	cfg, err := cfg.fill()
	if err != nil {
		return nil, err
	}
	if client && cfg.Authority == "" {
		cfg.Authority = conn.RemoteAddr().String()
	}
	s := &Session{
		conn:           conn,
		cfg:            cfg,
		client:         client,
		src:            pendingReader{conn: conn},
		acceptCh:       make(chan struct{}, 1),
		done:           make(chan struct{}),
		writerDone:     make(chan struct{}),
		streams:        make(map[uint32]*Stream),
		nextID:         1,
		peerMaxStreams: maxStreamID, // section 5.1.2: unlimited until the peer says otherwise
		peerMaxFrame:   minFrameSize,
		peerInitWindow: initialWindow,
		connSend:       initialWindow,
		// We open the connection window to MaxConnWindow in our first
		// flight; until the peer sees that it may send at most 65535,
		// which is less, so counting from the full window is safe.
		connRecv: int64(cfg.MaxConnWindow),
		heardAt:  time.Now(),
		writing:  true, // the writer's, for the preface
		writerOn: true,
	}
	if client {
		s.slotCh = make(chan struct{}, 1)
	}
	s.fr = http2.NewFramer(io.Discard, sessionReader{s})
	s.fr.SetMaxReadFrameSize(uint32(cfg.MaxFrameSize))
	s.fr.SetReuseFrames()
	table, hdrList := uint32(defaultTable), uint32(serverHdrList)
	if client {
		table, hdrList = clientTable, clientHdrList
	}
	s.fr.ReadMetaHeaders = hpack.NewDecoder(table, nil)
	s.fr.MaxHeaderListSize = hdrList

	if cfg.PrefaceNow {
		s.prefaced = true
		err := s.writePreface()
		s.releaseWriter()
		if err != nil {
			return nil, fmt.Errorf("h2mux: write preface: %w", err)
		}
		// Nothing else is queued yet: the writer starts when something is.
		s.writing, s.writerOn = false, false
	}
	if !client && cfg.IdleTimeout > 0 {
		d := s.idleDelay()
		s.idleAt = time.Now().Add(d)
		s.idleTimer = time.AfterFunc(d, s.idleCheck)
	}
	s.waitHook = transport.SetOnReadWait(conn, s.wakeReaders)
	s.gather = transport.FindGatherer(conn)
	s.wg.Add(1)
	go s.readLoop()
	if !cfg.PrefaceNow {
		s.wg.Add(1)
		go s.writeLoop()
	}
	if cfg.KeepAlive > 0 {
		s.wg.Add(1)
		go s.keepAlive()
	}
	return s, nil
}

// OpenStream opens a new stream (an HTTP/2 request). It does not wait for
// the server: the stream's HEADERS frame is sent together with its first
// write, or when it is first read or half-closed, so the first bytes
// written share the opening flight. OpenStream blocks only while the
// server's SETTINGS_MAX_CONCURRENT_STREAMS limit is reached.
//
// After the session has ended, the error wraps [ErrSessionClosed] (and so
// [net.ErrClosed]).
func (s *Session) OpenStream(ctx context.Context) (transport.Stream, error) {
	if !s.client {
		return nil, fmt.Errorf("h2mux: open stream: %w", ErrWrongSide)
	}
	s.mu.Lock()
	for {
		if err := s.openErrLocked(); err != nil {
			s.mu.Unlock()
			return nil, err
		}
		if s.numStreams < int(s.peerMaxStreams) {
			break
		}
		s.mu.Unlock()
		select {
		case <-s.slotCh:
		case <-s.done:
		case <-ctx.Done():
			s.signalSlot() // pass on a wake-up we may have consumed
			return nil, fmt.Errorf("h2mux: open stream: %w", ctx.Err())
		}
		s.mu.Lock()
	}
	s.numStreams++
	st := s.newStream(0)
	st.slot = true
	st.accepted = true
	s.mu.Unlock()
	return st, nil
}

func (s *Session) openErrLocked() error {
	switch {
	case s.err != nil:
		return s.deadErr("open stream")
	case s.closing:
		return fmt.Errorf("h2mux: open stream: %w", ErrSessionClosed)
	case s.goaway:
		return fmt.Errorf("h2mux: open stream: %w", s.goawayErrLocked())
	}
	return nil
}

// goawayErrLocked returns the error for what the peer's GOAWAY refuses:
// new streams, and streams above its last stream ID. After a GOAWAY with
// NO_ERROR it wraps [transport.ErrOrderlyClose]: the peer is closing the
// session in an orderly way (an idle close), not failing.
func (s *Session) goawayErrLocked() error {
	if s.goawayCode == http2.ErrCodeNo {
		return errGoneAway
	}
	return fmt.Errorf("%w (%v)", ErrGoAway, s.goawayCode)
}

// errGoneAway is why a session ends when the peer sent GOAWAY with
// NO_ERROR and no stream was left (see [Session.die]).
var errGoneAway = fmt.Errorf("%w: %w", ErrGoAway, transport.ErrOrderlyClose)

// AcceptStream waits for the client to open a stream and returns it. It is
// valid only on a server session. Streams the client resets before they
// are accepted are skipped.
func (s *Session) AcceptStream(ctx context.Context) (*Stream, error) {
	if s.client {
		return nil, fmt.Errorf("h2mux: accept stream: %w", ErrWrongSide)
	}
	for {
		s.mu.Lock()
		if st := s.nextAcceptedLocked(); st != nil {
			s.mu.Unlock()
			return st, nil
		}
		if s.err != nil {
			err := s.deadErr("accept stream")
			s.mu.Unlock()
			return nil, err
		}
		s.mu.Unlock()
		select {
		case <-s.acceptCh:
		case <-s.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("h2mux: accept stream: %w", ctx.Err())
		}
	}
}

// Ping checks that the peer still answers and returns the round-trip time
// (RFC 9113 section 6.7). It implements [transport.Session.Ping].
//
// The PING frame goes ahead of every HEADERS and DATA frame queued but not
// yet written, and the peer's h2mux answers it ahead of its own. Bytes
// already handed to the connection cannot be overtaken, though, and on a
// slow, busy link they may take seconds to drain. So any frame that
// arrives after Ping began proves the peer alive just as well (a busy
// peer sends DATA or WINDOW_UPDATE; an h2mux server acknowledges every
// [serverWindowStep] bytes it consumes): Ping returns as soon as the ACK
// arrives, with its round trip, and if ctx ends first but another frame
// came, it returns the latest round trip measured (zero before any) and no
// error. Only a peer that sent nothing at all fails it.
func (s *Session) Ping(ctx context.Context) (time.Duration, error) {
	s.mu.Lock()
	if s.err != nil || s.closing {
		s.mu.Unlock()
		return 0, fmt.Errorf("h2mux: ping: %w", ErrSessionClosed)
	}
	p, heard := s.sendPingLocked()
	s.mu.Unlock()
	return s.waitPing(ctx, p, heard)
}

// sendPingLocked queues a PING and returns its state and the channel
// closed when the next frame from the peer arrives.
func (s *Session) sendPingLocked() (*pingState, chan struct{}) {
	s.pingSeq++
	var data [8]byte
	binary.BigEndian.PutUint64(data[:], s.pingSeq)
	p := &pingState{sent: time.Now(), done: make(chan struct{}), data: data}
	s.dropOrphanPingsLocked()
	if s.pings == nil {
		s.pings = make(map[[8]byte]*pingState) // most sessions never ping
	}
	s.pings[data] = p
	if s.heard == nil {
		s.heard = make(chan struct{})
	}
	s.enqueueLocked(writeItem{kind: itemPing, ping: data})
	return p, s.heard
}

// waitPing waits for the answer to the PING p, as [Session.Ping]
// describes.
func (s *Session) waitPing(ctx context.Context, p *pingState, heard chan struct{}) (time.Duration, error) {
	data := p.data
	alive := false
	for {
		select {
		case <-p.done:
			return time.Since(p.sent), nil
		case <-heard:
			alive, heard = true, nil
		case <-s.done:
			return 0, s.deadErr("ping")
		case <-ctx.Done():
			s.mu.Lock()
			defer s.mu.Unlock()
			select {
			case <-p.done:
				return time.Since(p.sent), nil
			default:
			}
			if alive {
				p.orphan = true // its ACK, when it comes, still updates rtt
				return s.rtt, nil
			}
			delete(s.pings, data)
			return 0, fmt.Errorf("h2mux: ping: %w", ctx.Err())
		}
	}
}

// dropOrphanPingsLocked forgets the PINGs nobody waits for once there are
// maxOrphanPings of them: a peer that never acknowledges cannot make the
// map grow.
func (s *Session) dropOrphanPingsLocked() {
	n := 0
	for _, p := range s.pings {
		if p.orphan {
			n++
		}
	}
	if n < maxOrphanPings {
		return
	}
	for k, p := range s.pings {
		if p.orphan {
			delete(s.pings, k)
		}
	}
}

// Done returns a channel that is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns why the session ended: [ErrSessionClosed] after Close, or the
// failure that killed it. It returns nil while the session is alive.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the session and every stream in it. It sends GOAWAY (RFC 9113
// section 6.8), waits briefly for it to be written, closes the connection
// and waits for the session's goroutines to exit. Close always returns nil.
func (s *Session) Close() error {
	s.shutdown(ErrSessionClosed, http2.ErrCodeNo)
	s.wg.Wait()
	return nil
}

// LocalAddr returns the local address of the underlying connection.
func (s *Session) LocalAddr() net.Addr { return s.conn.LocalAddr() }

// RemoteAddr returns the remote address of the underlying connection.
func (s *Session) RemoteAddr() net.Addr { return s.conn.RemoteAddr() }

// shutdown queues a final GOAWAY with code, waits up to closeTimeout for
// the writer to flush it, then kills the session with err.
func (s *Session) shutdown(err error, code http2.ErrCode) {
	s.mu.Lock()
	s.goAwayLocked(err, code)
	s.mu.Unlock()
	s.finishShutdown(err)
}

// goAwayLocked queues the final GOAWAY with code, unless the session is
// already closing or dead, and marks it closing: streams the peer opens
// from now on are refused.
func (s *Session) goAwayLocked(err error, code http2.ErrCode) {
	if s.err == nil && !s.closing {
		s.closing = true
		s.closeErr = err
		last := s.lastPeerID
		s.enqueueLocked(writeItem{kind: itemGoAway, id: last, val: uint32(code)})
	}
}

// finishShutdown waits up to closeTimeout for the writer to flush the
// final GOAWAY, then kills the session with err.
func (s *Session) finishShutdown(err error) {
	t := time.NewTimer(closeTimeout)
	select {
	case <-s.writerDone:
	case <-s.done:
	case <-t.C:
	}
	t.Stop()
	s.die(err)
}

// die ends the session at once: it records the reason, closes the
// connection (which unblocks both loops) and wakes every waiter.
func (s *Session) die(err error) {
	s.dieOnce.Do(func() {
		s.mu.Lock()
		switch {
		case s.closeErr != nil:
			err = s.closeErr
		case s.goaway && s.goawayCode == http2.ErrCodeNo && s.numStreams == 0:
			// The peer said it was closing and no stream was left
			// to cut short: whatever ended the connection (its
			// close, or ours once drained), this is an orderly end.
			err = errGoneAway
		}
		s.err = err
		for _, st := range s.streams {
			st.stopTimersLocked()
		}
		if !s.writerOn && !s.writing {
			s.writerEnded() // none runs, and kickLocked starts none now
		}
		if s.idleTimer != nil {
			s.idleTimer.Stop()
		}
		s.mu.Unlock()
		close(s.done)
		s.conn.Close()
		if s.cfg.OnClose != nil {
			s.cfg.OnClose()
		}
		if !errors.Is(err, ErrSessionClosed) {
			s.logger().Debug("session ended", "err", err)
		}
	})
}

// deadErr returns the error for an operation on a dead session: it wraps
// both ErrSessionClosed and the reason the session died.
func (s *Session) deadErr(op string) error {
	<-s.done // s.err is set before done closes
	if errors.Is(s.err, ErrSessionClosed) {
		return fmt.Errorf("h2mux: %s: %w", op, s.err)
	}
	return fmt.Errorf("h2mux: %s: %w: %w", op, ErrSessionClosed, s.err)
}

// keepAlive sends a PING every KeepAlive, when that option is on (it is
// off by default).
func (s *Session) keepAlive() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.KeepAlive)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		_, err := s.Ping(ctx)
		cancel()
		if err != nil && errors.Is(err, context.DeadlineExceeded) {
			s.die(s.pingTimeoutErr())
			return
		}
	}
}

func (s *Session) pingTimeoutErr() error {
	return fmt.Errorf("h2mux: no answer to a PING within %v: %w", s.cfg.Timeout, ErrKeepAliveTimeout)
}

// probeLocked is a client's ping-before-reuse (see [Config.ReuseProbe]),
// called as a stream's HEADERS is queued: if nothing has arrived from the
// server for longer than ReuseProbe plus jitter, a PING goes out ahead of
// the HEADERS, and the session dies if the server then stays silent for
// Timeout. The stream does not wait.
func (s *Session) probeLocked() {
	if s.cfg.ReuseProbe <= 0 || s.probing || s.err != nil || s.closing {
		return
	}
	limit := s.cfg.ReuseProbe + rand.N(s.cfg.ReuseProbe/reuseJitter+1)
	if time.Since(s.heardAt) <= limit {
		return
	}
	p, heard := s.sendPingLocked()
	s.probing = true
	// Close waits for s.wg only after marking the session closing or
	// dead under s.mu, which was checked above: this Add comes first.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout)
		_, err := s.waitPing(ctx, p, heard)
		cancel()
		s.mu.Lock()
		s.probing = false
		s.mu.Unlock()
		if err != nil && errors.Is(err, context.DeadlineExceeded) {
			s.die(s.pingTimeoutErr())
		}
	}()
}

// idleTimeout returns the idle timeout in force: IdleTimeoutFunc's, else
// IdleTimeout.
func (s *Session) idleTimeout() time.Duration {
	if f := s.cfg.IdleTimeoutFunc; f != nil {
		if d := f(); d > 0 {
			return d
		}
	}
	return s.cfg.IdleTimeout
}

// idleDelay returns how long a server session may stay without streams:
// the idle timeout give or take 1/idleJitter of it.
func (s *Session) idleDelay() time.Duration {
	d := s.idleTimeout()
	j := d / idleJitter
	return d - j + rand.N(2*j+1)
}

// idleCheck closes a server session that has had no open stream for its
// idle delay, as a web server closes an idle HTTP/2 connection: GOAWAY
// with NO_ERROR and the last stream ID, then the connection (see
// [Config.IdleTimeout]). Streams the client opens after the GOAWAY are
// refused, which tells it they were never seen. It runs from a timer, not
// a goroutine of its own: a relay keeps thousands of idle sessions.
func (s *Session) idleCheck() {
	s.mu.Lock()
	if s.err != nil || s.closing {
		s.mu.Unlock()
		return
	}
	wait := s.idleTimeout() // streams open: look again later
	if s.numStreams == 0 {
		wait = time.Until(s.idleAt)
	}
	if wait > 0 {
		s.idleTimer.Reset(wait)
		s.mu.Unlock()
		return
	}
	s.goAwayLocked(ErrIdleClosed, http2.ErrCodeNo)
	s.mu.Unlock()
	s.logger().Debug("closing idle session")
	s.finishShutdown(ErrIdleClosed)
}

// enqueueLocked queues a frame for the writer. A peer that provokes more
// queued replies than maxQueuedCtrl (PING or SETTINGS floods while not
// reading) is cut off, as net/http's HTTP/2 server does.
//
// PING (and its ACK), SETTINGS ACK and WINDOW_UPDATE concern the whole
// connection, so they go to cq and the writer sends them ahead of the
// HEADERS, DATA and RST_STREAM frames queued in wq, even between two items
// of a batch: a PING must not wait behind the 256 KiB per stream that busy
// streams keep queued, nor a window update that would let the peer send.
// Frames in wq keep their order among themselves (stream IDs must reach
// the wire in increasing order, RST_STREAM must follow its HEADERS), and
// none of the cq frames depends on them.
func (s *Session) enqueueLocked(it writeItem) bool {
	if it.peer {
		if s.nCtrl >= maxQueuedCtrl {
			return false
		}
		s.nCtrl++
	}
	if it.kind.urgent() {
		s.cq = append(s.cq, it)
		s.ncq.Store(int32(len(s.cq)))
	} else {
		s.wq = append(s.wq, it)
		if it.kind == itemData {
			s.dataQueued.Add(1)
		}
	}
	s.kickLocked()
	return true
}

// kickLocked makes sure that a writer goroutine will see the queues: it
// starts one unless one runs or the session has died. A writer runs only
// while there is something to write (see writeFrames): an idle session
// has no goroutine but its reader. s.mu is held.
func (s *Session) kickLocked() {
	if s.err != nil {
		if !s.writerOn && !s.writing {
			s.writerEnded()
		}
		return
	}
	if s.writerOn {
		return
	}
	s.writerOn = true
	s.wg.Add(1) // before s.err is set, so before Close waits
	go s.writeLoop()
}

// writerEnded closes writerDone: the session has died and no writer runs
// or will run (the writer goroutine has returned, or none ran and none
// holds the write token), so that DATA still queued will not go out. A
// stream waiting for its queued DATA learns so from writerDone (see
// [Stream.Write]); were it to return on s.done instead, a writer might
// still be reading its buffer.
func (s *Session) writerEnded() { s.writerOnce.Do(func() { close(s.writerDone) }) }

// errWriterIdle ends a writer goroutine that has nothing left to write.
var errWriterIdle = errors.New("h2mux: writer idle")

// signal does a non-blocking send on a 1-buffered notification channel.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *Session) signalSlot() {
	s.mu.Lock()
	if s.numStreams < int(s.peerMaxStreams) {
		signal(s.slotCh)
	}
	s.mu.Unlock()
}

// releaseSlotLocked frees the concurrency slot st holds, if any.
func (s *Session) releaseSlotLocked(st *Stream) {
	if st.slot {
		st.slot = false
		s.numStreams--
		signal(s.slotCh)
		if s.numStreams == 0 {
			if s.client {
				if s.goaway {
					s.kickLocked() // the writer closes the drained session
				}
			} else if s.idleTimer != nil && s.err == nil && !s.closing {
				// (A dead or closing session's timer stays stopped:
				// it would keep the session in memory until it ran.)
				// The timer may be set for later than this idle
				// period ends (a check while streams were open, at
				// a longer timeout): it runs when the period does.
				d := s.idleDelay()
				s.idleAt = time.Now().Add(d)
				s.idleTimer.Reset(d)
			}
		}
	}
}

// consumedLocked returns n bytes of receive window after the application
// (or the session, for discarded data) consumed them from st, sending
// WINDOW_UPDATE once half a window is due (RFC 9113 section 6.9). st may be
// nil for bytes that only count against the connection window.
func (s *Session) consumedLocked(st *Stream, n int64) {
	if n <= 0 {
		return
	}
	s.connUnacked += n
	if s.connUnacked >= int64(s.cfg.MaxConnWindow/2) || !s.client && s.serverWindowDueLocked() {
		s.enqueueLocked(writeItem{kind: itemWindowUpdate, val: uint32(s.connUnacked)})
		s.connRecv += s.connUnacked
		s.connUnacked = 0
	}
	if st == nil || st.remoteEnd || st.finished {
		return // no more DATA may come on this stream, no update needed
	}
	st.unacked += n
	if st.unacked >= int64(s.cfg.MaxStreamWindow/2) {
		s.enqueueLocked(writeItem{kind: itemWindowUpdate, id: st.id, val: uint32(st.unacked)})
		st.recvAvail += st.unacked
		st.unacked = 0
	}
}

// serverWindowDueLocked reports whether a server session returns its
// consumed connection window now: once serverWindowStep bytes are due
// and serverWindowEvery has passed since the last return, or once
// serverWindowMax bytes are due.
func (s *Session) serverWindowDueLocked() bool {
	if s.connUnacked < serverWindowStep {
		return false
	}
	now := time.Now()
	if s.connUnacked < serverWindowMax && now.Sub(s.connUpdated) < serverWindowEvery {
		return false
	}
	s.connUpdated = now
	return true
}

// ---- writer ----

func (s *Session) writeLoop() {
	defer s.wg.Done()
	err := s.writeFrames()
	if err == errWriterIdle {
		return
	}
	defer s.writerEnded()
	if err != nil {
		var de *drainedError
		if errors.As(err, &de) {
			s.die(de.err)
			return
		}
		// Every other error leaves the writer holding the write token,
		// which it keeps: the buffer is nobody else's.
		s.releaseWriter()
		s.die(fmt.Errorf("h2mux: write: %w", err))
	}
}

// drainedError ends the writer of a client session that the server sent
// GOAWAY and that has no stream left; err is the GOAWAY's.
type drainedError struct{ err error }

func (e *drainedError) Error() string { return e.err.Error() }

// writeFrames writes what is queued until nothing is, and returns
// errWriterIdle then; any other return ends the writing for good (nil once
// the session has died).
func (s *Session) writeFrames() error {
	if !s.prefaced {
		s.prefaced = true
		if err := s.writePreface(); err != nil {
			return err
		}
		s.mu.Lock()
		s.writing = false // held since newSession, for the preface
	} else {
		s.mu.Lock()
	}
	var batch, ctrl []writeItem
	for {
		// Each round takes the write token (see Session.writing) and
		// gives it back at its end, under s.mu throughout.
		if s.err != nil {
			if !s.writing {
				// Back to the pool; a stream that holds the token
				// returns the buffer itself (see writeDirect).
				s.releaseWriter()
			}
			s.mu.Unlock()
			return nil
		}
		if s.writing {
			// A stream writes directly; it starts a writer when done
			// if frames were queued meanwhile.
			s.writerOn = false
			s.mu.Unlock()
			return errWriterIdle
		}
		if len(s.wq)+len(s.cq) == 0 {
			if s.bw != nil && s.bw.Buffered() > 0 {
				// Flush only when the queue is empty so that a burst of
				// frames from many streams shares system calls.
				s.writing = true
				s.mu.Unlock()
				if err := s.bw.Flush(); err != nil {
					return err
				}
				s.mu.Lock()
				s.writing = false
				continue
			}
			s.releaseWriter()
			// Streams whose turn at the write gate went unused
			// (see Stream.WaitWrite) may wait for one still.
			for range gateItems {
				s.openGateLocked()
			}
			if s.client && s.goaway && s.numStreams == 0 {
				// The server sent GOAWAY and the last stream has
				// ended: close the session, as a browser does.
				err := s.goawayErrLocked()
				s.mu.Unlock()
				return &drainedError{err}
			}
			s.writerOn = false
			s.mu.Unlock()
			return errWriterIdle
		}
		s.writing = true
		ctrl = s.takeCtrlLocked(ctrl)
		batch, s.wq = s.wq, batch[:0]
		s.nCtrl = 0
		maxFrame := int(s.peerMaxFrame)
		s.mu.Unlock()
		s.takeWriter()
		s.gatherWrites(true)

		if err := s.writeCtrl(ctrl, maxFrame); err != nil {
			return err
		}
		for i := 0; i < len(batch); i++ {
			if s.ncq.Load() > 0 {
				// Control frames queued while this batch is written
				// go out before its next item.
				s.mu.Lock()
				ctrl = s.takeCtrlLocked(ctrl)
				s.mu.Unlock()
				if err := s.writeCtrl(ctrl, maxFrame); err != nil {
					return err
				}
			}
			it := &batch[i]
			var err error
			if it.kind == itemHeaders && it.flight > 0 {
				var data *writeItem
				if i+1 < len(batch) && batch[i+1].first && batch[i+1].id == it.id {
					i++
					data = &batch[i]
				}
				err = s.writeFlight(it, data, maxFrame)
				if data != nil {
					if data.notify {
						signal(data.st.wdone)
					}
					*data = writeItem{}
					s.dataWritten()
				}
			} else {
				err = s.writeItem(it, maxFrame)
			}
			if it.notify {
				signal(it.st.wdone)
			}
			if it.kind == itemData {
				s.dataWritten()
			}
			if err != nil {
				return err
			}
			if it.kind == itemGoAway {
				// The last frame: nothing is written after it, and
				// the token stays taken.
				err := s.bw.Flush()
				if gerr := s.gatherWrites(false); err == nil {
					err = gerr
				}
				s.releaseWriter()
				return err
			}
			*it = writeItem{} // drop references to streams and buffers
		}
		if err := s.gatherWrites(false); err != nil {
			return err
		}
		s.mu.Lock()
		s.writing = false
	}
}

// writeDirect writes it, a stream's DATA, from the stream's own goroutine
// and flushes it, sparing two goroutine hand-offs per write; the caller
// has taken the write token with the queues empty (see
// [Session.writing]) and holds s.mu, which writeDirect releases for the
// write and takes again before it gives the token back.
func (s *Session) writeDirect(it *writeItem) error {
	s.writing = true
	maxFrame := int(s.peerMaxFrame)
	s.mu.Unlock()
	s.takeWriter()
	s.gatherWrites(true)
	var err error
	if it.framed != nil {
		err = s.writeFramed(it.id, it.framed, it.end, maxFrame)
	} else if err = s.writeData(it.id, it.data, it.end, maxFrame, it.pad); err == nil {
		err = s.bw.Flush()
	}
	if gerr := s.gatherWrites(false); err == nil {
		err = gerr
	}
	s.mu.Lock()
	s.releaseWriter() // on error too: the session is dying
	s.writing = false
	if len(s.wq)+len(s.cq) > 0 || s.err != nil {
		// A writer for what was queued meanwhile; or, the session
		// having died, none (see kickLocked).
		s.kickLocked()
	}
	return err
}

// gatherWrites turns on or off the gathering of the connection's writes
// into fewer system calls, where the connection under TLS can gather them
// (see [transport.Gatherer]): on while a writer writes a round of queued
// frames or a stream writes directly, and off, writing out what was
// gathered, at its end, before the write token is given back. Turning it
// on does not fail.
func (s *Session) gatherWrites(on bool) error {
	if s.gather == nil {
		return nil
	}
	return s.gather.Gather(on)
}

// canWriteDirectLocked reports whether a stream may write its DATA item it
// itself (see [Session.writeDirect]): nobody else writes, nothing is
// queued ahead of it, and it is plain DATA.
func (s *Session) canWriteDirectLocked(it *writeItem) bool {
	return !s.writing && len(s.wq)+len(s.cq) == 0 && s.err == nil && !s.closing &&
		it.kind == itemData && !it.first && it.pad == 0
}

// takeCtrlLocked hands the queued control frames to the writer, reusing
// buf, and uncounts the peer-provoked ones.
func (s *Session) takeCtrlLocked(buf []writeItem) []writeItem {
	taken := s.cq
	s.cq = buf[:0]
	s.ncq.Store(0)
	for i := range taken {
		if taken[i].peer {
			s.nCtrl--
		}
	}
	return taken
}

// writeCtrl writes control frames taken from cq, and flushes after a PING
// or PING ACK so that it does not wait in the buffer for more frames.
func (s *Session) writeCtrl(items []writeItem, maxFrame int) error {
	ping := false
	for i := range items {
		if err := s.writeItem(&items[i], maxFrame); err != nil {
			return err
		}
		ping = ping || items[i].kind == itemPing
		items[i] = writeItem{}
	}
	if ping {
		return s.bw.Flush()
	}
	return nil
}

// writePreface writes the first flight: the client preface (section 3.4),
// our SETTINGS (section 6.5) and a WINDOW_UPDATE that opens the connection
// window. A client sends the settings Chrome sends, in Chrome's order.
func (s *Session) writePreface() error {
	s.takeWriter()
	if err := writePreface(s.bw, s.wf, s.client, s.cfg); err != nil {
		return err
	}
	return s.bw.Flush()
}

// writePreface writes the first flight of a client (or server) session
// with cfg, filled, to w, whose framer is fr.
func writePreface(w io.StringWriter, fr *http2.Framer, client bool, cfg Config) error {
	var settings []http2.Setting
	if client {
		if _, err := w.WriteString(http2.ClientPreface); err != nil {
			return err
		}
		settings = append(settings,
			http2.Setting{ID: http2.SettingHeaderTableSize, Val: clientTable},
			http2.Setting{ID: http2.SettingEnablePush, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(cfg.MaxStreamWindow)},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: clientHdrList},
		)
	} else {
		settings = append(settings,
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(cfg.MaxStreams)},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(cfg.MaxStreamWindow)},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: serverHdrList},
		)
	}
	if cfg.MaxFrameSize != minFrameSize {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxFrameSize, Val: uint32(cfg.MaxFrameSize)})
	}
	if err := fr.WriteSettings(settings...); err != nil {
		return err
	}
	if inc := cfg.MaxConnWindow - initialWindow; inc > 0 {
		return fr.WriteWindowUpdate(0, uint32(inc))
	}
	return nil
}

// ClientPreface returns the first flight of a client session with the
// default Config: the connection preface, Chromium's SETTINGS in its
// order, and its connection WINDOW_UPDATE, as Chromium sends them in its
// first record. Whoever must open an HTTP/2 connection as Chromium does
// writes it.
func ClientPreface() []byte {
	cfg, err := Config{}.fill()
	if err != nil {
		panic("h2mux: the default Config does not fill: " + err.Error())
	}
	var b bytes.Buffer
	writePreface(&b, http2.NewFramer(&b, nil), true, cfg)
	return b.Bytes()
}

func (s *Session) writeItem(it *writeItem, maxFrame int) error {
	switch it.kind {
	case itemHeaders:
		return s.writeHeaders(it.id, it.end, maxFrame, s.encodeHeaders(), 0)
	case itemData:
		if it.framed != nil {
			return s.writeFramed(it.id, it.framed, it.end, maxFrame)
		}
		return s.writeData(it.id, it.data, it.end, maxFrame, it.pad)
	case itemSettingsAck:
		if it.table {
			// Section 6.5.3: the new HEADER_TABLE_SIZE applies from our
			// acknowledgement on; the encoder signals the change. One
			// not made yet starts at the default size, which a limit
			// as large leaves alone (RFC 7541 section 4.2).
			if s.henc == nil && it.val >= defaultTable {
				s.hencLimit = it.val
			} else {
				s.encoder().SetMaxDynamicTableSizeLimit(it.val)
			}
		}
		return s.wf.WriteSettingsAck()
	case itemWindowUpdate:
		return s.wf.WriteWindowUpdate(it.id, it.val)
	case itemPing:
		return s.wf.WritePing(it.ack, it.ping)
	case itemRST:
		return s.wf.WriteRSTStream(it.id, http2.ErrCode(it.val))
	case itemGoAway:
		return s.wf.WriteGoAway(it.id, http2.ErrCode(it.val), nil)
	}
	return nil
}

// writeFlight writes a stream's first flight: its HEADERS (h) and, if
// data is not nil, the DATA queued with it, padded together to about
// h.flight bytes and flushed as a record of their own. HEADERS padding
// comes first, since it is free (section 6.9.1: only DATA counts against
// flow control); the rest goes on the DATA, or on an empty DATA frame of
// its own if none was queued, as far as the windows allow.
func (s *Session) writeFlight(h, data *writeItem, maxFrame int) error {
	if s.bw.Buffered() > 0 {
		// Control frames written ahead go in a record of their own,
		// as a browser's SETTINGS ACK does.
		if err := s.bw.Flush(); err != nil {
			return err
		}
	}
	block := s.encodeHeaders()
	need := h.flight - frameHeaderSz - len(block)
	if data != nil {
		n := len(data.data)
		need -= n + frameHeaderSz*max(1, (n+maxFrame-1)/maxFrame)
	}
	hpad := 0 // HEADERS padding, Pad Length octet included
	if need > 0 && len(block)+maxPadLen+1 <= maxFrame {
		hpad = max(2, min(need, maxPadLen+1)) // Framer pads only with PadLength > 0
		need -= hpad
	}
	dpad := 0
	if data == nil {
		need -= frameHeaderSz
	}
	if need > 0 && !h.end {
		dpad = s.takePadWindow(h.st, min(need, maxPadLen+1))
	}
	if err := s.writeHeaders(h.id, h.end, maxFrame, block, hpad); err != nil {
		return err
	}
	var err error
	switch {
	case data != nil:
		err = s.writeData(data.id, data.data, data.end, maxFrame, dpad)
	case dpad > 0:
		err = s.writeData(h.id, nil, false, maxFrame, dpad)
	}
	if err != nil {
		return err
	}
	return s.bw.Flush()
}

// takePadWindow takes up to want bytes of st's send window and the
// connection's for padding, and returns how many it took.
func (s *Session) takePadWindow(st *Stream, want int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.finished {
		return 0
	}
	n := min(int64(want), st.sendWin, s.connSend)
	if n <= 0 {
		return 0
	}
	st.sendWin -= n
	s.connSend -= n
	return int(n)
}

// encodeHeaders encodes the header block of a request (client) or
// response (server) into s.hbuf and returns it.
func (s *Session) encodeHeaders() []byte {
	s.hbuf.Reset()
	enc := s.encoder()
	if s.client {
		// Chrome's pseudo-header order.
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "POST"})
		enc.WriteField(hpack.HeaderField{Name: ":authority", Value: s.cfg.Authority})
		enc.WriteField(hpack.HeaderField{Name: ":scheme", Value: "https"})
		enc.WriteField(hpack.HeaderField{Name: ":path", Value: s.cfg.Path})
	} else {
		enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	}
	return s.hbuf.Bytes()
}

// encoder returns the session's HPACK encoder, made on first use: a
// session that never opens or answers a stream has none.
func (s *Session) encoder() *hpack.Encoder {
	if s.henc == nil {
		s.henc = hpack.NewEncoder(&s.hbuf)
		if s.hencLimit != 0 {
			s.henc.SetMaxDynamicTableSizeLimit(s.hencLimit)
		}
	}
	return s.henc
}

// writeHeaders writes an encoded header block as HEADERS plus
// CONTINUATION frames (section 6.2, 6.10). pad is the HEADERS frame's
// padding, Pad Length octet included: 0 for none, else 2 to 256.
func (s *Session) writeHeaders(id uint32, end bool, maxFrame int, block []byte, pad int) error {
	first := block
	if len(first) > maxFrame-pad {
		first = first[:maxFrame-pad]
	}
	block = block[len(first):]
	var padLen uint8
	if pad > 1 {
		padLen = uint8(pad - 1)
	}
	err := s.wf.WriteHeaders(http2.HeadersFrameParam{
		StreamID:      id,
		BlockFragment: first,
		EndStream:     end,
		EndHeaders:    len(block) == 0,
		PadLength:     padLen,
	})
	for err == nil && len(block) > 0 {
		frag := block
		if len(frag) > maxFrame {
			frag = frag[:maxFrame]
		}
		block = block[len(frag):]
		err = s.wf.WriteContinuation(id, len(block) == 0, frag)
	}
	return err
}

// writeData writes data as DATA frames of at most maxFrame bytes (section
// 6.1), the first padded with pad bytes (Pad Length octet included; 0 for
// none, at most maxPadLen+1). The frame header is built here rather than
// with Framer.WriteData so that the payload is copied only once, into the
// buffered writer.
func (s *Session) writeData(id uint32, data []byte, end bool, maxFrame, pad int) error {
	for {
		n := min(len(data), maxFrame-pad)
		last := n == len(data)
		h := s.dhdr[:]
		putDataHeader(h, id, n+pad, last && end, pad > 0)
		if _, err := s.bw.Write(h); err != nil {
			return err
		}
		if pad > 0 {
			if err := s.bw.WriteByte(byte(pad - 1)); err != nil {
				return err
			}
		}
		if _, err := s.bw.Write(data[:n]); err != nil {
			return err
		}
		if pad > 1 {
			if _, err := s.bw.Write(zeroPad[:pad-1]); err != nil {
				return err
			}
		}
		pad = 0
		data = data[n:]
		if last {
			return nil
		}
	}
}

// putDataHeader puts the header of a DATA frame of size bytes in h.
func putDataHeader(h []byte, id uint32, size int, end, padded bool) {
	h[0], h[1], h[2] = byte(size>>16), byte(size>>8), byte(size)
	h[3] = byte(http2.FrameData)
	h[4] = 0
	if end {
		h[4] = byte(http2.FlagDataEndStream)
	}
	if padded {
		h[4] |= byte(http2.FlagDataPadded)
	}
	binary.BigEndian.PutUint32(h[5:], id)
}

// writeFramed writes framed[frameHeaderSz:] as DATA frames without
// copying it: each frame's header goes in the frameHeaderSz bytes before
// its payload (the free ones before the data, then the end of the frame
// before it, already written), and header and payload go to the
// connection in one Write. A frame then fills one TLS record
// (tlsRecord bytes with its header), as the frames of a buffered flush
// fill theirs. Frames already in the buffer go first, in a flush of
// their own.
func (s *Session) writeFramed(id uint32, framed []byte, end bool, maxFrame int) error {
	if s.bw.Buffered() > 0 {
		if err := s.bw.Flush(); err != nil {
			return err
		}
	}
	size := min(maxFrame, tlsRecord-frameHeaderSz)
	for {
		n := min(len(framed)-frameHeaderSz, size)
		last := n == len(framed)-frameHeaderSz
		putDataHeader(framed, id, n, last && end, false)
		if _, err := s.conn.Write(framed[:frameHeaderSz+n]); err != nil {
			return err
		}
		if last {
			return nil
		}
		framed = framed[n:]
	}
}

// zeroPad is padding: section 6.1 requires zeros.
var zeroPad [maxPadLen]byte

// Connection buffers are lent to sessions only while they read or write:
// an idle session holds none (a relay keeps thousands of idle sessions).
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}
	writerPool = sync.Pool{New: func() any {
		bw := bufio.NewWriterSize(nil, writeBufSize)
		return &writeBuf{bw: bw, fr: http2.NewFramer(bw, nil)}
	}}
)

// A writeBuf is a connection write buffer and a framer writing to it.
type writeBuf struct {
	bw *bufio.Writer
	fr *http2.Framer
}

// logger returns the session's logger. It is made when a message is
// logged, which is rare, rather than kept by every session.
func (s *Session) logger() *slog.Logger {
	side := "server"
	if s.client {
		side = "client"
	}
	return s.cfg.Logger.With("transport", "h2mux", "side", side)
}

// takeWriter gives the writer a buffer, if it has none.
func (s *Session) takeWriter() {
	if s.bw == nil {
		s.wb = writerPool.Get().(*writeBuf)
		s.bw, s.wf = s.wb.bw, s.wb.fr
		s.bw.Reset(s.conn)
	}
}

// releaseWriter returns the writer's buffer, which must be flushed, to
// the pool.
func (s *Session) releaseWriter() {
	if s.bw != nil {
		s.bw.Reset(nil)
		writerPool.Put(s.wb)
		s.wb, s.bw, s.wf = nil, nil, nil
	}
}

// sessionReader is the read framer's source: the reader's buffer of the
// moment.
type sessionReader struct{ s *Session }

func (r sessionReader) Read(p []byte) (int, error) { return r.s.br.Read(p) }

// pendingReader reads pending, then conn.
type pendingReader struct {
	conn    net.Conn
	pending []byte
}

func (r *pendingReader) Read(p []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	return r.conn.Read(p)
}

// fillReader makes sure that the reader has a buffer with something in
// it. When the last one is used up, it returns the buffer to the pool and
// waits for the peer with a 1-byte read, which holds no buffer of ours
// (TLS keeps the rest of its record), then takes a buffer again.
func (s *Session) fillReader() error {
	if s.br != nil {
		if s.br.Buffered() > 0 {
			return nil
		}
		s.br.Reset(nil)
		readerPool.Put(s.br)
		s.br = nil
	}
	n, err := s.conn.Read(s.first[:])
	if n == 0 {
		if err == nil {
			err = io.ErrNoProgress
		}
		return err
	}
	// An error with the byte comes again with the next read.
	s.src.pending = s.first[:n]
	s.br = readerPool.Get().(*bufio.Reader)
	s.br.Reset(&s.src)
	return nil
}

// ---- reader ----

func (s *Session) readLoop() {
	defer s.wg.Done()
	defer s.endReading()
	err := s.readFrames()
	var pe *protoError
	if errors.As(err, &pe) {
		s.shutdown(err, pe.code)
		return
	}
	s.die(err)
}

// ServeStreams hands each stream the peer opens to handle, in the order
// they open, instead of [Session.AcceptStream]; streams already waiting
// to be accepted go to handle before ServeStreams returns. Once the
// session has ended and handle has had its last stream, end is called,
// from a goroutine of its own. handle runs on the session's read loop and
// must not block (it starts whatever serves the stream): a server thus
// holds no goroutine per session waiting for streams. It is for servers
// only, and is called at most once.
func (s *Session) ServeStreams(handle func(*Stream), end func()) error {
	if s.client {
		return fmt.Errorf("h2mux: serve streams: %w", ErrWrongSide)
	}
	s.dispatchMu.Lock()
	s.mu.Lock()
	if s.onStream != nil {
		s.mu.Unlock()
		s.dispatchMu.Unlock()
		return errors.New("h2mux: serve streams: called twice")
	}
	s.onStream, s.onEnd = handle, end
	ended := s.readEnded
	s.mu.Unlock()
	s.dispatchLocked()
	s.dispatchMu.Unlock()
	if ended {
		go end()
	}
	return nil
}

// dispatch hands the accepted streams to onStream, if it is set.
func (s *Session) dispatch() {
	s.dispatchMu.Lock()
	s.dispatchLocked()
	s.dispatchMu.Unlock()
}

// dispatchLocked is dispatch with dispatchMu held.
func (s *Session) dispatchLocked() {
	for {
		s.mu.Lock()
		handle := s.onStream
		if handle == nil {
			s.mu.Unlock()
			return
		}
		st := s.nextAcceptedLocked()
		s.mu.Unlock()
		if st == nil {
			return
		}
		handle(st)
	}
}

// nextAcceptedLocked takes the next stream off acceptQ, or returns nil if
// none is waiting. s.mu is held.
func (s *Session) nextAcceptedLocked() *Stream {
	for len(s.acceptQ) > 0 {
		st := s.acceptQ[0]
		s.acceptQ[0] = nil
		s.acceptQ = s.acceptQ[1:]
		st.accepted = true
		if st.finished {
			s.releaseSlotLocked(st)
			continue
		}
		return st
	}
	return nil
}

// endReading records that the read loop has returned and, if ServeStreams
// was called, calls its end once any hand-over still running is done.
func (s *Session) endReading() {
	s.mu.Lock()
	s.readEnded = true
	end := s.onEnd
	s.mu.Unlock()
	if end != nil {
		go func() {
			// After any hand-over by ServeStreams still running; none
			// comes after it.
			s.dispatchMu.Lock()
			defer s.dispatchMu.Unlock()
			end()
		}()
	}
}

// protoError is a connection error (RFC 9113 section 5.4.1): the session
// ends, telling the peer the code in GOAWAY.
type protoError struct {
	code http2.ErrCode
	msg  string
}

func (e *protoError) Error() string {
	return fmt.Sprintf("h2mux: %s (%v)", e.msg, e.code)
}

func (e *protoError) Unwrap() error { return ErrProtocol }

func connError(code http2.ErrCode, format string, args ...any) error {
	return &protoError{code: code, msg: fmt.Sprintf(format, args...)}
}

func (s *Session) readFrames() error {
	if !s.client {
		var buf [len(http2.ClientPreface)]byte
		err := s.fillReader()
		if err == nil {
			_, err = io.ReadFull(s.br, buf[:])
		}
		if err != nil {
			return fmt.Errorf("h2mux: read preface: %w", err)
		}
		if string(buf[:]) != http2.ClientPreface {
			return fmt.Errorf("h2mux: bad connection preface: %w", ErrProtocol)
		}
	}
	first := true
	for {
		if err := s.fillReader(); err != nil {
			return readErr(err)
		}
		if !first {
			handled, err := s.readData()
			if err != nil {
				return err
			}
			if handled {
				s.wakeIfDue()
				continue
			}
		}
		f, err := s.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			var ce http2.ConnectionError
			switch {
			case errors.As(err, &se):
				if err := s.onStreamError(se); err != nil {
					return err
				}
				continue
			case errors.As(err, &ce):
				return connError(http2.ErrCode(ce), "bad frame: %v", s.fr.ErrorDetail())
			case errors.Is(err, http2.ErrFrameTooLarge):
				return connError(http2.ErrCodeFrameSize, "frame larger than %d bytes", s.cfg.MaxFrameSize)
			}
			return readErr(err)
		}
		if first {
			// Section 3.4: the first frame from either side is SETTINGS.
			// Frames of unknown types before it are ignored, as they are
			// anywhere (section 5.5): a relay mirroring its cover site's
			// flight sends some where the cover sends session tickets.
			if _, ok := f.(*http2.UnknownFrame); ok {
				continue
			}
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return connError(http2.ErrCodeProtocol, "first frame is %v, not SETTINGS", f.Header().Type)
			}
			first = false
		}
		if err := s.handleFrame(f); err != nil {
			return err
		}
		if f.Header().Type == http2.FrameHeaders {
			s.dispatch()
		}
		s.wakeIfDue()
	}
}

// wakeIfDue wakes the readers of streams that received data (see
// wakeReaders) after wakeBytes, or, where the connection does not tell
// when its socket is drained, once no whole frame is left in the read
// buffer.
//
// After wakeBytes, more is coming, and the read loop then yields its
// thread to the readers it woke: they write the data out while it is still
// in this core's cache, where the read loop has just put it, and their
// chunks come back to this core's pool to take the next payloads. Left to
// run on, the read loop fills chunk after chunk while the readers wait for
// a thread, and with many busy streams megabytes queue, each copy of them
// then a cache miss.
func (s *Session) wakeIfDue() {
	switch {
	case s.readyBytes >= wakeBytes:
		s.wakeReaders()
		runtime.Gosched()
	case !s.waitHook && !s.frameBuffered():
		s.wakeReaders()
	}
}

// readErr is the session's error for err from its connection.
func readErr(err error) error {
	if errors.Is(err, io.EOF) {
		// The connection ended under the session, without GOAWAY: for
		// its streams that is a failure, not the clean end of stream
		// io.EOF means to callers such as transport.Splice.
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("h2mux: read frame: %w", err)
}

// readData handles the next frame if it is DATA, and reports whether it
// did; every other frame, and any error reading the header, is left to
// the framer (which would copy a payload into a buffer of its own, kept
// for the session's life). A large payload is read into a chunk of its
// own (see recvBuf), which the read buffer, smaller than the payload,
// lets the connection fill directly; a small one is copied from its chunk
// into the stream's last one where it fits (see onData).
//
// With nothing in the read buffer, the header is read on its own, and a
// large payload then straight from the connection: were the buffer to
// read the header, it would take the payload's first 4 KiB with it, to be
// copied a second time. A frame left to the buffer or the framer goes
// back in front of the connection (see pendingReader).
func (s *Session) readData() (bool, error) {
	var h []byte
	exact := s.br.Buffered() == 0
	if exact {
		if _, err := io.ReadFull(&s.src, s.hdr[:]); err != nil {
			return true, readErr(err)
		}
		h = s.hdr[:]
	} else {
		var err error
		if h, err = s.br.Peek(frameHeaderSz); err != nil {
			return false, nil
		}
	}
	length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	if http2.FrameType(h[3]) != http2.FrameData || length > s.cfg.MaxFrameSize || exact && length < readBufSize {
		if exact {
			s.src.pending = s.hdr[:]
		}
		return false, nil
	}
	flags := http2.Flags(h[4])
	id := binary.BigEndian.Uint32(h[5:]) & maxStreamID
	// Section 6.1.
	if id == 0 {
		return false, connError(http2.ErrCodeProtocol, "DATA on stream 0")
	}
	var r io.Reader = &s.src
	if !exact {
		s.br.Discard(frameHeaderSz)
		r = s.br
	}
	c := newChunk(length)
	payload := c.data[:length]
	if _, err := io.ReadFull(r, payload); err != nil {
		freeChunk(c)
		return true, readErr(err)
	}
	data, off := payload, 0
	if flags.Has(http2.FlagDataPadded) {
		if len(data) == 0 || int(data[0]) > len(data)-1 {
			freeChunk(c)
			return true, connError(http2.ErrCodeProtocol, "DATA padding longer than the frame")
		}
		data, off = data[1:len(data)-int(data[0])], 1
	}
	c.off, c.end = off, off+len(data)
	s.mu.Lock()
	s.heardLocked()
	err := s.onData(id, int64(length), data, flags.Has(http2.FlagDataEndStream), c)
	s.mu.Unlock()
	return true, err
}

// frameBuffered reports whether a whole frame is already buffered, so that
// the next ReadFrame will not block (see wakeReaders).
func (s *Session) frameBuffered() bool {
	n := s.br.Buffered()
	if n < frameHeaderSz {
		return false
	}
	h, err := s.br.Peek(frameHeaderSz)
	if err != nil {
		return false
	}
	length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	return n >= frameHeaderSz+length
}

// wakeReaders wakes the readers of streams that received data. The read
// loop wakes them only before it may wait for the peer, so that one
// wake-up covers many frames: when its connection is a
// [transport.WaitConn], from the connection's read once the socket is
// drained, else once no whole frame is left in the read buffer (the next
// read may wait); and after wakeBytes meanwhile.
func (s *Session) wakeReaders() {
	var direct [8]*chunk
	var to [8]*Stream
	k := 0
	s.mu.Lock()
	for i, st := range s.ready {
		st.readyQueued = false
		s.ready[i] = nil
		if k < len(direct) && st.spliceIdle && len(st.recv.chunks) == 1 && st.recv.n <= directMax && !st.remoteEnd {
			// A small message for a stream whose splice waits with
			// nothing in hand: written here (see deliver).
			direct[k], to[k] = st.recv.take(), st
			k++
			continue
		}
		signal(st.rch)
	}
	s.ready = s.ready[:0]
	s.readyBytes = 0
	s.mu.Unlock()
	for i := range k {
		s.deliver(to[i], direct[i])
	}
}

// directMax is the most data the read loop writes to a stream's
// destination itself (see deliver).
const directMax = 4 << 10

// deliver writes c, all that st holds, to st's splice destination,
// without waiting: a small message (an app's request or its answer) then
// reaches its socket without the wake-up of the splice's goroutine, which
// would add to every round trip what the tunnel, one goroutine reading and
// writing each connection, does not pay. What the socket does not take at
// once goes back to st, for the splice. Only the read loop adds data to a
// stream, so none comes meanwhile; the splice, finding nothing, waits on.
func (s *Session) deliver(st *Stream, c *chunk) {
	s.mu.Lock()
	sink, count := st.sink, st.sinkCount
	s.mu.Unlock()
	n := 0
	if sink != nil {
		n = transport.WriteNow(sink, c.data[c.off:c.end])
	}
	if n > 0 && count != nil {
		count(n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	written := int64(n)
	s.delivered++
	st.sinkWritten += written
	if c.off += n; c.off < c.end {
		if st.errLocked() == nil && s.err == nil {
			s.consumedLocked(st, written)
			st.recv.push(c) // st holds nothing else: the read loop is here
			signal(st.rch)
			return
		}
		// Closed or reset meanwhile: its data is dropped, as
		// discardLocked drops it.
		written += int64(c.end - c.off)
	}
	s.consumedLocked(st, written)
	freeChunk(c)
}

// wakeBytes is how much data received for streams makes the read loop
// wake their readers while more is coming.
const wakeBytes = 256 << 10

// heardLocked notes that a frame arrived.
func (s *Session) heardLocked() {
	if s.heard != nil {
		// Any frame proves the peer alive to a waiting Ping.
		close(s.heard)
		s.heard = nil
	}
	if s.client {
		s.heardAt = time.Now()
	}
}

func (s *Session) handleFrame(f http2.Frame) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.heardLocked()
	switch f := f.(type) {
	case *http2.DataFrame:
		return s.onData(f.StreamID, int64(f.Length), f.Data(), f.StreamEnded(), nil)
	case *http2.MetaHeadersFrame:
		return s.onHeaders(f)
	case *http2.SettingsFrame:
		return s.onSettings(f)
	case *http2.PingFrame:
		return s.onPing(f)
	case *http2.WindowUpdateFrame:
		return s.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		return s.onRSTStream(f)
	case *http2.GoAwayFrame:
		return s.onGoAway(f)
	case *http2.PushPromiseFrame:
		// Section 8.4: we never enable push.
		return connError(http2.ErrCodeProtocol, "PUSH_PROMISE with push disabled")
	}
	// PRIORITY and unknown frame types are ignored (section 5.3.2, 5.5).
	return nil
}

// idleLocked reports whether id names a stream that has not been opened
// yet (section 5.1: frames other than HEADERS and PRIORITY on an idle stream
// are a connection error).
func (s *Session) idleLocked(id uint32) bool {
	if id%2 == 1 { // client-initiated
		if s.client {
			return id >= s.nextID
		}
		return id > s.lastPeerID
	}
	return true // nobody opens even streams: we disable push
}

// onStreamError handles a stream error the framer detected (for example
// invalid header fields): the stream is reset, the session lives on.
func (s *Session) onStreamError(se http2.StreamError) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if se.StreamID == 0 {
		return connError(se.Code, "stream error on stream 0")
	}
	if !s.client && se.StreamID%2 == 1 && se.StreamID > s.lastPeerID {
		s.lastPeerID = se.StreamID // a refused new stream still uses up its ID
	}
	st := s.streams[se.StreamID]
	if st == nil && s.idleLocked(se.StreamID) {
		return connError(http2.ErrCodeProtocol, "stream error on idle stream %d", se.StreamID)
	}
	s.logger().Debug("stream error", "stream", se.StreamID, "err", se)
	return s.resetLocked(st, se.StreamID, se.Code, fmt.Errorf("h2mux: stream %d: %v: %w", se.StreamID, se.Code, ErrStreamReset))
}

// resetLocked sends RST_STREAM with code for stream id and, if st is known,
// fails it with err.
func (s *Session) resetLocked(st *Stream, id uint32, code http2.ErrCode, err error) error {
	if !s.enqueueLocked(writeItem{kind: itemRST, id: id, val: uint32(code), peer: true}) {
		return connError(http2.ErrCodeEnhanceYourCalm, "too many queued control frames")
	}
	if st != nil {
		s.failStreamLocked(st, err)
	}
	return nil
}

// failStreamLocked ends st with err: buffered data is dropped (its window
// returned) and both directions fail.
func (s *Session) failStreamLocked(st *Stream, err error) {
	if st.resetErr == nil {
		st.resetErr = err
	}
	s.discardLocked(st)
	s.finishLocked(st)
}

// discardLocked drops st's unread data, returning its connection window.
func (s *Session) discardLocked(st *Stream) {
	n := st.recv.reset()
	st.finished = true // no stream WINDOW_UPDATE for what we drop
	s.consumedLocked(st, int64(n))
}

// finishLocked forgets st: the peer will send nothing more we need, and we
// will send nothing more. It wakes st's readers and writers.
func (s *Session) finishLocked(st *Stream) {
	st.finished = true
	if st.id != 0 && s.streams[st.id] == st {
		delete(s.streams, st.id)
	}
	if st.accepted {
		s.releaseSlotLocked(st)
	}
	signal(st.rch)
	signal(st.wch)
}

// onData handles a DATA frame on stream id of length bytes (section
// 6.9.1: the whole payload, padding included, is flow controlled) that
// carries data. If c is not nil, data is its unread part, and onData keeps
// c or frees it; otherwise it copies data.
func (s *Session) onData(id uint32, n int64, data []byte, end bool, c *chunk) error {
	stored := false
	defer func() {
		if c != nil && !stored {
			freeChunk(c)
		}
	}()
	if n > s.connRecv {
		return connError(http2.ErrCodeFlowControl, "DATA of %d bytes beyond connection window %d", n, s.connRecv)
	}
	s.connRecv -= n
	st := s.streams[id]
	if st == nil {
		if s.idleLocked(id) {
			return connError(http2.ErrCodeProtocol, "DATA on idle stream %d", id)
		}
		// A stream we already closed or reset: the peer may not have
		// seen our RST_STREAM yet (section 5.1, "closed"). Give the
		// window back and drop the data.
		s.consumedLocked(nil, n)
		return nil
	}
	if st.remoteEnd {
		// Section 5.1, "half-closed (remote)": STREAM_CLOSED.
		s.consumedLocked(nil, n)
		return s.resetLocked(st, id, http2.ErrCodeStreamClosed, fmt.Errorf("h2mux: stream %d: DATA after END_STREAM: %w", id, ErrStreamReset))
	}
	if n > st.recvAvail {
		return connError(http2.ErrCodeFlowControl, "DATA of %d bytes beyond stream %d window %d", n, id, st.recvAvail)
	}
	st.recvAvail -= n
	switch {
	case len(data) == 0:
	case c != nil && len(data) > st.recv.room():
		st.recv.push(c) // data is c's unread part
		stored = true
	default:
		st.recv.append(data)
	}
	if end {
		st.remoteEnd = true
		if st.writeEnd {
			s.finishLocked(st)
		}
	}
	// Padding is never read by the application; return it now.
	s.consumedLocked(st, n-int64(len(data)))
	if !st.readyQueued {
		st.readyQueued = true
		s.ready = append(s.ready, st)
	}
	s.readyBytes += len(data)
	return nil
}

func (s *Session) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if s.client {
		return s.onResponseHeaders(f)
	}
	if st := s.streams[id]; st != nil {
		// Trailers (section 8.1): they must end the stream.
		if !f.StreamEnded() || st.remoteEnd {
			return connError(http2.ErrCodeProtocol, "HEADERS on open stream %d without END_STREAM", id)
		}
		st.remoteEnd = true
		if st.writeEnd {
			s.finishLocked(st)
		}
		signal(st.rch)
		return nil
	}
	if id%2 == 0 {
		return connError(http2.ErrCodeProtocol, "client opened even stream %d", id)
	}
	if id <= s.lastPeerID {
		return nil // a stream we reset or finished; ignore (section 5.1)
	}
	s.lastPeerID = id
	if f.Truncated || f.PseudoValue("status") != "" || f.PseudoValue("method") == "" {
		return s.resetLocked(nil, id, http2.ErrCodeProtocol, nil)
	}
	if s.closing || s.numStreams >= s.cfg.MaxStreams {
		// Section 5.1.2: refuse streams beyond our limit.
		return s.resetLocked(nil, id, http2.ErrCodeRefusedStream, nil)
	}
	st := s.newStream(id)
	st.sendWin = s.peerInitWindow
	st.slot = true
	s.numStreams++
	s.streams[id] = st
	if f.StreamEnded() {
		st.remoteEnd = true
	}
	s.acceptQ = append(s.acceptQ, st)
	signal(s.acceptCh)
	return nil
}

func (s *Session) onResponseHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	st := s.streams[id]
	if st == nil {
		if s.idleLocked(id) {
			return connError(http2.ErrCodeProtocol, "HEADERS on idle stream %d", id)
		}
		return nil
	}
	if !st.gotResponse {
		status := f.PseudoValue("status")
		if len(status) == 3 && status[0] == '1' && status != "101" && !f.StreamEnded() {
			return nil // informational response (section 8.1); wait for the final one
		}
		if status != "200" || f.Truncated {
			return s.resetLocked(st, id, http2.ErrCodeCancel, fmt.Errorf("h2mux: stream %d: response status %q: %w", id, status, ErrStreamReset))
		}
		st.gotResponse = true
	} else if !f.StreamEnded() || st.remoteEnd {
		return connError(http2.ErrCodeProtocol, "HEADERS on open stream %d without END_STREAM", id)
	}
	if f.StreamEnded() {
		st.remoteEnd = true
		if st.writeEnd {
			s.finishLocked(st)
		}
		signal(st.rch)
	}
	return nil
}

func (s *Session) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	ack := writeItem{kind: itemSettingsAck, peer: true}
	err := f.ForeachSetting(func(set http2.Setting) error {
		if err := set.Valid(); err != nil {
			code := http2.ErrCodeProtocol
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				code = http2.ErrCode(ce)
			}
			return connError(code, "invalid setting %v", set)
		}
		switch set.ID {
		case http2.SettingInitialWindowSize:
			// Section 6.9.2: adjust every open stream by the difference;
			// windows may go negative but not above 2^31-1.
			delta := int64(set.Val) - s.peerInitWindow
			s.peerInitWindow = int64(set.Val)
			for _, st := range s.streams {
				st.sendWin += delta
				if st.sendWin > maxWindow {
					return connError(http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows stream %d window", st.id)
				}
				signal(st.wch)
			}
		case http2.SettingMaxFrameSize:
			s.peerMaxFrame = set.Val
		case http2.SettingMaxConcurrentStreams:
			s.peerMaxStreams = min(set.Val, maxStreamID)
			signal(s.slotCh)
		case http2.SettingHeaderTableSize:
			ack.table, ack.val = true, set.Val
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !s.enqueueLocked(ack) {
		return connError(http2.ErrCodeEnhanceYourCalm, "too many queued control frames")
	}
	return nil
}

func (s *Session) onPing(f *http2.PingFrame) error {
	if f.IsAck() {
		if p, ok := s.pings[f.Data]; ok {
			delete(s.pings, f.Data)
			s.rtt = time.Since(p.sent)
			close(p.done)
		}
		return nil
	}
	if !s.enqueueLocked(writeItem{kind: itemPing, ack: true, ping: f.Data, peer: true}) {
		return connError(http2.ErrCodeEnhanceYourCalm, "too many queued control frames")
	}
	return nil
}

func (s *Session) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		s.connSend += inc
		if s.connSend > maxWindow {
			return connError(http2.ErrCodeFlowControl, "connection window overflow")
		}
		for _, st := range s.streams {
			signal(st.wch)
		}
		return nil
	}
	st := s.streams[f.StreamID]
	if st == nil {
		if s.idleLocked(f.StreamID) {
			return connError(http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream %d", f.StreamID)
		}
		return nil
	}
	st.sendWin += inc
	if st.sendWin > maxWindow {
		// Section 6.9.1: a stream error for a stream window.
		return s.resetLocked(st, st.id, http2.ErrCodeFlowControl, fmt.Errorf("h2mux: stream %d: window overflow: %w", st.id, ErrStreamReset))
	}
	signal(st.wch)
	return nil
}

func (s *Session) onRSTStream(f *http2.RSTStreamFrame) error {
	st := s.streams[f.StreamID]
	if st == nil {
		if s.idleLocked(f.StreamID) {
			return connError(http2.ErrCodeProtocol, "RST_STREAM on idle stream %d", f.StreamID)
		}
		return nil
	}
	err := fmt.Errorf("h2mux: stream %d reset by peer (%v): %w", st.id, f.ErrCode, ErrStreamReset)
	if st.remoteEnd {
		// The peer had sent all it had (END_STREAM) before resetting:
		// what it sent stays readable up to io.EOF, and only our
		// direction ends (RFC 9113 section 8.1: a complete response
		// followed by RST_STREAM must not be discarded).
		st.writeReset = err
		s.finishLocked(st)
		return nil
	}
	s.failStreamLocked(st, err)
	return nil
}

func (s *Session) onGoAway(f *http2.GoAwayFrame) error {
	if !s.goaway || f.ErrCode != http2.ErrCodeNo {
		s.goawayCode = f.ErrCode // a later GOAWAY may report an error, not take one back
	}
	s.goaway = true
	s.logger().Debug("peer sent GOAWAY", "last_stream", f.LastStreamID, "code", f.ErrCode)
	// Section 6.8: streams above the last one the peer processed were
	// never seen by it; fail them, with an error that says they may be
	// retried on another session (it wraps net.ErrClosed).
	gerr := s.goawayErrLocked()
	for id, st := range s.streams {
		if id > f.LastStreamID && id%2 == boolBit(s.client) {
			s.failStreamLocked(st, fmt.Errorf("h2mux: stream %d refused by GOAWAY: %w: %w", id, ErrStreamReset, gerr))
		}
	}
	signal(s.slotCh)
	if s.client {
		s.kickLocked() // with no stream left, the writer closes the session
	}
	return nil
}

func boolBit(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
