package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
)

// helperEnv carries a command line, separated by US (0x1f), to TestCommandHelper in
// a child process.
const helperEnv = "MERPATI_RELAY_TEST_ARGS"

// TestCommandHelper is merpati-relay itself when the test binary runs as a
// child of command; otherwise it does nothing.
func TestCommandHelper(t *testing.T) {
	args := os.Getenv(helperEnv)
	if args == "" {
		return
	}
	if err := run(context.Background(), strings.Split(args, "\x1f"), os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "merpati-relay:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// command returns merpati-relay args as a separate process.
func command(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestCommandHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(args, "\x1f"))
	return cmd
}

// TestConcurrentLinkCommands runs `link add` and `link revoke` as
// concurrent processes, as operators and their scripts do: every one that
// exits 0 must have its change kept.
func TestConcurrentLinkCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	if out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "relay.example.net:443", "--listen", "127.0.0.1:0"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	runAll := func(cmds []*exec.Cmd) {
		t.Helper()
		var wg sync.WaitGroup
		for _, c := range cmds {
			wg.Go(func() {
				if out, err := c.CombinedOutput(); err != nil {
					t.Errorf("%q: %v\n%s", c.Env[len(c.Env)-1], err, out)
				}
			})
		}
		wg.Wait()
	}
	var cmds []*exec.Cmd
	for i := range 20 {
		cmds = append(cmds, command("link", "add", fmt.Sprintf("u%d", i), "--dir", dir))
	}
	runAll(cmds)
	cmds = nil
	for i := range 10 {
		cmds = append(cmds, command("link", "revoke", fmt.Sprintf("u%d", i), "--dir", dir),
			command("link", "add", fmt.Sprintf("v%d", i), "--dir", dir))
	}
	runAll(cmds)
	entries, err := access.Load(filepath.Join(dir, "keys.json"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range entries {
		got[e.Name] = true
	}
	want := map[string]bool{"owner": true}
	for i := range 10 {
		want[fmt.Sprintf("u%d", i+10)], want[fmt.Sprintf("v%d", i)] = true, true
	}
	if len(got) != len(want) {
		t.Errorf("%d keys kept, want %d: %v", len(got), len(want), got)
	}
	for n := range want {
		if !got[n] {
			t.Errorf("key %s lost", n)
		}
	}
}

// TestRunRefusesReadableSecrets: run will not serve with a private key or
// access keys every user of the machine can read, and says how to fix it.
func TestRunRefusesReadableSecrets(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "relay")
	if out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "relay.example.net:443", "--listen", "127.0.0.1:0"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	for _, f := range []string{"key.pem", "keys.json"} {
		path := filepath.Join(dir, f)
		os.Chmod(path, 0o644)
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // were it to serve, it would stop at once
		var out bytes.Buffer
		err := run(ctx, []string{"run", "--dir", dir}, &out, &out)
		if err == nil || !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Errorf("%s mode 0644: %v, want a refusal saying chmod 600\n%s", f, err, out.String())
		}
		os.Chmod(path, 0o600)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunWarns: a relay started with no keys, a cover site that is down
// and a wide allow range logs each, with how to fix it.
func TestRunWarns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cover := ln.Addr().String()
	ln.Close() // nothing listens there now
	dir := filepath.Join(t.TempDir(), "relay")
	if out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", "relay.example.net:443", "--listen", "127.0.0.1:0",
		"--cover", "https://"+cover, "--sni", "www.example.org", "--allow", "127.0.0.0/8"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	if out, err := runCmd(t, "link", "revoke", "owner", "--dir", dir); err != nil {
		t.Fatalf("revoke: %v\n%s", err, out)
	}
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "--dir", dir}, &logs, &logs) }()
	want := []string{
		`level=ERROR msg="no access keys`,
		`level=ERROR msg="cover site unreachable`,
		`level=WARN msg="allow \"127.0.0.0/8\" opens 127.0.0.0/8`,
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		missing := false
		for _, w := range want {
			missing = missing || !strings.Contains(logs.String(), w)
		}
		if !missing {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	for _, w := range want {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("log lacks %s:\n%s", w, logs.String())
		}
	}
}
