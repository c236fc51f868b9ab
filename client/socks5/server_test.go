package socks5_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/client/socks5"
)

// fakeDomain is the name curl sends with --socks5-hostname; the test
// handler maps it to the local HTTP server, so no DNS is involved.
const fakeDomain = "merpati-test.invalid"

// loopbackHandler returns a handler that dials the requested address
// directly, but only on loopback: fakeDomain goes to target, IP literals
// must be loopback, and anything else is refused with ReplyNotAllowed. It
// records every request it sees.
func loopbackHandler(target string, mu *sync.Mutex, seen *[]socks5.Request) socks5.Handler {
	return func(ctx context.Context, conn net.Conn, req *socks5.Request) {
		mu.Lock()
		*seen = append(*seen, *req)
		mu.Unlock()
		addr := req.Addr()
		if req.Host == fakeDomain {
			addr = target
		} else if ip := net.ParseIP(req.Host); ip == nil || !ip.IsLoopback() {
			socks5.Reply(conn, socks5.ReplyNotAllowed, nil)
			return
		}
		var d net.Dialer
		up, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			socks5.Reply(conn, socks5.ReplyConnectionRefused, nil)
			return
		}
		defer up.Close()
		if err := socks5.Reply(conn, socks5.ReplySucceeded, up.LocalAddr()); err != nil {
			return
		}
		done := make(chan struct{})
		go func() {
			io.Copy(up, conn)
			up.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		io.Copy(conn, up)
		conn.Close()
		<-done
	}
}

// startProxy runs a Server on 127.0.0.1:0 until the test ends.
func startProxy(t *testing.T, cfg socks5.Config, h socks5.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	srv := &socks5.Server{Config: cfg}
	go func() { errc <- srv.Serve(ctx, ln, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// TestCurl checks interoperability with a real SOCKS5 client: curl, with
// local and remote name resolution and with username/password
// authentication. All traffic stays on loopback.
func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl not installed")
	}
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s", r.Host)
	}))
	defer web.Close()
	webAddr := web.Listener.Addr().(*net.TCPAddr)
	port := webAddr.Port

	var mu sync.Mutex
	var seen []socks5.Request
	h := loopbackHandler(webAddr.String(), &mu, &seen)
	open := startProxy(t, socks5.Config{}, h)
	authed := startProxy(t, socks5.Config{Users: map[string]string{"alice": "s3cr:et"}}, h)

	tests := []struct {
		name string
		args []string
		url  string
		want *socks5.Request // nil: curl must fail
	}{
		{
			name: "socks5-hostname domain",
			args: []string{"--socks5-hostname", open},
			url:  fmt.Sprintf("http://%s:%d/", fakeDomain, port),
			want: &socks5.Request{Host: fakeDomain, Port: uint16(port)},
		},
		{
			name: "socks5 ipv4",
			args: []string{"--socks5", open},
			url:  fmt.Sprintf("http://127.0.0.1:%d/", port),
			want: &socks5.Request{Host: "127.0.0.1", Port: uint16(port)},
		},
		{
			name: "socks5-hostname with auth",
			args: []string{"--socks5-hostname", authed, "--proxy-user", "alice:s3cr%3Aet"},
			url:  fmt.Sprintf("http://%s:%d/", fakeDomain, port),
			want: &socks5.Request{Host: fakeDomain, Port: uint16(port), User: "alice"},
		},
		{
			name: "socks5 with auth",
			args: []string{"--socks5", authed, "--proxy-user", "alice:s3cr%3Aet"},
			url:  fmt.Sprintf("http://127.0.0.1:%d/", port),
			want: &socks5.Request{Host: "127.0.0.1", Port: uint16(port), User: "alice"},
		},
		{
			name: "wrong password",
			args: []string{"--socks5-hostname", authed, "--proxy-user", "alice:wrong"},
			url:  fmt.Sprintf("http://%s:%d/", fakeDomain, port),
		},
		{
			name: "no credentials for authed proxy",
			args: []string{"--socks5-hostname", authed},
			url:  fmt.Sprintf("http://%s:%d/", fakeDomain, port),
		},
		{
			name: "refused by handler",
			args: []string{"--socks5-hostname", open},
			url:  fmt.Sprintf("http://not-allowed.invalid:%d/", port),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			seen = nil
			mu.Unlock()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			args := append([]string{"-sS", "--max-time", "10"}, tt.args...)
			args = append(args, tt.url)
			cmd := exec.CommandContext(ctx, curl, args...)
			// A clean environment, so no *_proxy variable interferes.
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			out, err := cmd.CombinedOutput()
			if tt.want == nil {
				if err == nil {
					t.Fatalf("curl succeeded: %s", out)
				}
				t.Logf("curl failed as expected: %v: %s", err, strings.TrimSpace(string(out)))
				return
			}
			if err != nil {
				t.Fatalf("curl: %v: %s", err, out)
			}
			u, err := url.Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			if want := "hello from " + u.Host; string(out) != want {
				t.Errorf("body = %q, want %q", out, want)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(seen) != 1 || seen[0] != *tt.want {
				t.Errorf("requests = %+v, want [%+v]", seen, *tt.want)
			}
		})
	}

	t.Run("socks5 ipv6", func(t *testing.T) {
		ln, err := net.Listen("tcp", "[::1]:0")
		if err != nil {
			t.Skipf("no IPv6 loopback: %v", err)
		}
		web6 := httptest.NewUnstartedServer(web.Config.Handler)
		web6.Listener.Close()
		web6.Listener = ln
		web6.Start()
		defer web6.Close()
		p6 := ln.Addr().(*net.TCPAddr).Port
		cmd := exec.CommandContext(t.Context(), curl, "-sS", "--max-time", "10", "--socks5", open,
			fmt.Sprintf("http://[::1]:%d/", p6))
		cmd.Env = []string{"PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("curl: %v: %s", err, out)
		}
		if want := fmt.Sprintf("hello from [::1]:%d", p6); string(out) != want {
			t.Errorf("body = %q, want %q", out, want)
		}
	})
}

// TestServeShutdown checks that cancelling the context stops Serve, closes
// connections stuck in the handshake and in handlers, and that Serve
// returns only after every handler has.
func TestServeShutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	inHandler := make(chan struct{})
	var handlerDone bool
	var srv socks5.Server
	errc := make(chan error, 1)
	go func() {
		errc <- srv.Serve(ctx, ln, func(ctx context.Context, conn net.Conn, req *socks5.Request) {
			socks5.Reply(conn, socks5.ReplySucceeded, nil)
			close(inHandler)
			io.Copy(io.Discard, conn) // returns when Serve closes conn
			handlerDone = true
		})
	}()

	// One connection idles in the handshake, one sits in the handler.
	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busy.Write(cat(greetNoAuth, []byte{5, 1, 0, 1, 127, 0, 0, 1, 0, 80}))
	<-inHandler

	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("Serve = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if !handlerDone {
		t.Error("Serve returned before the handler")
	}
	for _, c := range []net.Conn{idle, busy} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("connection not closed by server: %v", err)
		}
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("listener still accepting after Serve returned")
	}
}

// TestServeAcceptError checks that a permanent Accept error ends Serve with
// that error.
func TestServeAcceptError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	var srv socks5.Server
	err = srv.Serve(context.Background(), ln, func(context.Context, net.Conn, *socks5.Request) {})
	if !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve on closed listener = %v, want net.ErrClosed", err)
	}
}
