package relay_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// The relay's end-to-end behaviours, once per carrier
// (relaytest.ForEachCarrier), driven by the carriers' own dialers: what
// the relay promises whatever carrier a session came by.

// echoStream sends n random bytes on st, half-closes, and checks that the
// echo server behind it sends them back and then half-closes too.
func echoStream(st transport.Stream, n int) error {
	data := make([]byte, n)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := st.Write(data)
		if err == nil {
			err = st.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(st)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", len(got), err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("%d of %d bytes back", len(got), n)
	}
	return nil
}

// isStatus reports whether err is the relay's refusal with status s.
func isStatus(err error, s transport.Status) bool {
	var se *transport.StatusError
	return errors.As(err, &se) && se.Status == s
}

// TestStreams: many concurrent streams on one session, to an address and
// to a DC number, carry exact bytes both ways and half-close cleanly; a
// target outside Telegram and the allowed ranges is refused.
func TestStreams(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echoAddr := relaytest.StartEcho(t)
		echo := relaytest.Target(t, echoAddr)
		cov := relaytest.StartCover(t)
		r := relaytest.Start(t, cov, relaytest.Options{DC: []string{"2=" + echoAddr}})
		s, err := relaytest.Session(t, r.AddKey(t, "alice", access.Entry{}), carrier)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				target := echo
				if i%4 == 0 {
					target = transport.DCTarget(2)
				}
				st, err := relaytest.Open(s, target)
				if err != nil {
					t.Errorf("stream %d to %v: %v", i, target, err)
					return
				}
				defer st.Close()
				st.SetDeadline(time.Now().Add(30 * time.Second))
				if err := echoStream(st, 1+i*50_000); err != nil {
					t.Errorf("stream %d to %v: %v", i, target, err)
				}
			})
		}
		wg.Wait()
		if _, err := relaytest.Open(s, transport.AddrTarget("10.255.255.1", 80)); !isStatus(err, transport.StatusNotAllowed) {
			t.Errorf("non-Telegram target: %v, want %v", err, transport.StatusNotAllowed)
		}
		if n := cov.Accepted(); n != 0 {
			t.Errorf("the cover site got %d connections from a key holder", n)
		}
	})
}

// refusedOpen dials a session of l over carrier and opens a stream on it,
// and returns the error of whichever fails: a relay that refuses the key
// fails the handshake (TLS, shown the cover site's certificate) or the
// first stream (QUIC, answered by the cover site).
func refusedOpen(t *testing.T, l *link.Link, carrier string, target transport.Target) error {
	t.Helper()
	s, err := relaytest.Session(t, l, carrier)
	if err != nil {
		return err
	}
	st, err := relaytest.Open(s, target)
	if err == nil {
		st.Close()
		return errors.New("the stream opened")
	}
	return err
}

// TestRevokeMidStream revokes a key while its stream carries bytes: the
// stream and its session end within seconds, the key's next session is
// refused at once as the relay refuses any unknown key (the client sees
// transport.ErrKeyRefused), and another key's stream goes on.
func TestRevokeMidStream(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echo := relaytest.Target(t, relaytest.StartEcho(t))
		cov := relaytest.StartCover(t)
		r := relaytest.Start(t, cov, relaytest.Options{})
		alice := r.AddKey(t, "alice", access.Entry{})
		as, err := relaytest.Session(t, alice, carrier)
		if err != nil {
			t.Fatal(err)
		}
		bs, err := relaytest.Session(t, r.AddKey(t, "bob", access.Entry{}), carrier)
		if err != nil {
			t.Fatal(err)
		}
		ast, err := relaytest.Open(as, echo)
		if err != nil {
			t.Fatal(err)
		}
		defer ast.Close()
		bst, err := relaytest.Open(bs, echo)
		if err != nil {
			t.Fatal(err)
		}
		defer bst.Close()
		ping := func(st transport.Stream, msg string) error {
			st.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := st.Write([]byte(msg)); err != nil {
				return err
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(st, got); err != nil {
				return err
			}
			if string(got) != msg {
				return fmt.Errorf("got %q", got)
			}
			return nil
		}
		for _, st := range []transport.Stream{ast, bst} {
			if err := ping(st, "before"); err != nil {
				t.Fatal(err)
			}
		}

		// Alice's stream is mid-transfer: bytes the relay has not echoed
		// yet are in flight when her key goes.
		go ast.Write(make([]byte, 64<<10))
		r.Revoke(t, "alice")
		ast.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(io.Discard, ast)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("a revoked key's stream still open 5 s after the revocation")
		}
		select {
		case <-as.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("a revoked key's session still up 5 s after the revocation")
		}
		if err := ping(bst, "after"); err != nil {
			t.Fatalf("another key's stream after the revocation: %v", err)
		}

		before := cov.Reached(carrier)
		start := time.Now()
		if err := refusedOpen(t, alice, carrier, echo); !errors.Is(err, transport.ErrKeyRefused) {
			t.Errorf("revoked key's next stream: %v, want ErrKeyRefused", err)
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Errorf("revoked key refused after %v, want at once", took)
		}
		if cov.Reached(carrier) == before {
			t.Error("a revoked key's new session did not reach the cover site")
		}
	})
}

// recorder keeps the bytes of the first Write on a connection.
type recorder struct {
	net.Conn
	once  sync.Once
	first chan []byte
}

