package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/auth"
)

// labDir makes a relay directory on loopback in front of the cover site at
// coverAddr, with DC 2 pointed at a local echo server, and returns it and
// its listen address.
func labDir(t *testing.T, coverAddr string, args ...string) (dir, listen string) {
	t.Helper()
	echo := relaytest.StartEcho(t)
	listen = freePort(t)
	dir = filepath.Join(t.TempDir(), "relay")
	out, err := runCmd(t, append([]string{"init", "--offline", "--dir", dir, "--public", listen, "--listen", listen,
		"--cover", "https://" + coverAddr, "--sni", relaytest.CoverName, "--dc", "2=" + echo}, args...)...)
	if err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	return dir, listen
}

func doctorCmd(t *testing.T, dir string) (string, error) {
	t.Helper()
	return runCmd(t, "doctor", "--dir", dir, "--timeout", "20s")
}

// hasLine reports whether out has a line of level for check containing
// text.
func hasLine(out, level, check, text string) bool {
	for l := range strings.Lines(out) {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == level && f[1] == check && strings.Contains(l, text) {
			return true
		}
	}
	return false
}

func TestDoctorHealthy(t *testing.T) {
	cover := relaytest.StartCover(t)
	dir, listen := labDir(t, cover.Addr())
	out, err := doctorCmd(t, dir)
	if err != nil || strings.Contains(out, "FAIL") {
		t.Fatalf("doctor on a healthy relay: %v\n%s", err, out)
	}
	t.Logf("doctor:\n%s", out)
	for _, want := range []struct{ level, check, text string }{
		{"OK", "settings", "is valid"},
		{"OK", "files", "private"},
		{"OK", "tokens", "legacy_tokens is off"},
		{"OK", "cover", "TLS 1.3"},
		{"OK", "quic", "QUIC carrier on"},
		{"OK", "clock", "within"},
		{"OK", "public", listen + " is this host"},
		{"OK", "dc", "DC 2 answers at 127.0.0.1:"},
		{"OK", "dc", "not checked (add --dial-telegram"},
		{"OK", "listen", listen + "/tcp is free"},
		{"OK", "listen", listen + "/udp is free"},
	} {
		if !hasLine(out, want.level, want.check, want.text) {
			t.Errorf("no %s %s line with %q:\n%s", want.level, want.check, want.text, out)
		}
	}
	if t.Failed() {
		return
	}

	// The listen port taken by something else.
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	out, err = doctorCmd(t, dir)
	ln.Close()
	if err == nil || !hasLine(out, "FAIL", "listen", listen+"/tcp is taken") {
		t.Errorf("doctor with the listen port taken: %v\n%s", err, out)
	}

	// The relay itself running.
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "--dir", dir}, &logs, &logs) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v\n%s", err, logs.String())
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := queryStatus(dir); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay did not start:\n%s", logs.String())
		}
	}
	out, err = doctorCmd(t, dir)
	if err != nil || !hasLine(out, "OK", "listen", "served by the running relay") {
		t.Errorf("doctor with the relay running: %v\n%s", err, out)
	}
}

func TestDoctorCoverDown(t *testing.T) {
	dir, _ := labDir(t, freePort(t)) // nothing listens there
	out, err := doctorCmd(t, dir)
	if err == nil || !hasLine(out, "FAIL", "cover", "did not answer a Chrome hello") {
		t.Errorf("doctor with the cover site down: %v\n%s", err, out)
	}
	if !hasLine(out, "WARN", "clock", "not checked") {
		t.Errorf("clock line with the cover site down:\n%s", out)
	}
}

func TestDoctorQUICMismatch(t *testing.T) {
	t.Run("cover serves HTTP/3, no_quic set", func(t *testing.T) {
		dir, _ := labDir(t, relaytest.StartCover(t).Addr(), "--quic", "off")
		out, err := doctorCmd(t, dir)
		if err != nil || !hasLine(out, "WARN", "quic", `remove "no_quic"`) {
			t.Errorf("%v\n%s", err, out)
		}
	})
	t.Run("cover serves no HTTP/3, QUIC on", func(t *testing.T) {
		dir, _ := labDir(t, relaytest.StartCoverTCPOnly(t).Addr(), "--quic", "on")
		out, err := doctorCmd(t, dir)
		if err != nil || !hasLine(out, "WARN", "quic", `set "no_quic": true`) {
			t.Errorf("%v\n%s", err, out)
		}
	})
}

func TestDoctorKeyPermissions(t *testing.T) {
	dir, _ := labDir(t, relaytest.StartCoverTCPOnly(t).Addr(), "--quic", "off")
	key := filepath.Join(dir, relay.KeyFile)
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := doctorCmd(t, dir)
	if err == nil || !hasLine(out, "FAIL", "files", "chmod 600 "+key) {
		t.Errorf("doctor with key.pem 0644: %v\n%s", err, out)
	}
	// The other checks still ran.
	if !hasLine(out, "OK", "cover", "TLS 1.3") {
		t.Errorf("cover not checked:\n%s", out)
	}
}

