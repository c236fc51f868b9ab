package h2mux

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
)

// A Stream is one HTTP/2 stream of a [Session]: a request body in one
// direction and a response body in the other. It implements
// [transport.Stream]. Read, Write, CloseWrite, Close and the deadline
// methods may be called concurrently; concurrent Writes are serialized.
//
// Read returns io.EOF only after the peer ended its side cleanly with
// END_STREAM. A stream the peer reset, or one that dies with its session,
// returns an error wrapping [ErrStreamReset] or [ErrSessionClosed] instead,
// so a truncated stream is never mistaken for a complete one. Deadlines
// make Read and Write return [os.ErrDeadlineExceeded].
type Stream struct {
	s     *Session
	wmu   sync.Mutex    // serializes Write and CloseWrite so frames stay in order
	rch   chan struct{} // cap 1: read-side state changed
	wch   chan struct{} // cap 1: write-side state changed (window, reset, deadline)
	wdone chan struct{} // cap 1: the writer finished our queued DATA

	// Everything below is guarded by s.mu.
	id          uint32  // 0 until a client stream's HEADERS is queued
	headersSent bool    // our HEADERS (request or response) is queued
	gotResponse bool    // client: the peer's response HEADERS arrived
	writeEnd    bool    // our END_STREAM is queued
	remoteEnd   bool    // the peer's END_STREAM arrived
	localClosed bool    // Close was called
	finished    bool    // forgotten by the session: no more frames either way
	slot        bool    // holds one of the session's concurrency slots
	accepted    bool    // handed to the application
	readyQueued bool    // in s.ready, waiting for its reader to be woken
	resetErr    error   // why the stream was cut short, if it was
	writeReset  error   // set when the peer reset after its END_STREAM: only writes fail
	recv        recvBuf // received data not yet read
	recvAvail   int64   // bytes the peer may still send (our advertised window)
	unacked     int64   // bytes read but not yet returned by WINDOW_UPDATE
	sendWin     int64   // bytes we may still send
	padWrites   int     // DATA writes still to be padded at random (see paddedWrites)
	rdl, wdl    deadline
	// SpliceTo's destination, a socket the read loop may write a small
	// message to itself (see Session.deliver), and its count; nil
	// unless SpliceTo runs and its destination is a socket.
	sink        syscall.RawConn
	sinkCount   func(int)
	sinkWritten int64 // what the read loop wrote to sink
	spliceIdle  bool  // SpliceTo waits for data with nothing in hand
	gateOpen    bool  // WaitWrite's turn came (see Session.openGateLocked)
}

// deadline is one direction's deadline: a time and a timer that wakes the
// waiters when it passes.
type deadline struct {
	t     time.Time
	timer *time.Timer
}

// set changes the deadline and wakes ch so that waiters re-check it.
func (d *deadline) set(t time.Time, ch chan struct{}) {
	d.stop()
	d.t = t
	if !t.IsZero() {
		if dur := time.Until(t); dur > 0 {
			d.timer = time.AfterFunc(dur, func() { signal(ch) })
		}
	}
	signal(ch)
}

