package h2mux

import (
	"fmt"
	"log/slog"
	"time"
)

// Defaults for [Config]. The window sizes are the ones Chrome advertises
// (SETTINGS_INITIAL_WINDOW_SIZE 6 MiB and a 15 MiB connection window), which
// both look ordinary on the wire and keep a loopback or fast link busy.
//
// Liveness follows Chrome against nginx: no periodic PING on either side.
// A client pings only when it reuses a session that has been silent for
// DefaultReuseProbe (Chrome checks a connection idle for 10 s before
// sending a request on it, and gives it 10 s, DefaultTimeout, to answer);
// a server closes a session that has had no stream for DefaultIdleTimeout
// (nginx, measured: about 66 s), with GOAWAY and then close_notify. A relay
// learns its cover site's own idle close and sets it with
// [Config.IdleTimeoutFunc].
const (
	DefaultMaxStreamWindow = 6 << 20
	DefaultMaxConnWindow   = 15 << 20
	DefaultMaxFrameSize    = 16384
	DefaultTimeout         = 10 * time.Second
	DefaultReuseProbe      = 10 * time.Second
	DefaultIdleTimeout     = 64 * time.Second
	DefaultMaxStreams      = 1024
	DefaultPath            = "/"
)

// idleJitter is the fraction of IdleTimeout (1/idleJitter of it) added to
// or taken from each idle period at random, and reuseJitter that of
// ReuseProbe (added): neither clock ticks at a fixed cadence a censor could
// match, and an idle close stays close to the web server's it follows.
const (
	idleJitter  = 50 // ±2 %: 64 s closes after 62.7–65.3 s, 75 s after 73.5–76.5 s
	reuseJitter = 2  // 10 s: probe after 10–15 s of silence
)

// Protocol limits from RFC 9113.
const (
	initialWindow = 65535       // section 6.9.2: initial window of every stream and of the connection
	maxWindow     = 1<<31 - 1   // section 6.9.1: largest legal window
	minFrameSize  = 16384       // section 6.5.2: SETTINGS_MAX_FRAME_SIZE lower bound and default
	maxFrameSize  = 1<<24 - 1   // section 6.5.2: SETTINGS_MAX_FRAME_SIZE upper bound
	maxStreamID   = 1<<31 - 1   // section 5.1.1: stream identifiers are 31 bits
	frameHeaderSz = 9           // section 4.1
	clientTable   = 65536       // HEADER_TABLE_SIZE a Chrome client advertises
	defaultTable  = 4096        // section 6.5.2: default SETTINGS_HEADER_TABLE_SIZE
	clientHdrList = 262144      // MAX_HEADER_LIST_SIZE a Chrome client advertises
	serverHdrList = 65536       // MAX_HEADER_LIST_SIZE a server session advertises
	maxQueuedCtrl = 4096        // peer-provoked frames (PING ACK, SETTINGS ACK, RST_STREAM) queued before we give up
	writeChunk    = 256 << 10   // most bytes one stream hands the writer at a time, for fairness
	closeTimeout  = time.Second // how long Close waits to flush its GOAWAY
	readBufSize   = 4 << 10     // size of the connection read buffer: smaller than a DATA payload, which then bypasses it (see readData)
	writeBufSize  = 256 << 10   // size of the connection write buffer: one flush carries several frames
)

// The carrier's connection is TLS, whose records carry at most tlsRecord
// bytes (RFC 8446 section 5.1); [Stream.WriteSize] asks for writes that
// fill recordsPerWrite of them.
const (
	tlsRecord       = 16384
	recordsPerWrite = 4
)

