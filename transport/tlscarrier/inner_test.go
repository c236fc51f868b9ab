package tlscarrier

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/net/http2"

	"github.com/merpati/merpati/transport"
)

// chromiumPreface is the plaintext of the first record Chromium 156
// (Debian's 156.0.8078.108) sends after its Finished: the connection
// preface, SETTINGS with HEADER_TABLE_SIZE 65536, ENABLE_PUSH 0,
// INITIAL_WINDOW_SIZE 6291456 and MAX_HEADER_LIST_SIZE 262144, and a
// connection WINDOW_UPDATE of 15663105, in one record whose length field
// reads chromiumPrefaceRecord. Measured by running it headless against
// nginx 1.22 (TLS 1.3, h2) on loopback with --ssl-key-log-file, captured
// with dumpcap and decoded with tshark (tls.record.length, http2.*): the
// record after the client's Finished was 87 bytes (92 on TCP), the next
// one its request HEADERS, 465 bytes for a GET / with 18 bytes of
// :authority.
var chromiumPreface = []byte(http2.ClientPreface +
	"\x00\x00\x18\x04\x00\x00\x00\x00\x00" +
	"\x00\x01\x00\x01\x00\x00" + "\x00\x02\x00\x00\x00\x00" +
	"\x00\x04\x00\x60\x00\x00" + "\x00\x06\x00\x04\x00\x00" +
	"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + "\x00\xef\x00\x01")

const chromiumPrefaceRecord = 87

// Bounds on the records that start a stream, as TLS record lengths: the
// client's lies where Chromium's request HEADERS records do (465 measured
// above, more or less with the name, path and headers of a page), the
// relay's is at least as long as a response HEADERS record (nginx's for a
// small static page: 133 bytes, 189 with its 47-byte body).
const (
	streamRecordMin = 400
	streamRecordMax = 520
	replyRecordMin  = 100
)

// The sizes of the key exchange a stream carries in the test: a client's
// messages and a datacenter's answers, each of a fixed size as MTProto's
// unencrypted key exchange has (the first with its obfuscated2 header).
var (
	mtprotoAsks    = []int{108, 340, 376}
	mtprotoAnswers = []int{84, 652, 72}
)

// TestInnerRecordSizes runs a real client and relay over loopback TCP, the
// client holding the key log, and reads the records on the wire: the
// first one after the handshake must be Chromium's, byte for byte, each
// stream's first client record must be the size of a browser's request
// HEADERS record, and each stream's first relay record must not be a
// tiny, fixed-size open reply.
func TestInnerRecordSizes(t *testing.T) {
	lab := startConfLab(t, func(c *recConn) { t.Errorf("the client reached the cover site") })
	var wc *wireConn
	var keys bytes.Buffer
	d, err := NewDialer(ClientConfig{
		Addr:       lab.l.Addr().String(),
		ServerName: confServerName,
		Pin:        lab.pin,
		Key:        lab.key,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			wc = &wireConn{Conn: c}
			return wc, nil
		},
		keyLog: &keys,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	// The relay answers each stream as a relay does, then plays a DC:
	// fixed-size answers to fixed-size messages, as MTProto's key
	// exchange has.
	relayDone := make(chan struct{})
	go func() {
		defer close(relayDone)
		rs, err := lab.l.Accept(ctx)
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer rs.Close()
		var wg sync.WaitGroup
		defer wg.Wait()
		for {
			st, err := rs.AcceptStream(ctx)
			if err != nil {
				return
			}
			wg.Go(func() {
				defer st.Close()
				if _, err := transport.ReadOpenRequest(st); err != nil {
					t.Errorf("relay: %v", err)
					return
				}
				if _, err := (transport.OpenReply{Status: transport.StatusOK}).WriteTo(st); err != nil {
					return
				}
				for i, n := range mtprotoAnswers {
					if _, err := io.ReadFull(st, make([]byte, mtprotoAsks[i])); err != nil {
						return
					}
					st.Write(make([]byte, n))
				}
				io.Copy(io.Discard, st)
				st.CloseWrite()
			})
		}
	}()

	s, err := d.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exchange := func(dc int32) error {
		st, err := s.OpenStream(ctx)
		if err != nil {
			return err
		}
		defer st.Close()
		if _, err := (transport.OpenRequest{Target: transport.DCTarget(dc)}).WriteTo(st); err != nil {
			return err
		}
		if _, err := transport.ReadOpenReply(st); err != nil {
			return err
		}
		for i, n := range mtprotoAsks {
			if _, err := st.Write(make([]byte, n)); err != nil {
				return err
			}
			if _, err := io.ReadFull(st, make([]byte, mtprotoAnswers[i])); err != nil {
				return err
			}
		}
		st.CloseWrite()
		_, err = io.Copy(io.Discard, st)
		return err
	}
	const sequential, concurrent = 3, 4
	for i := range sequential {
		if err := exchange(int32(i + 1)); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	errs := make(chan error, concurrent)
	for range concurrent {
		go func() { errs <- exchange(2) }()
	}
	for range concurrent {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	<-relayDone

	w := decodeWire(t, wc.snapshot(), keys.String())
	t.Logf("records (TLS record length; > client to relay, < relay to client; add 5 for TCP):\n%s", w)

	// The session's first record is Chromium's.
	first := w.firstApp(true)
	if first == nil {
		t.Fatal("no client record after the handshake")
	}
	if first.length != chromiumPrefaceRecord || !bytes.Equal(first.plain, chromiumPreface) {
		t.Errorf("first client record: %d bytes %x\nwant Chromium's %d bytes %x", first.length, first.plain, chromiumPrefaceRecord, chromiumPreface)
	}

	// Each stream's first record each way.
	opened := 0
	for _, out := range []bool{true, false} {
		for id, r := range w.streamStarts(out) {
			switch {
			case out:
				opened++
				if r.length < streamRecordMin || r.length > streamRecordMax {
					t.Errorf("stream %d: first client record of %d bytes, want %d-%d (a browser's request HEADERS record)", id, r.length, streamRecordMin, streamRecordMax)
				}
			case r.length < replyRecordMin:
				t.Errorf("stream %d: first relay record of %d bytes, want at least %d", id, r.length, replyRecordMin)
			}
		}
	}
	if opened != sequential+concurrent {
		t.Errorf("found %d streams on the wire, want %d", opened, sequential+concurrent)
	}
}

// A wireConn records, in order, what is written to and read from its Conn.
type wireConn struct {
	net.Conn
	mu     sync.Mutex
	events []wireEvent
}

// A wireEvent is the bytes of one Read (out false) or Write (out true).
type wireEvent struct {
	out bool
	b   []byte
}

func (c *wireConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.record(false, b[:n])
	return n, err
}

func (c *wireConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.record(true, b[:n])
	return n, err
}

func (c *wireConn) record(out bool, b []byte) {
	if len(b) == 0 {
		return
	}
	c.mu.Lock()
	c.events = append(c.events, wireEvent{out, bytes.Clone(b)})
	c.mu.Unlock()
}

func (c *wireConn) snapshot() []wireEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]wireEvent(nil), c.events...)
}

// A wireRecord is one TLS record, decrypted where it was encrypted.
type wireRecord struct {
	out    bool   // client to relay
	typ    byte   // outer content type
	length int    // the header's length field
	inner  byte   // inner content type of an encrypted record; 0 if plain
	app    bool   // encrypted under the application traffic secret
	plain  []byte // content of an application record (inner type 23)
	frames []wireH2
}

// A wireH2 is an HTTP/2 frame starting in a record.
type wireH2 struct {
	typ    http2.FrameType
	flags  http2.Flags
	stream uint32
	length int
}

// A wire is a connection's records in the order the client wrote or read
// them.
type wire []*wireRecord

func (w wire) String() string {
	var b strings.Builder
	for _, r := range w {
		dir := "<"
		if r.out {
			dir = ">"
		}
		fmt.Fprintf(&b, "%s%d", dir, r.length)
		switch {
		case r.typ == 22:
			b.WriteString(" handshake")
		case r.typ == 20:
			b.WriteString(" change_cipher_spec")
		case !r.app:
			b.WriteString(" encrypted handshake")
		case r.inner == 22:
			b.WriteString(" post-handshake (ticket)")
		}
		for _, f := range r.frames {
			fmt.Fprintf(&b, " %v(%d,%d,%v)", f.typ, f.stream, f.length, f.flags)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// firstApp returns the first application data record one way.
func (w wire) firstApp(out bool) *wireRecord {
	for _, r := range w {
		if r.out == out && r.app && r.inner == 23 {
			return r
		}
	}
	return nil
}

// streamStarts returns, for each stream, the record one way in which its
// HEADERS frame starts.
func (w wire) streamStarts(out bool) map[uint32]*wireRecord {
	m := map[uint32]*wireRecord{}
	for _, r := range w {
		if r.out != out {
			continue
		}
		for _, f := range r.frames {
			if f.typ == http2.FrameHeaders && m[f.stream] == nil {
				m[f.stream] = r
			}
		}
	}
	return m
}

// decodeWire splits the events into records, decrypts them with the
// secrets in keyLog (NSS key log format) and finds the HTTP/2 frames.
func decodeWire(t *testing.T, events []wireEvent, keyLog string) wire {
	t.Helper()
	secrets := map[string][]byte{}
	for line := range strings.Lines(keyLog) {
		f := strings.Fields(line)
		if len(f) == 3 {
			s, err := hex.DecodeString(f[2])
			if err != nil {
				t.Fatalf("key log: %v", err)
			}
			secrets[f[0]] = s
		}
	}
	var w wire
	var pending [2][]byte
	for _, e := range events {
		i := 0
		if e.out {
			i = 1
		}
		pending[i] = append(pending[i], e.b...)
		for len(pending[i]) >= 5 {
			n := int(binary.BigEndian.Uint16(pending[i][3:5]))
			if len(pending[i]) < 5+n {
				break
			}
			rec := pending[i][:5+n]
			pending[i] = pending[i][5+n:]
			w = append(w, &wireRecord{out: e.out, typ: rec[0], length: n, plain: rec})
		}
	}

	var suite uint16
	for _, r := range w {
		// ServerHello: record header, handshake header (4), version (2),
		// random (32), session id, then the cipher suite.
		if !r.out && r.typ == 22 && len(r.plain) > 44 {
			sid := int(r.plain[5+38])
			if off := 5 + 39 + sid; len(r.plain) >= off+2 {
				suite = binary.BigEndian.Uint16(r.plain[off:])
			}
			break
		}
	}
	dirs := []struct {
		out     bool
		hs, app string
	}{
		{true, "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"},
		{false, "SERVER_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0"},
	}
	for _, dir := range dirs {
		hs, app := newWireKey(t, suite, secrets[dir.hs]), newWireKey(t, suite, secrets[dir.app])
		var stream []byte
		var starts []*wireRecord // the record each byte of stream came in, by offset
		var offsets []int
		inApp := false
		for _, r := range w {
			if r.out != dir.out || r.typ != 23 {
				continue
			}
			hdr, body := r.plain[:5], r.plain[5:]
			var pt []byte
			var ok bool
			if !inApp {
				pt, ok = hs.open(hdr, body)
			}
			if !ok {
				if pt, ok = app.open(hdr, body); !ok {
					t.Fatalf("cannot decrypt a %d-byte record (suite %#04x)", r.length, suite)
				}
				inApp, r.app = true, true
			}
			pt = bytes.TrimRight(pt, "\x00")
			if len(pt) == 0 {
				t.Fatal("encrypted record without an inner content type")
			}
			r.inner, r.plain = pt[len(pt)-1], pt[:len(pt)-1]
			if r.app && r.inner == 23 {
				starts = append(starts, r)
				offsets = append(offsets, len(stream))
				stream = append(stream, r.plain...)
			}
		}
		off := 0
		if dir.out {
			off = len(http2.ClientPreface)
		}
		for k := 0; off+9 <= len(stream); {
			for k+1 < len(offsets) && offsets[k+1] <= off {
				k++
			}
			h := stream[off:]
			n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
			starts[k].frames = append(starts[k].frames, wireH2{
				typ:    http2.FrameType(h[3]),
				flags:  http2.Flags(h[4]),
				stream: binary.BigEndian.Uint32(h[5:9]) & (1<<31 - 1),
				length: n,
			})
			off += 9 + n
		}
	}
	for _, r := range w {
		if r.typ != 23 {
			r.plain = nil
		}
	}
	return w
}

// A wireKey decrypts one direction's records under one traffic secret
// (RFC 8446 section 5.3 and 7.3).
type wireKey struct {
	aead cipher.AEAD
	iv   []byte
	seq  uint64
}

func newWireKey(t *testing.T, suite uint16, secret []byte) *wireKey {
	t.Helper()
	if secret == nil {
		t.Fatal("key log lacks a traffic secret")
	}
	h, keyLen := sha256.New, 16
	switch suite {
	case 0x1301, 0x1303:
	case 0x1302:
		h, keyLen = sha512.New384, 32
	default:
		t.Fatalf("cipher suite %#04x", suite)
	}
	if suite == 0x1303 {
		keyLen = chacha20poly1305.KeySize
	}
	key, iv := expandLabel(t, h, secret, "key", keyLen), expandLabel(t, h, secret, "iv", 12)
	var aead cipher.AEAD
	var err error
	if suite == 0x1303 {
		aead, err = chacha20poly1305.New(key)
	} else {
		var b cipher.Block
		if b, err = aes.NewCipher(key); err == nil {
			aead, err = cipher.NewGCM(b)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return &wireKey{aead: aead, iv: iv}
}

// open decrypts the next record; on failure the sequence number stays.
func (k *wireKey) open(hdr, body []byte) ([]byte, bool) {
	nonce := bytes.Clone(k.iv)
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], k.seq)
	for i := range seq {
		nonce[4+i] ^= seq[i]
	}
	pt, err := k.aead.Open(nil, nonce, body, hdr)
	if err != nil {
		return nil, false
	}
	k.seq++
	return pt, true
}

// expandLabel is HKDF-Expand-Label with an empty context (RFC 8446
// section 7.1).
func expandLabel(t *testing.T, h func() hash.Hash, secret []byte, label string, n int) []byte {
	t.Helper()
	full := "tls13 " + label
	info := append([]byte{byte(n >> 8), byte(n), byte(len(full))}, full...)
	info = append(info, 0)
	out, err := hkdf.Expand(h, secret, string(info), n)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