func (r *recorder) Write(b []byte) (int, error) {
	r.once.Do(func() { r.first <- bytes.Clone(b) })
	return r.Conn.Write(b)
}

// TestReplay replays a client's proof of its key: the relay opens no
// session for it, sends it to the cover site, and says so in its log.
// Over TCP the proof is a TLS carrier's hello, over UDP the client's QUIC
// Initials, both captured on the wire.
func TestReplay(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echo := relaytest.Target(t, relaytest.StartEcho(t))
		cov := relaytest.StartCover(t)
		r := relaytest.Start(t, cov, relaytest.Options{})
		l := r.AddKey(t, "alice", access.Entry{})
		switch carrier {
		case link.CarrierTLS:
			first := make(chan []byte, 1)
			d, err := tlscarrier.NewDialer(tlscarrier.ClientConfig{
				Addr: r.Addr, ServerName: l.SNI, Pin: l.Pin, Key: auth.Key(l.Key), AuthKey: l.AuthKey,
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					var d net.Dialer
					c, err := d.DialContext(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					return &recorder{Conn: c, first: first}, nil
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
			defer s.Close()
			st, err := relaytest.Open(s, echo)
			if err != nil {
				t.Fatal(err)
			}
			st.Close()
			hello := <-first
			if len(hello) < 100 || hello[0] != 0x16 {
				t.Fatalf("recorded %d bytes, not a hello", len(hello))
			}
			before := cov.Accepted()
			c, err := net.Dial("tcp", r.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(hello)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			c.Read(make([]byte, 1)) // the cover site's server hello (or an alert)
			if cov.Accepted() != before+1 {
				t.Error("a replayed hello did not go to the cover site")
			}
		case link.CarrierQUIC:
			relaytest.ReplayQUIC(t, r, cov, l)
		}
		if !r.Logs.WaitFor("replayed hello sent to cover site", 10*time.Second) {
			t.Errorf("the relay did not log the replay:\n%s", r.Logs)
		}
		if n := r.Logs.Count("session opened"); n != 1 {
			t.Errorf("%d sessions opened, want 1 (the replay's must not be)", n)
		}
	})
}

// TestQuota: a key's byte quota counts what its streams carry both ways;
// the stream that crosses it is cut, and the key's next streams are
// refused with StatusQuota on a session that stays up.
func TestQuota(t *testing.T) {
	const quota = 256 << 10
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echo := relaytest.Target(t, relaytest.StartEcho(t))
		cov := relaytest.StartCover(t)
		r := relaytest.Start(t, cov, relaytest.Options{})
		s, err := relaytest.Session(t, r.AddKey(t, "small", access.Entry{QuotaBytes: quota}), carrier)
		if err != nil {
			t.Fatal(err)
		}
		st, err := relaytest.Open(s, echo)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.SetDeadline(time.Now().Add(30 * time.Second))
		var ne net.Error
		if err := echoStream(st, 4<<20); err == nil {
			t.Fatal("a stream carried 8 MiB with a quota of 256 KiB")
		} else if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("a stream over its quota was not cut: %v", err)
		}
		if used := r.Keys.Usage()["small"]; used < quota {
			t.Errorf("usage %d after the stream was cut, want at least the quota %d", used, quota)
		}
		if _, err := relaytest.Open(s, echo); !isStatus(err, transport.StatusQuota) {
			t.Fatalf("stream over the quota: %v, want %v", err, transport.StatusQuota)
		}
		select {
		case <-s.Done():
			t.Errorf("the session ended: %v", s.Err())
		default:
		}
	})
}

// TestProbes: a prober at either carrier's port sees the cover site
// (relaytest.CheckProbes), the key holders' sessions notwithstanding.
func TestProbes(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		echo := relaytest.Target(t, relaytest.StartEcho(t))
		cov := relaytest.StartCover(t)
		r := relaytest.Start(t, cov, relaytest.Options{})
		l := r.AddKey(t, "alice", access.Entry{})
		s, err := relaytest.Session(t, l, carrier)
		if err != nil {
			t.Fatal(err)
		}
		st, err := relaytest.Open(s, echo)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		relaytest.CheckProbes(t, carrier, r, cov, l)
		if err := echoStream(st, 1000); err != nil {
			t.Errorf("the key holder's stream after the probes: %v", err)
		}
	})
}

// TestLegacyLinks: a link from before sealed tokens (no "ak") is refused
// by a relay that allows none, and served by one that allows legacy
// tokens, as relays made before them do.
func TestLegacyLinks(t *testing.T) {
	echo := relaytest.Target(t, relaytest.StartEcho(t))
	cov := relaytest.StartCover(t)
	for _, legacy := range []bool{false, true} {
		r := relaytest.Start(t, cov, relaytest.Options{Config: func(c *relay.Config) { c.LegacyTokens = legacy }})
		l := r.AddKey(t, "old", access.Entry{})
		l.AuthKey = nil
		s, err := relaytest.Session(t, l, link.CarrierTLS)
		if err == nil {
			var st transport.Stream
			if st, err = relaytest.Open(s, echo); err == nil {
				st.Close()
			}
		}
		if legacy && err != nil {
			t.Errorf("legacy tokens allowed: an old link's session: %v", err)
		}
		if !legacy && !errors.Is(err, transport.ErrKeyRefused) {
			t.Errorf("legacy tokens refused: an old link's session: %v, want ErrKeyRefused", err)
		}
	}
}
