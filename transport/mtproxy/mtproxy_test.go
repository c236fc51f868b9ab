package mtproxy_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	gotdproxy "github.com/gotd/td/mtproxy"
	"github.com/gotd/td/mtproxy/obfuscated2"
	"github.com/gotd/td/mtproxy/obfuscator"

	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
)

func TestSecretText(t *testing.T) {
	s, err := mtproxy.NewSecret("cover.example.com")
	if err != nil {
		t.Fatal(err)
	}
	raw := s.Bytes()
	b64 := base64.RawURLEncoding.EncodeToString(raw)
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"hex", s.String(), true},
		{"hex upper", strings.ToUpper(s.String()), true},
		{"base64url", b64, true},
		{"base64url padded", b64 + strings.Repeat("=", (4-len(b64)%4)%4), true},
		{"base64 std", strings.NewReplacer("-", "+", "_", "/").Replace(b64), true},
		{"spaces", "  " + s.String() + "\n", true},
		{"dd secret", "dd" + s.Key.String(), false},
		{"plain secret", s.Key.String(), false},
		{"no host", "ee" + s.Key.String(), false},
		{"garbage", "not a secret!", false},
		{"empty", "", false},
		{"host with space", "ee" + s.Key.String() + "6120620a", false},
	} {
		got, err := mtproxy.ParseSecret(tc.text)
		if tc.ok != (err == nil) {
			t.Errorf("%s: err %v", tc.name, err)
			continue
		}
		if tc.ok && (!bytes.Equal(got.Bytes(), raw) || got != s) {
			t.Errorf("%s: got %v want %v", tc.name, got, s)
		}
		if !tc.ok && !errors.Is(err, mtproxy.ErrSecret) {
			t.Errorf("%s: %v is not ErrSecret", tc.name, err)
		}
	}
	var back mtproxy.Secret
	text, _ := s.MarshalText()
	if err := back.UnmarshalText(text); err != nil || back != s {
		t.Fatalf("text round trip: %v %v", back, err)
	}
	var k mtproxy.Key
	if err := k.UnmarshalText([]byte(s.Key.String())); err != nil || k != s.Key {
		t.Fatalf("key round trip: %v", err)
	}
	if err := k.UnmarshalText([]byte("abcd")); err == nil {
		t.Fatal("short key accepted")
	}
}

