package main

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
)

// TestRunReloadsSettingsOnSIGHUP runs a relay as `run` does and sends the
// process SIGHUP after editing relay.json: a changed datacenter override
// applies to new streams while an open one goes on, the log names what
// needs a restart (listen, no_quic) and what needs none (public), and an
// invalid relay.json is refused with an error while the settings in force
// stay.
func TestRunReloadsSettingsOnSIGHUP(t *testing.T) {
	// While the test runs, SIGHUP never takes the default action (ending
	// the process), even before run has asked for it or after it stopped.
	guard := make(chan os.Signal, 8)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)

	cover := relaytest.StartCoverTCPOnly(t)
	named := func(name string) string {
		return relaytest.StartServer(t, func(c net.Conn) {
			c.Write([]byte(name))
			relaytest.ServeEcho(c)
		})
	}
	dcA, dcB := named("A"), named("B")
	addr := freePort(t)
	dir := filepath.Join(t.TempDir(), "relay")
	out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", addr, "--listen", addr,
		"--cover", "https://"+cover.Addr(), "--sni", relaytest.CoverName, "--quic", "off",
		"--dc", "2="+dcA, "--allow", "127.0.0.0/8")
	if err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	owner := linkIn(t, out)
	owner.Carriers = []string{link.CarrierTLS}

	logs := startRun(t, "--dir", dir)
	waitLog := func(s string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if strings.Contains(logs.String(), s) {
				return
			}
		}
		t.Fatalf("the relay never logged %s", s)
	}
	// run asks for SIGHUP before the relay listens.
	waitLog(`msg="relay listening"`)

	sess, err := relaytest.Session(t, owner, link.CarrierTLS)
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	defer sess.Close()
	open := func() (transport.Stream, string) {
		t.Helper()
		st, err := relaytest.Open(sess, transport.DCTarget(2))
		if err != nil {
			t.Fatalf("stream to DC 2: %v", err)
		}
		st.SetDeadline(time.Now().Add(30 * time.Second))
		name := make([]byte, 1)
		if _, err := io.ReadFull(st, name); err != nil {
			t.Fatalf("stream to DC 2: %v", err)
		}
		return st, string(name)
	}
	old, name := open()
	defer old.Close()
	if name != "A" {
		t.Fatalf("DC 2 reached %s before the reload, want A", name)
	}

	path := filepath.Join(dir, relay.SettingsFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s relay.Settings
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	s.DC = []string{"2=" + dcB}
	s.Listen = freePort(t)
	s.NoQUIC = false
	s.Public = append(s.Public, "relay.example.net:443")
	if b, err = json.MarshalIndent(s, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(`msg="relay.json reloaded and applied" applied=dc`)
	for _, want := range []string{
		`msg="keys reloaded on SIGHUP"`,
		`msg="listen changed in relay.json: it needs a restart to take effect; until then the relay keeps the old value" field=listen`,
		`msg="no_quic changed in relay.json: it needs a restart to take effect; until then the relay keeps the old value" field=no_quic`,
		`msg="public changed in relay.json: it needs no restart`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the relay did not log %s", want)
		}
	}
	st, name := open()
	st.Close()
	if name != "B" {
		t.Errorf("DC 2 reached %s after the reload, want B", name)
	}
	ping := func() {
		t.Helper()
		if _, err := old.Write([]byte("ping")); err != nil {
			t.Fatalf("stream open across the reload: %v", err)
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(old, got); err != nil || string(got) != "ping" {
			t.Fatalf("stream open across the reload: read %q, %v", got, err)
		}
	}
	ping()

	// A relay.json that does not parse: refused, and what is in force
	// stays.
	if err := os.WriteFile(path, []byte(`{"listen": ":443", "dc": ["2=`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(`level=ERROR msg="relay.json not reloaded: the settings in force stay" err="parse ` + path)
	if n := strings.Count(logs.String(), "reloaded and applied"); n != 1 {
		t.Errorf("%d reloads applied, want 1", n)
	}
	st, name = open()
	st.Close()
	if name != "B" {
		t.Errorf("DC 2 reached %s after a refused reload, want B", name)
	}
	ping()
}
