package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/dnsserver"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/relaylist"
)

// testBootKey is the audience bootstrap key of the tests' lists.
var testBootKey = [link.BootstrapKeySize]byte{1, 2, 3, 4, 5, 6, 7, 8, 9}

// startListDNS serves list for zone, sealed for testBootKey's audience,
// on a loopback port (UDP and TCP) with the relay's DNS server, as
// `merpati-relay dns` would, and returns the address.
func startListDNS(t testing.TB, zone string, list []byte) string {
	t.Helper()
	return relaytest.StartDNS(t, dnsserver.Config{Zone: zone, Audiences: []dnsserver.Audience{{Key: testBootKey, Lists: [][]byte{list}}},
		Logger: relaytest.Logger(t, "dns")})
}

// TestBootstrapE2E: the only relay in the user's link is dead (a closed
// port); the client learns a second, working relay from the signed list
// over DNS, and the echo stream goes through it.
func TestBootstrapE2E(t *testing.T) {
	relaytest.CheckLeaks(t)
	cov := relaytest.StartCover(t)
	alive := startRelay(t, cov, nil)
	good := alive.AddKey(t, "list-audience", access.Entry{})
	echo := relaytest.StartEcho(t)
	host, port, _ := net.SplitHostPort(echo)
	p, _ := strconv.Atoi(port)

	// The operator signs a list naming the working relay.
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	const zone = "boot.merpati.test"
	list, err := relaylist.Sign(&relaylist.List{
		Seq:     1,
		Expires: time.Now().Add(time.Hour),
		Entries: []relaylist.Entry{relaylist.FromLink(good)},
	}, priv)
	if err != nil {
		t.Fatal(err)
	}
	dnsAddr := startListDNS(t, zone, list)

	// The user's link names only a dead relay.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	l := *good
	l.Relays = []string{dead}
	l.Carriers = []string{link.CarrierTLS}
	l.Bootstrap = []string{zone}
	l.ListKey = pub
	l.BootstrapKeys = [][link.BootstrapKeySize]byte{testBootKey}
	cache := filepath.Join(t.TempDir(), "relays.bin")
	c, _ := startClient(t, &l, func(cfg *client.Config) {
		cfg.Resolvers = []string{"udp://" + dnsAddr}
		cfg.ListCache = cache
	})

	start := time.Now()
	st, err := c.OpenStream(context.Background(), transport.AddrTarget(host, uint16(p)))
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	msg := []byte("hello through a relay learned over DNS")
	if _, err := st.Write(msg); err != nil {
		t.Fatal(err)
	}
	st.CloseWrite()
	got, err := io.ReadAll(st)
	st.Close()
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %q, %v", got, err)
	}
	took := time.Since(start)
	if a := c.Active(); a == nil || a.Relay != alive.Addr {
		t.Fatalf("active relay %+v, want %s", a, alive.Addr)
	}
	t.Logf("dead relay → DNS bootstrap → echo through %s: %v", alive.Addr, took)
	if took > 5*time.Second {
		t.Errorf("bootstrap took %v", took)
	}
	if _, err := os.Stat(cache); err != nil {
		t.Fatalf("list not cached: %v", err)
	}

	// A new client starts from the cache, with DNS gone.
	c2, _ := startClient(t, &l, func(cfg *client.Config) {
		cfg.Resolvers = []string{"udp://" + dead}
		cfg.ListCache = cache
	})
	st, err = c2.OpenStream(context.Background(), transport.AddrTarget(host, uint16(p)))
	if err != nil {
		t.Fatalf("from cache: %v", err)
	}
	st.Close()
}

// TestRefresh fetches the list on demand.
func TestRefresh(t *testing.T) {
	relaytest.CheckLeaks(t)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, nil)
	good := r.AddKey(t, "a", access.Entry{})
	pub, priv, _ := ed25519.GenerateKey(nil)
	list, err := relaylist.Sign(&relaylist.List{Seq: 4, Expires: time.Now().Add(time.Hour),
		Entries: []relaylist.Entry{relaylist.FromLink(good)}}, priv)
	if err != nil {
		t.Fatal(err)
	}
	addr := startListDNS(t, "r.merpati.test", list)
	l := *good
	l.Bootstrap, l.ListKey = []string{"r.merpati.test"}, pub
	l.Relays = []string{"127.0.0.1:1"}
	l.BootstrapKeys = [][link.BootstrapKeySize]byte{{9, 9, 9}, testBootKey} // the first is another audience's
	c, _ := startClient(t, &l, func(cfg *client.Config) { cfg.Resolvers = []string{addr} })
	got, n, err := c.Refresh(context.Background())
	if err != nil || got.Seq != 4 || n == 0 {
		t.Fatalf("Refresh: %+v, %d, %v", got, n, err)
	}
	// A link of the old format (no bk=) is told what to do.
	old := l
	old.BootstrapKeys = nil
	c3, _ := startClient(t, &old, func(cfg *client.Config) { cfg.Resolvers = []string{addr} })
	if _, _, err := c3.Refresh(context.Background()); !errors.Is(err, client.ErrNoBootstrap) || !errors.Is(err, link.ErrOldBootstrap) {
		t.Fatalf("Refresh with an old-format link: %v", err)
	}
	c2, _ := startClient(t, good, nil)
	if _, _, err := c2.Refresh(context.Background()); err != client.ErrNoBootstrap {
		t.Fatalf("Refresh without bootstrap: %v", err)
	}
}
