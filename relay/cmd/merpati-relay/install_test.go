package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/relaytest"
)

// mainEnv makes the test binary act as merpati-relay with the arguments
// after "--" (see [TestMainHelper]): the install script installs and runs
// a wrapper that execs it so.
const mainEnv = "MERPATI_RELAY_TEST_MAIN"

// TestMainHelper is merpati-relay itself when mainEnv is set.
func TestMainHelper(t *testing.T) {
	if os.Getenv(mainEnv) == "" {
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	go func() {
		// As cmdmain.Main: SIGTERM stops the relay.
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, os.Interrupt)
		<-ch
		stop()
	}()
	if err := run(ctx, flag.Args(), os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "merpati-relay:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// repoRoot returns the module's root directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// fakeBinary writes an executable that runs this test binary as
// merpati-relay.
func fakeBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "merpati-relay")
	script := fmt.Sprintf("#!/bin/sh\nexport %s=1\nexec '%s' -test.run='^TestMainHelper$' -test.count=1 -- \"$@\"\n", mainEnv, self)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func installScript(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(repoRoot(t), "scripts", "install-relay.sh")}, args...)...)
	cmd.Env = append(os.Environ(), "ROOT=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("install-relay.sh %q: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestInstallScript runs scripts/install-relay.sh in a scratch root, twice
// (an upgrade keeps the keys), checks the unit with systemd-analyze, then
// runs the unit's ExecStart as installed and reaches the relay's front
// door: a prober's TLS handshake and request get the cover site's page.
func TestInstallScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	cover := relaytest.StartCoverTCPOnly(t)
	root := t.TempDir()
	bin := fakeBinary(t)
	addr := freePort(t)
	out := installScript(t, "--root", root, "--binary", bin,
		"--public", addr, "--listen", addr, "--cover", "https://"+cover.Addr(), "--sni", relaytest.CoverName,
		"--offline", "--quic", "off")
	if !strings.Contains(out, "merpati://") || !strings.Contains(out, "▀") {
		t.Errorf("install printed no first link and QR code:\n%s", out)
	}
	dir := filepath.Join(root, "var/lib/merpati")
	for f, want := range map[string]os.FileMode{
		"var/lib/merpati":                          0o700,
		"var/lib/merpati/key.pem":                  0o600,
		"var/lib/merpati/keys.json":                0o600,
		"usr/local/bin/merpati-relay":              0o755,
		"etc/merpati/relay.env":                    0o644,
		"etc/systemd/system/merpati-relay.service": 0o644,
	} {
		fi, err := os.Stat(filepath.Join(root, f))
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: %v, mode %v, want %v", f, err, fi.Mode().Perm(), want)
		}
	}
	sysctl, err := os.ReadFile(filepath.Join(root, "etc/sysctl.d/60-merpati-relay.conf"))
	if err != nil || !bytes.Contains(sysctl, []byte("net.core.rmem_max=7500000")) || !bytes.Contains(sysctl, []byte("net.core.wmem_max=7500000")) {
		t.Errorf("sysctl.d file: %v\n%s", err, sysctl)
	}

	// An upgrade keeps the relay: same keys, certificate and settings.
	before := readFiles(t, dir, "keys.json", "key.pem", "relay.json")
	out = installScript(t, "--root", root, "--binary", bin)
	if !strings.Contains(out, "keeping the relay") {
		t.Errorf("second run:\n%s", out)
	}
	if after := readFiles(t, dir, "keys.json", "key.pem", "relay.json"); after != before {
		t.Error("re-running the install script changed the relay directory")
	}

	unit := filepath.Join(root, "etc/systemd/system/merpati-relay.service")
	unitText, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"User=merpati", "AmbientCapabilities=CAP_NET_BIND_SERVICE\n", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "Restart=on-failure",
		"ReadWritePaths=" + dir + "\n"} {
		if !bytes.Contains(unitText, []byte(want)) {
			t.Errorf("unit lacks %q", want)
		}
	}
	verifyUnit(t, unit)

	// Run what systemd would run, and reach it.
	var execStart string
	for line := range strings.SplitSeq(string(unitText), "\n") {
		if s, ok := strings.CutPrefix(line, "ExecStart="); ok {
			execStart = s
		}
	}
	argv := strings.Fields(strings.ReplaceAll(execStart, "$MERPATI_RELAY_ARGS", ""))
	if len(argv) < 4 || argv[0] != filepath.Join(root, "usr/local/bin/merpati-relay") || argv[3] != dir {
		t.Fatalf("ExecStart=%s", execStart)
	}
	var logs bytes.Buffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("relay's log:\n%s", logs.String())
		}
	}()
	page, err := getThrough(addr, done)
	if err != nil {
		t.Fatal(err)
	}
	if page != relaytest.CoverPage {
		t.Errorf("page through the relay: %q, want the cover site's", page)
	}
}

// getThrough connects to the relay at addr as a prober, retrying while it
// starts (until the process ends or a minute passes), and returns the body
// of GET /.
func getThrough(addr string, exited <-chan error) (string, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			return "", fmt.Errorf("relay exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("relay never listened on %s: %w", addr, err)
		}
	}
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			ServerName: relaytest.CoverName, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
		}},
	}
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + addr + "/")
	if err != nil {
		return "", fmt.Errorf("GET through the relay: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET through the relay: %s", resp.Status)
	}
	return string(b), nil
}

func readFiles(t *testing.T, dir string, names ...string) string {
	t.Helper()
	var all []byte
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return string(all)
}

// verifyUnit runs systemd-analyze verify on unit and wants no complaint.
// Without systemd-analyze it skips that check, except in CI.
func verifyUnit(t *testing.T, unit string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CI") != "" {
			t.Error("systemd-analyze not installed (Debian package systemd)")
		} else {
			t.Log("systemd-analyze not installed: unit not verified")
		}
		return
	}
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, out)
	}
}

// TestUnitFileVerifies checks the unit as shipped (with a binary that
// exists in place of /usr/local/bin/merpati-relay): an unknown or
// misspelt directive fails it.
func TestUnitFileVerifies(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "scripts", "merpati-relay.service"))
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.ReplaceAll(b, []byte("/usr/local/bin/merpati-relay"), []byte(fakeBinary(t)))
	unit := filepath.Join(t.TempDir(), "merpati-relay.service")
	if err := os.WriteFile(unit, b, 0o644); err != nil {
		t.Fatal(err)
	}
	verifyUnit(t, unit)
}
