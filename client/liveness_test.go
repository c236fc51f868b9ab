package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/proxy"

	"github.com/merpati/merpati/client"
	"github.com/merpati/merpati/client/pick"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/link"
)

// These tests check that the client's liveness check (pick.Watch) never
// kills a session whose relay answers: not on a slow uplink busy with an
// upload, not on a machine whose CPUs are busy, not with a thousand
// streams at once. Each loads one session and then checks that it is
// still the one in use.

// sameSession fails t if the session in use is no longer a, or a has
// ended.
func sameSession(t *testing.T, c *client.Client, a *pick.Active) {
	t.Helper()
	if err := a.Session.Err(); err != nil {
		t.Errorf("session to %s/%s ended: %v", a.Relay, a.Carrier, err)
	}
	if b := c.Active(); b != a {
		t.Errorf("session in use changed: %s/%s up at %v replaced", a.Relay, a.Carrier, a.Since.Format(time.StampMilli))
	}
}

// firstSession opens one echo stream through c so that a session is up,
// and returns that session.
func firstSession(t *testing.T, c *client.Client, echo string) *pick.Active {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := echoOnce(ctx, c, relaytest.Target(t, echo), 1000); err != nil {
		t.Fatalf("first stream: %v", err)
	}
	a := c.Active()
	if a == nil {
		t.Fatal("no session after a stream")
	}
	return a
}

// startShaper starts a TCP proxy on 127.0.0.1:0 in front of to that passes
// at most rate bytes per second towards to (the client's uplink) and the
// other direction at full speed, like a slow upload link.
func startShaper(t testing.TB, to string, rate int) string {
	return relaytest.StartServer(t, func(c net.Conn) {
		defer c.Close()
		// A small receive buffer, so that the kernel does not take the
		// whole upload at loopback speed.
		c.(*net.TCPConn).SetReadBuffer(64 << 10)
		up, err := net.Dial("tcp", to)
		if err != nil {
			return
		}
		defer up.Close()
		down := make(chan struct{})
		go func() {
			defer close(down)
			io.Copy(c, up)
			c.(*net.TCPConn).CloseWrite()
		}()
		buf := make([]byte, 4096)
		start := time.Now()
		var sent int64
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := up.Write(buf[:n]); werr != nil {
					break
				}
				sent += int64(n)
				if ahead := time.Duration(sent)*time.Second/time.Duration(rate) - time.Since(start); ahead > 0 {
					time.Sleep(ahead)
				}
			}
			if err != nil {
				break
			}
		}
		up.(*net.TCPConn).CloseWrite()
		<-down
	})
}

