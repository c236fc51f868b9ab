package quiccarrier

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/tlscarrier"
	"github.com/merpati/merpati/transport/transporttest"
)

// TestConformance runs the carrier contract's stream suite over a QUIC
// Listener and Dialer on 127.0.0.1.
func TestConformance(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) })
	transporttest.TestStreams(t, func(t *testing.T) (transport.Session, transport.ServerSession, func()) {
		key := auth.NewKey()
		cert := testCert(t)
		pin, err := tlscarrier.Pin(cert)
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l, err := Listen(pc, ListenConfig{
			Certificate: cert,
			Auth:        transporttest.NewAuthenticator("alice", key),
			Cover:       startCover(t).addr,
		})
		if err != nil {
			t.Fatal(err)
		}
		d, err := NewDialer(ClientConfig{Addr: pc.LocalAddr().String(), ServerName: testSNI, Pin: pin, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		c, s := connectQUIC(t, d, l)
		return c, s, func() {
			c.Close()
			s.Close()
			l.Close()
		}
	})
}

// connectQUIC dials d and accepts the session on l. A QUIC connection
// becomes a session with its first authenticated request, so one stream is
// opened, accepted and closed first.
func connectQUIC(t *testing.T, d transport.Dialer, l transport.Listener) (transport.Session, transport.ServerSession) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := d.Dial(ctx)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	st, err := c.OpenStream(ctx)
	if err != nil {
		c.Close()
		t.Fatalf("open the first stream: %v", err)
	}
	go st.Write([]byte{1})
	s, err := l.Accept(ctx)
	if err != nil {
		c.Close()
		t.Fatalf("accept: %v", err)
	}
	rs, err := s.AcceptStream(ctx)
	if err != nil {
		c.Close()
		s.Close()
		t.Fatalf("accept the first stream: %v", err)
	}
	io.ReadFull(rs, make([]byte, 1))
	rs.Close()
	st.Close()
	return c, s
}
