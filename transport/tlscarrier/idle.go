package tlscarrier

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/merpati/merpati/transport/h2mux"
	utls "github.com/refraction-networking/utls"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// MaxIdleWait is the longest [LearnIdleClose] waits, by default, for a
// cover site to close an idle connection: web servers close theirs after
// a minute or two (nginx: 75 s), the ones that wait longest after five.
const MaxIdleWait = 10 * time.Minute

// idleResponseTimeout bounds the wait for the cover site's answer to the
// request LearnIdleClose sends, before its idle clock starts.
const idleResponseTimeout = 30 * time.Second

// ErrNoIdleClose means that the cover site kept an idle connection open
// for as long as [LearnIdleClose] waited.
var ErrNoIdleClose = errors.New("tlscarrier: the cover site did not close an idle connection")

// LearnIdleClose measures how long the server at addr ("host:port")
// keeps a browser's idle connection open: it connects with the carrier's
// Chrome hello for serverName, loads "/" as Chromium does (over HTTP/2:
// the connection preface with Chromium's SETTINGS and WINDOW_UPDATE, then
// a GET; over HTTP/1.1, a keep-alive GET), reads the response, and then
// sends nothing more (but the acknowledgements of the server's SETTINGS
// and PINGs that Chromium sends) until the server ends the connection,
// with GOAWAY or a close. It returns the time from the response's last
// byte to that end: what a relay's sessions wait before closing
// themselves, so that they end when the cover site's would.
//
// If the server has not closed the connection after wait (zero means
// [MaxIdleWait]) the error wraps [ErrNoIdleClose].
func LearnIdleClose(ctx context.Context, addr, serverName string, wait time.Duration) (time.Duration, error) {
	if wait <= 0 {
		wait = MaxIdleWait
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return 0, fmt.Errorf("tlscarrier: learn idle close: %w", err)
	}
	defer raw.Close()
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	uc, err := ChromeClient(raw, &utls.Config{
		ServerName:         serverName,
		NextProtos:         []string{"h2", "http/1.1"},
		InsecureSkipVerify: true, // what is measured, not trusted
	})
	if err != nil {
		return 0, err
	}
	hctx, cancel := context.WithTimeout(ctx, idleResponseTimeout)
	err = uc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("tlscarrier: learn idle close: handshake with %s: %w", addr, err)
	}
	var idle time.Duration
	if uc.ConnectionState().NegotiatedProtocol == "h2" {
		idle, err = idleH2(uc, raw, serverName, wait)
	} else {
		idle, err = idleHTTP1(uc, raw, serverName, wait)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return 0, fmt.Errorf("tlscarrier: learn idle close of %s: %w", addr, err)
	}
	if ctx.Err() != nil {
		// The connection ended because ctx did (see the AfterFunc
		// above), not because the server closed it.
		return 0, fmt.Errorf("tlscarrier: learn idle close of %s: %w", addr, ctx.Err())
	}
	return idle, nil
}

// ChromePageHeaders returns the header fields, after the pseudo-header
// fields, of Chromium 156's request for a page on Linux, in its order and
// lower case, for requests that must look like one (over HTTP/2 here,
// over HTTP/3 in the QUIC carrier, whose layout test checks their size
// against Debian's chromium).
func ChromePageHeaders() [][2]string { return slices.Clone(chromePageHeaders) }

var chromePageHeaders = [][2]string{
	{"sec-ch-ua", `"Not:A-Brand";v="8", "Chromium";v="156"`},
	{"sec-ch-ua-mobile", "?0"},
	{"sec-ch-ua-platform", `"Linux"`},
	{"upgrade-insecure-requests", "1"},
	{"user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"},
	{"accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/jxl,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"},
	{"sec-fetch-site", "none"},
	{"sec-fetch-mode", "navigate"},
	{"sec-fetch-user", "?1"},
	{"sec-fetch-dest", "document"},
	{"accept-encoding", "gzip, deflate, br, zstd"},
	{"accept-language", "en-US,en;q=0.9"},
	{"priority", "u=0, i"},
}

