package tlscarrier

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
)

// startTLSServer serves TLS 1.3 on 127.0.0.1:0 with a fresh certificate,
// completing each handshake and then closing, as the cover site that the
// relay hands an unauthenticated connection to would.
func startTLSServer(t *testing.T) string {
	t.Helper()
	certPEM, keyPEM, err := NewCertificate("cover.example")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
	return startServer(t, func(c net.Conn) { tls.Server(c, cfg).Handshake() })
}

// startServer runs serve on each connection accepted on 127.0.0.1:0, then
// closes it.
func startServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			serve(c)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func dialTo(t *testing.T, addr string) error {
	t.Helper()
	var pin [32]byte
	pin[0] = 1 // not the server's
	d, err := NewDialer(ClientConfig{Addr: addr, ServerName: "cover.example", Pin: pin, Key: auth.NewKey()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := d.Dial(ctx)
	if err == nil {
		s.Close()
		t.Fatal("dial succeeded against a server without the pinned certificate")
	}
	return err
}

// TestDialKeyRefused dials a server whose certificate is not the pinned
// one, which is what a client whose key the relay no longer accepts meets
// (the relay's cover site): the error says the key was refused, and can
// be told apart with errors.Is.
func TestDialKeyRefused(t *testing.T) {
	err := dialTo(t, startTLSServer(t))
	if !errors.Is(err, transport.ErrKeyRefused) || !errors.Is(err, auth.ErrPin) {
		t.Fatalf("got %v, want errors wrapping ErrKeyRefused and ErrPin", err)
	}
	for _, want := range []string{"did not accept this link's key", "something in the path"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

// TestDialOtherFailureNotKeyRefused checks that failures that say nothing
// about the key (a server that closes the connection after the hello, a
// closed port) are not reported as a refused key.
func TestDialOtherFailureNotKeyRefused(t *testing.T) {
	closer := startServer(t, func(c net.Conn) { c.Read(make([]byte, 1)) })
	if err := dialTo(t, closer); errors.Is(err, transport.ErrKeyRefused) {
		t.Fatalf("a server closing after the hello is reported as a refused key: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := dialTo(t, addr); errors.Is(err, transport.ErrKeyRefused) {
		t.Fatalf("a closed port is reported as a refused key: %v", err)
	}
}
