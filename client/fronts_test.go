package client_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
)

// lockedLog is a log destination safe for concurrent writes and reads.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// signedHello returns a fresh FakeTLS hello signed with s now.
func signedHello(t testing.TB, s mtproxy.Secret) []byte {
	t.Helper()
	rec := mtproxytest.HelloRecord(t, s.Host)
	if err := mtproxytest.SignClientHello(rec, s.Key, time.Now()); err != nil {
		t.Fatal(err)
	}
	return rec
}

// frontHello sends rec to the MTProxy front at addr and reports whether it
// answered with a FakeTLS server hello for s.
func frontHello(t testing.TB, addr string, s mtproxy.Secret, rec []byte) error {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(rec); err != nil {
		return err
	}
	var random [32]byte
	copy(random[:], rec[11:43])
	return mtproxytest.ReadServerHello(conn, random, s.Key)
}

// TestMTProxyFrontReplay sends the local MTProxy front the same signed
// hello twice: the first is answered, the replay is closed without a
// server hello, and a fresh hello is still answered.
func TestMTProxyFrontReplay(t *testing.T) {
	relaytest.CheckLeaks(t)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, nil)
	c, _ := startClient(t, r.AddKey(t, "alice", access.Entry{}), nil)
	front, secret := startFront(t, c)

	rec := signedHello(t, secret)
	if err := frontHello(t, front, secret, bytes.Clone(rec)); err != nil {
		t.Fatalf("first hello: %v", err)
	}
	if err := frontHello(t, front, secret, bytes.Clone(rec)); err == nil {
		t.Fatal("replayed hello answered with a server hello")
	}
	if err := frontHello(t, front, secret, signedHello(t, secret)); err != nil {
		t.Fatalf("fresh hello after a replay: %v", err)
	}
}

// flakyListener fails its first fails Accepts with EMFILE ("too many open
// files"), as a process out of descriptors does.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// TestMTProxyFrontAcceptBackoff: "too many open files" from Accept makes
// the MTProxy front pause and retry, like the SOCKS5 front, instead of
// returning (which ended the whole client).
func TestMTProxyFrontAcceptBackoff(t *testing.T) {
	relaytest.CheckLeaks(t)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, nil)
	c, _ := startClient(t, r.AddKey(t, "alice", access.Entry{}), nil)
	secret, err := mtproxy.NewSecret("front.merpati.test")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	fl.fails.Store(5)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.ServeMTProxy(ctx, fl, secret) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("front: %v", err)
		}
	}()
	if err := frontHello(t, ln.Addr().String(), secret, signedHello(t, secret)); err != nil {
		t.Fatalf("hello after EMFILE from Accept: %v", err)
	}
	select {
	case err := <-done:
		done <- err
		t.Fatalf("front returned on a temporary Accept error: %v", err)
	default:
	}
	if n := fl.fails.Load(); n >= 0 {
		t.Fatalf("%d of the failing Accepts were not made", n+1)
	}
}

// TestSOCKSKeyRefused: a revoked key reaches the relay's cover site,
// whose certificate is not the pinned one. The client reports that the
// relay refused the key (errors.Is transport.ErrKeyRefused), not a bare
// certificate mismatch, and tells the user, once, to get a new link.
func TestSOCKSKeyRefused(t *testing.T) {
	relaytest.CheckLeaks(t)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, nil)
	l := r.AddKey(t, "alice", access.Entry{})
	l.Carriers = []string{link.CarrierTLS} // the test relay has no QUIC: no 5 s handshake timeouts
	r.Revoke(t, "alice")
	var logs lockedLog
	c, socks := startClient(t, l, func(cfg *client.Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := c.OpenStream(ctx, transport.DCTarget(2))
		cancel()
		if !errors.Is(err, transport.ErrKeyRefused) {
			t.Fatalf("open with a revoked key: %v, want ErrKeyRefused", err)
		}
	}
	// The same through SOCKS5, as the app sees it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if conn, err := socksDialer(t, socks)(ctx, "tcp", "127.0.0.1:1"); err == nil {
		conn.Close()
		t.Fatal("SOCKS5 connect with a revoked key succeeded")
	}
	out := logs.String()
	const msg = "the relay did not accept this link's key"
	if n := strings.Count(out, "msg=\""+msg); n != 1 {
		t.Errorf("key-refused message logged %d times, want once a minute:\n%s", n, out)
	}
	for _, want := range []string{"level=ERROR", "new one", "merpati import", "something in the path"} {
		if !strings.Contains(out, want) {
			t.Errorf("log does not say %q:\n%s", want, out)
		}
	}
}
