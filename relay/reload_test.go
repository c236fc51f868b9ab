package relay_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
)

// editSettings rewrites the relay.json of the relay directory at dir with
// edit applied.
func editSettings(t *testing.T, dir string, edit func(s *relay.Settings)) {
	t.Helper()
	path := filepath.Join(dir, relay.SettingsFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s relay.Settings
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	edit(&s)
	if b, err = json.Marshal(s); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// startNamed starts a server that sends name, then echoes: a datacenter
// that says which it is.
func startNamed(t *testing.T, name string) string {
	return relaytest.StartServer(t, func(c net.Conn) {
		c.Write([]byte(name))
		relaytest.ServeEcho(c)
	})
}

// openNamed opens a stream to target on s and returns it with the name its
// server sent.
func openNamed(t *testing.T, s transport.Session, target transport.Target) (transport.Stream, string) {
	t.Helper()
	st, err := relaytest.Open(s, target)
	if err != nil {
		t.Fatalf("stream to %v: %v", target, err)
	}
	st.SetDeadline(time.Now().Add(30 * time.Second))
	name := make([]byte, 1)
	if _, err := io.ReadFull(st, name); err != nil {
		t.Fatalf("stream to %v: %v", target, err)
	}
	return st, string(name)
}

// pingStream checks that st, to an echo server, still carries bytes both
// ways.
func pingStream(t *testing.T, st transport.Stream) {
	t.Helper()
	msg := []byte("still there?")
	if _, err := st.Write(msg); err != nil {
		t.Fatalf("stream open across the reload: write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(st, got); err != nil || string(got) != string(msg) {
		t.Fatalf("stream open across the reload: read %q, %v", got, err)
	}
}

// TestReloadTable: a datacenter override and an allowed range changed in
// relay.json apply on reload to new streams, while a stream open across
// the reload keeps its connection; changes that are invalid are refused,
// and the table in force keeps working; a changed listen address is left
// for a restart, and public needs none.
func TestReloadTable(t *testing.T) {
	relaytest.ForEachCarrier(t, func(t *testing.T, carrier string) {
		a, b := startNamed(t, "A"), startNamed(t, "B")
		other := relaytest.Target(t, startNamed(t, "C"))
		cov := relaytest.StartCover(t)
		r := relaytest.Start(t, cov, relaytest.Options{DC: []string{"2=" + a}})
		s, err := relaytest.Session(t, r.AddKey(t, "alice", access.Entry{}), carrier)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		old, name := openNamed(t, s, transport.DCTarget(2))
		defer old.Close()
		if name != "A" {
			t.Fatalf("DC 2 before the reload reached %s, want A", name)
		}
		st, _ := openNamed(t, s, other) // allowed: 127.0.0.0/8
		st.Close()

		ctx := t.Context()
		editSettings(t, r.Dir.Path, func(s *relay.Settings) {
			s.DC = []string{"2=" + b}
			s.Allow = nil
			s.Listen = "127.0.0.1:1"
			s.Public = append(s.Public, "relay.example.net:443")
		})
		inForce, err := r.Relay.ReloadDir(ctx, r.Dir)
		if err != nil {
			t.Fatalf("reload: %v", err)
		}
		if inForce.Settings.Listen != r.Dir.Settings.Listen || len(inForce.Settings.Public) != 2 {
			t.Errorf("settings in force after the reload: listen %q (want the old %q, until a restart), public %q",
				inForce.Settings.Listen, r.Dir.Settings.Listen, inForce.Settings.Public)
		}
		for _, want := range []string{
			`relay.json reloaded and applied" applied=dc,allow`,
			`"listen changed in relay.json: it needs a restart`,
			`"public changed in relay.json: it needs no restart`,
		} {
			if r.Logs.Count(want) != 1 {
				t.Errorf("the relay did not log %s:\n%s", want, r.Logs)
			}
		}
		st, name = openNamed(t, s, transport.DCTarget(2))
		st.Close()
		if name != "B" {
			t.Errorf("DC 2 after the reload reached %s, want B", name)
		}
		pingStream(t, old)
		if _, err := relaytest.Open(s, other); !isStatus(err, transport.StatusNotAllowed) {
			t.Errorf("target of an allowed range removed on reload: %v, want %v", err, transport.StatusNotAllowed)
		}

		// Invalid settings: refused, with the reason, and the table in
		// force stays.
		for _, bad := range []struct {
			edit func(s *relay.Settings)
			why  string
		}{
			{func(s *relay.Settings) { s.DC = []string{"2=" + a, "2=dc2.example.net:443"} }, "dc"},
			{func(s *relay.Settings) { s.DC = []string{"2=" + a}; s.Allow = []string{"0.0.0.0/0"} }, "open proxy"},
			{func(s *relay.Settings) { s.DC = []string{"2=" + a}; s.Cover = "http://plain.example" }, "cover"},
		} {
			editSettings(t, r.Dir.Path, bad.edit)
			got, err := r.Relay.ReloadDir(ctx, inForce)
			if err == nil || !strings.Contains(err.Error(), bad.why) || got != inForce {
				t.Errorf("invalid settings (%s): reload returned %v, %v; want an error naming it and the settings in force",
					bad.why, got, err)
			}
		}
		if err := os.WriteFile(filepath.Join(r.Dir.Path, relay.SettingsFile), []byte(`{"listen": ":443", "dcs": []}`), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Relay.ReloadDir(ctx, inForce); err == nil || !strings.Contains(err.Error(), `unknown field "dcs"`) {
			t.Errorf("relay.json with an unknown field: reload returned %v", err)
		}
		st, name = openNamed(t, s, transport.DCTarget(2))
		st.Close()
		if name != "B" {
			t.Errorf("DC 2 after refused reloads reached %s, want B", name)
		}
		pingStream(t, old)
	})
}

// TestReloadCover: a new cover site applies on reload to the connections
// that do not authenticate, on TCP and on UDP (QUIC), while key holders'
// sessions go on; a cover site that does not answer, or lacks HTTP/3 while
// the QUIC carrier runs, is refused and the old one stays.
func TestReloadCover(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.StartEcho(t)
	covA, covB := relaytest.StartCover(t), relaytest.StartCover(t)
	r := relaytest.Start(t, covA, relaytest.Options{DC: []string{"2=" + echo}})
	l := r.AddKey(t, "alice", access.Entry{})
	sessions := map[string]transport.Session{}
	for _, carrier := range relaytest.Carriers {
		s, err := relaytest.Session(t, l, carrier)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sessions[carrier] = s
	}

	// probe probes the relay over TCP and UDP and reports which cover
	// sites the probes reached.
	probe := func(t *testing.T) (a, b bool) {
		t.Helper()
		a0, b0, aq, bq := covA.Accepted(), covB.Accepted(), covA.AcceptedQUIC(), covB.AcceptedQUIC()
		relaytest.TLSProbe(t, r.Addr)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		if _, err := relaytest.ProbeQUIC(ctx, r.Addr); err != nil {
			t.Fatalf("QUIC probe: %v", err)
		}
		tcpA, tcpB := covA.Accepted() > a0, covB.Accepted() > b0
		udpA, udpB := covA.AcceptedQUIC() > aq, covB.AcceptedQUIC() > bq
		if tcpA != udpA || tcpB != udpB {
			t.Errorf("TCP probe reached cover A %v, B %v; QUIC probe A %v, B %v", tcpA, tcpB, udpA, udpB)
		}
		return tcpA, tcpB
	}
	if a, b := probe(t); !a || b {
		t.Fatalf("before the reload, probes reached cover A %v, B %v", a, b)
	}

	editSettings(t, r.Dir.Path, func(s *relay.Settings) { s.Cover = "https://" + covB.Addr() })
	inForce, err := r.Relay.ReloadDir(t.Context(), r.Dir)
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if r.Logs.Count(`applied=cover`) != 1 || r.Logs.Count("cover site changed") != 1 {
		t.Errorf("the relay's log says nothing of the new cover site:\n%s", r.Logs)
	}
	if a, b := probe(t); a || !b {
		t.Errorf("after the reload, probes reached cover A %v, B %v; want B only", a, b)
	}
	for carrier, s := range sessions {
		st, err := relaytest.Open(s, transport.DCTarget(2))
		if err != nil {
			t.Fatalf("%s session across the reload: %v", carrier, err)
		}
		if err := echoStream(st, 1000); err != nil {
			t.Errorf("%s session across the reload: %v", carrier, err)
		}
		st.Close()
	}

	// A cover site without HTTP/3 (its UDP port closed) behind a relay
	// whose QUIC carrier runs, and one that is down: refused.
	tcpOnly := relaytest.StartCoverTCPOnly(t)
	down, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	downAddr := down.Addr().String()
	down.Close()
	for _, bad := range []struct{ addr, why string }{
		{tcpOnly.Addr(), "HTTP/3"},
		{downAddr, "did not complete a TLS handshake"},
	} {
		editSettings(t, r.Dir.Path, func(s *relay.Settings) { s.Cover = "https://" + bad.addr })
		got, err := r.Relay.ReloadDir(t.Context(), inForce)
		if err == nil || !strings.Contains(err.Error(), bad.why) || got != inForce {
			t.Errorf("cover %s: reload returned %v; want an error saying %q", bad.addr, err, bad.why)
		}
	}
	checked := tcpOnly.Accepted() // the relay's own check
	if a, b := probe(t); a || !b {
		t.Errorf("after refused reloads, probes reached cover A %v, B %v; want B only", a, b)
	}
	if n := tcpOnly.Accepted() - checked; n != 0 {
		t.Errorf("a refused cover site got %d prober connections", n)
	}
}

// TestReloadLegacyTokens: legacy_tokens set false on reload turns away
// links without "ak" at once, and set back true lets them in again.
func TestReloadLegacyTokens(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.Target(t, relaytest.StartEcho(t))
	cov := relaytest.StartCover(t)
	r := relaytest.Start(t, cov, relaytest.Options{})
	l := r.AddKey(t, "old", access.Entry{})
	l.AuthKey = nil // a link from before sealed tokens
	inForce := r.Dir
	set := func(v bool) {
		t.Helper()
		editSettings(t, r.Dir.Path, func(s *relay.Settings) { s.LegacyTokens = &v })
		var err error
		if inForce, err = r.Relay.ReloadDir(t.Context(), inForce); err != nil {
			t.Fatal(err)
		}
	}
	try := func() error {
		s, err := relaytest.Session(t, l, link.CarrierTLS)
		if err == nil {
			defer s.Close()
			var st transport.Stream
			if st, err = relaytest.Open(s, echo); err == nil {
				st.Close()
			}
		}
		return err
	}
	if err := try(); !errors.Is(err, transport.ErrKeyRefused) {
		t.Fatalf("legacy_tokens false at the start: an old link's session: %v, want ErrKeyRefused", err)
	}
	set(true)
	if err := try(); err != nil {
		t.Errorf("legacy_tokens true on reload: an old link's session: %v", err)
	}
	set(false)
	if err := try(); !errors.Is(err, transport.ErrKeyRefused) {
		t.Errorf("legacy_tokens false on reload: an old link's session: %v, want ErrKeyRefused", err)
	}
}
