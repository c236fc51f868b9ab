package h2mux

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// h2cProtocols enables only HTTP/2 with prior knowledge, without TLS.
func h2cProtocols() *http.Protocols {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	return p
}

// TestInteropServer drives a server session with net/http's HTTP/2
// client: the wire format must be ordinary HTTP/2.
func TestInteropServer(t *testing.T) {
	c, s := net.Pipe()
	ss, err := Server(s, Config{})
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ss)
	dialed := false
	tr := &http.Transport{
		Protocols: h2cProtocols(),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if dialed {
				return nil, errors.New("second dial")
			}
			dialed = true
			return c, nil
		},
	}
	defer tr.CloseIdleConnections()
	for _, body := range []string{"hello, relay", strings.Repeat("x", 1<<20), ""} {
		req, err := http.NewRequest(http.MethodPost, "http://relay.example/api", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || string(got) != body {
			t.Fatalf("status %d, %d bytes, %v; want 200 and the %d-byte body echoed", resp.StatusCode, len(got), err, len(body))
		}
	}
}

// TestInteropClient drives net/http's HTTP/2 server with a client session,
// full duplex: the handler echoes while the request is open.
func TestInteropClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Protocols: h2cProtocols(),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodPost || r.Host != "relay.example" || r.URL.Path != "/tunnel" {
				http.Error(w, "bad request line", http.StatusBadRequest)
				return
			}
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			buf := make([]byte, 32<<10)
			for {
				n, err := r.Body.Read(buf)
				if n > 0 {
					w.Write(buf[:n])
					w.(http.Flusher).Flush()
				}
				if err != nil {
					return
				}
			}
		}),
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	defer func() {
		srv.Close()
		<-served
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cs, err := Client(c, Config{Authority: "relay.example", Path: "/tunnel"})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	st, err := cs.OpenStream(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	big := strings.Repeat("y", 3<<20)
	go func() {
		io.WriteString(st, big)
		st.CloseWrite()
	}()
	got, err := io.ReadAll(st)
	if err != nil || string(got) != big {
		t.Fatalf("ReadAll = %d bytes, %v", len(got), err)
	}
}
