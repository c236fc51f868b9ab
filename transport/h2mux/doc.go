// Package h2mux multiplexes byte streams over one net.Conn using genuine
// HTTP/2 framing (RFC 9113), so that a long-lived merpati session looks like
// an ordinary HTTP/2 connection carrying POST requests.
//
// A [Client] session writes the connection preface and its SETTINGS; a
// [Server] session expects them. Every stream the client opens with
// [Session.OpenStream] is one HTTP/2 request: a HEADERS frame with the
// pseudo-header fields :method POST, :scheme https, :authority and :path,
// followed by DATA frames. The server answers with a HEADERS frame carrying
// :status 200 when it first writes, then DATA frames. Either side ends its
// direction with END_STREAM (half-close, [Stream.CloseWrite]); [Stream.Close]
// before both directions have ended sends RST_STREAM.
//
// The package does not use the net/http handler model: an HTTP/2 server
// built on it cannot end a response while still reading the request body,
// and merpati needs independent half-close in both directions.
//
// Flow control (RFC 9113 section 5.2 and 6.9) is enforced on both the
// connection and each stream. Data received but not yet read by the
// application is bounded by the receive windows this side advertised, so a
// peer cannot make a session buffer more than [Config.MaxConnWindow] bytes.
// A peer that breaks the protocol ends the session with an error wrapping
// [ErrProtocol]; a GOAWAY frame carrying the error code is sent first when
// the connection still allows it.
//
// What a censor sees of a session is its record sizes, so the first ones
// look like a browser's: a client's first flight is Chromium's preface,
// SETTINGS and WINDOW_UPDATE, byte for byte, and each stream's first
// flight (HEADERS and the DATA written with it) is padded (section 6.1,
// 6.2) to a random size like a browser's request or a web server's
// response headers, written as a record of its own; the next few DATA
// writes each way carry random padding too. Padded DATA counts against
// flow control as section 6.9.1 says, on both sides.
//
// Liveness follows a browser against a web server: neither side sends
// PING on a timer. A client pings only when asked ([Session.Ping]) and
// before reusing a session that has been silent for a while
// ([Config.ReuseProbe]); a server closes a session left without streams
// for [Config.IdleTimeout] with GOAWAY (NO_ERROR), and the client treats
// that, and any GOAWAY with NO_ERROR after which no stream was cut short,
// as an orderly end ([github.com/merpati/merpati/transport.ErrOrderlyClose]):
// streams the server had not seen may be retried on a new session.
//
// One goroutine reads frames and one writes them; stream reads and writes
// never block the reading goroutine, so a slow stream does not stall the
// others beyond what the connection window allows. Busy streams queue
// their DATA for the writer in turn, a few at a time ([Stream.WaitWrite]),
// so that a small message written meanwhile waits behind little.
package h2mux
