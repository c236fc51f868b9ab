package tlscarrier

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
	"github.com/merpati/merpati/transport/transporttest"
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
	cover, cert, ln := mtCheckRig(t)
	mt := &countingMTProxy{}
	const rate = 2 // a burst of 4
	l, err := Listen(ln, ListenConfig{Certificate: cert, Auth: refuseAll{}, MTProxy: mt, Cover: cover.Addr().String(), MTProxyChecks: rate})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	sendMTProxyHellos(t, ln.Addr().String(), 8)
	// The burst of 4, and what the rate refilled meanwhile (on a busy
	// machine the test may take a while).
	most := 4 + int64(rate*time.Since(start).Seconds()+1)
	if n := mt.n.Load(); n < 4 || n > most {
		t.Errorf("%d of 8 hellos checked against the secrets, want 4 to %d", n, most)
	}
}

// slowMTProxy refuses every MTProxy hello after taking cost to check it,
// and counts the checks.
type slowMTProxy struct {
	cost time.Duration
	n    atomic.Int64
}

func (s *slowMTProxy) AuthenticateMTProxy(*mtproxy.ClientHello, time.Time) (transport.Key, mtproxy.Key, error) {
	s.n.Add(1)
	time.Sleep(s.cost)
	return nil, mtproxy.Key{}, transport.ErrUnauthenticated
}

// TestMTProxyCheckBudget: whatever the per-network rate lets through, the
// MTProxy checks of all sources together take at most MTProxyCPU of a
// core; hellos over it go to the cover site untried, which answers them.
func TestMTProxyCheckBudget(t *testing.T) {
	// Each check takes 100 ms, and the budget is 50 ms a second: the
	// first check finds the budget full and leaves it 50 ms in debt, and
	// the next one may start only once a second has paid that back.
	cover, cert, ln := mtCheckRig(t)
	const budget, cost = 0.05, 100 * time.Millisecond
	mt := &slowMTProxy{cost: cost}
	l, err := Listen(ln, ListenConfig{Certificate: cert, Auth: refuseAll{}, MTProxy: mt, Cover: cover.Addr().String(),
		MTProxyChecks: 1000, MTProxyCPU: budget})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	start := time.Now()
	const hellos = 10
	sendMTProxyHellos(t, ln.Addr().String(), hellos)
	// The budget's burst, and what it refilled meanwhile: budget*elapsed
	// seconds of checks of cost each, plus one check in debt.
	elapsed := time.Since(start)
	most := 2 + int64(budget*elapsed.Seconds()/cost.Seconds())
	n := mt.n.Load()
	t.Logf("%d of %d hellos checked in %v", n, hellos, elapsed.Round(time.Millisecond))
	if n < 1 || n > most {
		t.Errorf("%d of %d hellos checked against the secrets in %v, want 1 to %d", n, hellos, elapsed.Round(time.Millisecond), most)
	}
}

// TestTimeBudget checks the bucket's arithmetic on a made-up clock.
func TestTimeBudget(t *testing.T) {
	b := newTimeBudget(0.5) // half a second a second, up to 0.5 s
	now := time.Unix(1_800_000_000, 0)
	n := 0
	for range 100 {
		est, ok := b.take(now, 0)
		if !ok {
			break
		}
		b.settle(est, 100*time.Millisecond)
		n++
	}
	if n != 5 {
		t.Fatalf("%d checks of 100 ms from a full budget of 0.5 s, want 5", n)
	}
	// One second refills 0.5 s: five more.
	now = now.Add(time.Second)
	n = 0
	for range 100 {
		est, ok := b.take(now, 100*time.Millisecond)
		if !ok {
			break
		}
		b.settle(est, 100*time.Millisecond)
		n++
	}
	if n != 5 {
		t.Errorf("%d checks after a second, want 5", n)
	}
	// A reservation holds the budget against others starting at once.
	now = now.Add(time.Second)
	n = 0
	for range 100 {
		if _, ok := b.take(now, 250*time.Millisecond); ok {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d checks of an expected 250 ms allowed at once, want 2", n)
	}
	// Callers whose clocks reach the budget out of order refill one
	// interval once, not twice.
	b = newTimeBudget(0.5)
	now = now.Add(time.Second)
	b.take(now, 500*time.Millisecond) // spends the whole budget
	if _, ok := b.take(now.Add(time.Second), 500*time.Millisecond); !ok {
		t.Fatal("a second's refill refused a check") // and spends it
	}
	b.take(now, 0) // a caller whose clock read a second ago
	if _, ok := b.take(now.Add(time.Second), 0); ok {
		t.Error("one second refilled the budget twice")
	}
}

// mtCheckRig starts a cover site that answers "cover" once the client has
// sent everything, and returns it, with a certificate and a listener for
// the front door.
func mtCheckRig(t *testing.T) (cover net.Listener, cert tls.Certificate, ln net.Listener) {
	t.Helper()
	cover, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cover.Close() })
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
	if cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	return cover, cert, ln
}

// sendMTProxyHellos sends n MTProxy hellos, each signed with a new secret,
// to the front door at addr, one connection each, and requires the cover
// site's answer to each.
func sendMTProxyHellos(t *testing.T, addr string, n int) {
	t.Helper()
	rec := mtproxytest.HelloRecord(t, "cover.example")
	for i := range n {
		mtproxytest.SignClientHello(rec, mtproxy.NewKey(), time.Now())
		c, err := net.Dial("tcp", addr)
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
}

// oneSecret accepts the MTProxy hellos its secret signed.
type oneSecret struct{ s mtproxy.Secret }

func (o oneSecret) AuthenticateMTProxy(h *mtproxy.ClientHello, now time.Time) (transport.Key, mtproxy.Key, error) {
	if err := h.Verify(o.s.Key, now, MTProxyWindow); err != nil {
		return nil, mtproxy.Key{}, transport.ErrUnauthenticated
	}
	return transporttest.KeyName("app"), o.s.Key, nil
}

// TestMTProxySessionKept: once an app's MTProxy connection is handed on as
// a session, no goroutine of the listener's waits for it (the handler,
// with the hello's record on its stack, has returned), and closing the
// listener still ends the session and closes the app's connection.
func TestMTProxySessionKept(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leaks) }) // runs last
	cover, cert, ln := mtCheckRig(t)
	secret, _ := mtproxy.NewSecret("cover.example")
	l, err := Listen(ln, ListenConfig{Certificate: cert, Auth: refuseAll{}, MTProxy: oneSecret{secret}, Cover: cover.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := mtproxytest.ClientHandshake(c, secret, mtproxytest.HelloRecord(t, secret.Host), time.Now(), mtproxy.PaddedIntermediate, 2); err != nil {
		t.Fatal(err)
	}
	s, err := l.Accept(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Carrier() != mtproxy.Carrier {
		t.Fatalf("a %s session, want %s", s.Carrier(), mtproxy.Carrier)
	}
	st, err := s.AcceptStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// As a relay does: answer the open request, then read the stream
	// until it fails, and close it.
	if _, err := transport.ReadOpenRequest(st); err != nil {
		t.Fatal(err)
	}
	if _, err := (transport.OpenReply{Status: transport.StatusOK}).WriteTo(st); err != nil {
		t.Fatal(err)
	}
	go func() {
		io.Copy(io.Discard, st)
		st.Close()
	}()
	for end := time.Now().Add(10 * time.Second); ; {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "serveMTProxy") {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("a goroutine still serves the handed-on MTProxy connection:\n%s", stacks)
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.Close()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end with the listener")
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("the app's connection did not end: %v", err)
	}
}
