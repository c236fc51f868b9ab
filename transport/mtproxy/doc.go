// Package mtproxy holds the wire codecs of Telegram's MTProxy protocol, as
// the stock apps speak it to a proxy with an "ee" (FakeTLS) secret:
//
//   - [Secret]: the 16-byte key plus the cover host name shared in
//     tg://proxy links, in hex and base64url text forms.
//   - FakeTLS: the app's ClientHello carries an HMAC-SHA256 of itself,
//     keyed with the secret, in its client random, with a timestamp XORed
//     into the last four bytes ([ParseClientHello], [ClientHello.Check]);
//     the proxy answers with a ServerHello, ChangeCipherSpec and one
//     ApplicationData record whose server random is an HMAC over the
//     client random and the whole answer ([ServerHello]); after that both
//     sides wrap their bytes in ApplicationData records ([TLSConn]).
//   - Obfuscated2: a 64-byte init ([NewInit], [AcceptInit]) that sets up
//     AES-256-CTR in each direction and names the MTProto transport
//     ([Protocol]) and the datacenter; [ObfsConn] applies the ciphers.
//     With a secret (the app to its proxy) the keys are SHA-256 of the
//     init's key material and the secret; without (a proxy to a real
//     datacenter) they are the init's bytes themselves.
//
// Both directions of every handshake are here, so that a relay can accept
// an app, a local front can accept an app, and either can speak to a
// datacenter. The package does no dialing and keeps no state across
// connections; replay protection is the caller's (it must remember the
// client randoms it accepted for longer than its time window).
//
// References: core.telegram.org/mtproto/mtproto-transports (transport
// obfuscation), tdlib td/mtproto/TlsInit.cpp, and RFC 8446 for the record
// and handshake framing.
package mtproxy
