package hello

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"

	utls "github.com/refraction-networking/utls"
)

// recordingConn keeps a copy of everything read from the wrapped conn.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

var errStop = errors.New("stop after the ClientHello")

// serveOneHello runs a crypto/tls server on s until it has the client's
// hello, and returns the first record it read and what crypto/tls made of
// the hello.
func serveOneHello(t *testing.T, s net.Conn) ([]byte, *tls.ClientHelloInfo) {
	t.Helper()
	rc := &recordingConn{Conn: s}
	var info *tls.ClientHelloInfo
	srv := tls.Server(rc, &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			info = chi
			return nil, errStop
		},
	})
	if err := srv.Handshake(); !errors.Is(err, errStop) {
		t.Fatalf("server handshake: %v", err)
	}
	s.Close()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rec, err := ReadRecord(bytes.NewReader(rc.buf.Bytes()))
	if err != nil {
		t.Fatalf("ReadRecord: %v", err)
	}
	return rec, info
}

// compareWithStdlib checks the parsed hello against crypto/tls's view.
func compareWithStdlib(t *testing.T, h *ClientHello, info *tls.ClientHelloInfo) {
	t.Helper()
	if h.ServerName != info.ServerName {
		t.Errorf("ServerName %q, crypto/tls %q", h.ServerName, info.ServerName)
	}
	if !slices.Equal(h.CipherSuites, info.CipherSuites) {
		t.Errorf("CipherSuites %x, crypto/tls %x", h.CipherSuites, info.CipherSuites)
	}
	if !slices.Equal(h.ALPN, info.SupportedProtos) {
		t.Errorf("ALPN %q, crypto/tls %q", h.ALPN, info.SupportedProtos)
	}
	if !slices.Equal(h.SupportedVersions, info.SupportedVersions) {
		t.Errorf("SupportedVersions %x, crypto/tls %x", h.SupportedVersions, info.SupportedVersions)
	}
	if !slices.Equal(h.Extensions, info.Extensions) {
		t.Errorf("Extensions %x, crypto/tls %x", h.Extensions, info.Extensions)
	}
	var groups, sigs []uint16
	for _, g := range info.SupportedCurves {
		groups = append(groups, uint16(g))
	}
	for _, s := range info.SignatureSchemes {
		sigs = append(sigs, uint16(s))
	}
	if !slices.Equal(h.SupportedGroups, groups) {
		t.Errorf("SupportedGroups %x, crypto/tls %x", h.SupportedGroups, groups)
	}
	if !slices.Equal(h.SignatureAlgorithms, sigs) {
		t.Errorf("SignatureAlgorithms %x, crypto/tls %x", h.SignatureAlgorithms, sigs)
	}
}

func TestRoundTripCryptoTLS(t *testing.T) {
	c, s := net.Pipe()
	done := make(chan error, 1)
	go func() {
		cl := tls.Client(c, &tls.Config{ServerName: "merpati.test", NextProtos: []string{"h2", "http/1.1"}})
		done <- cl.Handshake()
		c.Close()
	}()
	rec, info := serveOneHello(t, s)
	<-done
	h, err := Parse(rec)
	if err != nil {
		t.Fatal(err)
	}
	compareWithStdlib(t, h, info)
	if len(h.SessionID) != 32 || !bytes.Equal(h.Raw[h.SessionIDOffset:][:32], h.SessionID) {
		t.Errorf("session id %x at %d", h.SessionID, h.SessionIDOffset)
	}
}

func TestRoundTripUTLS(t *testing.T) {
	for _, id := range []utls.ClientHelloID{utls.HelloChrome_133, utls.HelloChrome_120, utls.HelloFirefox_120, utls.HelloIOS_14} {
		t.Run(id.Str(), func(t *testing.T) {
			c, s := net.Pipe()
			uc := utls.UClient(c, &utls.Config{ServerName: "merpati.test"}, id)
			if err := uc.BuildHandshakeState(); err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(uc.HandshakeState.Hello.Raw)
			done := make(chan error, 1)
			go func() {
				done <- uc.Handshake()
				c.Close()
			}()
			rec, info := serveOneHello(t, s)
			<-done
			h, err := Parse(rec)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(h.Raw, want) {
				t.Fatalf("Raw differs from uTLS's hello.Raw")
			}
			if !bytes.Equal(h.SessionID, uc.HandshakeState.Hello.SessionId) {
				t.Errorf("SessionID %x, uTLS %x", h.SessionID, uc.HandshakeState.Hello.SessionId)
			}
			if !bytes.Equal(h.Random, uc.HandshakeState.Hello.Random) {
				t.Errorf("Random differs")
			}
			compareWithStdlib(t, h, info)
			var ks []uint16
			for _, k := range uc.HandshakeState.Hello.KeyShares {
				ks = append(ks, uint16(k.Group))
			}
			if !slices.Equal(h.KeyShareGroups, ks) {
				t.Errorf("KeyShareGroups %x, uTLS %x", h.KeyShareGroups, ks)
			}
		})
	}
}
