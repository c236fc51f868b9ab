package relaytest

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

func probeCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// logView logs what a prober saw of a server.
func logView(t *testing.T, name string, q *QUICView, h *H2View) {
	t.Helper()
	if q != nil {
		t.Logf("%s h3: ALPN %s, version %v, SCID %d bytes, certs %s", name, q.ALPN, q.Version, q.SCIDLen, describeChain(q.Certs))
		t.Logf("%s h3: transport parameters %+v", name, q.TransportParams)
		t.Logf("%s h3: SETTINGS %s, control frames %s, uni streams %s", name, settingsString(q.Settings), greaseList(q.ControlFrames), greaseList(q.UniStreams))
		t.Logf("%s h3: version negotiation %s", name, vnString(q.VersionNegotiation))
		t.Logf("%s h3: handshake datagrams %v", name, q.Handshake)
		t.Logf("%s h3: %d %v, %d-byte body, first GET %v, mean GET %v", name, q.Status, q.Header, len(q.Body), q.FirstGET, q.MeanGET)
	}
	if h != nil {
		t.Logf("%s h2: %d %v, %d-byte body, first GET %v, mean GET %v", name, h.Status, h.Header, len(h.Body), h.FirstGET, h.MeanGET)
	}
	if q != nil && h != nil {
		t.Logf("%s: h3/h2 mean GET ratio %.2f", name, float64(q.MeanGET)/float64(h.MeanGET))
	}
}

func TestCoverQUICView(t *testing.T) {
	CheckLeaks(t)
	cov := StartCover(t)
	ctx := probeCtx(t)
	a, err := ProbeQUIC(ctx, cov.Addr())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ProbeQUIC(ctx, cov.Addr())
	if err != nil {
		t.Fatal(err)
	}
	h, err := ProbeH2(ctx, cov.Addr())
	if err != nil {
		t.Fatal(err)
	}
	logView(t, "Go cover", a, h)
	if d := a.Diff(b); len(d) > 0 {
		t.Errorf("two probes of one cover differ:\n%s", strings.Join(d, "\n"))
	}
	if a.Status != http.StatusOK || string(a.Body) != CoverPage || !bytes.Equal(a.Body, h.Body) {
		t.Errorf("h3 %d %q, h2 %q; want the cover page on both", a.Status, a.Body, h.Body)
	}
	if !equalChains(a.Certs, h.Certs) || len(a.Certs) == 0 {
		t.Error("the cover's QUIC and TCP certificate chains differ")
	}
	if a.ALPN != "h3" || a.TransportParams == nil || a.Settings == nil || a.VersionNegotiation == nil || len(a.Handshake) == 0 {
		t.Errorf("incomplete view: ALPN %q, TPs %v, SETTINGS %v, VN %v, handshake %v",
			a.ALPN, a.TransportParams, a.Settings, a.VersionNegotiation, a.Handshake)
	}
	port := cov.Addr()[strings.LastIndexByte(cov.Addr(), ':')+1:]
	if got, want := h.Header.Get("Alt-Svc"), `h3=":`+port+`"; ma=86400`; got != want {
		t.Errorf("h2 Alt-Svc %q, want %q", got, want)
	}
	// The two transports answer alike, Alt-Svc aside.
	h.Header.Del("Alt-Svc")
	if d := a.HTTPView.Diff(&h.HTTPView); len(d) > 0 {
		t.Errorf("the cover's h3 and h2 answers differ:\n%s", strings.Join(d, "\n"))
	}
	if n := cov.AcceptedQUIC(); n != 2 {
		t.Errorf("AcceptedQUIC = %d, want 2", n)
	}
	if n := cov.Accepted(); n != 1 {
		t.Errorf("Accepted = %d, want 1", n)
	}
}

