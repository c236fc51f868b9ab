package quiccarrier

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/merpati/merpati/transport/gate"
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
//   - on the client, Read first waits for the relay's response header,
//     which a goroutine reads as soon as the stream opens, so that a read
//     deadline never interrupts the header halfway;
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
	setRD       func(time.Time) error
	setWD       func(time.Time) error
	local       net.Addr
	remote      net.Addr
	// resumable is false where a DATA frame cut short by a write
	// deadline cannot be completed by the next Write.
	resumable bool

	// ready, if not nil, opens once the stream may be read.
	ready *gate.Gate

	rmu sync.Mutex // serializes Reads
	wmu sync.Mutex // serializes Writes

	mu        sync.Mutex
	wdl       time.Time
	finished  bool  // CloseWrite was called
	broken    error // the write side is unusable
	closed    chan struct{}
	closeOnce sync.Once
}

func newStream() *stream {
	return &stream{closed: make(chan struct{})}
}

// errBroken is the error of Writes after a Write timed out partway
// through a frame on a side that cannot resume it.
var errBroken = fmt.Errorf("quiccarrier: stream write side broken by an earlier write timeout: %w", os.ErrDeadlineExceeded)

func (s *stream) Read(b []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if s.ready != nil {
		if err := s.ready.Wait(); err != nil {
			return 0, err
		}
	}
	return s.r.Read(b)
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
		if s.ready != nil {
			s.ready.Open(fmt.Errorf("quiccarrier: read: %w", net.ErrClosed))
		}
		s.mu.Lock()
		finished := s.finished
		s.mu.Unlock()
		if !finished {
			s.cancelWrite()
		}
		s.cancelRead()
		close(s.closed)
	})
	return nil
}

func (s *stream) LocalAddr() net.Addr  { return s.local }
func (s *stream) RemoteAddr() net.Addr { return s.remote }

func (s *stream) SetDeadline(t time.Time) error {
	s.noteRead(t)
	s.noteWrite(t)
	return errors.Join(s.setRD(t), s.setWD(t))
}

func (s *stream) SetReadDeadline(t time.Time) error {
	s.noteRead(t)
	return s.setRD(t)
}

func (s *stream) SetWriteDeadline(t time.Time) error {
	s.noteWrite(t)
	return s.setWD(t)
}

// noteRead passes the read deadline on to a Read waiting for ready.
func (s *stream) noteRead(t time.Time) {
	if s.ready != nil {
		s.ready.SetDeadline(t)
	}
}

func (s *stream) noteWrite(t time.Time) {
	s.mu.Lock()
	s.wdl = t
	s.mu.Unlock()
}
