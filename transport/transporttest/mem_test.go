package transporttest

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memPair starts an in-memory listener admitting one key, and a dialer
// holding it.
func memPair(t *testing.T) (*Listener, *Dialer, *Authenticator) {
	t.Helper()
	key := auth.NewKey()
	a := NewAuthenticator("alice", key)
	l, err := Listen(ListenConfig{Auth: a})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	d, err := NewDialer(l, DialConfig{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	return l, d, a
}

// TestMemConformance runs the stream suite over the in-memory carrier.
func TestMemConformance(t *testing.T) {
	l, d, _ := memPair(t)
	TestStreams(t, func(t *testing.T) (transport.Session, transport.ServerSession, func()) {
		c, r, stop := Connect(t, d, l)
		if got := r.Key().Name(); got != "alice" {
			t.Errorf("session key %q, want alice", got)
		}
		if r.Carrier() != MemCarrier || d.Carrier() != MemCarrier {
			t.Errorf("carrier names %q, %q; want %q", r.Carrier(), d.Carrier(), MemCarrier)
		}
		return c, r, stop
	})
}

// TestMemRefused: a key the Authenticator does not admit, or no longer
// admits, gets its pipe closed, and Dial says the key was refused.
func TestMemRefused(t *testing.T) {
	l, d, a := memPair(t)
	stranger, err := NewDialer(l, DialConfig{Key: auth.NewKey()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := stranger.Dial(ctx); !errors.Is(err, transport.ErrKeyRefused) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("unknown key: Dial = %v, want ErrKeyRefused", err)
	}
	c, r, stop := Connect(t, d, l)
	defer stop()
	a.Revoke("alice")
	if s, err := d.Dial(ctx); !errors.Is(err, transport.ErrKeyRefused) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("revoked key: Dial = %v, want ErrKeyRefused", err)
	}
	// The session made before the revocation is the relay's to end.
	select {
	case <-c.Done():
		t.Fatal("revoking a key ended its session in the carrier")
	case <-r.Done():
		t.Fatal("revoking a key ended its session in the carrier")
	default:
	}
}

// TestMemWrongClock: a token made for a slot outside the window is
// refused, as a client whose clock is off would be.
func TestMemWrongClock(t *testing.T) {
	l, _, a := memPair(t)
	key := auth.NewKey()
	a.Add("bob", key)
	d, err := NewDialer(l, DialConfig{Key: key, Now: func() time.Time { return time.Now().Add(-10 * time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if s, err := d.Dial(ctx); !errors.Is(err, transport.ErrKeyRefused) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Dial with a clock 10 minutes off = %v, want ErrKeyRefused", err)
	}
}

// TestAuthenticatorReplay: a proof is admitted once.
func TestAuthenticatorReplay(t *testing.T) {
	key := auth.NewKey()
	a := NewAuthenticator("alice", key)
	var digest [32]byte
	digest[0] = 7
	tok := auth.Token(key, auth.Slot(time.Now()), digest)
	p := transport.Proof{Carrier: "test", Digest: digest, Token: tok[:]}
	if k, err := a.Authenticate(p); err != nil || k.Name() != "alice" {
		t.Fatalf("first proof: %v, %v; want alice", k, err)
	}
	if _, err := a.Authenticate(p); !errors.Is(err, transport.ErrUnauthenticated) {
		t.Fatalf("replayed proof: %v, want ErrUnauthenticated", err)
	}
	digest[0] = 8
	if _, err := a.Authenticate(transport.Proof{Digest: digest, Token: tok[:]}); !errors.Is(err, transport.ErrUnauthenticated) {
		t.Fatalf("token moved to another digest: %v, want ErrUnauthenticated", err)
	}
}

// TestMemListenerClose: Close ends a handshake in progress and a session
// not yet accepted, waits for its goroutines (goleak checks at exit), and
// then Dial and Accept fail with net.ErrClosed. An accepted session lives
// on until its owner closes it.
func TestMemListenerClose(t *testing.T) {
	l, d, _ := memPair(t)
	c, r, stop := Connect(t, d, l)
	defer stop()

	// A session dialled but never accepted.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pending, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pending.Close()
	// A connection stuck before its proof.
	cc, sc := net.Pipe()
	defer cc.Close()
	if err := l.connect(sc); err != nil {
		t.Fatal(err)
	}

	closed := make(chan struct{})
	go func() { l.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Listener.Close did not return")
	}
	select {
	case <-pending.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a session not yet accepted outlived Listener.Close")
	}
	if _, err := cc.Read(make([]byte, 1)); err == nil {
		t.Fatal("a connection in its handshake outlived Listener.Close")
	}
	if _, err := l.Accept(ctx); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if s, err := d.Dial(ctx); !errors.Is(err, net.ErrClosed) {
		if s != nil {
			s.Close()
		}
		t.Errorf("Dial after Close: %v, want net.ErrClosed", err)
	}
	select {
	case <-c.Done():
		t.Error("Listener.Close ended an accepted session")
	case <-r.Done():
		t.Error("Listener.Close ended an accepted session")
	default:
	}
}
