package client_test

// Benchmarks of MTProxy mode: one app connection (FakeTLS + obfuscated2
// with an "ee" secret) through the relay's direct mode, and through the
// client's local front and the TLS carrier, each against plain
// obfuscated2 straight to the same local "DC" in the same run.

import (
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/link"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
)

// startObfsDC starts a stand-in datacenter on 127.0.0.1:0 that accepts
// obfuscated2 without a secret, as Telegram's DCs do, and serves each
// connection's plaintext with serve.
func startObfsDC(tb testing.TB, serve func(net.Conn)) string {
	tb.Helper()
	return relaytest.StartServer(tb, func(c net.Conn) {
		defer c.Close()
		var init [mtproxy.InitLen]byte
		if _, err := io.ReadFull(c, init[:]); err != nil {
			return
		}
		_, ciph, err := mtproxy.AcceptInit(init, nil)
		if err != nil {
			return
		}
		serve(mtproxy.NewObfsConn(c, ciph))
	})
}

func serveEcho(c net.Conn) { io.Copy(c, c) }

// mtBench is the lab of the MTProxy benchmarks: DCs 2 (sink), 3 (source)
// and 4 (echo) behind a relay, and a client with a local front.
type mtBench struct {
	dcs    map[int]string // DC number → address, for plain obfuscated2
	relay  string
	secret mtproxy.Secret
	front  string
	fsec   mtproxy.Secret
	hello  []byte
}

func startMTBench(b *testing.B) *mtBench {
	b.Helper()
	m := &mtBench{dcs: map[int]string{
		2: startObfsDC(b, relaytest.ServeSink),
		3: startObfsDC(b, relaytest.ServeSource),
		4: startObfsDC(b, serveEcho),
	}}
	cov := relaytest.StartCover(b)
	r := startRelay(b, cov, []string{"2=" + m.dcs[2], "3=" + m.dcs[3], "4=" + m.dcs[4]})
	var l *link.Link
	l, m.secret = addMTKey(b, r, "bench", access.Entry{})
	l.Carriers = []string{link.CarrierTLS}
	m.relay = r.Addr
	c, _ := startClient(b, l, nil)
	m.front, m.fsec = startFront(b, c)
	m.hello = mtproxytest.HelloRecord(b, relaytest.CoverName)
	return m
}

// dial opens one app connection to DC dc along path: "plain" is
// obfuscated2 straight to the DC, "relay" is FakeTLS to the relay's direct
// mode, "front" is FakeTLS to the client's local front.
func (m *mtBench) dial(b *testing.B, path string, dc int) *mtproxy.ObfsConn {
	b.Helper()
	addr, s := m.relay, m.secret
	switch path {
	case "plain":
		c, err := net.Dial("tcp", m.dcs[dc])
		if err != nil {
			b.Fatal(err)
		}
		o, err := mtproxy.StartDC(c, mtproxy.PaddedIntermediate, dc)
		if err != nil {
			b.Fatal(err)
		}
		return o
	case "front":
		addr, s = m.front, m.fsec
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	o, err := mtproxytest.ClientHandshake(c, s, m.hello, time.Now(), mtproxy.PaddedIntermediate, dc)
	if err != nil {
		b.Fatal(err)
	}
	return o
}

var mtPaths = []string{"plain", "relay", "front"}

// BenchmarkMTProxyThroughput measures bulk transfer on one app connection
// along each path: path=plain is the baseline.
func BenchmarkMTProxyThroughput(b *testing.B) {
	m := startMTBench(b)
	for _, path := range mtPaths {
		for _, dir := range []struct {
			name string
			dc   int
			run  func(*testing.B, halfCloser)
		}{{"up", 2, upload}, {"down", 3, download}} {
			b.Run("path="+path+"/dir="+dir.name, func(b *testing.B) {
				b.SetBytes(benchChunk)
				c := m.dial(b, path, dir.dc)
				defer c.Close()
				dir.run(b, c)
			})
		}
	}
}

// BenchmarkMTProxyHandshake measures a new app connection along each
// path: dial, FakeTLS and obfuscated2 handshakes, the relay's dial of the
// DC, and one byte to the echo DC and back.
func BenchmarkMTProxyHandshake(b *testing.B) {
	m := startMTBench(b)
	for _, path := range mtPaths {
		b.Run("path="+path, func(b *testing.B) {
			for b.Loop() {
				c := m.dial(b, path, 4)
				pingPong(b, c)
				c.Close()
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// TestMTProxyBenchPaths runs each benchmark path once, so that the lab
// behind the benchmarks is checked by every test run.
func TestMTProxyBenchPaths(t *testing.T) {
	relaytest.CheckLeaks(t)
	res := testing.Benchmark(func(b *testing.B) {
		m := startMTBench(b)
		for _, path := range mtPaths {
			c := m.dial(b, path, 4)
			msg := make([]byte, 100_000)
			rand.Read(msg)
			go c.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
				b.Fatalf("path %s: echo: %v", path, err)
			}
			c.Close()
		}
	})
	if res.N == 0 {
		t.Fatal("benchmark lab failed")
	}
}
