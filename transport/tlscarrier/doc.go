// Package tlscarrier is merpati's carrier A: sessions over TLS on TCP whose
// ClientHello is Chromium's, built with uTLS.
//
// The client proves it holds an access key inside the hello itself (see
// [github.com/merpati/merpati/transport/auth]): the token replaces the
// random legacy_session_id that Chrome sends anyway, so authentication costs
// no round trip and changes no byte a censor could count. The relay reads
// the hello before answering anything; a hello without a valid, fresh token
// never reaches this package's server side — the relay splices that
// connection to its cover site, so a prober talks to a real web server.
//
// After the TLS 1.3 handshake (the client pins the relay's certificate by the
// SHA-256 of its SubjectPublicKeyInfo; the certificate travels encrypted, so
// an observer never sees it) both ends speak HTTP/2 framing through
// [github.com/merpati/merpati/transport/h2mux], one HTTP/2 stream per
// Telegram connection, matching the "h2" that the hello's ALPN offered.
//
// What it does not hide: the relay's ServerHello comes from Go's crypto/tls,
// not from the cover site's server, and traffic timing and volume after the
// handshake are those of the carried Telegram traffic.
package tlscarrier
