package tlscarrier

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/transporttest"
)

// confLab is a TLS-carrier front door on 127.0.0.1:0 that admits one key,
// with a recording cover site behind it.
type confLab struct {
	l     *Listener
	auth  *transporttest.Authenticator
	key   auth.Key
	pin   [32]byte
	cover *confCover
}

// confServerName is the cover name the lab's clients send as SNI.
const confServerName = "cover.example"

// startConfLab starts a lab whose cover site runs serve on every
// connection. Its cleanup checks that no goroutine outlives the lab.
func startConfLab(t *testing.T, serve func(c *recConn)) *confLab {
	t.Helper()
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) }) // runs last
	cert, pin := confCert(t)
	lab := &confLab{key: auth.NewKey(), pin: pin, cover: startConfCover(t, serve)}
	lab.auth = transporttest.NewAuthenticator("alice", lab.key)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.l, err = Listen(ln, ListenConfig{Certificate: cert, Auth: lab.auth, Cover: lab.cover.addr})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.l.Close() })
	return lab
}

// confCert makes a relay certificate and its pin.
func confCert(t *testing.T) (tls.Certificate, [32]byte) {
	t.Helper()
	certPEM, keyPEM, err := NewCertificate(confServerName)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pin, err := Pin(cert)
	if err != nil {
		t.Fatal(err)
	}
	return cert, pin
}

