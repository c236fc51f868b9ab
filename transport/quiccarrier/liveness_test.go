package quiccarrier

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/transporttest"
)

// TestPingAtStreamLimit fills the relay's stream limit, so that the next
// stream open waits for the relay, and checks that Ping still answers (it
// must not need a stream of its own) and that the waiting open goes
// through once a stream ends.
func TestPingAtStreamLimit(t *testing.T) {
	const limit = 4
	tr := startRelayWith(t, func(c *ListenConfig) { c.MaxStreams = limit })
	s := dial(t, tr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var held []net.Conn
	for range limit {
		st, err := openEcho(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, st)
	}
	opened := make(chan error, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		st, err := openEcho(ctx, s)
		if err == nil {
			st.Close()
		}
		opened <- err
	})
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-opened:
		t.Fatalf("open beyond the relay's limit of %d returned at once: %v", limit, err)
	default:
	}
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	defer pcancel()
	if _, err := s.Ping(pctx); err != nil {
		t.Fatalf("ping at the stream limit: %v", err)
	}
	held[0].Close()
	if err := <-opened; err != nil {
		t.Fatalf("open once a stream ended: %v", err)
	}
	for _, st := range held[1:] {
		st.Close()
	}
}

// TestPingBlackholed checks that Ping tells a live relay from a silent
// one: after a stream open it answers at once while the relay is there,
// and fails once every packet is dropped.
func TestPingBlackholed(t *testing.T) {
	tr := startRelay(t)
	d := transporttest.StartUDPForwarder(t, tr.addr)
	tr.addr = d.Addr
	s := dial(t, tr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := openEcho(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	rtt, err := s.Ping(ctx)
	if err != nil || rtt <= 0 {
		t.Fatalf("ping of a live relay: %v, %v", rtt, err)
	}
	d.Drop.Store(true)
	// Packets the forwarder passed before the drop (the relay's side of
	// the first stream's close) may still be on their way to the client;
	// a relay that went silent sends none after them.
	time.Sleep(300 * time.Millisecond)
	// As pick.Watch does: a stream open, then a ping.
	st, err = s.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.Write([]byte("open request"))
	pctx, pcancel := context.WithTimeout(ctx, 800*time.Millisecond)
	defer pcancel()
	if _, err := s.Ping(pctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping of a blackholed relay: %v, want deadline exceeded", err)
	}
}

// TestIdleSessionEnds: as Chromium's, a session pings the relay only
// while a stream is open. With one open it outlives the idle timeout
// many times over; with none it ends at the idle timeout, and says it
// ended in an orderly way (the client then opens a new one when it needs
// one, without counting it a failure).
func TestIdleSessionEnds(t *testing.T) {
	const idle = 2 * time.Second
	tr := startRelayWith(t, func(c *ListenConfig) { c.IdleTimeout = idle })
	d, err := NewDialer(ClientConfig{Addr: tr.addr, ServerName: testSNI, Pin: tr.pin, Key: tr.key, KeepAlive: idle / 8})
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st, err := openEcho(t.Context(), s)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
		t.Fatalf("a session with an open stream ended: %v", s.Err())
	case <-time.After(5 * idle):
	}
	if err := echo(st, []byte("still there")); err != nil {
		t.Fatalf("the open stream after %v idle: %v", 5*idle, err)
	}
	st.Close()
	// No stream open: no more keep-alive PINGs (at most the packets
	// that end the stream).
	time.Sleep(idle / 4)
	conn := s.(*session).conn
	sent := conn.ConnectionStats().PacketsSent
	time.Sleep(idle / 2)
	if n := conn.ConnectionStats().PacketsSent - sent; n > 0 && s.Err() == nil {
		t.Errorf("%d packets sent in %v with no stream open (keep-alive every %v)", n, idle/2, idle/8)
	}
	select {
	case <-s.Done():
	case <-time.After(30 * idle):
		t.Fatal("a session with no stream open did not end at its idle timeout")
	}
	if err := s.Err(); !errors.Is(err, transport.ErrOrderlyClose) {
		t.Errorf("idle session ended with %v, want ErrOrderlyClose", err)
	}
}
