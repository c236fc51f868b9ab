package mtproxy

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/deadline"
)

// Carrier is the carrier name of sessions of stock Telegram apps admitted
// by their FakeTLS hello: each such session holds exactly one stream.
const Carrier = "mtproxy"

// A relayStream presents an accepted app connection to a relay as an
// ordinary carrier stream, so the relay serves it like any other: its
// first bytes are an [transport.OpenRequest] for the app's datacenter,
// and it carries, in both directions, the obfuscated2 stream a datacenter
// expects (RFC-less, as Telegram's MTProxy speaks it: a fresh init without
// a secret, then the app's bytes re-encrypted). The relay's
// [transport.OpenReply] is consumed by Write: a refusal closes the app's
// connection. Like a merpati client, the stream sends nothing after its
// open request until the reply has come: an app may send a lot at once,
// and a relay holds little for a stream still dialling.
type relayStream struct {
	app *ObfsConn
	dc  Ciphers // the datacenter side: Enc towards it, Dec from it

	rmu     sync.Mutex
	req     []byte // the open request, read first
	pending []byte // the init, read once the reply has come

	ready     chan struct{} // closed once the relay's reply is in, or on Close
	readyErr  error         // why reads may not go on, set before ready closes
	readyOnce sync.Once
	rdl       *deadline.Deadline

	wmu     sync.Mutex
	reply   []byte // the relay's reply, while incomplete
	replied bool
	shape   *shaper // cuts the datacenter's packets into the app's records
}

// NewRelayStream returns app (the decrypted stream of a connection that
// [AcceptApp] accepted with init in) as a stream a relay serves like a
// carrier's: reading it gives an open request for in's datacenter, then an
// obfuscated2 init of its own and the app's bytes re-encrypted under it;
// writing it takes the relay's open reply, then the datacenter's bytes,
// which it decrypts and sends to the app. Closing it closes app.
//
// The datacenter's bytes reach the app in records no shorter than
// [MinRecordLen], cut at its MTProto transport packets: whole packets go
// out as soon as they have arrived, and the few last bytes of a packet
// still arriving wait for the rest of it (see shaper). A write may thus
// send less than it took, or more (NOP packets after a lone quick ack or
// transport error, in padded intermediate framing); CloseWrite sends what
// is held.
func NewRelayStream(app *ObfsConn, in Init) (transport.Stream, error) {
	if in.DC == 0 || !in.Protocol.Valid() {
		return nil, fmt.Errorf("mtproxy: %w", ErrInit)
	}
	req, err := transport.OpenRequest{Target: transport.DCTarget(int32(in.DC))}.AppendBinary(nil)
	if err != nil {
		return nil, fmt.Errorf("mtproxy: open request: %w", err)
	}
	init, c, err := NewInit(rand.Reader, in.Protocol, in.DC, nil)
	if err != nil {
		return nil, err
	}
	return &relayStream{
		app: app, dc: c, req: req, pending: init[:],
		ready: make(chan struct{}), rdl: deadline.New(),
		shape: newShaper(in.Protocol),
	}, nil
}

func (s *relayStream) Read(p []byte) (int, error) {
	s.rmu.Lock()
	defer s.rmu.Unlock()
	if len(s.req) > 0 {
		n := copy(p, s.req)
		s.req = s.req[n:]
		return n, nil
	}
	if _, err := deadline.Recv(s.rdl, s.ready, nil); err != nil {
		return 0, err
	}
	if s.readyErr != nil {
		return 0, s.readyErr
	}
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		return n, nil
	}
	n, err := s.app.Read(p)
	s.dc.Enc.XORKeyStream(p[:n], p[:n])
	return n, err
}

// WaitRead waits until a Read would not block (see
// [transport.ReadWaiter]): at once while the open request or the init is
// still to be read, or before the reply has come (a Read then waits for
// it), else as the app's connection waits.
func (s *relayStream) WaitRead() bool {
	select {
	case <-s.ready:
	default:
		return false
	}
	s.rmu.Lock()
	ready := len(s.req) > 0 || len(s.pending) > 0 || s.readyErr != nil
	s.rmu.Unlock()
	return ready || s.app.WaitRead()
}

// errRefused is returned after the relay refused the stream.
var errRefused = errors.New("mtproxy: relay refused the stream")

func (s *relayStream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	n := 0
	if !s.replied {
		// version(1) status(1) padlen(2) padding, as transport.OpenReply.
		take := len(p)
		s.reply = append(s.reply, p...)
		if len(s.reply) < 4 {
			return take, nil
		}
		want := 4 + int(binary.BigEndian.Uint16(s.reply[2:4]))
		if len(s.reply) < want {
			return take, nil
		}
		if s.reply[0] != transport.Version || transport.Status(s.reply[1]) != transport.StatusOK {
			s.open(errRefused)
			s.app.Close()
			return 0, errRefused
		}
		s.replied = true
		s.open(nil)
		rest := s.reply[want:]
		n = take - len(rest)
		p = rest
		s.reply = nil
	}
	if len(p) == 0 {
		return n, nil
	}
	bp := getBuf()
	defer putBuf(bp)
	defer s.shape.release()
	for len(p) > 0 {
		// Leave the shaper room for what it holds and adds.
		b := (*bp)[:min(len(p), cap(*bp)-shaperSlack)]
		s.dc.Dec.XORKeyStream(b, p[:len(b)])
		if out := s.shape.push(b); len(out) > 0 {
			if _, err := s.app.Write(out); err != nil {
				return n, err
			}
		}
		n += len(b)
		p = p[len(b):]
	}
	return n, nil
}

// CloseWrite sends the app what the shaper holds, then half-closes.
func (s *relayStream) CloseWrite() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	out := s.shape.end()
	defer s.shape.release()
	if len(out) > 0 {
		if _, err := s.app.Write(out); err != nil {
			return err
		}
	}
	return s.app.CloseWrite()
}

func (s *relayStream) Close() error {
	s.open(fmt.Errorf("mtproxy: read: %w", net.ErrClosed))
	return s.app.Close()
}

func (s *relayStream) LocalAddr() net.Addr  { return s.app.LocalAddr() }
func (s *relayStream) RemoteAddr() net.Addr { return s.app.RemoteAddr() }

func (s *relayStream) SetDeadline(t time.Time) error {
	s.setReadDeadline(t)
	return s.app.SetDeadline(t)
}

func (s *relayStream) SetReadDeadline(t time.Time) error {
	s.setReadDeadline(t)
	return s.app.SetReadDeadline(t)
}

func (s *relayStream) SetWriteDeadline(t time.Time) error { return s.app.SetWriteDeadline(t) }

// setReadDeadline passes t on to a Read waiting for the reply.
func (s *relayStream) setReadDeadline(t time.Time) { s.rdl.Set(t) }

// open lets Reads go on, or fail with err; only the first call counts.
func (s *relayStream) open(err error) {
	s.readyOnce.Do(func() {
		s.readyErr = err
		close(s.ready)
	})
}