// Padding of the first records of each stream (RFC 9113 section 6.1 and
// 6.2: DATA and HEADERS frames may carry up to 255 octets of padding
// after a Pad Length octet). A stream's first flight, its HEADERS and
// the DATA written with it, is padded to a random size and written as a
// record of its own: a client's to the size of a browser's request
// HEADERS record (Chromium 156's first request, measured: a 465-byte
// TLS record), a server's to that of a web server's response headers
// (nginx, a small page: 133 bytes, 189 with its body), so that neither
// the open request nor the short open reply shows its own size. The
// sizes are of HTTP/2 bytes; TLS 1.3 adds 17 to each record. The next
// paddedWrites DATA writes each way then carry 0-255 octets of padding
// at random, so that the fixed sizes of what a stream carries first (an
// MTProto key exchange) do not show either.
const (
	clientFlightMin = 393 // records of 410-510 bytes
	clientFlightMax = 493
	serverFlightMin = 113 // records of 130-300 bytes
	serverFlightMax = 283
	paddedWrites    = 4
	maxPadLen       = 255 // the Pad Length octet's largest value
)

// A server session returns the connection window its application
// consumed with a WINDOW_UPDATE once serverWindowStep bytes are due, if
// serverWindowEvery has passed since its last one, and at the latest once
// serverWindowMax bytes are due (a client waits for half its connection
// window, as Chrome does). A client whose uplink is slow and full, so that
// its PING waits behind seconds of queued upload, still hears from a live
// relay at least every 32 KiB the relay takes, which is what its liveness
// check counts on (see [Session.Ping]). On a fast uplink the time step
// spares the relay an update (a record, a write, a wake-up of the client)
// per 32 KiB: 32,768 of them per GiB. Go's own HTTP/2 server updates
// every 4 KiB.
const (
	serverWindowStep  = 32 << 10
	serverWindowEvery = 10 * time.Millisecond
	serverWindowMax   = 1 << 20
)

// Config configures a [Session]. The zero value is usable: zero fields take
// the defaults documented on each field. A Config is not modified by
// [Client] or [Server].
type Config struct {
	// MaxStreamWindow is the receive window of each stream, advertised
	// as SETTINGS_INITIAL_WINDOW_SIZE: the most bytes the peer may send
	// on one stream before this side's application reads them. Zero
	// means DefaultMaxStreamWindow; otherwise it must be between 65535
	// and 2^31-1.
	MaxStreamWindow int

	// MaxConnWindow is the receive window of the whole connection: the
	// most bytes, over all streams, buffered and not yet read. Zero means
	// DefaultMaxConnWindow; otherwise it must be between 65535 and
	// 2^31-1.
	MaxConnWindow int

	// MaxFrameSize is the largest frame payload the peer may send us,
	// advertised as SETTINGS_MAX_FRAME_SIZE when it differs from the
	// protocol default. Zero means DefaultMaxFrameSize (16384, which a
	// browser never changes); otherwise it must be between 16384 and
	// 2^24-1. Larger frames cost less CPU per byte.
	MaxFrameSize int

	// KeepAlive, if positive, is the interval between periodic
	// keep-alive PINGs. Zero or negative means none, the default: a
	// browser sends none, and a PING every few seconds for as long as a
	// session lives is a cadence a censor can see. Liveness comes from
	// the peer's traffic, from ReuseProbe and from [Session.Ping].
	KeepAlive time.Duration

	// Timeout is how long a PING the session sends on its own account
	// (ReuseProbe's or KeepAlive's) may go without any frame from the
	// peer before the session is declared dead. Zero means
	// DefaultTimeout.
	Timeout time.Duration

	// ReuseProbe is a client's ping-before-reuse: when a stream's HEADERS
	// is queued on a session that has received nothing for longer than
	// ReuseProbe (plus up to half of it, at random), a PING goes out
	// ahead of it, and the session dies with [ErrKeepAliveTimeout] if
	// the peer then sends nothing within Timeout. The stream does not
	// wait for the answer. Zero means DefaultReuseProbe; negative
	// disables it. A server ignores it.
	ReuseProbe time.Duration

	// IdleTimeout is how long a server session may go without an open
	// stream (give or take 2 %, at random) before it closes
	// itself as an HTTP/2 web server does: GOAWAY with NO_ERROR naming
	// the last stream, then the connection is closed (with close_notify
	// on TLS). The client opens a new session when it next needs one.
	// Zero means DefaultIdleTimeout; negative never closes. A client
	// ignores it.
	IdleTimeout time.Duration

	// IdleTimeoutFunc, if not nil, gives a server session's idle timeout
	// in place of IdleTimeout each time an idle period starts, so that
	// it can change while sessions live (a relay learns its cover site's
	// idle close). A result that is not positive means IdleTimeout. It
	// is ignored when IdleTimeout is negative, and by a client. It must
	// be safe for concurrent use and must not block.
	IdleTimeoutFunc func() time.Duration

	// MaxStreams is how many concurrent streams a server session allows,
	// advertised as SETTINGS_MAX_CONCURRENT_STREAMS; streams beyond it are
	// refused. A client session ignores it and obeys the server's value.
	// Zero means DefaultMaxStreams.
	MaxStreams int

	// PrefaceNow makes Server and Client write the session's first
	// flight (preface, SETTINGS, WINDOW_UPDATE) before they return, in
	// the caller's goroutine, instead of in the session's writer; an
	// error doing so is theirs. conn must take the write without a
	// reader at the other end (TCP and TLS connections do, a net.Pipe
	// does not). A relay uses it to send the first flight together with
	// what it wrote just before, and without a goroutine for it.
	PrefaceNow bool

	// Logger receives debug messages about the session. Nil discards
	// them.
	Logger *slog.Logger

	// OnClose, if not nil, is called once when the session has ended and
	// closed its connection, from the goroutine that ended it; it must
	// not block.
	OnClose func()

	// Authority is the :authority pseudo-header of every stream a client
	// opens; it should be the TLS server name. Empty means the remote
	// address of the connection.
	Authority string

	// Path is the :path pseudo-header of every stream a client opens.
	// Empty means DefaultPath.
	Path string
}

