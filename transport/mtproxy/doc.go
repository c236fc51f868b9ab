// Package mtproxy holds the wire codecs of Telegram's MTProxy protocol, as
// the stock apps speak it to a proxy with an "ee" (FakeTLS) secret:
//
//   - [Secret]: the 16-byte key plus the cover host name shared in
//     tg://proxy links, in hex and base64url text forms.
//   - FakeTLS: the app's ClientHello carries an HMAC-SHA256 of itself,
//     keyed with the secret, in its client random, with a timestamp XORed
//     into the last four bytes ([ParseClientHello], [ClientHello.Verify]);
//     the proxy answers with a ServerHello, ChangeCipherSpec and one
//     ApplicationData record whose server random is an HMAC over the
//     client random and the whole answer ([AcceptApp]); after that both
//     sides wrap their bytes in ApplicationData records ([TLSConn]). A
//     relay cuts a datacenter's bytes into records at MTProto transport
//     packets, none shorter than a real TLS 1.3 record can be
//     ([MinRecordLen], [NewRelayStream]).
//   - Obfuscated2: a 64-byte init ([NewInit], [AcceptInit]) that sets up
//     AES-256-CTR in each direction and names the MTProto transport
//     ([Protocol]) and the datacenter; [ObfsConn] applies the ciphers.
//     With a secret (the app to its proxy) the keys are SHA-256 of the
//     init's key material and the secret; without (a proxy to a real
//     datacenter) they are the init's bytes themselves.
//
// It holds what the relay and the client's local front run: the proxy's
// side of FakeTLS, both sides of obfuscated2 (accepting an app, and
// speaking to a datacenter as apps do, [StartDC]) and the record layer.
// The app's side of FakeTLS (signing a hello, checking the proxy's answer)
// only tests need, and it lives in transport/mtproxy/mtproxytest. The
// package does no dialing and keeps no state across connections; replay
// protection is the caller's (it must remember the client randoms it
// accepted for longer than its time window).
//
// References: core.telegram.org/mtproto/mtproto-transports (transport
// obfuscation), tdlib td/mtproto/TlsInit.cpp, and RFC 8446 for the record
// and handshake framing.
package mtproxy
