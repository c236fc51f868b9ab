package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// startRun runs args in the background and waits until out matches re,
// then returns the submatches and a function that stops the run and
// returns its error (the same on every call).
func startRun(t *testing.T, args []string, re *regexp.Regexp) ([]string, func() error) {
	t.Helper()
	var out, errOut syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, &out, &errOut) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			return m, sync.OnceValue(func() error { cancel(); return <-done })
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("run ended: %v\n%s\n%s", err, out.String(), errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("%s not printed:\n%s\n%s", re, out.String(), errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runBriefly runs args for at most 10 seconds and returns what it printed
// on stdout and its error.
func runBriefly(args []string) (string, error) {
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, args, &out, &errOut)
	return out.String(), err
}

// TestRunRefusesOpenProxy: a SOCKS5 port other machines can reach needs
// --socks-user (or --allow-no-auth); the refusal says why and how to fix
// it, and comes before any link is printed.
func TestRunRefusesOpenProxy(t *testing.T) {
	l := testLink().String()
	for _, listen := range []string{"0.0.0.0:0", ":0"} {
		out, err := runBriefly([]string{"run", "--config-dir", t.TempDir(), "--link", l, "--listen", listen})
		if err == nil || !strings.Contains(err.Error(), "--socks-user") || !strings.Contains(err.Error(), "other machines") {
			t.Errorf("--listen %s without --socks-user: got %v, want a refusal naming --socks-user", listen, err)
		}
		if strings.Contains(out, "tg://") {
			t.Errorf("--listen %s: link printed before the refusal:\n%s", listen, out)
		}
	}
	// Loopback needs no password; --allow-no-auth lifts the check.
	for _, args := range [][]string{
		{"--listen", "127.0.0.1:0"},
		{"--listen", "0.0.0.0:0", "--allow-no-auth"},
	} {
		_, stop := startRun(t, append([]string{"run", "--config-dir", t.TempDir(), "--link", l}, args...),
			regexp.MustCompile(`tg://socks\?server=127\.0\.0\.1&port=\d+`))
		if err := stop(); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
}

// TestRunAllInterfaces: --listen 0.0.0.0:PORT listens on IPv4 only (what
// was asked, not [::]) and prints a link an app can use (127.0.0.1, not
// "::").
func TestRunAllInterfaces(t *testing.T) {
	m, stop := startRun(t,
		[]string{"run", "--config-dir", t.TempDir(), "--link", testLink().String(), "--listen", "0.0.0.0:0", "--socks-user", "tg:secret"},
		regexp.MustCompile(`proxy for Telegram on (\S+)\. .*\n\ntg://socks\?server=([^&]*)&port=(\d+)&user=tg&pass=secret`))
	defer stop()
	if m[1] != "0.0.0.0:"+m[3] {
		t.Errorf("listening on %s, want 0.0.0.0:%s", m[1], m[3])
	}
	if m[2] != "127.0.0.1" {
		t.Errorf("link names server %q, want 127.0.0.1", m[2])
	}
	c, err := net.DialTimeout("tcp4", "127.0.0.1:"+m[3], 5*time.Second)
	if err != nil {
		t.Fatalf("the linked address does not answer: %v", err)
	}
	c.Close()
	// If this machine has IPv6 loopback, the port must not be served
	// there: 0.0.0.0 asks for IPv4.
	if ln, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		ln.Close()
		if c, err := net.DialTimeout("tcp6", "[::1]:"+m[3], 5*time.Second); err == nil {
			c.Close()
			t.Errorf("--listen 0.0.0.0 also serves IPv6 ([::1]:%s)", m[3])
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// TestRunMTProxyBusyPort: with --mtproxy on a port already taken, run
// fails before printing any link or QR code.
func TestRunMTProxyBusyPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	out, err := runBriefly([]string{"run", "--config-dir", t.TempDir(), "--link", testLink().String(),
		"--listen", "127.0.0.1:0", "--mtproxy", busy.Addr().String()})
	if err == nil || !strings.Contains(err.Error(), "MTProxy") {
		t.Errorf("run with a busy --mtproxy port: %v, want an MTProxy listen error", err)
	}
	if out != "" {
		t.Errorf("printed before failing:\n%s", out)
	}
}

// TestImportMakesPrivate: import over a link file (and directory) that
// others can read leaves both readable by the user only.
func TestImportMakesPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "merpati")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "link")
	if err := os.WriteFile(path, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	var out syncBuffer
	if err := run(context.Background(), []string{"import", "--config-dir", dir, testLink().String()}, &out, &out); err != nil {
		t.Fatalf("import: %v\n%s", err, out.String())
	}
	for p, want := range map[string]os.FileMode{path: 0o600, dir: 0o700} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != testLink().String() {
		t.Errorf("link file holds %q (%v)", b, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".link.*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
