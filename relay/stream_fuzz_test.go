package relay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/dc"
	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/transporttest"
)

// streamRig is a relay serving one session of the in-memory carrier
// (transporttest), authenticated by the relay's own keys, with an
// in-memory dialer in place of the network: every "datacenter" is an echo
// server on the far side of a pipe. It drives whole open requests through
// the relay's session loop and stream handling (admission, limits, table
// lookup, dial, reply, splice), which is where a lookup bug such as DC
// -2^31 recursing until the stack overflowed lives.
type streamRig struct {
	tab    *dc.Table
	client transport.Session

	mu     sync.Mutex
	dialed []string // addresses the relay asked the dialer for
}

func newStreamRig(tb testing.TB) *streamRig {
	tb.Helper()
	dir := tb.TempDir()
	keysPath := filepath.Join(dir, "keys.json")
	e, err := access.Add(keysPath, "fuzz", access.Entry{})
	if err != nil {
		tb.Fatal(err)
	}
	keys, err := access.NewKeyring(keysPath, "", nil)
	if err != nil {
		tb.Fatal(err)
	}

	rig := &streamRig{tab: dc.New()}
	if err := rig.tab.ParseOverrides([]string{"2=127.0.0.1:7002", "-3=[::1]:7003"}); err != nil {
		tb.Fatal(err)
	}
	r, err := New(Config{
		Certificate: fakeCert(),
		Keys:        keys,
		Cover:       "127.0.0.1:1", // never reached: no hellos here
		Table:       rig.tab,
		DialTimeout: 5 * time.Second,
		// The in-memory carrier's tokens are plain ones.
		LegacyTokens: true,
	})
	if err != nil {
		tb.Fatal(err)
	}
	r.dialer.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		rig.mu.Lock()
		rig.dialed = append(rig.dialed, addr)
		rig.mu.Unlock()
		a, b := halfPipe()
		go func() {
			io.Copy(b, b)
			b.CloseWrite()
		}()
		return a, nil
	}

	l, err := transporttest.Listen(transporttest.ListenConfig{Auth: authenticator{r}})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := r.ServeListeners(ctx, l); err != nil {
			tb.Errorf("relay: %v", err)
		}
	})
	tb.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	d, err := transporttest.NewDialer(l, transporttest.DialConfig{Key: e.Key})
	if err != nil {
		tb.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer dcancel()
	client, err := d.Dial(dctx)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	rig.client = client
	return rig
}

// fakeCert is enough of a certificate for Config to validate; these tests
// never run a handshake.
func fakeCert() tls.Certificate { return tls.Certificate{Certificate: [][]byte{{0}}} }

// halfPipe returns two ends of an in-memory connection that, unlike
// net.Pipe, can be half-closed, as a TCP connection to a datacenter can.
// Deadlines are not supported.
func halfPipe() (*halfConn, *halfConn) {
	ar, bw := io.Pipe()
	br, aw := io.Pipe()
	return &halfConn{r: ar, w: aw}, &halfConn{r: br, w: bw}
}

type halfConn struct {
	r *io.PipeReader
	w *io.PipeWriter
}

var errNoDeadline = errors.New("halfConn: deadlines not supported")

func (c *halfConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *halfConn) Write(b []byte) (int, error)      { return c.w.Write(b) }
func (c *halfConn) CloseWrite() error                { return c.w.Close() }
func (c *halfConn) Close() error                     { c.r.Close(); return c.w.Close() }
func (c *halfConn) LocalAddr() net.Addr              { return memAddr{} }
func (c *halfConn) RemoteAddr() net.Addr             { return memAddr{} }
func (c *halfConn) SetDeadline(time.Time) error      { return errNoDeadline }
func (c *halfConn) SetReadDeadline(time.Time) error  { return errNoDeadline }
func (c *halfConn) SetWriteDeadline(time.Time) error { return errNoDeadline }

type memAddr struct{}

func (memAddr) Network() string { return "mem" }
func (memAddr) String() string  { return "mem" }

// open sends payload as a whole stream (then half-closes) and returns the
// relay's reply and whatever followed it.
func (rig *streamRig) open(tb testing.TB, payload []byte) (transport.OpenReply, []byte, error) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := rig.client.OpenStream(ctx)
	if err != nil {
		tb.Fatalf("open stream: %v", err)
	}
	defer st.Close()
	st.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		st.Write(payload)
		st.CloseWrite()
	}()
	rep, err := transport.ReadOpenReply(st)
	if err != nil {
		return rep, nil, err
	}
	rest, err := io.ReadAll(st)
	if err != nil {
		tb.Fatalf("read after reply %v: %v", rep.Status, err)
	}
	return rep, rest, nil
}

