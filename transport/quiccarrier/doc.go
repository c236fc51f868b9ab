// Package quiccarrier is merpati's carrier B: sessions over QUIC on UDP,
// one HTTP/3 request stream per Telegram connection.
//
// The client's QUIC Initial is Chromium's. Upstream quic-go cannot send a
// custom ClientHello, so the client side uses Hysteria's Chrome-parrot fork
// (github.com/apernet/quic-go, Config.ChromeParrot), pinned to an exact
// version in go.mod; it is reached only through [Dialer], so it can be
// swapped. The fork also parrots Chrome's transport parameters, packet
// size, zero-length source connection ID and Initial "chaos protection".
// The relay side is a real HTTP/3 server on upstream
// github.com/quic-go/quic-go: two module paths, so both coexist.
//
// Authentication costs no round trip. The client picks a random 16-byte
// nonce per connection and sends, in the Authorization header of every
// request stream it opens,
//
//	Bearer base64url(nonce || auth.Token(key, slot, SHA-256("merpati quic auth v1" || nonce)))
//
// (see [github.com/merpati/merpati/transport/auth]). The request travels
// inside QUIC's 1-RTT encryption to the relay's pinned certificate, so no
// observer sees it; the relay accepts a given token on one connection only
// (its replay cache remembers tokens for their whole lifetime), so a token
// replayed on another connection is refused. The data of a stream is
// written right after its HEADERS frame without waiting for the response.
//
// A request with a valid token is answered "200" and its stream is taken
// over (http3.HTTPStreamer): both ends then exchange the stream's bytes in
// HTTP/3 DATA frames, with the open request/reply of
// [github.com/merpati/merpati/transport] first, exactly as over the TLS
// carrier. Every other request — a browser's, a prober's, one with a bad
// or replayed token — goes to [ServerConfig.Cover], normally a reverse
// proxy to the operator's cover site, so a prober sees an ordinary HTTP/3
// web site.
//
// Stream semantics equal the TLS carrier's: CloseWrite sends FIN (the peer
// reads io.EOF) and reading goes on; Close ends both directions.
//
// What it does not hide: the relay's handshake and HTTP/3 SETTINGS are
// quic-go's, not the cover site's own server's, and traffic timing and
// volume are those of the carried Telegram traffic.
package quiccarrier
