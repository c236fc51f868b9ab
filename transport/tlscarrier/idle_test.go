package tlscarrier

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/h2mux"
	"github.com/merpati/merpati/transport/transporttest"
)

// TestLearnIdleClose measures the idle close of Go web servers, over
// HTTP/2 and over HTTP/1.1, and of one that keeps idle connections open.
func TestLearnIdleClose(t *testing.T) {
	const idle = 2 * time.Second
	for _, tt := range []struct {
		name  string
		h2    bool
		idle  time.Duration // the server's IdleTimeout; 0: none
		check time.Duration // how long LearnIdleClose waits
	}{
		{"h2", true, idle, 0},
		{"http/1.1", false, idle, 0},
		{"never", true, 0, 3 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Write([]byte("<p>ok</p>"))
			}))
			srv.EnableHTTP2 = tt.h2
			srv.Config.IdleTimeout = tt.idle
			srv.StartTLS()
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			got, err := LearnIdleClose(ctx, srv.Listener.Addr().String(), confServerName, tt.check)
			if tt.idle == 0 {
				if !errors.Is(err, ErrNoIdleClose) {
					t.Fatalf("LearnIdleClose = %v, %v; want ErrNoIdleClose", got, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("idle close after %v (server's IdleTimeout %v)", got, tt.idle)
			// Go's servers check their idle timer from the end of the
			// response, give or take a scheduling delay.
			if got < tt.idle-200*time.Millisecond || got > tt.idle+2*time.Second {
				t.Errorf("idle close after %v, want about %v", got, tt.idle)
			}
		})
	}
}

// TestClientCloseNoAlert has the relay close an idle session (GOAWAY,
// close_notify) and checks that the client, as Chromium, answers with a
// FIN alone: it writes nothing once the relay's close has reached it.
func TestClientCloseNoAlert(t *testing.T) {
	cert, pin := confCert(t)
	cover := startConfCover(t, func(c *recConn) { t.Errorf("the client reached the cover site") })
	key := auth.NewKey()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const idle = 3 * time.Second
	l, err := Listen(ln, ListenConfig{
		Certificate: cert, Auth: transporttest.NewAuthenticator("alice", key), Cover: cover.addr,
		Mux: h2mux.Config{IdleTimeout: idle},
	})
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			if _, err := l.Accept(context.Background()); err != nil {
				return
			}
		}
	}()

	wire := idleWire{late: idle / 2}
	d, err := NewDialer(ClientConfig{
		Addr: ln.Addr().String(), ServerName: confServerName, Pin: pin, Key: key,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &idleWireConn{Conn: c, w: &wire}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(idle + 20*time.Second):
		t.Fatal("the relay did not close the idle session")
	}
	time.Sleep(100 * time.Millisecond) // for a late write to show
	// What the relay sends at its idle close reaches the client at
	// least idle/2 after the handshake; nothing else comes so late.
	wire.mu.Lock()
	defer wire.mu.Unlock()
	if wire.firstLateRead.IsZero() {
		t.Fatalf("no read %v after the first: the relay's close not seen", wire.late)
	}
	for _, w := range wire.writes {
		if !w.at.Before(wire.firstLateRead) {
			t.Errorf("the client wrote %d bytes %v after the relay's close reached it (a close_notify is 24); Chromium writes none",
				w.n, w.at.Sub(wire.firstLateRead).Round(time.Millisecond))
		}
	}
	if !wire.closed {
		t.Error("the client did not close its connection")
	}
}

// idleWire records a client connection's writes, the first read that
// came late (the relay's close), and its close.
type idleWire struct {
	late          time.Duration // a read this long after the first is late
	mu            sync.Mutex
	start         time.Time
	writes        []idleWrite
	firstLateRead time.Time
	closed        bool
}

type idleWrite struct {
	at time.Time
	n  int
}

type idleWireConn struct {
	net.Conn
	w *idleWire
}

func (c *idleWireConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	now := time.Now()
	c.w.mu.Lock()
	if c.w.start.IsZero() {
		c.w.start = now
	}
	if n > 0 && c.w.firstLateRead.IsZero() && now.Sub(c.w.start) > c.w.late {
		c.w.firstLateRead = now
	}
	c.w.mu.Unlock()
	return n, err
}

func (c *idleWireConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.w.mu.Lock()
	c.w.writes = append(c.w.writes, idleWrite{time.Now(), n})
	c.w.mu.Unlock()
	return n, err
}

func (c *idleWireConn) Close() error {
	c.w.mu.Lock()
	c.w.closed = true
	c.w.mu.Unlock()
	return c.Conn.Close()
}
