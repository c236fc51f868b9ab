package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/client/bootstrap"
	"github.com/merpati/merpati/relay/dnsserver"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/relaylist"
)

func TestRefresh(t *testing.T) {
	relayLink := testLink()
	relayLink.Relays = []string{"relay2.example.net:443"}
	l, resolver := startBootstrap(t, 2, relayLink)
	dir := t.TempDir()
	var out, errOut syncBuffer
	err := run(context.Background(), []string{"refresh", "--config-dir", dir, "--link", l.String(),
		"--resolvers", resolver}, &out, &errOut)
	if err != nil {
		t.Fatalf("refresh: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "relay2.example.net:443") {
		t.Errorf("output:\n%s", out.String())
	}
	caches, _ := filepath.Glob(filepath.Join(dir, "relays-*.bin"))
	if len(caches) != 1 {
		t.Fatalf("cache files: %v", caches)
	}
	if fi, err := os.Stat(caches[0]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("cache: %v %v", fi, err)
	}
	if err := run(context.Background(), []string{"refresh", "--config-dir", dir, "--link", testLink().String()}, &out, &errOut); err == nil {
		t.Error("refresh without dns= and lk= succeeded")
	}
	// A link of the old format is told what to do.
	l.BootstrapKeys = nil
	err = run(context.Background(), []string{"refresh", "--config-dir", dir, "--link", l.String(),
		"--resolvers", resolver}, &out, &errOut)
	if !errors.Is(err, link.ErrOldBootstrap) {
		t.Errorf("refresh with an old-format link: %v", err)
	}
}

// TestDefaultResolversEncrypted: the resolvers asked when the user names
// none are DoH and DoT only, so that nobody on the path sees the
// bootstrap's queries; they parse, and they are what refresh uses.
func TestDefaultResolversEncrypted(t *testing.T) {
	if len(defaultResolvers) == 0 {
		t.Fatal("no default resolvers")
	}
	for _, r := range defaultResolvers {
		if !strings.HasPrefix(r, "https://") && !strings.HasPrefix(r, "tls://") {
			t.Errorf("default resolver %q is not DNS over HTTPS or TLS", r)
		}
	}
	l := testLink()
	l.Bootstrap, l.ListKey, l.BootstrapKeys = []string{"b.merpati.test"}, make([]byte, 32), [][32]byte{{1}}
	rs, _, err := bootstrapSettings(t.TempDir(), "", l)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rs, defaultResolvers) {
		t.Errorf("refresh without --resolvers asks %v, want the defaults %v", rs, defaultResolvers)
	}
	if _, err := bootstrap.New(bootstrap.Config{Domains: l.Bootstrap, ListKey: ed25519.PublicKey(l.ListKey),
		Keys: l.BootstrapKeys, Resolvers: rs}); err != nil {
		t.Errorf("default resolvers: %v", err)
	}
}

// TestRefreshClockOffset: --clock-offset moves the day whose names are
// asked, and stays out of the usage text.
func TestRefreshClockOffset(t *testing.T) {
	l, resolver := startBootstrap(t, 3, testLink())
	refresh := func(offset string) error {
		var out, errOut syncBuffer
		return run(context.Background(), []string{"refresh", "--config-dir", t.TempDir(), "--link", l.String(),
			"--resolvers", resolver, "--clock-offset", offset}, &out, &errOut)
	}
	// The server answers yesterday's, today's and tomorrow's names.
	if err := refresh("-24h"); err != nil {
		t.Errorf("a day back: %v", err)
	}
	if err := refresh("-72h"); err == nil {
		t.Error("three days back: the list was found")
	}
	var out, errOut syncBuffer
	run(context.Background(), []string{"refresh", "-h"}, &out, &errOut)
	if usage := errOut.String() + out.String(); !strings.Contains(usage, "-resolvers") || strings.Contains(usage, "clock-offset") {
		t.Errorf("usage:\n%s", usage)
	}
}

// startBootstrap serves, on a DNS server on loopback until the test ends,
// a relay list of sequence seq with relay's entry for one audience, and
// returns a link (testLink's) with that bootstrap and the server as a
// --resolvers value.
func startBootstrap(t *testing.T, seq uint64, relay *link.Link) (*link.Link, string) {
	t.Helper()
	pub, priv, _ := ed25519.GenerateKey(nil)
	data, err := relaylist.Sign(&relaylist.List{Seq: seq, Expires: time.Now().Add(time.Hour),
		Entries: []relaylist.Entry{relaylist.FromLink(relay)}}, priv)
	if err != nil {
		t.Fatal(err)
	}
	bk := [32]byte{byte(seq), 7, 7}
	addr := relaytest.StartDNS(t, dnsserver.Config{Zone: "b.merpati.test", Audiences: []dnsserver.Audience{{Key: bk, Lists: [][]byte{data}}}})
	l := testLink()
	l.Bootstrap, l.ListKey, l.BootstrapKeys = []string{"b.merpati.test"}, pub, [][32]byte{bk}
	return l, "udp://" + addr
}
