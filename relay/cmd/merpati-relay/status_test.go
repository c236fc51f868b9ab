package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
)

// TestStatusAndMetrics runs a relay as `run --metrics` does, opens a
// session and a stream through it, and checks that `status`, `link list`
// and the Prometheus endpoint show them, and that a prober's connection
// counts as sent to the cover site.
func TestStatusAndMetrics(t *testing.T) {
	cover := relaytest.StartCoverTCPOnly(t)
	echo := relaytest.StartEcho(t)
	addr := freePort(t)
	dir := filepath.Join(t.TempDir(), "relay")
	out, err := runCmd(t, "init", "--offline", "--dir", dir, "--public", addr, "--listen", addr,
		"--cover", "https://"+cover.Addr(), "--sni", relaytest.CoverName, "--quic", "off",
		"--dc", "2="+echo, "--allow", "127.0.0.0/8")
	if err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	owner := linkIn(t, out)

	if _, err := runCmd(t, "status", "--dir", dir); err == nil || !strings.Contains(err.Error(), "no relay running") {
		t.Errorf("status without a relay: %v", err)
	}
	if out, err := runCmd(t, "link", "show", "owner", "--dir", dir); err != nil || strings.Contains(out, "Not mirrored") {
		t.Errorf("link show without a relay running: %v, gaps shown:\n%s", err, out)
	}

	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run", "--dir", dir, "--metrics", "127.0.0.1:0"}, &logs, &logs) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if _, err := os.Stat(filepath.Join(dir, adminSocket)); err == nil {
			t.Error("admin socket left behind")
		}
		if t.Failed() {
			t.Logf("relay's log:\n%s", logs.String())
		}
	}()
	metricsURL := ""
	re := regexp.MustCompile(`msg="metrics served" addr=(\S+)`)
	deadline := time.Now().Add(30 * time.Second)
	for metricsURL == "" && time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(logs.String()); m != nil {
			metricsURL = m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	if metricsURL == "" {
		t.Fatal("no metrics address logged")
	}
	fi, err := os.Stat(filepath.Join(dir, adminSocket))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("admin socket: %v %v", err, fi)
	}

	l := *owner
	l.Carriers = []string{link.CarrierTLS}
	var sess transport.Session
	for time.Now().Before(deadline) { // the relay may still be starting
		if sess, err = relaytest.Session(t, &l, link.CarrierTLS); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("session: %v", err)
	}
	st, err := relaytest.Open(sess, transport.DCTarget(2))
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	defer st.Close()
	msg := []byte("hello datacenter")
	if _, err := st.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(st, make([]byte, len(msg))); err != nil {
		t.Fatal(err)
	}
	relaytest.TLSProbe(t, addr) // a prober: sent to the cover site

	out, err = runCmd(t, "status", "--dir", dir)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^owner\s+1\s+1\s+`).MatchString(out) || !regexp.MustCompile(`(?m)^TOTAL\s+1\s+1\s+`).MatchString(out) {
		t.Errorf("status does not show owner's session and stream:\n%s", out)
	}
	// What the relay cannot mirror of the cover site (httptest's): its key
	// is ECDSA (init --offline), the cover's RSA, and MTProxy mode's
	// answer has one record where Go's flight has four, and no ticket.
	notMirrored := []string{
		"Not mirrored: the relay's key is ECDSA-P256, the cover site's RSA-2048",
		"Not mirrored: MTProxy mode answers apps with one ApplicationData record where the cover site sends 4",
		"Not mirrored: MTProxy mode sends apps no session tickets where the cover site sends 1",
	}
	for _, want := range notMirrored {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	out, err = runCmd(t, "link", "show", "owner", "--dir", dir)
	if err != nil {
		t.Fatalf("link show: %v\n%s", err, out)
	}
	for _, want := range notMirrored {
		if !strings.Contains(out, want) {
			t.Errorf("link show with the relay running lacks %q:\n%s", want, out)
		}
	}
	out, err = runCmd(t, "link", "list", "--dir", dir)
	if err != nil || !strings.Contains(out, "SESSIONS") || !regexp.MustCompile(`(?m)^owner\s.*\s1\s+1\s*$`).MatchString(out) {
		t.Errorf("link list with the relay running: %v\n%s", err, out)
	}

	body := scrape(t, metricsURL)
	for _, want := range []string{
		`merpati_sessions{carrier="tls"} 1`,
		`merpati_sessions_total{carrier="tls"} 1`,
		`merpati_streams{carrier="tls"} 1`,
		`merpati_streams_total{carrier="tls"} 1`,
		`merpati_key_sessions{key="owner"} 1`,
		`merpati_key_streams{key="owner"} 1`,
		`merpati_relayed_bytes_total{carrier="tls"} 32`, // 16 each way
		`merpati_hello_checks_total{carrier="tls",check="token",result="key_holder"} 1`,
		`merpati_cover_connections_total{reason="not_key_holder"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !regexp.MustCompile(`merpati_key_used_bytes\{key="owner"\} \d+`).MatchString(body) {
		t.Error("metrics lack the key's usage")
	}
	if !regexp.MustCompile(`merpati_hello_check_seconds_count\{check="token"\} [1-9]`).MatchString(body) {
		t.Error("metrics lack the hello check's latency")
	}
	t.Logf("hello metrics:\n%s", strings.Join(regexp.MustCompile(`(?m)^merpati_(hello_checks|cover).*$`).FindAllString(body, -1), "\n"))
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "merpati_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}

	// Once the session ends, the gauges come down.
	st.Close()
	sess.Close()
	for time.Now().Before(deadline.Add(30 * time.Second)) {
		if body = scrape(t, metricsURL); strings.Contains(body, `merpati_sessions{carrier="tls"} 0`+"\n") &&
			strings.Contains(body, `merpati_key_sessions{key="owner"} 0`+"\n") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{`merpati_sessions{carrier="tls"} 0`, `merpati_streams{carrier="tls"} 0`, `merpati_key_streams{key="owner"} 0`} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("after the session: metrics lack %s", want)
		}
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %v %s", url, err, resp.Status)
	}
	return string(b)
}
