package transporttest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/h2mux"
)

// MemCarrier is the carrier name of the in-memory carrier, in its proofs,
// sessions and [Dialer.Carrier].
const MemCarrier = "mem"

// DefaultHandshakeTimeout is the [ListenConfig.HandshakeTimeout] a zero
// value means.
const DefaultHandshakeTimeout = 10 * time.Second

// The in-memory handshake, before HTTP/2 framing starts on the pipe:
//
//	client → relay: nonce (32 random bytes) || token (auth.TokenSize bytes)
//	relay → client: one byte, memAccepted, if the proof authenticated;
//	                otherwise the relay closes the pipe.
//
// The proof's digest is SHA-256 of the nonce, so a token covers only the
// handshake it was made for, as a TLS token covers its ClientHello.
const (
	nonceSize   = 32
	memAccepted = 0x01
)

// ListenConfig configures an in-memory [Listener].
type ListenConfig struct {
	// Auth judges each client's proof. Required.
	Auth transport.Authenticator
	// Mux configures the relay's HTTP/2 sessions.
	Mux h2mux.Config
	// HandshakeTimeout bounds the wait for a client's proof; zero means
	// [DefaultHandshakeTimeout].
	HandshakeTimeout time.Duration
}

// A Listener is the relay side of the in-memory carrier. It implements
// [transport.Listener]; its [Dialer]s connect to it through net.Pipe, so
// it needs no network. A client whose proof the Authenticator refuses has
// its pipe closed: there is no cover site in memory, and its Dial fails
// with an error wrapping [transport.ErrKeyRefused]. Create one with
// [Listen].
type Listener struct {
	cfg      ListenConfig
	sessions chan transport.ServerSession
	ctx      context.Context // done once Close is called
	cancel   context.CancelFunc

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // one per connection in its handshake or waiting for Accept
}

var _ transport.Listener = (*Listener)(nil)

// Listen returns a new in-memory listener.
func Listen(cfg ListenConfig) (*Listener, error) {
	if cfg.Auth == nil {
		return nil, errors.New("transporttest: ListenConfig.Auth: required")
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Listener{
		cfg:      cfg,
		sessions: make(chan transport.ServerSession),
		ctx:      ctx,
		cancel:   cancel,
	}, nil
}

// Accept waits for the next authenticated session. After Close it returns
// an error wrapping [net.ErrClosed].
func (l *Listener) Accept(ctx context.Context) (transport.ServerSession, error) {
	select {
	case s := <-l.sessions:
		return s, nil
	case <-l.ctx.Done():
		return nil, fmt.Errorf("transporttest: accept: %w", net.ErrClosed)
	case <-ctx.Done():
		return nil, fmt.Errorf("transporttest: accept: %w", ctx.Err())
	}
}

// Close stops accepting connections, closes those still in their
// handshake and the sessions not yet accepted, and returns once its
// goroutines have stopped. Sessions already accepted are the caller's to
// close. Close always returns nil.
func (l *Listener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.cancel()
	l.wg.Wait()
	return nil
}

// Addr returns the listener's address, which names the carrier "mem".
func (l *Listener) Addr() net.Addr { return memAddr{} }

// connect hands the relay's end of a new pipe to the listener, which
// serves it in a goroutine of its own.
func (l *Listener) connect(c net.Conn) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("transporttest: dial: listener closed: %w", net.ErrClosed)
	}
	l.wg.Add(1)
	go l.serve(c)
	return nil
}