func (d *deadline) stop() {
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

func (d *deadline) exceeded() bool {
	return !d.t.IsZero() && !time.Now().Before(d.t)
}

func (s *Session) newStream(id uint32) *Stream {
	return &Stream{
		s:         s,
		id:        id,
		rch:       make(chan struct{}, 1),
		wch:       make(chan struct{}, 1),
		wdone:     make(chan struct{}, 1),
		recvAvail: int64(s.cfg.MaxStreamWindow),
		padWrites: paddedWrites,
	}
}

func (st *Stream) stopTimersLocked() {
	st.rdl.stop()
	st.wdl.stop()
}

// activateLocked queues st's HEADERS frame. On a client this is when the
// stream gets its ID: IDs are assigned in the order HEADERS frames are
// queued, and the writer keeps that order, so they reach the wire in
// increasing order as RFC 9113 section 5.1.1 requires.
func (s *Session) activateLocked(st *Stream, end bool) error {
	if s.client {
		if s.goaway {
			return fmt.Errorf("h2mux: open stream: %w", s.goawayErrLocked())
		}
		if s.nextID > maxStreamID {
			return fmt.Errorf("h2mux: open stream: stream IDs exhausted: %w", ErrSessionClosed)
		}
		s.probeLocked()
		st.id = s.nextID
		s.nextID += 2
		st.sendWin = s.peerInitWindow
		s.streams[st.id] = st
	}
	st.headersSent = true
	s.enqueueLocked(writeItem{kind: itemHeaders, st: st, id: st.id, end: end, flight: s.flightSize()})
	return nil
}

// flightSize returns the size, at random, to which a stream's first
// flight is padded (see clientFlightMin).
func (s *Session) flightSize() int {
	if s.client {
		return clientFlightMin + rand.IntN(clientFlightMax-clientFlightMin+1)
	}
	return serverFlightMin + rand.IntN(serverFlightMax-serverFlightMin+1)
}

// ID returns the HTTP/2 stream identifier, or 0 for a client stream that
// has not yet sent its HEADERS.
func (st *Stream) ID() uint32 {
	st.s.mu.Lock()
	defer st.s.mu.Unlock()
	return st.id
}

// WriteSize returns the size of a Write whose DATA frames, headers
// included, fill four TLS records of the largest size exactly (65,500
// bytes at the default frame size): the connection then carries whole
// records, where a 64 KiB write would leave a short record and an extra
// system call behind every four full ones (see [transport.WriteSizer]).
func (st *Stream) WriteSize() int {
	st.s.mu.Lock()
	frame := int(st.s.peerMaxFrame)
	st.s.mu.Unlock()
	return writeSizeFor(frame)
}

// writeSizeFor returns the number of DATA payload bytes that, cut into
// frames of at most maxFrame bytes with their headers, make up
// recordsPerWrite records of tlsRecord bytes.
func writeSizeFor(maxFrame int) int {
	size := recordsPerWrite * tlsRecord
	frames := (size + maxFrame + frameHeaderSz - 1) / (maxFrame + frameHeaderSz)
	return size - frames*frameHeaderSz
}

// Read reads data the peer sent. It returns io.EOF after the peer's
// END_STREAM once all data has been read.
func (st *Stream) Read(p []byte) (int, error) {
	s := st.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client && !st.headersSent && st.errLocked() == nil {
		// A client that reads before writing still needs the server to
		// know about the stream.
		if err := s.activateLocked(st, false); err != nil {
			return 0, err
		}
	}
	if err := st.awaitDataLocked(len(p) == 0); err != nil {
		if err == errZeroRead {
			return 0, nil
		}
		return 0, err
	}
	n := st.recv.read(p)
	if st.recv.n > 0 {
		signal(st.rch) // let a concurrent reader take the rest
	}
	s.consumedLocked(st, int64(n))
	return n, nil
}

// errZeroRead is awaitDataLocked's answer to a zero-length Read.
var errZeroRead = errors.New("h2mux: zero-length read")

// awaitDataLocked waits until st has unread data, and returns nil then,
// or why it will get none: io.EOF after the peer's END_STREAM, the
// stream's or the session's end, the read deadline, or (if zero, a
// zero-length Read, which does not wait) errZeroRead. s.mu is held, and
// released while it waits.
func (st *Stream) awaitDataLocked(zero bool) error {
	s := st.s
	for {
		if st.recv.n > 0 {
			return nil
		}
		if err := st.errLocked(); err != nil {
			return err
		}
		if st.remoteEnd {
			signal(st.rch)
			return io.EOF
		}
		if s.err != nil {
			return s.deadErr(fmt.Sprintf("stream %d read", st.id))
		}
		if st.rdl.exceeded() {
			return os.ErrDeadlineExceeded
		}
		if zero {
			return errZeroRead
		}
		s.mu.Unlock()
		select {
		case <-st.rch:
		case <-s.done:
		}
		s.mu.Lock()
	}
}

// SpliceTo writes what the peer sends on the stream to w until its
// END_STREAM, straight from the buffers the data arrived in, several at a
// time when several are waiting (one writev on a TCP conn), calling count,
// if not nil, with the bytes of each write (see [transport.Splicer]). It
// returns the bytes written and nil, or the first error of Read's or of
// w's. While it waits for data and w is a *net.TCPConn, the session's
// read loop may write a small message to w itself, and call count for it
// (see Session.deliver): w must be left to SpliceTo while it runs.
func (st *Stream) SpliceTo(w io.Writer, count func(int)) (int64, error) {
	var sink syscall.RawConn
	if tc, ok := w.(*net.TCPConn); ok {
		sink, _ = tc.SyscallConn()
	}
	if sink == nil {
		return st.spliceTo(w, count)
	}
	s := st.s
	s.mu.Lock()
	st.sink, st.sinkCount = sink, count
	s.mu.Unlock()
	n, err := st.spliceTo(w, count)
	s.mu.Lock()
	n += st.sinkWritten
	st.sink, st.sinkCount, st.spliceIdle, st.sinkWritten = nil, nil, false, 0
	s.mu.Unlock()
	return n, err
}

// spliceTo is SpliceTo, the read loop writing to st.sink, if set, while
// it waits.
func (st *Stream) spliceTo(w io.Writer, count func(int)) (int64, error) {
	s := st.s
	var total int64
	var chunks [spliceChunks]*chunk
	var bufs [spliceChunks][]byte
	for {
		s.mu.Lock()
		if s.client && !st.headersSent && st.errLocked() == nil {
			if err := s.activateLocked(st, false); err != nil {
				s.mu.Unlock()
				return total, err
			}
		}
		st.spliceIdle = st.sink != nil
		err := st.awaitDataLocked(false)
		st.spliceIdle = false
		k := 0
		for err == nil && k < spliceChunks && st.recv.n > 0 {
			chunks[k] = st.recv.take()
			k++
		}
		s.mu.Unlock()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		m := 0
		for i, c := range chunks[:k] {
			bufs[i] = c.data[c.off:c.end]
			m += c.end - c.off
		}
		v := net.Buffers(bufs[:k])
		n, werr := v.WriteTo(w)
		for i, c := range chunks[:k] {
			freeChunk(c)
			chunks[i], bufs[i] = nil, nil
		}
		total += n
		if count != nil && n > 0 {
			count(int(n))
		}
		s.mu.Lock()
		s.consumedLocked(st, int64(m))
		s.mu.Unlock()
		if werr != nil {
			return total, werr
		}
	}
}

// spliceChunks is the most chunks SpliceTo writes at a time.
const spliceChunks = 8

// errLocked returns the error both directions report once the stream was
// closed locally or reset.
func (st *Stream) errLocked() error {
	if st.localClosed {
		return fmt.Errorf("h2mux: stream %d: %w", st.id, net.ErrClosed)
	}
	return st.resetErr
}

// writeErrLocked returns why Write cannot proceed now, if it cannot.
func (st *Stream) writeErrLocked() error {
	s := st.s
	if err := st.errLocked(); err != nil {
		return err
	}
	switch {
	case s.err != nil:
		return s.deadErr(fmt.Sprintf("stream %d write", st.id))
	case s.closing:
		return fmt.Errorf("h2mux: stream %d write: %w", st.id, ErrSessionClosed)
	case st.writeEnd:
		return fmt.Errorf("h2mux: stream %d: write after CloseWrite: %w", st.id, net.ErrClosed)
	case st.writeReset != nil:
		return st.writeReset
	case st.wdl.exceeded():
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Write sends p as DATA frames, blocking while the peer's flow-control
// windows are exhausted. The bytes are handed to the session's writer
// without copying, in pieces of at most 256 KiB, so Write returns once the
// last piece is in the connection's write buffer. A write deadline
// interrupts waiting for window, not a piece already handed over.
func (st *Stream) Write(p []byte) (int, error) { return st.write(p, nil) }

// WriteHeadroom returns the free bytes WriteWithHeadroom wants before the
// data: a DATA frame's header (see [transport.HeadroomWriter]).
func (st *Stream) WriteHeadroom() int { return frameHeaderSz }

// WriteWithHeadroom writes b[head:] as Write does. Its DATA frames are
// built in b: each frame's header in the bytes before its payload (the
// free ones, then the end of the frame before, already written), so that
// the payload goes to the connection without being copied behind its
// header (see [Session.writeFramed]).
func (st *Stream) WriteWithHeadroom(b []byte, head int) (int, error) {
	if head < frameHeaderSz {
		return st.write(b[head:], nil)
	}
	return st.write(b[head:], b[head-frameHeaderSz:])
}

// write is Write; framed, if not nil, is p with frameHeaderSz free bytes
// before it (see WriteWithHeadroom).
func (st *Stream) write(p, framed []byte) (int, error) {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	s := st.s
	n := 0
	for {
		s.mu.Lock()
		var avail int64
		first := false // our HEADERS was queued just before this DATA
		for {
			if err := st.writeErrLocked(); err != nil {
				s.mu.Unlock()
				return n, err
			}
			if !st.headersSent {
				if err := s.activateLocked(st, false); err != nil {
					s.mu.Unlock()
					return n, err
				}
				first = true
			}
			if len(p) == 0 {
				s.mu.Unlock()
				return n, nil
			}
			// Section 5.2: never send more than both windows allow.
			avail = min(st.sendWin, s.connSend, writeChunk, int64(len(p)))
			if avail > 0 {
				break
			}
			// A stream let on by the write gate that waits for its
			// window passes its turn on.
			s.openGateLocked()
			s.mu.Unlock()
			first = false // the writer may take the HEADERS alone meanwhile
			select {
			case <-st.wch:
			case <-s.done:
			}
			s.mu.Lock()
		}
		st.sendWin -= avail
		s.connSend -= avail
		it := writeItem{kind: itemData, st: st, id: st.id, data: p[:avail], notify: true, first: first}
		if !first && st.padWrites > 0 {
			// Padding counts against both windows (section 6.9.1).
			st.padWrites--
			pad := min(int64(1+rand.IntN(maxPadLen+1)), st.sendWin, s.connSend)
			if pad > 0 {
				it.pad = int(pad)
				st.sendWin -= pad
				s.connSend -= pad
			}
		}
		if framed != nil && it.pad == 0 && !first {
			// Padded DATA, and DATA in its stream's first flight
			// (see Session.writeFlight), take the buffered path.
			it.framed = framed[:frameHeaderSz+avail]
		}
		if s.canWriteDirectLocked(&it) {
			err := s.writeDirect(&it)
			s.openGateLocked()
			s.mu.Unlock()
			if err != nil {
				s.die(fmt.Errorf("h2mux: write: %w", err))
				return n, s.deadErr(fmt.Sprintf("stream %d write", st.id))
			}
			n += int(avail)
			p = p[avail:]
			if len(p) == 0 {
				return n, nil
			}
			if framed != nil {
				framed = framed[avail:]
			}
			continue
		}
		s.enqueueLocked(it)
		s.mu.Unlock()
		select {
		case <-st.wdone:
		case <-s.writerDone:
			// The writer signals wdone before it can exit, so this
			// tells whether our piece went out.
			select {
			case <-st.wdone:
			default:
				return n, s.deadErr(fmt.Sprintf("stream %d write", st.id))
			}
		}
		n += int(avail)
		p = p[avail:]
		if len(p) == 0 {
			// All of p went out: a reset or close that came in since
			// concerns later writes, not this one.
			return n, nil
		}
		if framed != nil {
			framed = framed[avail:]
		}
	}
}

// CloseWrite half-closes the stream by sending END_STREAM (RFC 9113 section
// 8.1): the peer reads io.EOF once it has read everything before it, and
// this side can still read. Calling it again does nothing.
func (st *Stream) CloseWrite() error {
	st.wmu.Lock()
	defer st.wmu.Unlock()
	s := st.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.writeEnd && st.errLocked() == nil {
		return nil
	}
	if err := st.writeErrLocked(); err != nil {
		return err
	}
	st.writeEnd = true
	if !st.headersSent {
		if err := s.activateLocked(st, true); err != nil {
			return err
		}
	} else {
		s.enqueueLocked(writeItem{kind: itemData, st: st, id: st.id, end: true})
	}
	if st.remoteEnd {
		s.finishLocked(st)
	}
	return nil
}

// Close ends the stream in both directions. Unless both sides had already
// ended cleanly, the peer gets RST_STREAM with CANCEL (RFC 9113 section
// 6.4), and its reads and writes fail with an error wrapping
// [ErrStreamReset]. Unread data is discarded. Close always returns nil.
func (st *Stream) Close() error {
	s := st.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if st.localClosed {
		return nil
	}
	st.localClosed = true
	st.stopTimersLocked()
	if !st.finished && st.id != 0 && s.err == nil && !s.closing {
		s.enqueueLocked(writeItem{kind: itemRST, id: st.id, val: uint32(http2.ErrCodeCancel)})
	}
	s.discardLocked(st)
	s.finishLocked(st)
	return nil
}

// LocalAddr returns the local address of the session's connection.
func (st *Stream) LocalAddr() net.Addr { return st.s.conn.LocalAddr() }

// RemoteAddr returns the remote address of the session's connection.
func (st *Stream) RemoteAddr() net.Addr { return st.s.conn.RemoteAddr() }

// SetDeadline sets both the read and write deadlines. A zero time means no
// deadline.
func (st *Stream) SetDeadline(t time.Time) error {
	st.s.mu.Lock()
	defer st.s.mu.Unlock()
	if st.localClosed {
		return fmt.Errorf("h2mux: set deadline: %w", net.ErrClosed)
	}
	st.rdl.set(t, st.rch)
	st.wdl.set(t, st.wch)
	return nil
}

// SetReadDeadline sets the deadline for Read. A zero time means no
// deadline.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.s.mu.Lock()
	defer st.s.mu.Unlock()
	if st.localClosed {
		return fmt.Errorf("h2mux: set read deadline: %w", net.ErrClosed)
	}
	st.rdl.set(t, st.rch)
	return nil
}

// SetWriteDeadline sets the deadline for Write. A zero time means no
// deadline.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.s.mu.Lock()
	defer st.s.mu.Unlock()
	if st.localClosed {
		return fmt.Errorf("h2mux: set write deadline: %w", net.ErrClosed)
	}
	st.wdl.set(t, st.wch)
	return nil
}
