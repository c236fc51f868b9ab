package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/merpati/merpati/relay/dnsserver"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/relaylist"
)

// TestListFlow: keygen, add relays from a relay directory, sign, show,
// and serve the list over DNS.
func TestListFlow(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "relay")
	if out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "relay.example.net:443"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "link", "add", "audience", "--dir", dir); err != nil {
		t.Fatalf("link add: %v\n%s", err, out)
	}
	keyFile := filepath.Join(tmp, "list.key")
	out, err := runCmd(t, "list", "keygen", "--out", keyFile)
	if err != nil {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	lk := lines[len(lines)-1]
	pub, err := base64.RawURLEncoding.DecodeString(lk)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		t.Fatalf("public key %q: %v", lk, err)
	}
	if _, err := runCmd(t, "list", "keygen", "--out", keyFile); err == nil {
		t.Error("keygen overwrote a key")
	}
	if out, err := runCmd(t, "list", "pub", "--key", keyFile); err != nil || strings.TrimSpace(out) != lk {
		t.Errorf("pub: %q %v, want %s", out, err, lk)
	}

	relays := filepath.Join(tmp, "relays.json")
	if out, err := runCmd(t, "list", "add", "--in", relays, "--dir", dir, "--name", "audience"); err != nil {
		t.Fatalf("add: %v\n%s", err, out)
	}
	other := "merpati://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@relay2.example.net:443?pin=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8&sni=www.example.com&c=tls#two"
	if out, err := runCmd(t, "list", "add", "--in", relays, "--link", other); err != nil || !strings.Contains(out, "2 relays") {
		t.Fatalf("add link: %v\n%s", err, out)
	}
	audFile := filepath.Join(tmp, "audience.pem")
	out, err = runCmd(t, "list", "audience", "--out", audFile)
	if err != nil {
		t.Fatalf("audience: %v\n%s", err, out)
	}
	if fi, err := os.Stat(audFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("audience file: %v %v", fi, err)
	}
	lines = strings.Split(strings.TrimSpace(out), "\n")
	bk, err := base64.RawURLEncoding.DecodeString(lines[len(lines)-1])
	if err != nil || len(bk) != 32 {
		t.Fatalf("bootstrap key %q: %v", lines[len(lines)-1], err)
	}
	if _, err := runCmd(t, "list", "audience", "--out", audFile); err == nil {
		t.Error("audience overwrote a key")
	}
	list := filepath.Join(tmp, "list.pem")
	if out, err := runCmd(t, "list", "sign", "--key", keyFile, "--in", relays, "--seq", "3", "--ttl", "1h", "--out", list); err == nil {
		t.Fatalf("sign without --audience succeeded:\n%s", out)
	}
	if out, err := runCmd(t, "list", "sign", "--key", keyFile, "--audience", audFile, "--in", relays, "--seq", "3", "--ttl", "1h", "--out", list); err != nil {
		t.Fatalf("sign: %v\n%s", err, out)
	}
	if fi, err := os.Stat(list); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("list file: %v %v", fi, err)
	}
	out, err = runCmd(t, "list", "show", "--in", list, "--lk", lk)
	if err != nil || !strings.Contains(out, "signature: good") || !strings.Contains(out, "relay2.example.net:443") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "list", "sign", "--key", keyFile, "--audience", audFile, "--in", relays, "--seq", "4", "--out", list, "--buckets", "3", "--per-bucket", "1"); err != nil {
		t.Fatalf("sign buckets: %v\n%s", err, out)
	}
	for _, b := range []string{".0", ".1", ".2"} {
		data, err := os.ReadFile(list + b)
		if err != nil {
			t.Fatal(err)
		}
		bundle, err := relaylist.ParseBundle(data)
		if err != nil || !bytes.Equal(bundle.Key[:], bk) {
			t.Fatalf("bucket %s: %v", b, err)
		}
		l, err := relaylist.Decode(bundle.List, relaylist.Verify{Key: pub, Now: time.Now()})
		if err != nil || len(l.Entries) != 1 || l.Seq != 4 {
			t.Fatalf("bucket %s: %+v %v", b, l, err)
		}
	}

	// share adds the bootstrap fields to a link.
	out, err = runCmd(t, "list", "share", "--link", other, "--zone", "b.example.net", "--key", keyFile, "--audience", audFile)
	if err != nil {
		t.Fatalf("share: %v\n%s", err, out)
	}
	shared, err := link.Parse(strings.TrimSpace(out))
	if err != nil || shared.CheckBootstrap() != nil || !bytes.Equal(shared.ListKey, pub) || !bytes.Equal(shared.BootstrapKeys[0][:], bk) {
		t.Fatalf("shared link %q: %v", out, err)
	}

	// An old-format list file is refused with what to do.
	oldList := filepath.Join(tmp, "old.bin")
	bundle, _ := relaylist.ParseBundle(mustRead(t, list))
	os.WriteFile(oldList, bundle.List, 0o600)
	var oldOut bytes.Buffer
	if err := run(context.Background(), []string{"dns", "--zone", "b.example.net", "--list", oldList, "--listen", "127.0.0.1:0"}, &oldOut, &oldOut); !errors.Is(err, relaylist.ErrOldList) {
		t.Errorf("dns with an old-format list: %v", err)
	}

	// Serve it and ask for today's chunk 0 over UDP and TCP: it opens with
	// the audience's key.
	pc, ln, err := dnsserver.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var errOut bytes.Buffer
	wg.Go(func() {
		if err := run(ctx, []string{"dns", "--zone", "b.example.net", "--list", list, "--listen", addr,
			"--ns", "ns1.b.example.net", "--ns-addr", "127.0.0.1"}, &errOut, &errOut); err != nil {
			t.Errorf("dns: %v", err)
		}
	})
	defer func() { cancel(); wg.Wait() }()
	aud := relaylist.NewAudience([32]byte(bk))
	p := relaylist.PeriodOf(time.Now())
	for _, network := range []string{"udp", "tcp"} {
		var r *dns.Msg
		for range 50 {
			q := new(dns.Msg)
			q.SetQuestion(aud.Name(p, 0, "b.example.net"), dns.TypeTXT)
			q.SetEdns0(1232, false)
			r, _, err = (&dns.Client{Net: network, Timeout: time.Second}).Exchange(q, addr)
			if err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil || len(r.Answer) != 1 {
			t.Fatalf("%s: %v %v", network, r, err)
		}
		c, err := relaylist.DecodeTXT(r.Answer[0].(*dns.TXT).Txt)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := aud.Count(p, c); err != nil || n < 1 {
			t.Fatalf("%s: chunk 0 does not open with the audience key: %d, %v", network, n, err)
		}
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
