// Package quiccarrier is merpati's carrier B: sessions over QUIC on UDP,
// one HTTP/3 request stream per Telegram connection.
//
// The client's QUIC Initial is Chromium's. Upstream quic-go cannot send a
// custom ClientHello, so the client side uses Hysteria's Chrome-parrot fork
// (github.com/apernet/quic-go, Config.ChromeParrot) in a patched copy kept
// in transport/third_party/apernet-quic-go (its README names the origin
// version and each patch: Chromium's Trust Anchor IDs extension, honest
// ACK delays, the Finished sent with the HTTP/3 control stream, 1230-byte
// Initials over IPv6, the server's connection ID kept, Chromium's HTTP/3
// SETTINGS, GREASE frame and PRIORITY_UPDATE; the client also sends no
// path-MTU probes, as Chromium does not); it is reached only
// through [Dialer], so it can be swapped. The fork also parrots Chrome's
// transport parameters, packet size, zero-length source connection ID and
// Initial "chaos protection". The relay side is upstream
// github.com/quic-go/quic-go: two module paths, so both coexist.
//
// The relay's UDP port belongs to the cover site until a client proves a
// key, and the proof comes before the relay sends anything: the 32-byte
// random of the client's ClientHello. With a link that carries the
// relay's static X25519 key ("ak") it is a sealed token (see
// [NewSealedRandom] and [github.com/merpati/merpati/transport/auth.Seal]):
// the key's id and a short token, sealed under the secret the hello's own
// X25519 key share agrees with the relay's key, as REALITY does with the
// session id (a QUIC hello has none). The relay opens it with one X25519
// and finds the key at once, however many keys it has, and a hello with
// another key share and the same random does not open. From an older
// link it is
//
//	nonce(16) || first 16 bytes of auth.Token(key, slot, SHA-256("merpati quic initial v1" || nonce))
//
// (see [NewRandom]), which the relay checks against every key, where it
// still allows such tokens. Both look uniformly random to anyone without
// the key. The relay's front door decrypts each new client's Initial
// packets (their keys derive from the public destination connection ID,
// RFC 9001 section 5.2), reassembles the ClientHello, and checks it: a key
// holder's datagrams go to the relay's HTTP/3 server (upstream
// github.com/quic-go/quic-go), every other client's — a browser's, a
// prober's, a captured Initial replayed from elsewhere (the relay
// remembers tokens), garbage — go unchanged to the cover site's own UDP
// port from a socket of the relay's, and the cover's answers come back
// from the relay's port. A prober therefore holds a QUIC connection with
// the cover site itself: its certificate chain, transport parameters,
// version negotiation, HTTP/3 SETTINGS, headers, bodies and timing. The
// relay's connection IDs have the cover site's length (4 bytes behind
// Caddy): random, but for a MAC at their end by which the door knows a key
// holder who arrives from a new address, and never one that another
// connection uses or used lately (quic-go would give it to the new
// connection, and the old one would die). A relay runs the
// carrier only in front of a cover site that serves HTTP/3
// ([CheckCover]); otherwise its UDP port stays closed, as the cover
// site's is.
//
// Within a key holder's connection the requests ride on the key its hello
// proved. The client also sends, in the Authorization header of every
// request stream it opens,
//
//	Bearer base64url(nonce || auth.Token(key, slot, SHA-256("merpati quic auth v1" || nonce)))
//
// (see [github.com/merpati/merpati/transport/auth]), inside QUIC's 1-RTT
// encryption to the relay's pinned certificate: its nonce names the
// relay's takeover tag, and where the front door could not name the key
// it is checked (a given token on one connection only); a request without
// one is answered 403. The
// data of a stream is written right after its HEADERS frame without
// waiting for the response.
//
// A request with a valid token is answered "200" and its stream is taken
// over (http3.HTTPStreamer): both ends then exchange the stream's bytes in
// HTTP/3 DATA frames, with the open request/reply of
// [github.com/merpati/merpati/transport] first, exactly as over the TLS
// carrier.
//
// Stream semantics equal the TLS carrier's: CloseWrite sends FIN (the peer
// reads io.EOF) and reading goes on; Close ends both directions.
//
// A key holder's handshake is quic-go's with the relay's own key, but with
// a certificate chain of the cover site's lengths and its key share group
// ([ListenConfig.Mirror]): an observer sees datagrams of the sizes the
// cover site sends the same client (TestQUICHandshakeShape, in front of a
// quic-go cover; a cover on another QUIC stack packs its flight its own
// way). Past the handshake quic-go finds the path's MTU and fills it, as
// the cover site's server does on its bare socket: the door lets it set
// the socket's don't-fragment option (TestQUICDownloadDatagrams compares a
// key holder's download with a visitor's from Caddy, through one address).
//
// What it does not hide: with an older link's plain token, an on-path
// attacker who holds back a user's first Initial and sends one of its own
// with the same random first is taken for a key holder (that token binds
// a nonce, not the key share); and traffic timing and volume are those of
// the carried Telegram traffic.
package quiccarrier
