package mtproxy_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/mtproxy"
	"github.com/merpati/merpati/transport/mtproxy/mtproxytest"
)

// bufConn is a conn whose writes go to a buffer.
type bufConn struct {
	net.Conn
	buf bytes.Buffer
}

func (c *bufConn) Write(p []byte) (int, error) { return c.buf.Write(p) }

// readRecords splits b into TLS records and returns their payloads.
func readRecords(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var recs [][]byte
	for len(b) > 0 {
		if len(b) < 5 || b[0] != 0x17 || b[1] != 3 || b[2] != 3 {
			t.Fatalf("not an ApplicationData record: %x", b[:min(len(b), 5)])
		}
		n := int(binary.BigEndian.Uint16(b[3:]))
		if len(b) < 5+n {
			t.Fatalf("record of %d bytes cut short", n)
		}
		recs = append(recs, b[5:5+n])
		b = b[5+n:]
	}
	return recs
}

// TestTLSConnWriteRecords checks how writes are cut into records: at most
// 16 KiB each, as few as can be, none shorter than MinRecordLen unless
// the write is.
func TestTLSConnWriteRecords(t *testing.T) {
	for _, m := range []int{1, 16, 17, 100, 16384, 16385, 16400, 16401, 32768, 32769, 4*16384 + 5, 200_000} {
		c := &bufConn{}
		msg := make([]byte, m)
		rand.Read(msg)
		if n, err := mtproxy.NewTLSConn(c, nil).Write(msg); n != m || err != nil {
			t.Fatalf("%d bytes: wrote %d, %v", m, n, err)
		}
		recs := readRecords(t, c.buf.Bytes())
		if want := (m + 16383) / 16384; len(recs) != want {
			t.Errorf("%d bytes: %d records, want %d", m, len(recs), want)
		}
		for _, r := range recs {
			if len(r) > 16384 || len(r) < min(m, mtproxy.MinRecordLen) {
				t.Errorf("%d bytes: a record of %d", m, len(r))
			}
		}
		if !bytes.Equal(bytes.Join(recs, nil), msg) {
			t.Errorf("%d bytes: records do not carry the write", m)
		}
	}
}

// recordTap is a conn that notes the type and length of every TLS record
// read through it.
type recordTap struct {
	net.Conn
	mu   sync.Mutex
	hdr  []byte
	left int
	recs []record
}

type record struct {
	typ byte
	len int
}

func (c *recordTap) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	for b := p[:n]; len(b) > 0; {
		if c.left > 0 {
			k := min(c.left, len(b))
			c.left -= k
			b = b[k:]
			continue
		}
		c.hdr = append(c.hdr, b[0])
		b = b[1:]
		if len(c.hdr) == 5 {
			c.left = int(binary.BigEndian.Uint16(c.hdr[3:]))
			c.recs = append(c.recs, record{c.hdr[0], c.left})
			c.hdr = c.hdr[:0]
		}
	}
	return n, err
}

// appData returns the lengths of the ApplicationData records read so far.
func (c *recordTap) appData() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ns []int
	for _, r := range c.recs {
		if r.typ == 0x17 {
			ns = append(ns, r.len)
		}
	}
	return ns
}

// padded frames payload as a padded intermediate packet with pad bytes of
// padding.
func padded(payload []byte, pad int) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(payload)+pad))
	b = append(b, payload...)
	return append(b, make([]byte, pad)...)
}

// stripNOPs returns a padded intermediate stream without its NOP packets
// (a payload of under 16 bytes starting with a zero word).
func stripNOPs(t *testing.T, b []byte) []byte {
	t.Helper()
	var out []byte
	for len(b) > 0 {
		if len(b) < 4 {
			t.Fatalf("%d bytes after the last packet", len(b))
		}
		n := binary.LittleEndian.Uint32(b)
		if n&(1<<31) != 0 { // quick ack
			out = append(out, b[:4]...)
			b = b[4:]
			continue
		}
		if uint32(len(b)-4) < n {
			t.Fatalf("packet of %d bytes cut short at %d", n, len(b)-4)
		}
		pkt := b[:4+n]
		b = b[4+n:]
		if n >= 4 && n < 16 && binary.LittleEndian.Uint32(pkt[4:]) == 0 {
			continue
		}
		out = append(out, pkt...)
	}
	return out
}

// TestRelayStreamRecords plays a datacenter writing padded intermediate
// packets to a relay stream in awkward pieces (headers alone, a lone quick
// ack, a lone transport error, the last bytes of a large packet alone) and
// an app reading them over FakeTLS. No record the app gets is shorter than
// MinRecordLen, and the app gets the datacenter's packets, and NOPs.
func TestRelayStreamRecords(t *testing.T) {
	s, _ := mtproxy.NewSecret("cover.example.com")
	cli, srv := pipe(t)

	msg := make([]byte, 72)
	rand.Read(msg)
	large := make([]byte, 40_000)
	rand.Read(large)
	p1, p2 := padded(msg, 3), padded(large, 1)
	quickAck := []byte{0x11, 0x22, 0x33, 0x84}
	transportErr := padded([]byte{0x6c, 0xfe, 0xff, 0xff}, 0)
	chunks := [][]byte{
		p1[:4], p1[4:], // a header alone, as gotd's DC writes it
		quickAck,
		p1[:4], p1[4:10], p1[10:],
		transportErr,
		p2[:4], p2[4:32772], p2[32772 : len(p2)-3], p2[len(p2)-3:],
		bytes.Repeat(p1, 20),
		append(bytes.Clone(p1), p1[:10]...), p1[10:],
		quickAck, transportErr,
	}
	dcStream := bytes.Join(chunks, nil)

	errc := make(chan error, 1)
	go func() { errc <- serveDC(srv, s, chunks) }()

	tap := &recordTap{Conn: cli}
	c, err := mtproxytest.ClientHandshake(tap, s, mtproxytest.HelloRecord(t, s.Host), time.Now(), mtproxy.PaddedIntermediate, 2)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	cli.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stripNOPs(t, got), dcStream) {
		t.Fatalf("app got %d bytes (%d without NOPs), the DC sent %d", len(got), len(stripNOPs(t, got)), len(dcStream))
	}
	sizes := tap.appData()[1:] // the first is the server hello's
	for _, n := range sizes {
		if n < mtproxy.MinRecordLen {
			t.Fatalf("record sizes %v: one under %d", sizes, mtproxy.MinRecordLen)
		}
	}
	t.Logf("record sizes %v", sizes)
}