// fill returns a copy of c with defaults filled in, or an error naming the
// first invalid field.
func (c Config) fill() (Config, error) {
	if c.MaxStreamWindow == 0 {
		c.MaxStreamWindow = DefaultMaxStreamWindow
	}
	if c.MaxStreamWindow < initialWindow || c.MaxStreamWindow > maxWindow {
		return c, fmt.Errorf("h2mux: Config.MaxStreamWindow: must be between %d and %d, got %d", initialWindow, maxWindow, c.MaxStreamWindow)
	}
	if c.MaxConnWindow == 0 {
		c.MaxConnWindow = DefaultMaxConnWindow
	}
	if c.MaxConnWindow < initialWindow || c.MaxConnWindow > maxWindow {
		return c, fmt.Errorf("h2mux: Config.MaxConnWindow: must be between %d and %d, got %d", initialWindow, maxWindow, c.MaxConnWindow)
	}
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = DefaultMaxFrameSize
	}
	if c.MaxFrameSize < minFrameSize || c.MaxFrameSize > maxFrameSize {
		return c, fmt.Errorf("h2mux: Config.MaxFrameSize: must be between %d and %d, got %d", minFrameSize, maxFrameSize, c.MaxFrameSize)
	}
	if c.ReuseProbe == 0 {
		c.ReuseProbe = DefaultReuseProbe
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Timeout < 0 {
		return c, fmt.Errorf("h2mux: Config.Timeout: must not be negative, got %v", c.Timeout)
	}
	if c.MaxStreams == 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	if c.MaxStreams < 1 || c.MaxStreams > maxStreamID/2 {
		return c, fmt.Errorf("h2mux: Config.MaxStreams: must be between 1 and %d, got %d", maxStreamID/2, c.MaxStreams)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Path == "" {
		c.Path = DefaultPath
	}
	return c, nil
}
