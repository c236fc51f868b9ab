package h2mux

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"testing/synctest"

	"golang.org/x/net/http2"
)

// chromePreface is what Chromium 156 writes first, in one record, after
// its TLS Finished (measured with tshark against nginx): the connection
// preface, SETTINGS HEADER_TABLE_SIZE 65536, ENABLE_PUSH 0,
// INITIAL_WINDOW_SIZE 6291456, MAX_HEADER_LIST_SIZE 262144, and a
// connection WINDOW_UPDATE of 15663105.
var chromePreface = []byte(http2.ClientPreface +
	"\x00\x00\x18\x04\x00\x00\x00\x00\x00" +
	"\x00\x01\x00\x01\x00\x00" + "\x00\x02\x00\x00\x00\x00" +
	"\x00\x04\x00\x60\x00\x00" + "\x00\x06\x00\x04\x00\x00" +
	"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + "\x00\xef\x00\x01")

// A flushConn records the bytes of each Write. A session writes through a
// buffered writer, so each Write is one flush: one record on TLS.
type flushConn struct {
	net.Conn
	mu     sync.Mutex
	writes [][]byte
}

func (c *flushConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.writes = append(c.writes, bytes.Clone(p[:n]))
	c.mu.Unlock()
	return n, err
}

// A flushFrame is a frame a flushConn carried, and the Write it started in.
type flushFrame struct {
	write   int
	typ     http2.FrameType
	flags   http2.Flags
	stream  uint32
	payload []byte
}

// frames parses what was written, after skip bytes of preface.
func (c *flushConn) frames(t *testing.T, skip int) []flushFrame {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var all []byte
	var starts []int
	for _, w := range c.writes {
		starts = append(starts, len(all))
		all = append(all, w...)
	}
	var fs []flushFrame
	w := 0
	for off := skip; off < len(all); {
		if len(all)-off < frameHeaderSz {
			t.Fatalf("%d bytes left over after the last frame", len(all)-off)
		}
		for w+1 < len(starts) && starts[w+1] <= off {
			w++
		}
		h := all[off:]
		n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
		fs = append(fs, flushFrame{
			write:   w,
			typ:     http2.FrameType(h[3]),
			flags:   http2.Flags(h[4]),
			stream:  binary.BigEndian.Uint32(h[5:9]) & maxStreamID,
			payload: h[frameHeaderSz : frameHeaderSz+n],
		})
		off += frameHeaderSz + n
	}
	return fs
}

// sum returns the total of the payload lengths of frames of type typ on
// stream id (all streams if id is ^0), and of WINDOW_UPDATE increments.
func sum(frames []flushFrame, typ http2.FrameType, id uint32) int64 {
	var n int64
	for _, f := range frames {
		if f.typ != typ || (id != ^uint32(0) && f.stream != id) {
			continue
		}
		if typ == http2.FrameWindowUpdate {
			n += int64(binary.BigEndian.Uint32(f.payload) & maxWindow)
		} else {
			n += int64(len(f.payload))
		}
	}
	return n
}

// flightPair starts a client and a server over net.Pipe, recording what
// each writes; the server answers each stream with a 4-byte reply (as a
// relay's open reply) and then echoes it message by message.
func flightPair(t *testing.T, ccfg, scfg Config) (cs, ss *Session, cw, sw *flushConn) {
	t.Helper()
	c, s := net.Pipe()
	cw, sw = &flushConn{Conn: c}, &flushConn{Conn: s}
	cs, err := Client(cw, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	ss, err = Server(sw, scfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			st, err := ss.AcceptStream(context.Background())
			if err != nil {
				return
			}
			wg.Go(func() {
				defer st.Close()
				buf := make([]byte, 64<<10)
				if _, err := io.ReadFull(st, buf[:8]); err != nil {
					return
				}
				if _, err := st.Write([]byte("ok!\n")); err != nil {
					return
				}
				for {
					n, err := st.Read(buf)
					if err != nil {
						st.CloseWrite()
						return
					}
					if _, err := st.Write(buf[:n]); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		cs.Close()
		ss.Close()
		wg.Wait()
	})
	return cs, ss, cw, sw
}

// flightStream opens a stream, writes an 8-byte request, reads the reply,
// then sends each message and, with echo, reads its echo before the next;
// without, it reads the echoes as they come.
func flightStream(cs *Session, msgs []int, echo bool) error {
	st, err := cs.OpenStream(context.Background())
	if err != nil {
		return err
	}
	defer st.Close()
	if _, err := st.Write([]byte("request!")); err != nil {
		return err
	}
	reply := make([]byte, 4)
	if _, err := io.ReadFull(st, reply); err != nil || string(reply) != "ok!\n" {
		return fmt.Errorf("reply %q, %v", reply, err)
	}
	var sent bytes.Buffer
	var got []byte
	var rerr error
	var wg sync.WaitGroup
	if !echo {
		wg.Go(func() { got, rerr = io.ReadAll(st) })
	}
	for _, n := range msgs {
		msg := make([]byte, n)
		rand.Read(msg)
		sent.Write(msg)
		if _, err := st.Write(msg); err != nil {
			return err
		}
		if echo {
			back := make([]byte, n)
			if _, err := io.ReadFull(st, back); err != nil {
				return err
			}
			got = append(got, back...)
		}
	}
	st.CloseWrite()
	if echo {
		var rest []byte
		rest, rerr = io.ReadAll(st)
		got = append(got, rest...)
	}
	wg.Wait()
	if rerr != nil || !bytes.Equal(got, sent.Bytes()) {
		return fmt.Errorf("echo of %d bytes: %d bytes back, %v (equal %v)", sent.Len(), len(got), rerr, bytes.Equal(got, sent.Bytes()))
	}
	return nil
}

// TestFirstFlight checks what each side writes: the client's first write
// is Chromium's preface flight byte for byte; each stream's first flight
// (HEADERS and the DATA written with it) is one write of its own, padded
// to a random size in its side's range; the next paddedWrites DATA
// writes each way are padded and later ones are not; and the data
// arrives without its padding.
func TestFirstFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cs, _, cw, sw := flightPair(t, Config{}, Config{})
		msgs := []int{108, 340, 376, 72, 1000, 9}
		const streams = 12
		for range streams {
			if err := flightStream(cs, msgs, true); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()

		if got := cw.writes[0]; !bytes.Equal(got, chromePreface) {
			t.Errorf("client's first write:\n%x\nwant Chromium's\n%x", got, chromePreface)
		}
		for _, side := range []struct {
			name     string
			w        *flushConn
			skip     int
			min, max int
		}{
			{"client", cw, len(http2.ClientPreface), clientFlightMin, clientFlightMax},
			{"server", sw, 0, serverFlightMin, serverFlightMax},
		} {
			frames := side.w.frames(t, side.skip)
			sizes := map[int]bool{}
			nflights := 0
			for _, h := range frames {
				if h.typ != http2.FrameHeaders {
					continue
				}
				nflights++
				if h.flags&http2.FlagHeadersPadded == 0 {
					t.Errorf("%s: stream %d: HEADERS not padded", side.name, h.stream)
				}
				w := side.w.writes[h.write]
				if len(w) < side.min || len(w) > side.max+1 {
					t.Errorf("%s: stream %d: first flight of %d bytes, want %d-%d", side.name, h.stream, len(w), side.min, side.max)
				}
				sizes[len(w)] = true
				for _, f := range frames {
					if f.write == h.write && f.stream != h.stream {
						t.Errorf("%s: stream %d's flight shares its write with a %v frame of stream %d", side.name, h.stream, f.typ, f.stream)
					}
				}
				// The DATA frames after the flight: the next
				// paddedWrites padded, the rest not.
				k := 0
				for _, f := range frames {
					if f.stream != h.stream || f.typ != http2.FrameData || f.write == h.write || len(f.payload) == 0 {
						continue
					}
					padded := f.flags&http2.FlagDataPadded != 0
					if padded != (k < paddedWrites) {
						t.Errorf("%s: stream %d: DATA write %d after the flight: padded %v", side.name, h.stream, k+1, padded)
					}
					k++
				}
				if k != len(msgs) {
					t.Errorf("%s: stream %d: %d DATA frames after the flight, want %d", side.name, h.stream, k, len(msgs))
				}
			}
			if nflights != streams {
				t.Errorf("%s: %d flights, want %d", side.name, nflights, streams)
			}
			if len(sizes) < 3 {
				t.Errorf("%s: %d flights had only %d sizes", side.name, streams, len(sizes))
			}
		}
	})
}

// TestPaddingWindows runs many padded streams through small windows: if
// padding were not counted as the windows say (sent, and returned by the
// receiver once read), the sessions would stall or fail with
// FLOW_CONTROL_ERROR. At the end both sides' books agree with the wire:
// the sender's window is what it was given less every DATA payload,
// padding included, and the receiver owes back exactly what it has not
// yet returned.
func TestPaddingWindows(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		small := Config{MaxStreamWindow: initialWindow, MaxConnWindow: initialWindow}
		cs, ss, cw, sw := flightPair(t, small, small)
		var wg sync.WaitGroup
		for range 40 {
			wg.Go(func() {
				if err := flightStream(cs, []int{200, 30000, 5, 16384, 70000}, false); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		synctest.Wait()

		cf := cw.frames(t, len(http2.ClientPreface))
		sf := sw.frames(t, 0)
		if pad := sum(cf, http2.FrameData, ^uint32(0)) - 40*(8+200+30000+5+16384+70000); pad <= 0 {
			t.Fatalf("client sent %d bytes of padding", pad)
		}
		for _, side := range []struct {
			name       string
			s          *Session
			sent, recv []flushFrame
		}{
			{"client", cs, cf, sf},
			{"server", ss, sf, cf},
		} {
			all := ^uint32(0)
			sent := sum(side.sent, http2.FrameData, all)
			recv := sum(side.recv, http2.FrameData, all)
			given := sum(side.recv, http2.FrameWindowUpdate, 0)    // connection updates the peer sent us
			returned := sum(side.sent, http2.FrameWindowUpdate, 0) // and we sent it
			side.s.mu.Lock()
			if got, want := side.s.connSend, initialWindow+given-sent; got != want {
				t.Errorf("%s: connection send window %d, want %d (65535 + %d given - %d sent)", side.name, got, want, given, sent)
			}
			if got, want := side.s.connRecv, initialWindow-recv+returned; got != want {
				t.Errorf("%s: connection receive window %d, want %d (65535 - %d received + %d returned)", side.name, got, want, recv, returned)
			}
			if got, want := side.s.connUnacked, recv-returned; got != want {
				t.Errorf("%s: owes back %d bytes, want %d (all %d received were read)", side.name, got, want, recv)
			}
			side.s.mu.Unlock()
		}
	})
}

// TestPaddedFramesReceived sends an h2mux server padded HEADERS and DATA:
// the data arrives without the padding, the server returns padding
// without the application reading it, and padding counts against the
// window: a frame whose data fits but whose padding does not is a
// flow-control error.
func TestPaddedFramesReceived(t *testing.T) {
	rc, ss := newRawClient(t, Config{MaxStreamWindow: initialWindow})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer rc.conn.Close()
	got := make(chan []byte, 1)
	wg.Go(func() {
		st, err := ss.AcceptStream(context.Background())
		if err != nil {
			return
		}
		b := make([]byte, 5)
		io.ReadFull(st, b)
		got <- b
	})
	updates := make(chan uint32, 64)
	goaway := make(chan http2.ErrCode, 1)
	wg.Go(func() {
		for {
			f, err := rc.fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.WindowUpdateFrame:
				if f.StreamID == 1 {
					updates <- f.Increment
				}
			case *http2.GoAwayFrame:
				goaway <- f.ErrCode
				return
			}
		}
	})
	if _, err := rc.conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	block := []byte{0x83, 0x87, 0x84, 0x41, 0x01, 'x'} // POST https / x
	for _, id := range []uint32{1, 3} {
		if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, PadLength: 200}); err != nil {
			t.Fatal(err)
		}
	}
	pad := make([]byte, maxPadLen)
	if err := rc.fr.WriteDataPadded(1, false, []byte("hello"), pad); err != nil {
		t.Fatal(err)
	}
	if b := <-got; string(b) != "hello" {
		t.Fatalf("read %q, want hello", b)
	}
	// Padding alone, beyond half the stream window: the server returns
	// it although nobody reads.
	sent := 1 + 5 + maxPadLen
	for sent < initialWindow/2+1000 {
		if err := rc.fr.WriteDataPadded(1, false, nil, pad); err != nil {
			t.Fatal(err)
		}
		sent += 1 + maxPadLen
	}
	select {
	case inc := <-updates:
		if inc < initialWindow/2 {
			t.Errorf("stream WINDOW_UPDATE of %d after %d bytes of padding", inc, sent)
		}
	case <-ctxT(t).Done():
		t.Fatal("padding was not returned")
	}

	// Stream 3, nobody reading: 65280 bytes of data fit its window of
	// 65535, but not with the last frame's 256 bytes of padding.
	full := make([]byte, minFrameSize)
	for range 3 {
		if err := rc.fr.WriteData(3, false, full); err != nil {
			t.Fatal(err)
		}
	}
	if err := rc.fr.WriteDataPadded(3, false, full[:minFrameSize-1-maxPadLen], pad); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-goaway:
		if code != http2.ErrCodeFlowControl {
			t.Fatalf("GOAWAY %v, want FLOW_CONTROL_ERROR", code)
		}
	case <-ctxT(t).Done():
		t.Fatal("no GOAWAY for padded DATA beyond the window")
	}
}
