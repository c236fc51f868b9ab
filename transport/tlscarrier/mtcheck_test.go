package tlscarrier

import (
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
)

// countingMTProxy refuses every MTProxy hello and counts the checks.
type countingMTProxy struct{ n atomic.Int64 }

func (c *countingMTProxy) AuthenticateMTProxy(*mtproxy.ClientHello, time.Time) (transport.Key, mtproxy.Key, error) {
	c.n.Add(1)
	return nil, mtproxy.Key{}, transport.ErrUnauthenticated
}

// TestMTProxyCheckRate: hellos from one network are checked against the
// MTProxy secrets at most MTProxyChecks a second (twice that in a burst);
// the rest go to the cover site untried, which answers them all.
func TestMTProxyCheckRate(t *testing.T) {
	cover, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cover.Close()
	go func() {
		for {
			c, err := cover.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
				c.Write([]byte("cover"))
			}()
		}
	}()
	certPEM, keyPEM, err := NewCertificate("cover.example")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mt := &countingMTProxy{}
	const rate = 2 // a burst of 4
	l, err := Listen(ln, ListenConfig{Certificate: cert, Auth: refuseAll{}, MTProxy: mt, Cover: cover.Addr().String(), MTProxyChecks: rate})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	rec := mtproxytest.HelloRecord(t, "cover.example")
	start := time.Now()
	for i := range 8 {
		mtproxytest.SignClientHello(rec, mtproxy.NewKey(), time.Now())
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(rec)
		c.(*net.TCPConn).CloseWrite()
		reply, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(reply) != "cover" {
			t.Fatalf("hello %d: %q, %v, want the cover site's answer", i, reply, err)
		}
	}
	// The burst of 4, and what the rate refilled meanwhile (on a busy
	// machine the test may take a while).
	most := 4 + int64(rate*time.Since(start).Seconds()+1)
	if n := mt.n.Load(); n < 4 || n > most {
		t.Errorf("%d of 8 hellos checked against the secrets, want 4 to %d", n, most)
	}
}
