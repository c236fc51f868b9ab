package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/link"
)

// TestInitQUICAuto: init without --offline (--quic auto, the default)
// makes one QUIC handshake with the cover site. In front of a cover site
// without HTTP/3 it turns the QUIC carrier off — "no_quic": true in
// relay.json, links offering TLS only — and says so; in front of one with
// HTTP/3 the links offer both carriers. When the cover site has lost
// HTTP/3 since init, run keeps the relay's UDP port closed, as the cover
// site's is (ICMP port unreachable), logs why and what to do, and still
// serves the TLS carrier; relay.json and the links stay as they were
// (run changes no file), which the test logs.
func TestInitQUICAuto(t *testing.T) {
	initRelay := func(t *testing.T, cov relaytest.CoverSite) (dir, addr, out string, l *link.Link, s relay.Settings) {
		t.Helper()
		addr = freePort(t)
		dir = filepath.Join(t.TempDir(), "relay")
		out, err := runCmd(t, "init", "--dir", dir, "--public", addr, "--listen", addr,
			"--cover", "https://"+cov.Addr(), "--sni", relaytest.CoverName)
		if err != nil {
			t.Fatalf("init: %v\n%s", err, out)
		}
		b, err := os.ReadFile(filepath.Join(dir, relay.SettingsFile))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		var raw map[string]any
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatal(err)
		}
		if s.NoQUIC != (raw["no_quic"] == true) {
			t.Errorf("relay.json: no_quic %v, parsed as NoQUIC %v", raw["no_quic"], s.NoQUIC)
		}
		return dir, addr, out, linkIn(t, out), s
	}
	wantCarriers := func(t *testing.T, what string, got []string, want ...string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Errorf("%s offers carriers %v, want %v", what, got, want)
		}
	}

	t.Run("no HTTP/3", func(t *testing.T) {
		cov := relaytest.StartCoverTCPOnly(t)
		dir, _, out, l, s := initRelay(t, cov)
		if !s.NoQUIC {
			t.Errorf("relay.json: no_quic false in front of a cover site without HTTP/3")
		}
		if !strings.Contains(out, "does not serve HTTP/3") {
			t.Errorf("init did not say why the QUIC carrier is off:\n%s", out)
		}
		wantCarriers(t, "init's link", l.Carriers, link.CarrierTLS)
		out, err := runCmd(t, "link", "show", "owner", "--dir", dir)
		if err != nil {
			t.Fatalf("link show: %v\n%s", err, out)
		}
		wantCarriers(t, "link show's link", linkIn(t, out).Carriers, link.CarrierTLS)
	})

	t.Run("HTTP/3", func(t *testing.T) {
		cov := relaytest.StartCover(t)
		dir, addr, out, l, s := initRelay(t, cov)
		if s.NoQUIC {
			t.Errorf("relay.json: no_quic true in front of a cover site with HTTP/3\n%s", out)
		}
		wantCarriers(t, "init's link", l.Carriers, link.CarrierTLS, link.CarrierQUIC)

		// The cover site loses HTTP/3 before the relay starts.
		cov.StopHTTP3()
		if !relaytest.UDPClosed(cov.Addr()) {
			t.Fatal("the cover site's UDP port is not closed after StopHTTP3")
		}
		logs := startRun(t, "--dir", dir)
		// run decides on the QUIC carrier after its TLS listener is up:
		// it either turns it off, with a reason, or listens.
		const off, on = "QUIC carrier off", "transport=quic"
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if l := logs.String(); strings.Contains(l, off) || strings.Contains(l, on) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("run logged neither %q nor %q", off, on)
			}
		}
		if !relaytest.UDPClosed(addr) {
			t.Errorf("the relay's UDP port %s answers where the cover site's is closed", addr)
		}
		if !strings.Contains(logs.String(), off) {
			t.Errorf("run did not log %q", off)
		}
		tl := *l
		tl.Carriers = []string{link.CarrierTLS}
		if _, err := relaytest.Session(t, &tl, link.CarrierTLS); err != nil {
			t.Errorf("TLS carrier: %v", err)
		}
		out, err := runCmd(t, "link", "show", "owner", "--dir", dir)
		if err != nil {
			t.Fatalf("link show: %v\n%s", err, out)
		}
		// The running relay says so, and links made meanwhile skip QUIC.
		wantCarriers(t, "link show's link with QUIC off", linkIn(t, out).Carriers, link.CarrierTLS)
		if !strings.Contains(out, "QUIC carrier off") {
			t.Errorf("link show does not say the QUIC carrier is off:\n%s", out)
		}
		out, err = runCmd(t, "status", "--dir", dir)
		if err != nil || !strings.Contains(out, "QUIC carrier off: the cover site does not serve HTTP/3") {
			t.Errorf("status does not say the QUIC carrier is off: %v\n%s", err, out)
		}
	})
}
