package quiccarrier

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/merpati/merpati/transport/deadline"
)

// A stream is one carrier stream over an HTTP/3 request stream, on either
// side: the client's request (the Chrome-parrot fork's RequestStream) or
// the relay's taken-over handler stream (upstream quic-go's Stream). It
// gives both what [transport.Stream] promises and HTTP/3's streams do not
// by themselves:
//
//   - concurrent Reads (or Writes) are serialized: HTTP/3 parses and
//     writes frames, which one goroutine at a time must do;
//   - Close is abortive (RESET_STREAM and STOP_SENDING), unless the write
//     side had already ended cleanly with CloseWrite, whose data then
//     still arrives;
//   - reads happen in a goroutine of the stream's own, and Read takes
//     what it read, honouring the read deadline itself: HTTP/3 parses
//     frames as it reads, and a deadline that interrupted a frame header
//     halfway would leave the parser out of step with the stream. On the
//     client that goroutine first reads the relay's response header;
//   - a Write that times out partway through a DATA frame leaves the
//     write side broken on a side whose HTTP/3 cannot resume the frame
//     (the fork): later Writes fail and the peer sees the stream reset,
//     never bytes out of frame.
type stream struct {
	r           io.Reader
	w           io.Writer
	finish      func() error // sends FIN
	cancelRead  func()
	cancelWrite func()
	setWD       func(time.Time) error
	local       net.Addr
	remote      net.Addr
	// resumable is false where a DATA frame cut short by a write
	// deadline cannot be completed by the next Write.
	resumable bool

	// first, if not nil, runs in the reader goroutine before the first
	// read (the client reads the response header); an error from it ends
	// the stream's reads.
	first func() error

	chunks chan chunk // from the reader goroutine
	rdl    *deadline.Deadline
	cur    []byte // what is left of the chunk Read is taking from
	curBuf *[]byte
	rerr   error // the reader's final error, once cur is drained

	rmu sync.Mutex // serializes Reads
	wmu sync.Mutex // serializes Writes

	mu        sync.Mutex
	wdl       time.Time
	finished  bool  // CloseWrite was called
	broken    error // the write side is unusable
	closed    chan struct{}
	closeOnce sync.Once
	// onClose, if not nil, runs once when the stream is closed.
	onClose func()
}

func newStream() *stream {
	return &stream{closed: make(chan struct{}), chunks: make(chan chunk), rdl: deadline.New()}
}

// A chunk is what one read of the underlying stream gave.
type chunk struct {
	buf *[]byte // from chunkPool; nil with an error only
	n   int
	err error
}

// chunkSize is the most one underlying read takes: the reader goroutine
// holds at most one chunk ahead of Read, so the relay's flow control still
// sees a slow reader.
const chunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// start starts the reader goroutine; call it once the fields are set. The
// goroutine ends when the underlying stream fails or ends (Close cancels
// its reading) or once the stream is closed.
func (s *stream) start() { go s.pump() }

func (s *stream) pump() {
	if s.first != nil {
		if err := s.first(); err != nil {
			s.send(chunk{err: err})
			return
		}
	}
	for {
		bp := chunkPool.Get().(*[]byte)
		n, err := s.r.Read(*bp)
		if !s.send(chunk{buf: bp, n: n, err: err}) {
			chunkPool.Put(bp)
			return
		}
		if err != nil {
			return
		}
	}
}

// send hands c to Read, or reports false once the stream is closed.
func (s *stream) send(c chunk) bool {
	select {
	case s.chunks <- c:
		return true
	case <-s.closed:
		return false
	}
}

// errBroken is the error of Writes after a Write timed out partway
// through a frame on a side that cannot resume it.
var errBroken = fmt.Errorf("quiccarrier: stream write side broken by an earlier write timeout: %w", os.ErrDeadlineExceeded)

func (s *stream) Read(b []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	for len(s.cur) == 0 {
		if err := s.nextChunk(); err != nil {
			return 0, err
		}
	}
	n := copy(b, s.cur)
	s.cur = s.cur[n:]
	return n, nil
}

// SpliceTo writes what the stream reads to w straight from the reader
// goroutine's chunks, sparing [transport.Splice] a copy (see
// [transport.Splicer]). It honours the read deadline as Read does.
func (s *stream) SpliceTo(w io.Writer, count func(int)) (int64, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	var total int64
	for {
		if len(s.cur) == 0 {
			if err := s.nextChunk(); err == io.EOF {
				return total, nil
			} else if err != nil {
				return total, err
			}
			continue
		}
		n, err := w.Write(s.cur)
		s.cur = s.cur[n:]
		total += int64(n)
		if count != nil && n > 0 {
			count(n)
		}
		if err != nil {
			return total, err
		}
	}
}

// nextChunk lets the spent chunk go and takes the next one into cur, or
// returns the reader's final error once all was read. s.rmu is held.
func (s *stream) nextChunk() error {
	if s.curBuf != nil {
		chunkPool.Put(s.curBuf)
		s.curBuf = nil
	}
	if s.rerr != nil {
		return s.rerr
	}
	c, err := deadline.Recv(s.rdl, s.chunks, s.closed)
	if err != nil {
		return fmt.Errorf("quiccarrier: %w", err)
	}
	if c.buf != nil {
		s.curBuf, s.cur = c.buf, (*c.buf)[:c.n]
	}
	s.rerr = c.err
	return nil
}

func (s *stream) Write(b []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	broken, dl := s.broken, s.wdl
	s.mu.Unlock()
	if broken != nil {
		return 0, broken
	}
	late := !dl.IsZero() && !time.Now().Before(dl)
	n, err := s.w.Write(b)
	if err != nil && !s.resumable && errors.Is(err, os.ErrDeadlineExceeded) && (n > 0 || !late) {
		// The deadline passed mid-write: the DATA frame is cut
		// short and cannot be finished.
		s.mu.Lock()
		s.broken = errBroken
		s.mu.Unlock()
		s.cancelWrite()
	}
	return n, err
}

func (s *stream) CloseWrite() error {
	s.mu.Lock()
	s.finished = true
	s.mu.Unlock()
	return s.finish()
}

// Close ends both directions: the peer's reads and writes fail, unless
// this side's write side had already ended with CloseWrite.
func (s *stream) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		finished := s.finished
		s.mu.Unlock()
		if !finished {
			s.cancelWrite()
		}
		s.cancelRead()
		close(s.closed)
		if s.onClose != nil {
			s.onClose()
		}
	})
	return nil
}

func (s *stream) LocalAddr() net.Addr  { return s.local }
func (s *stream) RemoteAddr() net.Addr { return s.remote }

func (s *stream) SetDeadline(t time.Time) error {
	s.rdl.Set(t)
	s.noteWrite(t)
	return s.setWD(t)
}

// SetReadDeadline sets the deadline of Reads; the reader goroutine itself
// reads without one.
func (s *stream) SetReadDeadline(t time.Time) error {
	s.rdl.Set(t)
	return nil
}

func (s *stream) SetWriteDeadline(t time.Time) error {
	s.noteWrite(t)
	return s.setWD(t)
}

func (s *stream) noteWrite(t time.Time) {
	s.mu.Lock()
	s.wdl = t
	s.mu.Unlock()
}