// TestLivenessThrottledUplink opens a second stream while a 4 MB upload
// fills a 256 KB/s uplink (over the TLS carrier, where everything the
// client sends shares one TCP connection): the second stream's request
// waits behind seconds of queued upload, and so would a PING, but the
// relay is plainly alive (it keeps taking the upload) and the session
// must not be killed.
func TestLivenessThrottledUplink(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.StartEcho(t)
	sink := relaytest.StartServer(t, relaytest.ServeSink)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, nil)
	shaper := startShaper(t, r.Addr, 256<<10)
	l := r.AddKey(t, "alice", access.Entry{})
	l.Relays = []string{shaper}
	l.Carriers = []string{link.CarrierTLS}
	c, _ := startClient(t, l, func(cfg *client.Config) {
		// On a real slow link the kernel queues about a second of upload;
		// on loopback it would grow its buffer to take all 4 MB.
		cfg.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, addr)
			if err == nil {
				conn.(*net.TCPConn).SetWriteBuffer(128 << 10)
			}
			return conn, err
		}
	})
	a := firstSession(t, c, echo)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	up, err := c.OpenStream(ctx, relaytest.Target(t, sink))
	if err != nil {
		t.Fatal(err)
	}
	var written atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		data := make([]byte, 4<<20)
		for off := 0; off < len(data); off += 32 << 10 {
			n, err := up.Write(data[off : off+32<<10])
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	defer func() { up.Close(); wg.Wait() }()
	// Let the upload fill every queue on the way first.
	for written.Load() < 768<<10 {
		if ctx.Err() != nil {
			t.Fatal("upload stuck")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	if err := echoOnce(ctx, c, relaytest.Target(t, echo), 1000); err != nil {
		t.Fatalf("second stream during the upload: %v", err)
	}
	t.Logf("second stream answered after %v, %d KiB of the upload written", time.Since(start).Round(time.Millisecond), written.Load()>>10)
	sameSession(t, c, a)
}

// spinEnv, when set, makes TestSpinHelper a busy loop: spin runs the test
// binary again with it, as a separate busy process.
const spinEnv = "MERPATI_TEST_SPIN"

// TestSpinHelper is not a test: spin runs it in a child process, where it
// keeps one CPU busy until killed.
func TestSpinHelper(t *testing.T) {
	if os.Getenv(spinEnv) == "" {
		t.Skip("a helper process for spin")
	}
	x := 0
	for {
		x++
	}
}

// spin starts n processes that each keep a CPU busy until the test ends,
// as other programs on a loaded machine would. Busy goroutines in this
// process would not do: Go's scheduler shares its own CPUs fairly, while
// the kernel gives the test only its share against other processes.
func spin(t testing.TB, n int) {
	var procs []*exec.Cmd
	for range n {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSpinHelper$")
		cmd.Env = append(os.Environ(), spinEnv+"=1", "GOMAXPROCS=1")
		if err := cmd.Start(); err != nil {
			t.Fatalf("busy process: %v", err)
		}
		procs = append(procs, cmd)
	}
	t.Cleanup(func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	})
}

// TestLivenessBusyCPU loads one session the way TestStreams does, with
// streams of up to 1.1 MB each way opened one after another while the
// earlier ones still send, on a machine made slow: the test runs on one
// CPU (GOMAXPROCS=1) against four busy processes. Everything is slow (a
// stream open waits behind the data queued before it, long enough for the
// liveness check to look), but the relay answers, so no session may be
// killed, and every byte comes back. Over TLS it opens twice the streams,
// half the size each: what queues ahead of a new stream, and once did ahead
// of the client's PING, is up to 256 KiB per sending stream.
func TestLivenessBusyCPU(t *testing.T) {
	for _, tc := range []struct {
		carrier string
		streams int
		step    int // stream i sends 1+i*step bytes
	}{
		{link.CarrierTLS, 64, 18_000},
		{link.CarrierQUIC, 32, 37_000},
	} {
		t.Run(tc.carrier, func(t *testing.T) {
			relaytest.CheckLeaks(t)
			echo := relaytest.StartEcho(t)
			cov := relaytest.StartCover(t)
			r := relaytest.Start(t, cov, relaytest.Options{})
			l := r.AddKey(t, "alice", access.Entry{})
			l.Carriers = []string{tc.carrier}
			c, _ := startClient(t, l, nil)
			a := firstSession(t, c, echo)
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
			spin(t, 4)
			target := relaytest.Target(t, echo)
			var wg sync.WaitGroup
			for i := range tc.streams {
				time.Sleep(10 * time.Millisecond)
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
					defer cancel()
					if err := echoOnce(ctx, c, target, 1+i*tc.step); err != nil {
						t.Errorf("stream %d: %v", i, err)
					}
				})
			}
			wg.Wait()
			sameSession(t, c, a)
		})
	}
}

