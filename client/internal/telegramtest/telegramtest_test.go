package telegramtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gotd/td/telegram/dcs"
	"github.com/gotd/td/transport"
	"go.uber.org/goleak"
)

// checkLeaks fails t if goroutines started during the test outlive it. Call
// it first so its cleanup runs last, after the DC has stopped.
func checkLeaks(t *testing.T) {
	t.Helper()
	opts := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opts) })
}

// dialRecorder is a loopback dialer that remembers every address asked for.
type dialRecorder struct {
	d     net.Dialer
	mu    sync.Mutex
	addrs []string
}

func (r *dialRecorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	r.mu.Lock()
	r.addrs = append(r.addrs, addr)
	r.mu.Unlock()
	return r.d.DialContext(ctx, network, addr)
}

func (r *dialRecorder) dialed() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.addrs...)
}

func TestDirect(t *testing.T) {
	checkLeaks(t)
	dc := StartDC(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	var rec dialRecorder
	const n = 100
	stats, err := Run(ctx, dc, rec.dial, n)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("%d RPCs: key exchange %v, first RPC %v, total %v", stats.RPCs, stats.KeyExchange, stats.FirstRPC, stats.Total)
	if stats.RPCs != n {
		t.Errorf("RPCs = %d, want %d", stats.RPCs, n)
	}
	// A zero KeyExchange means gotd no longer logs authKeyGenerated.
	if stats.KeyExchange <= 0 || stats.FirstRPC <= 0 || stats.Total < stats.KeyExchange {
		t.Errorf("implausible stats %+v", stats)
	}
	addrs := rec.dialed()
	if len(addrs) == 0 {
		t.Fatal("client never dialed")
	}
	for _, a := range addrs {
		if a != dc.Addr {
			t.Errorf("client dialed %q, want only %q", a, dc.Addr)
		}
	}
	if got := dc.Accepted(); got != int64(len(addrs)) {
		t.Errorf("DC accepted %d connections, client dialed %d", got, len(addrs))
	}
}

func TestDialFails(t *testing.T) {
	checkLeaks(t)
	dc := StartDC(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	errRefused := errors.New("test: dial refused")
	start := time.Now()
	_, err := Run(ctx, dc, func(context.Context, string, string) (net.Conn, error) {
		return nil, errRefused
	}, 1)
	if !errors.Is(err, errRefused) {
		t.Fatalf("Run error = %v, want %v", err, errRefused)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %v to give up", d)
	}
}

// TestStalledPeer checks that ctx bounds a run whose peer accepts the
// connection and then never answers.
func TestStalledPeer(t *testing.T) {
	checkLeaks(t)
	dc := StartDC(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()

	var (
		mu    sync.Mutex
		peers []net.Conn
	)
	t.Cleanup(func() {
		for _, c := range peers {
			c.Close()
		}
	})
	start := time.Now()
	_, err := Run(ctx, dc, func(context.Context, string, string) (net.Conn, error) {
		c, s := net.Pipe()
		mu.Lock()
		peers = append(peers, s)
		mu.Unlock()
		// Drain what the client writes so it blocks reading, not writing.
		go func() {
			var b [512]byte
			for {
				if _, err := s.Read(b[:]); err != nil {
					return
				}
			}
		}()
		return c, nil
	}, 1)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run error = %v, want %v", err, context.DeadlineExceeded)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Run took %v to give up after ctx expired", d)
	}
}

func TestNonLoopbackRefused(t *testing.T) {
	for _, addr := range []string{"149.154.167.51:443", "[2001:67c:4e8:f002::a]:443", "localhost:443", "0.0.0.0:443", "garbage"} {
		_, err := LoopbackOnly(func(context.Context, string, string) (net.Conn, error) {
			t.Fatalf("dialed %q", addr)
			return nil, nil
		})(t.Context(), "tcp", addr)
		if !errors.Is(err, ErrNotLoopback) {
			t.Errorf("dial %q: err = %v, want ErrNotLoopback", addr, err)
		}
	}
}

// TestObfuscated runs the client with Obfuscated2 on the direct connection,
// as an MTProxy relay would speak to a DC, through RunWithResolver.
func TestObfuscated(t *testing.T) {
	checkLeaks(t)
	dc := StartDC(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	var rec dialRecorder
	for _, p := range []struct {
		name  string
		proto dcs.Protocol
	}{
		{"Abridged", transport.Abridged},
		{"Intermediate", transport.Intermediate},
		{"PaddedIntermediate", transport.PaddedIntermediate},
	} {
		r := dcs.Plain(dcs.PlainOptions{
			Dial:       LoopbackOnly(rec.dial),
			Protocol:   p.proto,
			Obfuscated: true,
		})
		stats, err := RunWithResolver(ctx, dc, r, 8)
		if err != nil {
			t.Fatalf("%s: RunWithResolver: %v", p.name, err)
		}
		if stats.RPCs != 8 {
			t.Errorf("%s: RPCs = %d, want 8", p.name, stats.RPCs)
		}
	}
	for _, a := range rec.dialed() {
		if a != dc.Addr {
			t.Errorf("client dialed %q, want only %q", a, dc.Addr)
		}
	}
	if got, want := dc.obfuscated.Load(), dc.Accepted(); got != want {
		t.Errorf("%d of %d connections were Obfuscated2", got, want)
	}
}

// TestPlainTransports runs the client over each unobfuscated transport,
// including Full, which the DC must tell apart from Obfuscated2.
func TestPlainTransports(t *testing.T) {
	checkLeaks(t)
	dc := StartDC(t, 4)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	for _, p := range []struct {
		name  string
		proto dcs.Protocol
	}{
		{"Abridged", transport.Abridged},
		{"PaddedIntermediate", transport.PaddedIntermediate},
		{"Full", transport.Full},
	} {
		r := dcs.Plain(dcs.PlainOptions{Dial: LoopbackOnly(new(net.Dialer).DialContext), Protocol: p.proto})
		if _, err := RunWithResolver(ctx, dc, r, 8); err != nil {
			t.Fatalf("%s: RunWithResolver: %v", p.name, err)
		}
	}
}

// TestSilentConnection checks that a connection that never sends anything
// does not stop the DC serving others.
func TestSilentConnection(t *testing.T) {
	checkLeaks(t)
	dc := StartDC(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	var d net.Dialer
	silent, err := d.DialContext(ctx, "tcp", dc.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	if _, err := Run(ctx, dc, d.DialContext, 2); err != nil {
		t.Fatalf("Run beside a silent connection: %v", err)
	}
}

func TestConcurrentClients(t *testing.T) {
	checkLeaks(t)
	dc := StartDC(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	var (
		wg   sync.WaitGroup
		d    net.Dialer
		errs = make([]error, 3)
	)
	for i := range errs {
		wg.Go(func() { _, errs[i] = Run(ctx, dc, d.DialContext, 10) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("client %d: %v", i, err)
		}
	}
}

// spyTB records Errorf calls instead of failing the test.
type spyTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (s *spyTB) Errorf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errors = append(s.errors, fmt.Sprintf(format, args...))
}

// TestRunRefusesNonLoopback points the DC list at a real Telegram address
// and checks that Run refuses to dial it and fails the test.
func TestRunRefusesNonLoopback(t *testing.T) {
	checkLeaks(t)
	spy := &spyTB{TB: t}
	dc := StartDC(spy, 2)
	dc.list.Options[0].IPAddress = "149.154.167.51"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	_, err := Run(ctx, dc, func(_ context.Context, _, addr string) (net.Conn, error) {
		t.Errorf("dial func called for %q", addr)
		return nil, errors.New("test: must not dial")
	}, 1)
	if !errors.Is(err, ErrNotLoopback) {
		t.Errorf("Run error = %v, want ErrNotLoopback", err)
	}
	spy.mu.Lock()
	defer spy.mu.Unlock()
	if len(spy.errors) == 0 {
		t.Error("Run did not fail the test")
	}
}
