package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/merpati/merpati/relay/dnsserver"
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
	list := filepath.Join(tmp, "list.bin")
	if out, err := runCmd(t, "list", "sign", "--key", keyFile, "--in", relays, "--seq", "3", "--ttl", "1h", "--out", list); err != nil {
		t.Fatalf("sign: %v\n%s", err, out)
	}
	out, err = runCmd(t, "list", "show", "--in", list, "--lk", lk)
	if err != nil || !strings.Contains(out, "signature: good") || !strings.Contains(out, "relay2.example.net:443") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "list", "sign", "--key", keyFile, "--in", relays, "--seq", "4", "--out", list, "--buckets", "3", "--per-bucket", "1"); err != nil {
		t.Fatalf("sign buckets: %v\n%s", err, out)
	}
	for _, b := range []string{".0", ".1", ".2"} {
		data, err := os.ReadFile(list + b)
		if err != nil {
			t.Fatal(err)
		}
		l, err := relaylist.Decode(data, relaylist.Verify{Key: pub, Now: time.Now()})
		if err != nil || len(l.Entries) != 1 || l.Seq != 4 {
			t.Fatalf("bucket %s: %+v %v", b, l, err)
		}
	}

	// Serve it and ask for the index over UDP and TCP.
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
	data, _ := os.ReadFile(list)
	want := relaylist.IndexOf(data).String()
	for _, network := range []string{"udp", "tcp"} {
		var r *dns.Msg
		for range 50 {
			q := new(dns.Msg)
			q.SetQuestion("_n.b.example.net.", dns.TypeTXT)
			r, _, err = (&dns.Client{Net: network, Timeout: time.Second}).Exchange(q, addr)
			if err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil || len(r.Answer) != 1 || r.Answer[0].(*dns.TXT).Txt[0] != want {
			t.Fatalf("%s: %v %v, want %q", network, r, err, want)
		}
	}
}