// TestLivenessManyConns holds 1000 SOCKS5 connections open at once
// through the client to an echo server, over each carrier: every one
// gets its bytes back and the one session stays (QUIC's default limit of
// 100 streams used to make the client kill its own session).
func TestLivenessManyConns(t *testing.T) {
	const conns = 1000
	for _, carrier := range []string{link.CarrierTLS, link.CarrierQUIC} {
		t.Run(carrier, func(t *testing.T) {
			relaytest.CheckLeaks(t)
			echo := relaytest.StartEcho(t)
			cov := relaytest.StartCover(t)
			r := relaytest.Start(t, cov, relaytest.Options{})
			l := r.AddKey(t, "alice", access.Entry{})
			l.Carriers = []string{carrier}
			c, socks := startClient(t, l, nil)
			a := firstSession(t, c, echo)
			d, err := proxy.SOCKS5("tcp", socks, nil, proxy.Direct)
			if err != nil {
				t.Fatal(err)
			}
			dial := d.(proxy.ContextDialer).DialContext

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			// Every connection echoes once and then stays open until
			// all have, so that all 1000 are open at the same time.
			var echoed, all sync.WaitGroup
			echoed.Add(conns)
			var failed atomic.Int64
			var firstErr atomic.Pointer[error]
			for i := range conns {
				all.Go(func() {
					conn, err := dial(ctx, "tcp", echo)
					if err == nil {
						defer conn.Close()
						err = echoConn(ctx, conn, 64+i%256)
					}
					if err != nil {
						failed.Add(1)
						err = fmt.Errorf("connection %d: %w", i, err)
						firstErr.CompareAndSwap(nil, &err)
					}
					echoed.Done()
					echoed.Wait()
				})
			}
			all.Wait()
			if n := failed.Load(); n > 0 {
				t.Errorf("%d of %d connections failed; first: %v", n, conns, *firstErr.Load())
			}
			sameSession(t, c, a)
		})
	}
}

// echoConn writes n random bytes on conn and checks they come back.
func echoConn(ctx context.Context, conn net.Conn, n int) error {
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	data := make([]byte, n)
	rand.Read(data)
	if _, err := conn.Write(data); err != nil {
		return err
	}
	got := make([]byte, n)
	if _, err := io.ReadFull(conn, got); err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return errors.New("echo differs")
	}
	return nil
}

// tcpBlackhole forwards TCP connections to a relay and, once told to,
// drops every byte both ways while keeping the connections open, as a
// censor dropping the relay's packets would (the client's kernel keeps
// its connection; nothing comes back).
type tcpBlackhole struct {
	addr string
	drop atomic.Bool
}

func startTCPBlackhole(t testing.TB, to string) *tcpBlackhole {
	b := &tcpBlackhole{}
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 && !b.drop.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	b.addr = relaytest.StartServer(t, func(c net.Conn) {
		defer c.Close()
		up, err := net.Dial("tcp", to)
		if err != nil {
			return
		}
		defer up.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			pipe(c, up)
			c.Close()
		}()
		pipe(up, c)
		up.Close()
		<-done
	})
	return b
}

// TestFailoverBlackholeTLS checks that what keeps slow sessions alive does
// not keep a dead one: once the relay's TLS connection is blackholed, a
// new stream moves to the second relay within the failover promise (2 s;
// stretched under -race).
func TestFailoverBlackholeTLS(t *testing.T) {
	relaytest.CheckLeaks(t)
	echo := relaytest.StartEcho(t)
	cov := relaytest.StartCover(t)
	tlsOnly := []string{link.CarrierTLS}
	r1 := relaytest.Start(t, cov, relaytest.Options{Carriers: tlsOnly})
	r2 := relaytest.Start(t, cov, relaytest.Options{Carriers: tlsOnly, CertFrom: r1})
	bh := startTCPBlackhole(t, r1.Addr)
	l := relaytest.AddSharedKey(t, "alice", access.Entry{}, r1, r2)
	l.Carriers = []string{link.CarrierTLS}
	l.Relays = []string{bh.addr, r2.Addr}
	c, _ := startClient(t, l, nil)
	a := firstSession(t, c, echo)
	if a.Relay != bh.addr {
		t.Fatalf("first session on %s, want %s", a.Relay, bh.addr)
	}
	bh.drop.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := echoOnce(ctx, c, relaytest.Target(t, echo), 10_000); err != nil {
		t.Fatalf("stream after the relay went silent: %v", err)
	}
	took := time.Since(start)
	if b := c.Active(); b == nil || b.Relay != r2.Addr {
		t.Fatalf("active %+v, want relay %s", b, r2.Addr)
	}
	if took > timingSlack*2*time.Second {
		t.Errorf("stream on the second relay after %v, want under 2s (×%d under -race)", took, timingSlack)
	}
	t.Logf("blackholed relay left after %v", took.Round(time.Millisecond))
}