func TestServeStreamRefusesBadDCs(t *testing.T) {
	rig := newStreamRig(t)
	for _, tt := range []struct {
		name    string
		payload []byte
		want    transport.Status
	}{
		// The request that once crashed every relay: DC -2^31.
		{"dc -2^31", []byte{1, 1, 0x80, 0, 0, 0, 0, 0}, transport.StatusNotAllowed},
		{"dc 2^31-1", []byte{1, 1, 0x7f, 0xff, 0xff, 0xff, 0, 0}, transport.StatusNotAllowed},
		{"dc 7", []byte{1, 1, 0, 0, 0, 7, 0, 0}, transport.StatusNotAllowed},
		{"dc 2", append([]byte{1, 1, 0, 0, 0, 2, 0, 0}, "ping"...), transport.StatusOK},
		{"dc -3", append([]byte{1, 1, 0xff, 0xff, 0xff, 0xfd, 0, 0}, "ping"...), transport.StatusOK},
		{"override on another port", []byte{1, 2, 127, 0, 0, 1, 0, 22, 0, 0}, transport.StatusNotAllowed},
		{"telegram on port 22", []byte{1, 2, 149, 154, 167, 51, 0, 22, 0, 0}, transport.StatusNotAllowed},
		{"garbage", []byte{9, 9, 9}, transport.StatusBadRequest},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rep, rest, err := rig.open(t, tt.payload)
			var se *transport.StatusError
			if err != nil && !errors.As(err, &se) {
				t.Fatalf("reply: %v", err)
			}
			if rep.Status != tt.want {
				t.Fatalf("status %v, want %v", rep.Status, tt.want)
			}
			if tt.want == transport.StatusOK && string(rest) != "ping" {
				t.Errorf("echo %q, want %q", rest, "ping")
			}
		})
	}
}

// FuzzServeStream drives whole streams (open request and data) through the
// relay's stream handling. The relay must answer every one with a status
// without crashing, dial only what its table allows, and relay data only
// after StatusOK.
func FuzzServeStream(f *testing.F) {
	seeds := [][]byte{
		{1, 1, 0x80, 0, 0, 0, 0, 0},
		append([]byte{1, 1, 0, 0, 0, 2, 0, 0}, "data"...),
		{1, 1, 0xff, 0xff, 0xff, 0xfe, 0, 0},
		{1, 2, 127, 0, 0, 1, 0x1b, 0x5a, 0, 0},
		{1, 2, 149, 154, 167, 51, 1, 187, 0, 0},
		{1, 3, 0x20, 1, 0x0b, 0x28, 0xf2, 0x3d, 0xf0, 1, 0, 0, 0, 0, 0, 0, 0, 0xa, 0x14, 0x66, 0, 0},
		{1, 1, 0, 0, 0, 2, 0, 4, 1, 2, 3, 4},
		{2},
		{},
	}
	for _, s := range seeds {
		f.Add(s)
	}
	rig := newStreamRig(f)
	f.Fuzz(func(t *testing.T, payload []byte) {
		if len(payload) > 1 && payload[1] == 4 {
			// Domain targets are resolved by the system's resolver,
			// which would take the fuzzer off this machine.
			return
		}
		rig.mu.Lock()
		rig.dialed = rig.dialed[:0]
		rig.mu.Unlock()
		rep, rest, err := rig.open(t, payload)
		var se *transport.StatusError
		if err != nil && !errors.As(err, &se) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("reply: %v", err)
		}
		if err != nil && rep.Status == transport.StatusOK {
			t.Fatalf("error %v with status ok", err)
		}
		rig.mu.Lock()
		dialed := append([]string(nil), rig.dialed...)
		rig.mu.Unlock()
		for _, a := range dialed {
			ap, perr := netip.ParseAddrPort(a)
			if perr != nil || !rig.tab.Allowed(ap) {
				t.Fatalf("relay dialed %q, which its table does not allow", a)
			}
		}
		if rep.Status != transport.StatusOK {
			if len(rest) > 0 {
				t.Fatalf("status %v followed by %d bytes", rep.Status, len(rest))
			}
			return
		}
		req, perr := transport.ReadOpenRequest(bytes.NewReader(payload))
		if perr != nil {
			t.Fatalf("status ok for an unparsable request: %v", perr)
		}
		if _, rerr := rig.tab.Resolve(context.Background(), nil, req.Target); rerr != nil {
			t.Fatalf("status ok for %v, which the table refuses: %v", req.Target, rerr)
		}
	})
}