func TestDoctorBadDir(t *testing.T) {
	out, err := doctorCmd(t, t.TempDir())
	if err == nil || !hasLine(out, "FAIL", "settings", "init") {
		t.Errorf("doctor on an empty directory: %v\n%s", err, out)
	}
}

func TestDoctorUDPBuffers(t *testing.T) {
	old := procNetCore
	t.Cleanup(func() { procNetCore = old })
	procNetCore = t.TempDir()
	os.WriteFile(filepath.Join(procNetCore, "rmem_max"), []byte("212992\n"), 0o644)
	os.WriteFile(filepath.Join(procNetCore, "wmem_max"), []byte("7500000\n"), 0o644)
	var buf bytes.Buffer
	doc := &doctor{w: &buf, timeout: time.Second}
	doc.checkUDPBuffers(&relay.Settings{})
	out := buf.String()
	if !hasLine(out, "WARN", "udp", "sysctl -w net.core.rmem_max=7500000") || !hasLine(out, "OK", "udp", "net.core.wmem_max = 7500000") {
		t.Errorf("QUIC on:\n%s", out)
	}
	buf.Reset()
	doc.checkUDPBuffers(&relay.Settings{NoQUIC: true})
	if strings.Contains(buf.String(), "WARN") {
		t.Errorf("QUIC off:\n%s", buf.String())
	}
	if doc.fails != 0 {
		t.Errorf("%d fails", doc.fails)
	}
}

func TestDoctorClockSkew(t *testing.T) {
	skew := 5 * time.Minute
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", time.Now().Add(-skew).UTC().Format(http.TimeFormat))
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	got, err := clockSkew(context.Background(), addr, "cover.example")
	if err != nil || got < skew-5*time.Second || got > skew+5*time.Second {
		t.Errorf("clockSkew = %v, %v; want about %v", got, err, skew)
	}
	var buf bytes.Buffer
	doc := &doctor{w: &buf, timeout: 20 * time.Second}
	doc.checkClock(context.Background(), &relay.Settings{Cover: "https://" + addr, SNI: "cover.example"})
	// The Date header counts whole seconds: 4m59s is 5 minutes too.
	m := regexp.MustCompile(`clock is (\S+) off`).FindStringSubmatch(buf.String())
	var said time.Duration
	if m != nil {
		said, _ = time.ParseDuration(m[1])
	}
	if !hasLine(buf.String(), "WARN", "clock", " off the cover site") || said < skew-5*time.Second || said > skew+5*time.Second {
		t.Errorf("5 minutes of skew:\n%s", buf.String())
	}
}

func TestDoctorPublic(t *testing.T) {
	var buf bytes.Buffer
	doc := &doctor{w: &buf, timeout: 20 * time.Second}
	// IP literals only: no name is looked up.
	doc.checkPublic(context.Background(), &relay.Settings{Public: []string{"192.0.2.1:443", "127.0.0.1:443"}})
	out := buf.String()
	if !hasLine(out, "WARN", "public", "192.0.2.1:443") || !strings.Contains(out, "NAT") || !hasLine(out, "OK", "public", "127.0.0.1:443 is this host") {
		t.Errorf("public addresses:\n%s", out)
	}
}

// TestDoctorTokens: doctor says whether plain tokens make a hello's check
// grow with the number of keys, and warns past legacyWarnKeys.
func TestDoctorTokens(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	if out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "relay.example.net:443", "--cover", "https://www.example.org"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	d, err := relay.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	check := func() string {
		var out bytes.Buffer
		(&doctor{w: &out}).checkTokens(d)
		return out.String()
	}
	if out := check(); !hasLine(out, "OK", "tokens", "legacy_tokens is off") {
		t.Errorf("a new relay (legacy_tokens false):\n%s", out)
	}
	on := true
	d.Settings.LegacyTokens = &on
	for _, tc := range []struct {
		keys        int
		level, text string
	}{
		{legacyWarnKeys, "OK", fmt.Sprintf("legacy_tokens is on with %d keys", legacyWarnKeys)},
		{legacyWarnKeys + 1, "WARN", fmt.Sprintf("legacy_tokens is on (absent means on) with %d keys", legacyWarnKeys+1)},
	} {
		entries := make([]access.Entry, tc.keys)
		for i := range entries {
			entries[i] = access.Entry{Name: fmt.Sprint("k", i), Key: auth.NewKey()}
		}
		if err := access.Save(d.KeysPath(), entries); err != nil {
			t.Fatal(err)
		}
		if out := check(); !hasLine(out, tc.level, "tokens", tc.text) {
			t.Errorf("%d keys, legacy_tokens on: want a %s line with %q:\n%s", tc.keys, tc.level, tc.text, out)
		}
	}
}
