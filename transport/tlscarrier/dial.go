package tlscarrier

import (
	"context"
	"crypto/ecdh"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/h2mux"
)

// sessionIDOffset is where the legacy_session_id bytes start in a
// ClientHello handshake message: type(1) length(3) version(2) random(32)
// session_id_length(1) (RFC 8446 section 4.1.2).
const sessionIDOffset = 39

// ClientConfig configures a [Dialer].
type ClientConfig struct {
	// Addr is the relay's "host:port". Required.
	Addr string
	// ServerName is the SNI sent in the hello: the cover site's name.
	// Required.
	ServerName string
	// Pin is the SHA-256 of the relay certificate's SubjectPublicKeyInfo.
	// Required.
	Pin [32]byte
	// Key is the person's access key. Required.
	Key auth.Key
	// AuthKey is the relay's static X25519 public key (the link's "ak"),
	// with which the token is sealed so that the relay finds the key at
	// once (see [auth.Seal]); nil sends a plain token, which the relay
	// checks against every key it has.
	AuthKey []byte
	// DialContext opens the TCP connection; nil means a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Mux configures the HTTP/2 session.
	Mux h2mux.Config
	// Now returns the current time for the token; nil means time.Now.
	Now func() time.Time
	// Logger receives debug messages; nil discards.
	Logger *slog.Logger

	// keyLog, if not nil, receives the session's TLS secrets in NSS key
	// log format; tests use it to read the inner records on the wire.
	keyLog io.Writer
}

func (c *ClientConfig) check() error {
	switch {
	case c.Addr == "":
		return errors.New("tlscarrier: ClientConfig.Addr: required")
	case c.ServerName == "":
		return errors.New("tlscarrier: ClientConfig.ServerName: required")
	case c.Pin == [32]byte{}:
		return errors.New("tlscarrier: ClientConfig.Pin: required")
	case c.Key.IsZero():
		return errors.New("tlscarrier: ClientConfig.Key: required")
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("tlscarrier: ClientConfig.Addr: %w", err)
	}
	return nil
}

// A Dialer opens TLS-carrier sessions to one relay. It is safe for
// concurrent use.
type Dialer struct {
	cfg     ClientConfig
	log     *slog.Logger
	authKey *ecdh.PublicKey // nil: plain tokens
}

var _ transport.Dialer = (*Dialer)(nil)

// NewDialer checks cfg and returns a Dialer.
func NewDialer(cfg ClientConfig) (*Dialer, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.DialContext == nil {
		var d net.Dialer
		cfg.DialContext = d.DialContext
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Mux.Authority == "" {
		cfg.Mux.Authority = cfg.ServerName
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Dialer{cfg: cfg, log: log}
	if cfg.AuthKey != nil {
		k, err := ecdh.X25519().NewPublicKey(cfg.AuthKey)
		if err != nil {
			return nil, fmt.Errorf("tlscarrier: ClientConfig.AuthKey: %w", err)
		}
		d.authKey = k
	}
	return d, nil
}

// Carrier returns "tls".
func (d *Dialer) Carrier() string { return "tls" }

// Dial connects to the relay, sends the Chrome hello carrying the token,
// completes TLS with the pinned relay and starts an HTTP/2 session. A
// certificate other than the pinned one, which is what the relay's cover
// site shows a key the relay does not accept, gives an error wrapping both
// [transport.ErrKeyRefused] and [auth.ErrPin].
func (d *Dialer) Dial(ctx context.Context) (transport.Session, error) {
	raw, err := d.cfg.DialContext(ctx, "tcp", d.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("dial relay %s: %w", d.cfg.Addr, err)
	}
	conn, err := d.handshake(ctx, raw)
	if err != nil {
		raw.Close()
		if errors.Is(err, auth.ErrPin) {
			// The relay hands a connection whose token it does not
			// accept to its cover site, whose certificate is not the
			// pinned one: to this client a refused key looks like a
			// wrong certificate (and so does an interceptor's).
			return nil, fmt.Errorf("tls handshake with relay %s: %w: %w", d.cfg.Addr, transport.ErrKeyRefused, err)
		}
		return nil, fmt.Errorf("tls handshake with relay %s: %w", d.cfg.Addr, err)
	}
	s, err := h2mux.Client(conn, d.cfg.Mux)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("http/2 session with relay %s: %w", d.cfg.Addr, err)
	}
	return s, nil
}

func (d *Dialer) handshake(ctx context.Context, raw net.Conn) (net.Conn, error) {
	spec, err := chromeHelloSpec()
	if err != nil {
		return nil, err
	}
	pin := d.cfg.Pin
	// A WaitConn under TLS: the session's read loop wakes its streams'
	// readers once the socket is drained.
	uc := utls.UClient(transport.NewWaitConn(raw), &utls.Config{
		ServerName: d.cfg.ServerName,
		// The relay's certificate is self-made; it is checked by its pin
		// instead of by a CA, below.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			return auth.CheckPin(rawCerts, pin)
		},
		MinVersion:   utls.VersionTLS13,
		KeyLogWriter: d.cfg.keyLog,
	}, utls.HelloCustom)
	if err := uc.ApplyPreset(spec); err != nil {
		return nil, fmt.Errorf("apply hello spec: %w", err)
	}
	if err := uc.BuildHandshakeState(); err != nil {
		return nil, fmt.Errorf("build hello: %w", err)
	}
	hello := uc.HandshakeState.Hello
	if len(hello.SessionId) != auth.TokenSize || len(hello.Raw) < sessionIDOffset+auth.TokenSize {
		return nil, fmt.Errorf("hello has a %d-byte session id, want %d", len(hello.SessionId), auth.TokenSize)
	}
	digest, err := auth.HelloDigest(hello.Raw, sessionIDOffset)
	if err != nil {
		return nil, err
	}
	token := auth.Token(d.cfg.Key, auth.Slot(d.cfg.Now()), digest)
	if d.authKey != nil {
		// The relay finds the key at once: a sealed token.
		ks := uc.HandshakeState.State13.KeyShareKeys
		if ks == nil || ks.Ecdhe == nil {
			return nil, errors.New("hello has no X25519 key share to seal the token with")
		}
		if token, err = auth.Seal(d.cfg.Key, d.cfg.Now(), digest, hello.Random, ks.Ecdhe, d.authKey); err != nil {
			return nil, err
		}
	}
	hello.SessionId = token[:]
	copy(hello.Raw[sessionIDOffset:], token[:])
	if err := uc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	if p := uc.ConnectionState().NegotiatedProtocol; p != "h2" {
		return nil, fmt.Errorf("relay negotiated ALPN %q, want h2", p) // Dial closes raw
	}
	return finConn{uc}, nil
}

// finConn is a client's TLS connection as its HTTP/2 session holds it:
// Close closes the TCP connection without a TLS close_notify alert, as
// Chromium closes its connections (it never sends one: when nginx closes
// an idle connection with GOAWAY and close_notify, Chromium answers with a
// FIN alone, issue 14). crypto/tls and uTLS send the alert, a 19-byte
// record no browser's connection ends with.
type finConn struct{ *utls.UConn }

// Close closes the TCP connection, sending no alert.
func (c finConn) Close() error { return c.NetConn().Close() }