// dialer returns a client of the lab's relay holding key.
func (lab *confLab) dialer(t *testing.T, key auth.Key) *Dialer {
	t.Helper()
	d, err := NewDialer(ClientConfig{
		Addr:       lab.l.Addr().String(),
		ServerName: confServerName,
		Pin:        lab.pin,
		Key:        key,
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestConformance runs the transport stream suite over the TLS carrier,
// client Dialer to relay Listener on loopback.
func TestConformance(t *testing.T) {
	lab := startConfLab(t, func(c *recConn) { t.Errorf("a client of the suite reached the cover site") })
	d := lab.dialer(t, lab.key)
	transporttest.TestStreams(t, func(t *testing.T) (transport.Session, transport.ServerSession, func()) {
		c, r, stop := transporttest.Connect(t, d, lab.l)
		if r.Key().Name() != "alice" || r.Carrier() != "tls" {
			t.Errorf("relay session: key %q, carrier %q; want alice, tls", r.Key().Name(), r.Carrier())
		}
		return c, r, stop
	})
}

// TestProbePlainBytes: a prober that sends something other than TLS talks
// to the cover site, byte for byte in both directions, half-close
// included.
func TestProbePlainBytes(t *testing.T) {
	reply := randomBytes(t, 64<<10)
	lab := startConfLab(t, func(c *recConn) {
		io.Copy(io.Discard, c) // to the prober's half-close
		c.Write(reply)
	})
	probe := append([]byte("GET / HTTP/1.1\r\nHost: cover.example\r\n\r\n"), randomBytes(t, 64<<10)...)
	c, err := net.Dial("tcp", lab.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(probe); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("prober read: %v", err)
	}
	cov := lab.cover.next(t)
	if !bytes.Equal(cov.in, probe) {
		t.Errorf("cover site got %d bytes, not the %d the prober sent", len(cov.in), len(probe))
	}
	if !bytes.Equal(got, reply) || !bytes.Equal(cov.out, reply) {
		t.Errorf("prober got %d bytes of the cover's %d-byte reply, not byte for byte", len(got), len(reply))
	}
}

// TestProbeTLSWithoutToken: a TLS client whose hello carries no valid
// token (crypto/tls fills the session id with random bytes) completes its
// handshake with the cover site, which sees exactly the bytes the client
// sent and whose bytes the client gets unchanged.
func TestProbeTLSWithoutToken(t *testing.T) {
	coverCert, coverPin := confCert(t)
	lab := startConfLab(t, func(c *recConn) {
		tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{coverCert}, NextProtos: []string{"h2", "http/1.1"}})
		if err := tc.Handshake(); err != nil {
			return
		}
		tc.Write([]byte("cover page"))
		io.Copy(io.Discard, tc) // to the client's close_notify
		tc.Close()
	})
	raw, err := net.Dial("tcp", lab.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(20 * time.Second))
	rc := &recConn{Conn: raw}
	tc := tls.Client(rc, &tls.Config{ServerName: confServerName, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("prober's TLS handshake: %v", err)
	}
	if err := auth.CheckPin(rawCerts(tc), coverPin); err != nil {
		t.Errorf("prober did not get the cover site's certificate: %v", err)
	}
	if err := auth.CheckPin(rawCerts(tc), lab.pin); err == nil {
		t.Errorf("prober got the relay's certificate")
	}
	var page [10]byte
	if _, err := io.ReadFull(tc, page[:]); err != nil || string(page[:]) != "cover page" {
		t.Fatalf("prober read %q, %v; want the cover page", page, err)
	}
	tc.CloseWrite()
	if _, err := io.ReadAll(tc); err != nil {
		t.Fatalf("prober reading to the cover's close_notify: %v", err)
	}
	cov := lab.cover.next(t)
	in, out := rc.bytes()
	if !bytes.Equal(cov.in, out) {
		t.Errorf("cover site got %d bytes, prober sent %d: not byte for byte", len(cov.in), len(out))
	}
	if !bytes.Equal(cov.out, in) {
		t.Errorf("prober got %d bytes, cover site sent %d: not byte for byte", len(in), len(cov.out))
	}
}

// TestRevokedKeyGetsCover: once the Authenticator refuses a key, its
// client's hello goes to the cover site, whose certificate the client
// does not accept: Dial reports the key refused. A session made before
// the revocation is not ended by the carrier (that is the relay's job).
func TestRevokedKeyGetsCover(t *testing.T) {
	coverCert, _ := confCert(t)
	lab := startConfLab(t, func(c *recConn) {
		tls.Server(c, &tls.Config{Certificates: []tls.Certificate{coverCert}, NextProtos: []string{"h2"}}).Handshake()
	})
	d := lab.dialer(t, lab.key)
	c, r, stop := transporttest.Connect(t, d, lab.l)
	defer stop()
	lab.auth.Revoke("alice")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := d.Dial(ctx)
	if err == nil {
		s.Close()
		t.Fatal("a revoked key still dials")
	}
	if !errors.Is(err, transport.ErrKeyRefused) {
		t.Errorf("revoked key: Dial = %v, want ErrKeyRefused", err)
	}
	if cov := lab.cover.next(t); len(cov.in) == 0 {
		t.Error("cover site got no bytes of the revoked client's hello")
	}
	select {
	case <-c.Done():
		t.Error("revoking the key ended its existing session in the carrier")
	case <-r.Done():
		t.Error("revoking the key ended its existing session in the carrier")
	default:
	}
}

// rawCerts returns the certificates the peer of tc presented.
func rawCerts(tc *tls.Conn) [][]byte {
	var raw [][]byte
	for _, c := range tc.ConnectionState().PeerCertificates {
		raw = append(raw, c.Raw)
	}
	return raw
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// A recConn records the bytes read from and written to its Conn.
type recConn struct {
	net.Conn
	mu      sync.Mutex
	in, out []byte
}

func (c *recConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.in = append(c.in, b[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *recConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.mu.Lock()
	c.out = append(c.out, b[:n]...)
	c.mu.Unlock()
	return n, err
}

// bytes returns copies of what was read and written so far.
func (c *recConn) bytes() (in, out []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.in), bytes.Clone(c.out)
}

// confCover is a cover site on 127.0.0.1:0 that records each connection.
type confCover struct {
	addr string
	done chan coverRecord // one per connection, once served and closed
}

// A coverRecord is what one connection to the cover site carried.
type coverRecord struct{ in, out []byte }

// startConfCover serves each connection with serve, then closes it and
// records it.
func startConfCover(t *testing.T, serve func(c *recConn)) *confCover {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cv := &confCover{addr: ln.Addr().String(), done: make(chan coverRecord, 16)}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				c.SetDeadline(time.Now().Add(20 * time.Second))
				rc := &recConn{Conn: c}
				serve(rc)
				c.Close()
				in, out := rc.bytes()
				select {
				case cv.done <- coverRecord{in, out}:
				default:
				}
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return cv
}

// next waits for the next connection the cover site has finished with.
func (cv *confCover) next(t *testing.T) coverRecord {
	t.Helper()
	select {
	case r := <-cv.done:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no connection reached the cover site")
		return coverRecord{}
	}
}
