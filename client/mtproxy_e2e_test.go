package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gotd/td/telegram/dcs"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/client/internal/telegramtest"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
)

// addMTKey makes a new access key and returns its share link and its
// MTProxy secret.
func addMTKey(t testing.TB, r *relaytest.Relay, name string, limits access.Entry) (*link.Link, mtproxy.Secret) {
	t.Helper()
	e, err := access.Add(r.Dir.KeysPath(), name, limits)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Keys.Reload(); err != nil {
		t.Fatal(err)
	}
	s, ok := r.Dir.MTProxySecret(e)
	if !ok {
		t.Fatal("access.Add made no MTProxy secret")
	}
	return r.Dir.Link(e), s
}

// gotdMTProxy returns gotd's own MTProxy resolver for addr and secret,
// dialling loopback only.
func gotdMTProxy(t testing.TB, addr string, s mtproxy.Secret) dcs.Resolver {
	t.Helper()
	var d net.Dialer
	res, err := dcs.MTProxy(addr, s.Bytes(), dcs.MTProxyOptions{Dial: telegramtest.LoopbackOnly(d.DialContext)})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestMTProxyDirect runs a real MTProto client (gotd) with an "ee" secret
// straight to the relay, which serves it as an MTProxy and speaks
// obfuscated2 to a gotd test DC: key exchange and 100 RPCs.
func TestMTProxyDirect(t *testing.T) {
	relaytest.CheckLeaks(t)
	dc := telegramtest.StartDC(t, 2)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, []string{"2=" + dc.Addr})
	_, s := addMTKey(t, r, "alice", access.Entry{})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := telegramtest.RunWithResolver(ctx, dc, gotdMTProxy(t, r.Addr, s), 100)
	if err != nil {
		t.Fatalf("MTProto through the relay's MTProxy mode: %v", err)
	}
	if st.RPCs != 100 {
		t.Fatalf("%d RPCs answered, want 100", st.RPCs)
	}
	t.Logf("key exchange %v, first RPC %v, 100 RPCs in %v", st.KeyExchange, st.FirstRPC, st.Total)
	if n := cov.Accepted(); n != 0 {
		t.Errorf("cover site got %d connections from an MTProxy app", n)
	}
	if u := r.Keys.Usage()["alice"]; u < 100*1000 {
		t.Errorf("alice's usage is %d bytes after 100 RPCs", u)
	}
}

// TestMTProxyFront runs gotd with an "ee" secret against the client's local
// MTProxy front, carried over the TLS carrier to the relay and the DC.
func TestMTProxyFront(t *testing.T) {
	relaytest.CheckLeaks(t)
	dc := telegramtest.StartDC(t, 2)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, []string{"2=" + dc.Addr})
	l, _ := addMTKey(t, r, "alice", access.Entry{})
	c, _ := startClient(t, l, nil)
	front, secret := startFront(t, c)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := telegramtest.RunWithResolver(ctx, dc, gotdMTProxy(t, front, secret), 100)
	if err != nil {
		t.Fatalf("MTProto through the local MTProxy front: %v", err)
	}
	if st.RPCs != 100 {
		t.Fatalf("%d RPCs answered, want 100", st.RPCs)
	}
	t.Logf("key exchange %v, first RPC %v, 100 RPCs in %v", st.KeyExchange, st.FirstRPC, st.Total)
}

// startFront starts c's MTProxy front on 127.0.0.1:0 with a new secret.
func startFront(t testing.TB, c *client.Client) (string, mtproxy.Secret) {
	t.Helper()
	secret, err := mtproxy.NewSecret("front.merpati.test")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.ServeMTProxy(ctx, ln, secret); err != nil {
			t.Errorf("mtproxy front: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ln.Addr().String(), secret
}

// TestMTProxyProbes checks what a prober sees when it sends the relay
// MTProxy-like hellos that must not pass: a replayed hello, one signed
// with a wrong secret, one with a stale timestamp, and random bytes all
// reach the cover site, and none gets a FakeTLS server hello.
func TestMTProxyProbes(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.StartEcho(t)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, []string{"2=" + echo, "10002=" + echo})
	_, s := addMTKey(t, r, "alice", access.Entry{})
	tmpl := mtproxytest.HelloRecord(t, s.Host)

	// A genuine connection, recorded, works: the relay answers with the
	// FakeTLS server hello the app checks (ClientHandshake verifies its
	// HMAC), and the bytes the app sends reach the "DC". (Its echo is no
	// MTProto framing, which the relay now reads, so it is not read back:
	// the MTProto e2e tests carry real traffic.)
	conn, err := net.Dial("tcp", r.Addr)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{Conn: conn}
	app, err := mtproxytest.ClientHandshake(rec, s, tmpl, time.Now(), mtproxy.PaddedIntermediate, 2)
	if err != nil {
		t.Fatalf("genuine MTProxy handshake: %v", err)
	}
	if _, err := app.Write([]byte{4, 0, 0, 0, 'p', 'i', 'n', 'g'}); err != nil {
		t.Fatalf("genuine connection: %v", err)
	}
	if !r.Logs.WaitFor("stream open", 10*time.Second) {
		t.Fatalf("the genuine connection reached no DC:\n%s", r.Logs)
	}
	conn.Close()
	if n := cov.Accepted(); n != 0 {
		t.Fatalf("genuine MTProxy connection went to the cover site (%d)", n)
	}
	replayed := rec.first

	// Media and test DCs, by the numbers apps put in the init: media DC
	// -2 uses DC 2's address, test DC 10002 has its own entry.
	for _, dc := range []int{-2, 10002} {
		c, err := mtDialDC(t, r.Addr, s, tmpl, dc)
		if err != nil {
			t.Fatalf("DC %d: %v", dc, err)
		}
		c.Close()
	}

	sign := func(key mtproxy.Key, at time.Time) []byte {
		b := bytes.Clone(tmpl)
		if err := mtproxytest.SignClientHello(b, key, at); err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		hello []byte
	}{
		{"replay", replayed},
		{"wrong secret", sign(mtproxy.NewKey(), time.Now())},
		{"stale timestamp", sign(s.Key, time.Now().Add(-10*time.Minute))},
		{"future timestamp", sign(s.Key, time.Now().Add(10*time.Minute))},
		{"random bytes", randomBytes(517)},
		{"random record", append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, randomBytes(512)...)},
	} {
		before := cov.Accepted()
		answer := relaytest.RawProbe(t, r.Addr, tc.hello)
		if cov.Accepted() != before+1 {
			t.Errorf("%s: did not reach the cover site", tc.name)
		}
		var random [32]byte
		if len(tc.hello) >= 43 {
			copy(random[:], tc.hello[11:43])
		}
		if err := mtproxytest.ReadServerHello(bytes.NewReader(answer), random, s.Key); !errors.Is(err, mtproxytest.ErrServerHello) {
			t.Errorf("%s: relay answered with a FakeTLS server hello (%v)", tc.name, err)
		}
	}
}

