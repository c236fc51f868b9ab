package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/merpati/merpati/relay/access"
)

// TestLinkAddLimits: link add writes the session and stream caps, takes
// --max-conns as the stream cap's former name, and link list shows every
// key's caps, defaults included.
func TestLinkAddLimits(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	if out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "relay.example.net:443"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	for _, args := range [][]string{
		{"link", "add", "a", "--dir", dir, "--max-sessions", "3", "--max-streams", "40"},
		{"link", "add", "b", "--dir", dir, "--max-conns", "5"},
	} {
		if out, err := runCmd(t, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	if out, err := runCmd(t, "link", "add", "c", "--dir", dir, "--max-conns", "5", "--max-streams", "6"); err == nil {
		t.Errorf("conflicting --max-conns and --max-streams accepted:\n%s", out)
	}
	if out, err := runCmd(t, "link", "add", "c", "--dir", dir, "--max-sessions", "-1"); err == nil {
		t.Errorf("negative limit accepted:\n%s", out)
	}
	entries, err := access.Load(filepath.Join(dir, "keys.json"))
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]access.Entry)
	for _, e := range entries {
		got[e.Name] = e
	}
	if e := got["a"]; e.MaxSessions != 3 || e.MaxStreams != 40 {
		t.Errorf("a: sessions %d streams %d, want 3 and 40", e.MaxSessions, e.MaxStreams)
	}
	if e := got["b"]; e.MaxStreams != 5 || e.StreamLimit() != 5 {
		t.Errorf("b: --max-conns 5 gave max_streams %d", e.MaxStreams)
	}
	out, err := runCmd(t, "link", "list", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"MAX-SESSIONS", "MAX-STREAMS"} {
		if !strings.Contains(out, want) {
			t.Errorf("link list has no %s column:\n%s", want, out)
		}
	}
	found := false
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 7 || f[0] != "owner" {
			continue
		}
		found = true
		// The first key has no limits of its own: the defaults show.
		if !strings.Contains(l, " 64 ") || !strings.Contains(l, " 1024 ") {
			t.Errorf("owner's line does not show the default caps: %q", l)
		}
	}
	if !found {
		t.Errorf("link list shows no line for the first key:\n%s", out)
	}
}
