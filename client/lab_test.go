package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/link"
)

// startRelay starts a relay (see relaytest.Start) whose cover site is cov,
// with the DC overrides dcs, on which only the TLS carrier answers: the
// tests of what lies above the carrier (fronts, bootstrap, MTProxy mode,
// benchmarks) run over it. Its links still list every carrier, as a real
// relay's do; the QUIC one goes unanswered.
func startRelay(t testing.TB, cov *relaytest.Cover, dcs []string) *relaytest.Relay {
	t.Helper()
	return relaytest.Start(t, cov, relaytest.Options{DC: dcs, Carriers: []string{link.CarrierTLS}})
}

// startClient starts a client for l with a SOCKS5 front on 127.0.0.1:0
// and returns the client and the SOCKS5 address.
func startClient(t testing.TB, l *link.Link, mod func(*client.Config)) (*client.Client, string) {
	t.Helper()
	cfg := client.Config{Link: l, Logger: relaytest.Logger(t, "client")}
	if mod != nil {
		mod(&cfg)
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := c.ServeSOCKS(ctx, ln); err != nil {
			t.Errorf("client: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait(); c.Close() })
	return c, ln.Addr().String()
}

// echoOnce sends n random bytes on a new stream and checks they come back.
func echoOnce(ctx context.Context, c *client.Client, target transport.Target, n int) error {
	st, err := c.OpenStream(ctx, target)
	if err != nil {
		return err
	}
	defer st.Close()
	data := make([]byte, n)
	rand.Read(data)
	go func() {
		st.Write(data)
		st.CloseWrite()
	}()
	got, err := io.ReadAll(st)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("%d of %d bytes back", len(got), len(data))
	}
	return nil
}

func need(t testing.TB, tool string) string {
	t.Helper()
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, tool)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; .ci/run installs it", tool)
	}
	t.Skipf("%s is not installed", tool)
	return ""
}
