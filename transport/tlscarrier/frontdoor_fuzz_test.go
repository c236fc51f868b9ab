package tlscarrier

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	utls "github.com/refraction-networking/utls"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/mtproxy"
)

// refuseAll is an Authenticator and MTProxyAuthenticator that admits no
// one, so that every connection must reach the cover site.
type refuseAll struct{}

func (refuseAll) Authenticate(transport.Proof) (transport.Key, error) {
	return nil, transport.ErrUnauthenticated
}

func (refuseAll) AuthenticateMTProxy(*mtproxy.ClientHello, time.Time) (transport.Key, mtproxy.Key, error) {
	return nil, mtproxy.Key{}, transport.ErrUnauthenticated
}

// FuzzFrontDoor sends arbitrary first bytes to the relay's front door,
// which parses them as a TLS record and a ClientHello (and an MTProxy
// FakeTLS hello). Whatever they are, the connection must reach the cover
// site, which must receive exactly those bytes, and the front door must
// neither crash nor hold the connection.
func FuzzFrontDoor(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: cover.example\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00})
	f.Add([]byte{0x16, 0x03, 0x01, 0x40, 0x00})
	f.Add([]byte{})
	if rec, err := chromeHelloRecord(); err == nil {
		f.Add(rec)
		f.Add(rec[:len(rec)/2])
	}

	// The cover site: records what each connection sent, then answers.
	cover, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	got := make(chan []byte, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := cover.Accept()
			if err != nil {
				return
			}
			b, _ := io.ReadAll(c)
			c.Write([]byte("cover"))
			c.Close()
			got <- b
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	certPEM, keyPEM, err := NewCertificate("cover.example")
	if err != nil {
		f.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		f.Fatal(err)
	}
	l, err := Listen(ln, ListenConfig{
		Certificate: cert, Auth: refuseAll{}, MTProxy: refuseAll{}, Cover: cover.Addr().String(),
		// Every input ends with a half-close: the front door never
		// needs to wait for more.
		HelloTimeout: 20 * time.Second,
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		l.Close()
		cover.Close()
		wg.Wait()
	})
	addr := ln.Addr().String()

	f.Fuzz(func(t *testing.T, first []byte) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(first); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		reply, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if string(reply) != "cover" {
			t.Fatalf("answer %q, want the cover site's", reply)
		}
		select {
		case b := <-got:
			if !bytes.Equal(b, first) {
				t.Fatalf("cover site got %d bytes %x, want %d bytes %x", len(b), b, len(first), first)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the cover site saw nothing")
		}
	})
}

// chromeHelloRecord returns the TLS record of our Chrome ClientHello, with
// an all-zero session id (a token no key made).
func chromeHelloRecord() ([]byte, error) {
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		uc, err := ChromeClient(c, &utls.Config{ServerName: "cover.example", InsecureSkipVerify: true})
		if err == nil {
			uc.Handshake()
		}
		c.Close()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(s, hdr); err != nil {
		return nil, err
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(s, body); err != nil {
		return nil, err
	}
	return append(hdr, body...), nil
}
