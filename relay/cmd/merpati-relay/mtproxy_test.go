package main

import (
	"encoding/base64"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport/mtproxy"
)

// TestProxyLinks checks that link add and show print the person's
// tg://proxy and https://t.me/proxy links with an "ee" secret for the
// relay's server name, and that --mtproxy-secret takes hex or base64url.
func TestProxyLinks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	if out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "relay.example.net:8443", "--cover", "https://www.example.org"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	secretIn := func(out string) mtproxy.Secret {
		t.Helper()
		m := regexp.MustCompile(`tg://proxy\?\S+`).FindString(out)
		if m == "" || !strings.Contains(out, "https://t.me/proxy?server=relay.example.net&port=8443&secret=ee") {
			t.Fatalf("no proxy links in:\n%s", out)
		}
		u, err := url.Parse(m)
		if err != nil || u.Query().Get("server") != "relay.example.net" || u.Query().Get("port") != "8443" {
			t.Fatalf("tg link %q: %v", m, err)
		}
		s, err := mtproxy.ParseSecret(u.Query().Get("secret"))
		if err != nil || s.Host != "www.example.org" {
			t.Fatalf("secret in %q: %+v %v", m, s, err)
		}
		return s
	}
	out, err := runCmd(t, "link", "add", "alice", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	alice := secretIn(out)
	out, err = runCmd(t, "link", "show", "alice", "--dir", dir)
	if err != nil || secretIn(out) != alice {
		t.Fatalf("show: %v\n%s", err, out)
	}
	for i, in := range []string{base64.RawURLEncoding.EncodeToString(alice.Bytes()), "ee112233445566778899aabbccddeeff00" + "6578616d706c652e636f6d", "ESIzRFVmd4iZqrvM3e7_AA"} {
		name := "p" + string(rune('0'+i))
		out, err := runCmd(t, "link", "add", name, "--dir", dir, "--mtproxy-secret", in)
		if i == 0 {
			if err == nil {
				t.Errorf("a secret already in use was accepted:\n%s", out)
			}
			continue
		}
		if err != nil {
			t.Fatalf("--mtproxy-secret %s: %v\n%s", in, err, out)
		}
		if s := secretIn(out); s.Key.String() != "112233445566778899aabbccddeeff00" {
			t.Errorf("--mtproxy-secret %s: got key %s", in, s.Key)
		}
		runCmd(t, "link", "revoke", name, "--dir", dir)
	}
	if out, err := runCmd(t, "link", "add", "bad", "--dir", dir, "--mtproxy-secret", "zz"); err == nil {
		t.Errorf("bad secret accepted:\n%s", out)
	}
}

// TestLinkAddNoMTProxy: --no-mtproxy makes a key without an MTProxy
// secret: its link works, and no tg://proxy link is printed.
func TestLinkAddNoMTProxy(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	if out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "relay.example.net:443", "--cover", "https://www.example.org"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	out, err := runCmd(t, "link", "add", "plain", "--no-mtproxy", "--dir", dir)
	if err != nil {
		t.Fatalf("link add: %v\n%s", err, out)
	}
	if strings.Contains(out, "tg://proxy") || !strings.Contains(out, "merpati://") {
		t.Errorf("link add --no-mtproxy printed:\n%s", out)
	}
	entries, err := access.Load(filepath.Join(dir, "keys.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name == "plain" && !e.MTProxySecret.IsZero() {
			t.Error("the key has an MTProxy secret")
		}
	}
}
