package quiccarrier

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

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