// idleH2 loads "/" over HTTP/2 on c (raw is its TCP connection, for
// deadlines) and returns how long after the response the server ended
// the connection.
func idleH2(c net.Conn, raw net.Conn, serverName string, wait time.Duration) (time.Duration, error) {
	// Chromium's first record: the preface, SETTINGS and WINDOW_UPDATE;
	// its second: the request's HEADERS.
	var out bytes.Buffer
	fr := http2.NewFramer(&out, nil)
	raw.SetDeadline(time.Now().Add(idleResponseTimeout))
	if _, err := c.Write(h2mux.ClientPreface()); err != nil {
		return 0, fmt.Errorf("write preface: %w", err)
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "GET"}, {":authority", serverName}, {":scheme", "https"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for _, f := range chromePageHeaders {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	out.Reset()
	fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: 1, BlockFragment: block.Bytes(), EndStream: true, EndHeaders: true,
		Priority: http2.PriorityParam{Exclusive: true, Weight: 255},
	})
	if _, err := c.Write(out.Bytes()); err != nil {
		return 0, fmt.Errorf("write request: %w", err)
	}

	in := http2.NewFramer(nil, bufio.NewReader(c))
	reply := func(write func(*http2.Framer) error) error {
		out.Reset()
		if err := write(fr); err != nil {
			return err
		}
		_, err := c.Write(out.Bytes())
		return err
	}
	var done time.Time // the response's end
	for {
		f, err := in.ReadFrame()
		now := time.Now()
		if err != nil {
			switch {
			case done.IsZero():
				return 0, fmt.Errorf("before the response ended: %w", err)
			case isTimeout(err):
				return 0, fmt.Errorf("%w in %v", ErrNoIdleClose, wait)
			}
			return now.Sub(done), nil // close_notify, FIN or RST
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				err = reply(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				err = reply(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		case *http2.GoAwayFrame:
			if done.IsZero() {
				return 0, fmt.Errorf("GOAWAY (%v) before the response ended", f.ErrCode)
			}
			return now.Sub(done), nil
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return 0, fmt.Errorf("request refused: RST_STREAM %v", f.ErrCode)
			}
		}
		if err != nil {
			return 0, fmt.Errorf("write: %w", err)
		}
		if done.IsZero() && f.Header().StreamID == 1 && f.Header().Flags.Has(http2.FlagDataEndStream) {
			switch f.(type) {
			case *http2.DataFrame, *http2.HeadersFrame:
				done = now
				raw.SetDeadline(now.Add(wait))
			}
		}
	}
}

// idleHTTP1 loads "/" over HTTP/1.1 on c (raw is its TCP connection, for
// deadlines) and returns how long after the response the server closed
// the connection.
func idleHTTP1(c net.Conn, raw net.Conn, serverName string, wait time.Duration) (time.Duration, error) {
	var req bytes.Buffer
	fmt.Fprintf(&req, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive\r\n", serverName)
	for _, f := range chromePageHeaders[:len(chromePageHeaders)-1] { // no priority over HTTP/1.1
		fmt.Fprintf(&req, "%s: %s\r\n", http.CanonicalHeaderKey(f[0]), f[1])
	}
	req.WriteString("\r\n")
	raw.SetDeadline(time.Now().Add(idleResponseTimeout))
	if _, err := c.Write(req.Bytes()); err != nil {
		return 0, fmt.Errorf("write request: %w", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return 0, fmt.Errorf("read response: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, fmt.Errorf("read response: %w", err)
	}
	if resp.Close {
		return 0, errors.New("the server closes the connection after each response")
	}
	done := time.Now()
	raw.SetDeadline(done.Add(wait))
	_, err = br.ReadByte()
	if err == nil {
		return 0, errors.New("the server sent more than its response")
	}
	if isTimeout(err) {
		return 0, fmt.Errorf("%w in %v", ErrNoIdleClose, wait)
	}
	return time.Since(done), nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
