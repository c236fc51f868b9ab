package client_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/merpati/merpati/client/internal/telegramtest"
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/relay/relaytest"
	"github.com/merpati/merpati/transport/mtproxy"
)

// recordCounter notes the length of every TLS ApplicationData record the
// relay sends an app, as a censor on the path sees them.
type recordCounter struct {
	mu    sync.Mutex
	sizes []int
}

// startRecordTap starts a TCP forwarder on 127.0.0.1:0 to addr that counts
// the records coming back from addr into rc, and returns its address.
func startRecordTap(t *testing.T, addr string, rc *recordCounter) string {
	t.Helper()
	return relaytest.StartServer(t, func(app net.Conn) {
		var wg sync.WaitGroup
		defer wg.Wait()
		defer app.Close()
		up, err := net.Dial("tcp", addr)
		if err != nil {
			t.Errorf("record tap: %v", err)
			return
		}
		defer up.Close()
		wg.Go(func() {
			io.Copy(up, app)
			up.(*net.TCPConn).CloseWrite()
		})
		rc.copy(app, up)
	})
}

// copy forwards src to dst record by record, noting each ApplicationData
// record's length.
func (rc *recordCounter) copy(dst io.Writer, src io.Reader) {
	hdr := make([]byte, 5)
	buf := make([]byte, 1<<16)
	for {
		if _, err := io.ReadFull(src, hdr); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[3:]))
		if _, err := io.ReadFull(src, buf[:n]); err != nil {
			return
		}
		if hdr[0] == 0x17 {
			rc.mu.Lock()
			rc.sizes = append(rc.sizes, n)
			rc.mu.Unlock()
		}
		if _, err := dst.Write(append(hdr[:5:5], buf[:n]...)); err != nil {
			return
		}
	}
}

// histogram returns a line of counts of the sizes in buckets.
func histogram(sizes []int) string {
	bounds := []int{mtproxy.MinRecordLen, 64, 256, 1024, 4096, 16384, 16385}
	names := []string{"<17", "17-63", "64-255", "256-1023", "1024-4095", "4096-16383", "16384"}
	counts := make([]int, len(bounds))
	for _, n := range sizes {
		for i, b := range bounds {
			if n < b {
				counts[i]++
				break
			}
		}
	}
	var b strings.Builder
	for i, c := range counts {
		fmt.Fprintf(&b, " %s:%d", names[i], c)
	}
	return b.String()
}

// TestMTProxyRecordSizes runs gotd with an "ee" secret to the relay's
// MTProxy mode through a tap that reads the relay's FakeTLS records, over a
// session of key exchange and 200 RPCs: no record the relay sends is
// shorter than the 17 bytes of the shortest TLS 1.3 record (gotd's test DC
// writes each packet's length and body apart, and 4-byte records followed).
func TestMTProxyRecordSizes(t *testing.T) {
	relaytest.CheckLeaks(t)
	dc := telegramtest.StartDC(t, 2)
	cov := relaytest.StartCover(t)
	r := startRelay(t, cov, []string{"2=" + dc.Addr})
	_, s := addMTKey(t, r, "alice", access.Entry{})
	var rc recordCounter
	tap := startRecordTap(t, r.Addr, &rc)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	st, err := telegramtest.RunWithResolver(ctx, dc, gotdMTProxy(t, tap, s), 200)
	if err != nil {
		t.Fatalf("MTProto through the relay's MTProxy mode: %v", err)
	}
	if st.RPCs != 200 {
		t.Fatalf("%d RPCs answered, want 200", st.RPCs)
	}
	rc.mu.Lock()
	sizes := slices.Clone(rc.sizes)
	rc.mu.Unlock()
	t.Logf("%d relay->app records:%s", len(sizes), histogram(sizes))
	if len(sizes) < 200 {
		t.Fatalf("only %d records for 200 RPCs", len(sizes))
	}
	if m := slices.Min(sizes); m < mtproxy.MinRecordLen {
		t.Errorf("shortest record %d bytes, want at least %d", m, mtproxy.MinRecordLen)
	}
}