func TestInitRoundTrip(t *testing.T) {
	secret := mtproxy.NewKey()
	for _, p := range []mtproxy.Protocol{mtproxy.Abridged, mtproxy.Intermediate, mtproxy.PaddedIntermediate} {
		for _, dc := range []int{1, 2, 5, -2, -4, 203, 10002, -10003} {
			for _, sec := range [][]byte{nil, secret[:]} {
				init, cli, err := mtproxy.NewInit(rand.Reader, p, dc, sec)
				if err != nil {
					t.Fatal(err)
				}
				in, srv, err := mtproxy.AcceptInit(init, sec)
				if err != nil {
					t.Fatalf("%x dc %d: %v", p, dc, err)
				}
				if in.Protocol != p || in.DC != dc {
					t.Fatalf("got %+v, want %x dc %d", in, p, dc)
				}
				msg := []byte("ping from the client")
				cli.Enc.XORKeyStream(msg, msg)
				srv.Dec.XORKeyStream(msg, msg)
				if string(msg) != "ping from the client" {
					t.Fatal("client→server stream out of step")
				}
				srv.Enc.XORKeyStream(msg, msg)
				cli.Dec.XORKeyStream(msg, msg)
				if string(msg) != "ping from the client" {
					t.Fatal("server→client stream out of step")
				}
			}
		}
	}
	init, _, _ := mtproxy.NewInit(rand.Reader, mtproxy.Intermediate, 2, secret[:])
	other := mtproxy.NewKey()
	if _, _, err := mtproxy.AcceptInit(init, other[:]); !errors.Is(err, mtproxy.ErrInit) {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, _, err := mtproxy.NewInit(rand.Reader, mtproxy.Protocol{1, 2, 3, 4}, 2, nil); err == nil {
		t.Fatal("unknown protocol accepted")
	}
	if _, _, err := mtproxy.NewInit(rand.Reader, mtproxy.Abridged, 40000, nil); err == nil {
		t.Fatal("DC out of range accepted")
	}
}

// TestInitGotd checks our obfuscated2 against gotd's, in both roles.
func TestInitGotd(t *testing.T) {
	secret := mtproxy.NewKey()
	for _, sec := range [][]byte{nil, secret[:]} {
		// gotd client → our server.
		var buf bytes.Buffer
		o := obfuscated2.NewObfuscated2(rand.Reader, &buf)
		if err := o.Handshake(mtproxy.PaddedIntermediate, -3, gotdproxy.Secret{Secret: sec}); err != nil {
			t.Fatal(err)
		}
		o.Write([]byte("hello DC"))
		var init [mtproxy.InitLen]byte
		copy(init[:], buf.Next(mtproxy.InitLen))
		in, c, err := mtproxy.AcceptInit(init, sec)
		if err != nil || in.Protocol != mtproxy.PaddedIntermediate || in.DC != -3 {
			t.Fatalf("gotd init: %+v %v", in, err)
		}
		rest := buf.Bytes()
		c.Dec.XORKeyStream(rest, rest)
		if string(rest) != "hello DC" {
			t.Fatalf("gotd payload: %q", rest)
		}

		// Our client → gotd's server.
		ini, cc, err := mtproxy.NewInit(rand.Reader, mtproxy.Abridged, 10002, sec)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("hello gotd")
		cc.Enc.XORKeyStream(msg, msg)
		rw, md, err := obfuscated2.Accept(bytes.NewBuffer(append(ini[:], msg...)), sec)
		if err != nil || md.Protocol != mtproxy.Abridged || int16(md.DC) != 10002 {
			t.Fatalf("gotd accept: %+v %v", md, err)
		}
		got, _ := io.ReadAll(rw)
		if string(got) != "hello gotd" {
			t.Fatalf("gotd read %q", got)
		}
	}
}

func TestClientHello(t *testing.T) {
	s, _ := mtproxy.NewSecret("cover.example.com")
	rec := mtproxytest.HelloRecord(t, s.Host)
	now := time.Now()
	if err := mtproxytest.SignClientHello(rec, s.Key, now); err != nil {
		t.Fatal(err)
	}
	h, err := mtproxy.ParseClientHello(rec)
	if err != nil {
		t.Fatal(err)
	}
	if h.ServerName != s.Host || len(h.SessionID) != 32 || len(h.CipherSuites) == 0 {
		t.Fatalf("parsed %+v", h)
	}
	for _, tc := range []struct {
		name string
		key  mtproxy.Key
		now  time.Time
		want error
	}{
		{"ok", s.Key, now, nil},
		{"skew", s.Key, now.Add(90 * time.Second), nil},
		{"future", s.Key, now.Add(-90 * time.Second), nil},
		{"stale", s.Key, now.Add(10 * time.Minute), mtproxy.ErrStale},
		{"too far ahead", s.Key, now.Add(-10 * time.Minute), mtproxy.ErrStale},
		{"wrong key", mtproxy.NewKey(), now, mtproxy.ErrDigest},
	} {
		if err := h.Verify(tc.key, tc.now, 2*time.Minute); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// A changed byte anywhere breaks the digest.
	rec[len(rec)-1] ^= 1
	h2, _ := mtproxy.ParseClientHello(rec)
	if h2 != nil {
		if _, ok := h2.Check(s.Key); ok {
			t.Fatal("tampered hello accepted")
		}
	}

	sh, err := mtproxy.ServerHello(s.Key, h, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := mtproxytest.ReadServerHello(bytes.NewReader(sh), h.Random, s.Key); err != nil {
		t.Fatalf("our own server hello: %v", err)
	}
	// Sized like a cover's flight (nginx with a 2.3 KB chain): ServerHello
	// and ChangeCipherSpec records, then one ApplicationData record of
	// exactly that many bytes, which apps take.
	sized, err := mtproxy.ServerHello(s.Key, h, 2691)
	if err != nil {
		t.Fatal(err)
	}
	if err := mtproxytest.ReadServerHello(bytes.NewReader(sized), h.Random, s.Key); err != nil {
		t.Fatalf("our own sized server hello: %v", err)
	}
	if tail := sized[len(sized)-2691-5:]; tail[0] != 0x17 || int(tail[3])<<8|int(tail[4]) != 2691 {
		t.Errorf("sized server hello ends with a %#x record of %d bytes, want ApplicationData of 2691", tail[0], int(tail[3])<<8|int(tail[4]))
	}
	if err := mtproxytest.ReadServerHello(bytes.NewReader(sh), h.Random, mtproxy.NewKey()); !errors.Is(err, mtproxytest.ErrServerHello) {
		t.Fatalf("server hello under another key: %v", err)
	}
}

func TestParseClientHelloErrors(t *testing.T) {
	good := mtproxytest.HelloRecord(t, "a.example")
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"http", []byte("GET / HTTP/1.1\r\n\r\n")},
		{"short header", good[:4]},
		{"truncated", good[:len(good)-1]},
		{"trailing", append(bytes.Clone(good), 0)},
		{"not client hello", append(append([]byte{}, good[:5]...), append([]byte{2}, good[6:]...)...)},
	} {
		if _, err := mtproxy.ParseClientHello(tc.b); !errors.Is(err, mtproxy.ErrHello) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}

// pipe returns two ends of a loopback TCP connection, which can
// half-close.
func pipe(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { a.Close(); r.c.Close() })
	return a, r.c
}

// serveOne accepts one FakeTLS connection on srv for s and echoes the
// plaintext back, reporting the init it saw.
func serveOne(t testing.TB, srv net.Conn, s mtproxy.Secret) <-chan mtproxy.Init {
	ch := make(chan mtproxy.Init, 1)
	go func() {
		defer close(ch)
		rec := make([]byte, 5)
		if _, err := io.ReadFull(srv, rec); err != nil {
			t.Error(err)
			return
		}
		rec = append(rec, make([]byte, int(rec[3])<<8|int(rec[4]))...)
		if _, err := io.ReadFull(srv, rec[5:]); err != nil {
			t.Error(err)
			return
		}
		h, err := mtproxy.ParseClientHello(rec)
		if err != nil {
			t.Error(err)
			return
		}
		if err := h.Verify(s.Key, time.Now(), time.Minute); err != nil {
			t.Error(err)
			return
		}
		app, in, err := mtproxy.AcceptApp(srv, nil, s.Key, h)
		if err != nil {
			t.Error(err)
			return
		}
		ch <- in
		io.Copy(app, app)
		app.CloseWrite()
	}()
	return ch
}

// TestGotdFakeTLS runs gotd's real MTProxy client code (FakeTLS then
// obfuscated2) against AcceptApp.
func TestGotdFakeTLS(t *testing.T) {
	s, _ := mtproxy.NewSecret("cover.example.com")
	cli, srv := pipe(t)
	inits := serveOne(t, srv, s)
	ps, err := gotdproxy.ParseSecret(s.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	oc := obfuscator.FakeTLS(rand.Reader, cli)
	if err := oc.Handshake(mtproxy.PaddedIntermediate, -2, ps); err != nil {
		t.Fatalf("gotd handshake: %v", err)
	}
	msg := make([]byte, 60_000) // gotd writes one record per Write: stay under 64 KiB
	rand.Read(msg)
	go oc.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(oc, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through gotd FakeTLS: %v", err)
	}
	if in := <-inits; in.Protocol != mtproxy.PaddedIntermediate || in.DC != -2 {
		t.Fatalf("init %+v", in)
	}
}

func TestClientHandshake(t *testing.T) {
	s, _ := mtproxy.NewSecret("cover.example.com")
	cli, srv := pipe(t)
	inits := serveOne(t, srv, s)
	c, err := mtproxytest.ClientHandshake(cli, s, mtproxytest.HelloRecord(t, s.Host), time.Now(), mtproxy.Abridged, 10003)
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 200_000)
	rand.Read(msg)
	go func() { c.Write(msg); c.CloseWrite() }()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	if in := <-inits; in.Protocol != mtproxy.Abridged || in.DC != 10003 {
		t.Fatalf("init %+v", in)
	}
}

func FuzzParseClientHello(f *testing.F) {
	s, _ := mtproxy.NewSecret("cover.example.com")
	rec := mtproxytest.HelloRecord(f, s.Host)
	mtproxytest.SignClientHello(rec, s.Key, time.Now())
	f.Add(rec)
	f.Add([]byte("\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := mtproxy.ParseClientHello(b)
		if err != nil {
			if h != nil {
				t.Fatal("hello and error")
			}
			return
		}
		h.Verify(s.Key, time.Now(), time.Minute)
		sh, err := mtproxy.ServerHello(s.Key, h, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := mtproxytest.ReadServerHello(bytes.NewReader(sh), h.Random, s.Key); err != nil {
			t.Fatalf("server hello for a parsed hello: %v", err)
		}
		// Whatever parses can be signed, and then checks out.
		signed := bytes.Clone(b)
		at := time.Unix(1_700_000_000, 0)
		if err := mtproxytest.SignClientHello(signed, s.Key, at); err != nil {
			t.Fatal(err)
		}
		h2, err := mtproxy.ParseClientHello(signed)
		if err != nil {
			t.Fatalf("signed hello no longer parses: %v", err)
		}
		if ts, ok := h2.Check(s.Key); !ok || !ts.Equal(at) {
			t.Fatalf("signed hello: %v %v", ts, ok)
		}
	})
}

func FuzzAcceptInit(f *testing.F) {
	key := mtproxy.NewKey()
	init, _, _ := mtproxy.NewInit(rand.Reader, mtproxy.Intermediate, -2, key[:])
	f.Add(init[:], true)
	init, _, _ = mtproxy.NewInit(rand.Reader, mtproxy.Abridged, 10002, nil)
	f.Add(init[:], false)
	f.Fuzz(func(t *testing.T, b []byte, withSecret bool) {
		var in [mtproxy.InitLen]byte
		copy(in[:], b)
		var sec []byte
		if withSecret {
			sec = key[:]
		}
		got, _, err := mtproxy.AcceptInit(in, sec)
		if err == nil && (!got.Protocol.Valid() || got.DC < -1<<15 || got.DC >= 1<<15) {
			t.Fatalf("accepted %+v", got)
		}
	})
}

// FuzzTLSConnRead reads b through a TLSConn, with read sizes and a split
// between bytes read ahead and the conn taken from the input, and checks
// what it gets against a plain record parser: the payloads of the
// ApplicationData records up to an alert, an error or the end.
func FuzzTLSConnRead(f *testing.F) {
	f.Add([]byte("\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x03abc"), uint16(7), uint8(3))
	f.Add([]byte("\x17\x03\x03\x00\x05ab"), uint16(0), uint8(1))
	f.Add([]byte("\x15\x03\x03\x00\x02\x01\x00"), uint16(2), uint8(0))
	f.Add([]byte("\x17\x03\x03\x00\x02ab\x17\x03\x03\x00\x01c\x16\x03\x03\x00\x00"), uint16(9), uint8(2))
	f.Fuzz(func(t *testing.T, b []byte, split uint16, step uint8) {
		want, clean := parseRecords(b)
		conn := readerConn{r: bytes.NewReader(b[min(int(split), len(b)):])}
		var ahead io.Reader
		if split > 0 {
			ahead = bytes.NewReader(b[:min(int(split), len(b))])
		}
		c := mtproxy.NewTLSConn(conn, ahead)
		var got []byte
		buf := make([]byte, int(step)+1)
		var err error
		for err == nil {
			var n int
			n, err = c.Read(buf)
			got = append(got, buf[:n]...)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("read %x, want %x (%v)", got, want, err)
		}
		if clean != (err == io.EOF) {
			t.Fatalf("ended with %v; the input ends cleanly: %v", err, clean)
		}
	})
}

// parseRecords returns the ApplicationData payloads of the records in b,
// up to an alert, a record a TLSConn refuses, or the end, and whether b
// ends cleanly (an alert, or the end of a whole record).
func parseRecords(b []byte) (payload []byte, clean bool) {
	for {
		if len(b) == 0 {
			return payload, true
		}
		if len(b) < 5 {
			return payload, false
		}
		typ, n := b[0], int(binary.BigEndian.Uint16(b[3:5]))
		switch {
		case b[1] != 3:
			return payload, false
		case typ == 0x15:
			return payload, true
		case typ == 0x17, typ == 0x14 && n == 1:
		default:
			return payload, false
		}
		rest := b[5:]
		if typ == 0x17 {
			payload = append(payload, rest[:min(n, len(rest))]...)
		}
		if len(rest) < n {
			return payload, false
		}
		b = rest[n:]
	}
}

// readerConn is a conn whose reads come from r.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func TestTLSConnRead(t *testing.T) {
	rec := func(typ byte, payload string) string {
		return string([]byte{typ, 3, 3, byte(len(payload) >> 8), byte(len(payload))}) + payload
	}
	for _, tc := range []struct {
		name  string
		in    string
		reads []string // what successive Reads with a large buffer return
		err   error    // the error after them
	}{
		{"records coalesce", rec(0x14, "\x01") + rec(0x17, "abc") + rec(0x17, "def"), []string{"abcdef"}, io.EOF},
		{"empty record", rec(0x17, "") + rec(0x17, "xy"), []string{"xy"}, io.EOF},
		{"alert ends", rec(0x17, "abc") + rec(0x15, "\x01\x00") + rec(0x17, "zzz"), []string{"abc"}, io.EOF},
		{"truncated", rec(0x17, "abc")[:6], []string{"a"}, io.ErrUnexpectedEOF},
		{"bad type", rec(0x17, "ok") + rec(0x16, "hs"), []string{"ok"}, nil},
	} {
		for _, ahead := range []bool{false, true} {
			conn := readerConn{r: strings.NewReader(tc.in)}
			var r io.Reader
			if ahead {
				// 16 bytes read ahead, as the relay's hello reader
				// holds what came after the hello: read first, then
				// the rest from the conn.
				br := bufio.NewReaderSize(conn, 16)
				br.Peek(1)
				r = br
			}
			c := mtproxy.NewTLSConn(conn, r)
			var got string
			buf := make([]byte, 100)
			var err error
			for err == nil && len(got) < len(strings.Join(tc.reads, "")) {
				var n int
				n, err = c.Read(buf)
				got += string(buf[:n])
				if !ahead && string(buf[:n]) != tc.reads[0] {
					t.Errorf("%s: read %q, want %q at once (%v)", tc.name, buf[:n], tc.reads[0], err)
				}
			}
			if want := strings.Join(tc.reads, ""); got != want {
				t.Errorf("%s (ahead %v): read %q, want %q", tc.name, ahead, got, want)
			}
			if err == nil {
				_, err = c.Read(buf)
			}
			if tc.err != nil && !errors.Is(err, tc.err) || tc.err == nil && err == nil {
				t.Errorf("%s (ahead %v): error %v, want %v", tc.name, ahead, err, tc.err)
			}
		}
	}
}