// serve authenticates c and hands its session to Accept, or closes c.
func (l *Listener) serve(c net.Conn) {
	defer l.wg.Done()
	stop := context.AfterFunc(l.ctx, func() { c.Close() })
	defer stop()

	c.SetDeadline(time.Now().Add(l.cfg.HandshakeTimeout))
	var msg [nonceSize + auth.TokenSize]byte
	if _, err := io.ReadFull(c, msg[:]); err != nil {
		c.Close()
		return
	}
	p := transport.Proof{Carrier: MemCarrier, Digest: sha256.Sum256(msg[:nonceSize]), Token: msg[nonceSize:]}
	key, err := l.cfg.Auth.Authenticate(p)
	if err != nil {
		c.Close() // no cover site in memory
		return
	}
	if _, err := c.Write([]byte{memAccepted}); err != nil {
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	if !stop() {
		return // the listener closed c
	}
	sess, err := h2mux.Server(c, l.cfg.Mux)
	if err != nil {
		c.Close()
		return
	}
	select {
	case l.sessions <- &memServerSession{Session: sess, key: key}:
	case <-l.ctx.Done():
		sess.Close()
	}
}

// DialConfig configures an in-memory [Dialer].
type DialConfig struct {
	// Key is the access key the dialer proves it holds. Required.
	Key auth.Key
	// Mux configures the client's HTTP/2 sessions.
	Mux h2mux.Config
	// Now returns the current time for the token; nil means time.Now.
	Now func() time.Time
}

// A Dialer is the client side of the in-memory carrier: it opens sessions
// to one [Listener]. It implements [transport.Dialer] and is safe for
// concurrent use.
type Dialer struct {
	l   *Listener
	cfg DialConfig
}

var _ transport.Dialer = (*Dialer)(nil)

// NewDialer returns a Dialer that connects to l with cfg.
func NewDialer(l *Listener, cfg DialConfig) (*Dialer, error) {
	if l == nil {
		return nil, errors.New("transporttest: NewDialer: nil listener")
	}
	if cfg.Key.IsZero() {
		return nil, errors.New("transporttest: DialConfig.Key: required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Mux.Authority == "" {
		cfg.Mux.Authority = MemCarrier
	}
	return &Dialer{l: l, cfg: cfg}, nil
}

// Carrier returns "mem".
func (d *Dialer) Carrier() string { return MemCarrier }

// Dial connects to the listener, presents a proof made with the dialer's
// key and starts an HTTP/2 session once the listener accepts it. A proof
// the listener's Authenticator refuses gives an error wrapping
// [transport.ErrKeyRefused]; a closed listener one wrapping
// [net.ErrClosed].
func (d *Dialer) Dial(ctx context.Context) (transport.Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("transporttest: dial: %w", err)
	}
	c, s := net.Pipe()
	if err := d.l.connect(s); err != nil {
		c.Close()
		s.Close()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	err := d.handshake(c)
	if !stop() {
		c.Close()
		return nil, fmt.Errorf("transporttest: dial: %w", ctx.Err())
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	sess, err := h2mux.Client(c, d.cfg.Mux)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("transporttest: dial: %w", err)
	}
	return sess, nil
}

// handshake sends the proof on c and reads the listener's answer.
func (d *Dialer) handshake(c net.Conn) error {
	var msg [nonceSize + auth.TokenSize]byte
	rand.Read(msg[:nonceSize]) // never fails (crypto/rand, Go ≥1.24)
	token := auth.Token(d.cfg.Key, auth.Slot(d.cfg.Now()), sha256.Sum256(msg[:nonceSize]))
	copy(msg[nonceSize:], token[:])
	if _, err := c.Write(msg[:]); err != nil {
		return fmt.Errorf("transporttest: dial: send proof: %w", err)
	}
	var ans [1]byte
	_, err := io.ReadFull(c, ans[:])
	switch {
	case errors.Is(err, io.EOF) && d.l.ctx.Err() != nil:
		return fmt.Errorf("transporttest: dial: listener closed: %w", net.ErrClosed)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("transporttest: dial: listener closed the pipe: %w", transport.ErrKeyRefused)
	case err != nil:
		return fmt.Errorf("transporttest: dial: read answer: %w", err)
	case ans[0] != memAccepted:
		return fmt.Errorf("transporttest: dial: unexpected answer %#x", ans[0])
	}
	return nil
}

// memServerSession is an authenticated in-memory session, as the relay
// sees it.
type memServerSession struct {
	*h2mux.Session
	key transport.Key
}

var _ transport.ServerSession = (*memServerSession)(nil)

// AcceptStream waits for the next stream the client opens.
func (s *memServerSession) AcceptStream(ctx context.Context) (transport.Stream, error) {
	st, err := s.Session.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Key returns the key the session proved.
func (s *memServerSession) Key() transport.Key { return s.key }

// Carrier returns "mem".
func (s *memServerSession) Carrier() string { return MemCarrier }

// memAddr is the address of every in-memory listener.
type memAddr struct{}

func (memAddr) Network() string { return MemCarrier }
func (memAddr) String() string  { return MemCarrier }
