package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/dnsserver"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/relaylist"
)

func TestRefresh(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	relayLink := testLink()
	relayLink.Relays = []string{"relay2.example.net:443"}
	data, err := relaylist.Sign(&relaylist.List{Seq: 2, Expires: time.Now().Add(time.Hour),
		Entries: []relaylist.Entry{relaylist.FromLink(relayLink)}}, priv)
	if err != nil {
		t.Fatal(err)
	}
	bk := [32]byte{7, 7, 7}
	s, err := dnsserver.New(dnsserver.Config{Zone: "b.merpati.test", Audiences: []dnsserver.Audience{{Key: bk, Lists: [][]byte{data}}}})
	if err != nil {
		t.Fatal(err)
	}
	pc, ln, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { s.Serve(ctx, pc, ln) })
	defer func() { cancel(); wg.Wait() }()

	l := testLink()
	l.Bootstrap, l.ListKey, l.BootstrapKeys = []string{"b.merpati.test"}, pub, [][32]byte{bk}
	dir := t.TempDir()
	var out, errOut syncBuffer
	err = run(context.Background(), []string{"refresh", "--config-dir", dir, "--link", l.String(),
		"--resolvers", "udp://" + pc.LocalAddr().String()}, &out, &errOut)
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
		"--resolvers", "udp://" + pc.LocalAddr().String()}, &out, &errOut)
	if !errors.Is(err, link.ErrOldBootstrap) {
		t.Errorf("refresh with an old-format link: %v", err)
	}
}