// mtDial makes a genuine MTProxy connection to the relay at addr with s,
// for DC 2, and checks that a byte round-trips through the "DC" (an echo
// server, which returns our DC init first). It returns the conn, or nil
// and the error if the relay did not serve it.
func mtDial(t testing.TB, addr string, s mtproxy.Secret, tmpl []byte) (net.Conn, error) {
	return mtDialDC(t, addr, s, tmpl, 2)
}

// mtDialDC is mtDial to DC dc.
func mtDialDC(t testing.TB, addr string, s mtproxy.Secret, tmpl []byte, dc int) (net.Conn, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	app, err := mtproxytest.ClientHandshake(conn, s, tmpl, time.Now(), mtproxy.Intermediate, dc)
	if err == nil {
		// The echo "DC" returns the relay's DC init and this byte: no
		// MTProto framing, which the relay, reading the DC's framing,
		// passes on as it comes once it sees a length no DC sends (or,
		// rarely, holds the last bytes of): some of it arrives.
		app.Write([]byte{1})
		_, err = io.ReadFull(app, make([]byte, 1))
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return conn, nil
}

// TestMTProxyLimits checks per-key limits in direct mode: max concurrent
// connections, the byte quota, expiry and revocation. A key over its
// limits is sent to the cover site, like a wrong secret.
func TestMTProxyLimits(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.StartEcho(t)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, []string{"2=" + echo})
	tmpl := mtproxytest.HelloRecord(t, relaytest.CoverName)

	_, one := addMTKey(t, r, "one-conn", access.Entry{MaxConns: 1})
	c1, err := mtDial(t, r.Addr, one, tmpl)
	if err != nil {
		t.Fatalf("first connection: %v", err)
	}
	before := cov.Accepted()
	if c, err := mtDial(t, r.Addr, one, tmpl); err == nil {
		c.Close()
		t.Fatal("second concurrent connection allowed with MaxConns 1")
	}
	if cov.Accepted() != before+1 {
		t.Error("connection over MaxConns did not go to the cover site")
	}
	c1.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := mtDial(t, r.Addr, one, tmpl)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection after the first closed: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// One round trip costs 130 bytes (the relay's DC init and our byte,
	// both echoed); the second crosses the quota of 200 and may be cut
	// short.
	_, small := addMTKey(t, r, "small-quota", access.Entry{QuotaBytes: 200})
	if c, err := mtDial(t, r.Addr, small, tmpl); err != nil {
		t.Fatalf("within quota: %v", err)
	} else {
		c.Close()
	}
	if c, err := mtDial(t, r.Addr, small, tmpl); err == nil {
		c.Close()
	}
	for r.Keys.Usage()["small-quota"] < 200 {
		time.Sleep(10 * time.Millisecond)
	}
	before = cov.Accepted()
	if c, err := mtDial(t, r.Addr, small, tmpl); err == nil {
		c.Close()
		t.Error("key over its quota served")
	}
	if cov.Accepted() != before+1 {
		t.Error("connection over quota did not go to the cover site")
	}

	_, old := addMTKey(t, r, "expired", access.Entry{Expires: time.Now().Add(-time.Hour)})
	if c, err := mtDial(t, r.Addr, old, tmpl); err == nil {
		c.Close()
		t.Error("expired key served")
	}

	_, gone := addMTKey(t, r, "revoked", access.Entry{})
	live, err := mtDial(t, r.Addr, gone, tmpl)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := access.Revoke(r.Dir.KeysPath(), "revoked"); err != nil {
		t.Fatal(err)
	}
	// Echoed bytes may still be on their way (see mtDial): read them
	// until the relay closes the connection.
	live.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, live); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("revoked key's live connection not closed: %v", err)
	}
	if c, err := mtDial(t, r.Addr, gone, tmpl); err == nil {
		c.Close()
		t.Error("revoked key served")
	}
}

// randomBytes returns n random bytes whose first is not 0x16, so that the
// relay decides at the first byte that they are no TLS record.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	b[0] = 0x47
	return b
}
