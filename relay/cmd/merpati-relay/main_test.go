package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/merpati/merpati/transport/link"
)

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

// startRun runs "run" with args in the background until the test ends
// (then it requires a clean exit, and shows the relay's log if the test
// failed), and returns the relay's log as it grows.
func startRun(t *testing.T, args ...string) *syncBuffer {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"run"}, args...), logs, logs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if t.Failed() {
			t.Logf("relay's log:\n%s", logs.String())
		}
	})
	return logs
}

// TestOperatorFlow walks through what an operator does: init, add people,
// list, show, revoke.
func TestOperatorFlow(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "relay.example.net:443", "--cover", "https://www.example.org")
	if err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	first := linkIn(t, out)
	if first.Name != "owner" || first.SNI != "www.example.org" || first.Relays[0] != "relay.example.net:443" {
		t.Errorf("first link: %+v", first)
	}
	if !strings.Contains(out, "█") && !strings.Contains(out, "▀") {
		t.Error("init printed no QR code")
	}
	for _, f := range []string{"key.pem", "keys.json"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v, want 0600", f, err, fi.Mode().Perm())
		}
	}
	if _, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "x:443"); err == nil {
		t.Error("second init overwrote the relay")
	}

	out, err = runCmd(t, "link", "add", "alice", "--dir", dir, "--quota", "1000000")
	if err != nil {
		t.Fatalf("link add: %v\n%s", err, out)
	}
	alice := linkIn(t, out)
	if alice.Key == first.Key || alice.Pin != first.Pin {
		t.Error("alice's link must have her own key and the relay's pin")
	}
	if out, err := runCmd(t, "link", "add", "alice", "--dir", dir); err == nil {
		t.Errorf("duplicate name accepted: %s", out)
	}
	out, err = runCmd(t, "link", "show", "alice", "--dir", dir)
	if err != nil || linkIn(t, out).Key != alice.Key {
		t.Errorf("link show: %v\n%s", err, out)
	}
	out, err = runCmd(t, "link", "list", "--dir", dir)
	if err != nil || !strings.Contains(out, "owner") || !strings.Contains(out, "alice") || !strings.Contains(out, "976.6 KiB") {
		t.Errorf("link list: %v\n%s", err, out)
	}
	if _, err := runCmd(t, "link", "revoke", "alice", "--dir", dir); err != nil {
		t.Fatal(err)
	}
	out, _ = runCmd(t, "link", "list", "--dir", dir)
	if strings.Contains(out, "alice") {
		t.Errorf("revoked key still listed:\n%s", out)
	}
	if _, err := runCmd(t, "link", "revoke", "alice", "--dir", dir); err == nil {
		t.Error("revoking twice succeeded")
	}
}

func TestBadInvocations(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"init"},
		{"init", "--dir", t.TempDir()}, // no --public
		{"init", "--dir", t.TempDir(), "--public", "r:443", "--cover", "http://plain.example"},
		{"run"},
		{"link"},
		{"link", "add", "--dir", t.TempDir()},
		{"link", "explode", "--dir", t.TempDir()},
	} {
		if out, err := runCmd(t, args...); err == nil {
			t.Errorf("%q succeeded:\n%s", args, out)
		}
	}
}

// linkIn finds the merpati:// link in a command's output.
func linkIn(t *testing.T, out string) *link.Link {
	t.Helper()
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "merpati://") {
			l, err := link.Parse(f)
			if err != nil {
				t.Fatalf("printed link does not parse: %v", err)
			}
			return l
		}
	}
	t.Fatalf("no link in output:\n%s", out)
	return nil
}