// serveDC accepts one app on srv as a relay does, answers its open request
// and writes chunks to its stream as the datacenter's, encrypted.
func serveDC(srv net.Conn, s mtproxy.Secret, chunks [][]byte) error {
	st, err := acceptRelayStream(srv, s)
	if err != nil {
		return err
	}
	defer st.Close()
	var init [mtproxy.InitLen]byte
	if _, err := io.ReadFull(st, init[:]); err != nil {
		return err
	}
	_, dc, err := mtproxy.AcceptInit(init, nil)
	if err != nil {
		return err
	}
	for _, c := range chunks {
		b := make([]byte, len(c))
		dc.Enc.XORKeyStream(b, c)
		if n, err := st.Write(b); n != len(b) || err != nil {
			return errors.Join(errors.New("write to the stream"), err)
		}
	}
	if err := st.CloseWrite(); err != nil {
		return err
	}
	// Wait for the app to close, so that st.Close does not cut its reads.
	io.Copy(io.Discard, st)
	return nil
}

// TestRelayStreamIdleMemory: a relay's MTProxy stream that has carried
// data both ways holds no buffer once idle. Each of n streams carries
// 256 KiB down (in the 64 KiB writes of a splice) and 256 KiB up, then
// stays open; the heap they hold is measured (both ends: this process is
// the app too). Before buffers were borrowed only while a write ran, each
// held 676 KB.
func TestRelayStreamIdleMemory(t *testing.T) {
	const n, size = 40, 256 << 10
	s, _ := mtproxy.NewSecret("cover.example.com")
	heap := func() uint64 {
		runtime.GC()
		runtime.GC() // the pools' victim caches go with the second
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	down := make([]byte, 64<<10)
	base := heap()
	var keep []any
	for range n {
		cli, srv := pipe(t)
		relayed := make(chan transport.Stream, 1)
		go func() {
			defer close(relayed)
			st, err := acceptRelayStream(srv, s)
			if err != nil {
				t.Error(err)
				return
			}
			relayed <- st
		}()
		app, err := mtproxytest.ClientHandshake(cli, s, mtproxytest.HelloRecord(t, s.Host), time.Now(), mtproxy.PaddedIntermediate, 2)
		if err != nil {
			t.Fatal(err)
		}
		st := <-relayed
		if st == nil {
			t.FailNow()
		}
		// Down: the relay writes the DC's bytes (one packet as long as
		// all of them, which the shaper passes on as they come).
		done := make(chan error, 1)
		go func() {
			if _, err := io.CopyN(io.Discard, app, size); err != nil {
				done <- err
				return
			}
			_, err := app.Write(make([]byte, size))
			done <- err
		}()
		hdr := binary.LittleEndian.AppendUint32(nil, size-4)
		if _, err := st.Write(append(hdr, down[:len(down)-4]...)); err != nil {
			t.Fatal(err)
		}
		for range size/len(down) - 1 {
			if _, err := st.Write(down); err != nil {
				t.Fatal(err)
			}
		}
		// Up: the relay reads the app's bytes into a splice's buffer.
		buf := make([]byte, 64<<10)
		if _, err := io.ReadFull(st, buf[:mtproxy.InitLen]); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < size; {
			m, err := st.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			got += m
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		keep = append(keep, st, app)
	}
	per := float64(heap()-base) / n
	runtime.KeepAlive(keep)
	t.Logf("%.1f KB of heap per idle stream (relay and app ends)", per/1000)
	if per > 48<<10 {
		t.Errorf("an idle stream holds %.1f KB of heap, want under 48 KiB", per/1000)
	}
}

// acceptRelayStream accepts one app on srv as a relay does and answers
// its open request, which must be for DC 2; the stream is then the
// relay's, with the relay's obfuscated2 init to be read first.
func acceptRelayStream(srv net.Conn, s mtproxy.Secret) (transport.Stream, error) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(srv, hdr); err != nil {
		return nil, err
	}
	rec := append(hdr, make([]byte, int(binary.BigEndian.Uint16(hdr[3:])))...)
	if _, err := io.ReadFull(srv, rec[5:]); err != nil {
		return nil, err
	}
	h, err := mtproxy.ParseClientHello(rec)
	if err != nil {
		return nil, err
	}
	app, in, err := mtproxy.AcceptApp(srv, nil, s.Key, h)
	if err != nil {
		return nil, err
	}
	st, err := mtproxy.NewRelayStream(app, in)
	if err != nil {
		return nil, err
	}
	req, err := transport.ReadOpenRequest(st)
	if err == nil && req.Target != transport.DCTarget(2) {
		err = errors.New("open request for another DC")
	}
	if err == nil {
		reply, _ := transport.OpenReply{Status: transport.StatusOK}.AppendBinary(nil)
		_, err = st.Write(reply)
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}
