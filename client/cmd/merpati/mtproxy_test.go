package main

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/mtproxy"
)

// TestRunMTProxy starts run with --mtproxy twice: the first run makes and
// keeps a secret and prints its tg://proxy link; the second prints the
// same secret. --mtproxy-secret in base64url overrides it.
func TestRunMTProxy(t *testing.T) {
	dir := t.TempDir()
	var sink syncBuffer
	if err := run(context.Background(), []string{"import", "--config-dir", dir, testLink().String()}, &sink, &sink); err != nil {
		t.Fatal(err)
	}
	secretOf := func(extra ...string) string {
		t.Helper()
		var out, errOut syncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		args := append([]string{"run", "--config-dir", dir, "--listen", "127.0.0.1:0", "--mtproxy", "127.0.0.1:0"}, extra...)
		go func() { done <- run(ctx, args, &out, &errOut) }()
		re := regexp.MustCompile(`tg://proxy\?server=127\.0\.0\.1&port=\d+&secret=(ee[0-9a-f]+)`)
		deadline := time.Now().Add(10 * time.Second)
		var m []string
		for m = re.FindStringSubmatch(out.String()); m == nil; m = re.FindStringSubmatch(out.String()) {
			if time.Now().After(deadline) {
				t.Fatalf("no tg://proxy link printed:\n%s\n%s", out.String(), errOut.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("run: %v", err)
		}
		return m[1]
	}
	first := secretOf()
	s, err := mtproxy.ParseSecret(first)
	if err != nil || s.Host != "www.example.org" {
		t.Fatalf("secret %s: %+v %v", first, s, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "mtproxy-secret"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("kept secret: %v", err)
	}
	if again := secretOf(); again != first {
		t.Errorf("second run changed the secret: %s, then %s", first, again)
	}
	other, _ := mtproxy.NewSecret("other.example")
	if got := secretOf("--mtproxy-secret", base64.RawURLEncoding.EncodeToString(other.Bytes())); !strings.EqualFold(got, other.String()) {
		t.Errorf("--mtproxy-secret: got %s, want %s", got, other)
	}
}