func TestCoverTCPOnly(t *testing.T) {
	CheckLeaks(t)
	cov := StartCoverTCPOnly(t)
	if v, err := ProbeQUIC(probeCtx(t), cov.Addr()); !errors.Is(err, ErrUDPClosed) {
		t.Errorf("QUIC probe of a cover without HTTP/3: %+v, %v; want ErrUDPClosed", v, err)
	}
	if !UDPClosed(cov.Addr()) {
		t.Error("UDPClosed = false for a cover without HTTP/3")
	}
	h, err := ProbeH2(probeCtx(t), cov.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if string(h.Body) != CoverPage || h.Header.Get("Alt-Svc") != "" {
		t.Errorf("h2: body %q, Alt-Svc %q; want the cover page and no Alt-Svc", h.Body, h.Header.Get("Alt-Svc"))
	}
	if n := cov.AcceptedQUIC(); n != 0 {
		t.Errorf("AcceptedQUIC = %d, want 0", n)
	}
}

// TestUDPClosed checks both answers of UDPClosed: a bound UDP port that
// drops the probe is not closed.
func TestUDPClosed(t *testing.T) {
	CheckLeaks(t)
	cov := StartCover(t)
	if UDPClosed(cov.Addr()) {
		t.Error("UDPClosed = true for a cover serving HTTP/3")
	}
}

// TestQUICViewDiff checks that Diff reports what a censor can see and
// ignores what changes on every connection.
func TestQUICViewDiff(t *testing.T) {
	base := func() *QUICView {
		return &QUICView{
			Certs:           [][]byte{{1, 2, 3}},
			ALPN:            "h3",
			Version:         1,
			SCIDLen:         4,
			TransportParams: &TransportParams{MaxIdleTimeout: 30 * time.Second, InitialSourceConnectionIDLen: 4},
			Settings:        []Setting{{0x6, 1 << 20}, {0x21 + 0x1f*7, 99}},
			UniStreams:      []uint64{0, 2, 3},
			VersionNegotiation: &VersionNegotiation{
				Versions: []quic.Version{0x1a2a3a4a, 1}, Size: 31, EchoesCIDs: true,
			},
			Handshake: []Datagram{
				{Size: 1252, Long: 1252, Packets: []string{"Initial", "Handshake"}},
				{Size: 1100, Long: 1100, Packets: []string{"Handshake"}},
			},
			HTTPView: HTTPView{
				Addr:   "127.0.0.1:443",
				Status: 200,
				Header: http.Header{"Alt-Svc": {`h3=":443"; ma=86400`}, "Content-Length": {"6"}},
				Body:   []byte("hello\n"),
			},
		}
	}
	// What may change between connections to one server.
	same := base()
	same.Settings[1] = Setting{0x21 + 0x1f*1000, 5}
	same.VersionNegotiation.Versions = []quic.Version{1, 0x5a6a7a8a} // GREASE moved
	same.Handshake[1].Size += 2
	same.Handshake[1].Long += 2
	same.Handshake[1].Size += 60 // a coalesced 1-RTT packet
	same.Handshake[1].Packets = []string{"Handshake", "1-RTT"}
	// An acknowledgement sent alone after the flight (Caddy, now and
	// then).
	same.Handshake = append(same.Handshake, Datagram{Size: 40, Long: 40, Packets: []string{"Handshake"}})
	same.MeanGET = time.Second
	same.Addr = "127.0.0.2:8443"
	same.Header = http.Header{"Alt-Svc": {`h3=":8443"; ma=86400`}, "Content-Length": {"6"}}
	if d := base().Diff(same); len(d) > 0 {
		t.Errorf("Diff reported noise:\n%s", strings.Join(d, "\n"))
	}
	for name, change := range map[string]func(v *QUICView){
		"certificate":     func(v *QUICView) { v.Certs[0] = []byte{1, 2, 4} },
		"ALPN":            func(v *QUICView) { v.ALPN = "h3-29" },
		"SCID length":     func(v *QUICView) { v.SCIDLen = 8 },
		"idle timeout":    func(v *QUICView) { v.TransportParams.MaxIdleTimeout = time.Minute },
		"no TPs":          func(v *QUICView) { v.TransportParams = nil },
		"setting value":   func(v *QUICView) { v.Settings[0].Value = 1 },
		"setting order":   func(v *QUICView) { v.Settings[0], v.Settings[1] = v.Settings[1], v.Settings[0] },
		"no SETTINGS":     func(v *QUICView) { v.Settings = nil },
		"uni streams":     func(v *QUICView) { v.UniStreams = v.UniStreams[:1] },
		"control frames":  func(v *QUICView) { v.ControlFrames = []uint64{0x21} },
		"VN versions":     func(v *QUICView) { v.VersionNegotiation.Versions = append(v.VersionNegotiation.Versions, 0x6b3343cf) },
		"no VN":           func(v *QUICView) { v.VersionNegotiation = nil },
		"datagram size":   func(v *QUICView) { v.Handshake[0].Size, v.Handshake[0].Long = 1280, 1280 },
		"datagram layout": func(v *QUICView) { v.Handshake[1].Packets = []string{"Initial", "Handshake"} },
		"datagram count":  func(v *QUICView) { v.Handshake = v.Handshake[:1] },
		"large last": func(v *QUICView) {
			v.Handshake = append(v.Handshake, Datagram{Size: 300, Long: 300, Packets: []string{"Handshake"}})
		},
		"status":       func(v *QUICView) { v.Status = 404 },
		"header":       func(v *QUICView) { v.Header.Set("Server", "Caddy") },
		"Alt-Svc port": func(v *QUICView) { v.Header.Set("Alt-Svc", `h3=":444"; ma=86400`) },
		"body":         func(v *QUICView) { v.Body = []byte("hello!") },
	} {
		v := base()
		change(v)
		if d := base().Diff(v); len(d) != 1 {
			t.Errorf("%s: Diff = %q, want one line", name, d)
		}
	}
}

// TestParseDatagram checks the coalesced-packet walk on hand-made
// headers.
func TestParseDatagram(t *testing.T) {
	long := func(first byte, version uint32, token bool, length int) []byte {
		b := []byte{first, byte(version >> 24), byte(version >> 16), byte(version >> 8), byte(version), 4, 1, 2, 3, 4, 0}
		if token {
			b = append(b, 0)
		}
		b = append(b, 0x40|byte(length>>8), byte(length))
		return append(b, make([]byte, length)...)
	}
	for _, tc := range []struct {
		d    []byte
		want string
		long int
	}{
		{append(long(0xc0, 1, true, 100), long(0xe0, 1, false, 50)...), "Initial+Handshake", 114 + 63},
		{append(long(0xe0, 1, false, 50), 0x40, 1, 2), "Handshake+1-RTT", 63},
		{long(0xd0, 0x6b3343cf, true, 20), "Initial", 34},
		{[]byte{0x40, 1, 2, 3}, "1-RTT", 0},
		{long(0xc0, 1, true, 100)[:50], "Initial(malformed)", 0},
		{[]byte{0x80, 0, 0, 0, 0, 0, 0, 0, 0, 1}, "Version Negotiation", 10},
	} {
		dg := parseDatagram(tc.d)
		if got := strings.Join(dg.Packets, "+"); got != tc.want || dg.Size != len(tc.d) || dg.Long != tc.long {
			t.Errorf("parseDatagram(% x...) = %v, want %s", tc.d[:min(len(tc.d), 8)], dg, tc.want)
		}
	}
}

func TestParseVersionNegotiation(t *testing.T) {
	dcid, scid := []byte{1, 2, 3, 4, 5, 6, 7, 8}, []byte{9, 9, 9, 9, 9, 9, 9, 9}
	b := append([]byte{0x80, 0, 0, 0, 0, 8}, scid...)
	b = append(b, 8)
	b = append(b, dcid...)
	b = append(b, 0, 0, 0, 1, 0x6b, 0x33, 0x43, 0xcf)
	vn := parseVersionNegotiation(b, dcid, scid)
	if !vn.EchoesCIDs || len(vn.Versions) != 2 || vn.Versions[1] != 0x6b3343cf || vn.Size != len(b) {
		t.Errorf("parseVersionNegotiation = %+v", vn)
	}
	if vn := parseVersionNegotiation(b, scid, dcid); vn.EchoesCIDs {
		t.Error("swapped IDs reported as echoed")
	}
	if vn := parseVersionNegotiation([]byte{0x80, 0, 0, 0, 0, 200}, dcid, scid); len(vn.Versions) != 0 {
		t.Errorf("truncated packet: %+v", vn)
	}
	if s := vnString(nil); s != "no answer" {
		t.Errorf("vnString(nil) = %q", s)
	}
}

// FuzzParseDatagram checks that the parsers of a server's datagrams never
// panic and stay within the datagram.
func FuzzParseDatagram(f *testing.F) {
	f.Add([]byte{0xc0, 0, 0, 0, 1, 4, 1, 2, 3, 4, 0, 0, 0x40, 2, 0, 0, 0x40, 1})
	f.Add([]byte{0x80, 0, 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, d []byte) {
		dg := parseDatagram(d)
		if dg.Size != len(d) || dg.Long < 0 || dg.Long > dg.Size {
			t.Errorf("parseDatagram = %+v for %d bytes", dg, len(d))
		}
		vn := parseVersionNegotiation(d, make([]byte, 8), make([]byte, 8))
		if 4*len(vn.Versions) > len(d) {
			t.Errorf("%d versions in %d bytes", len(vn.Versions), len(d))
		}
	})
}
