package tlscarrier

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"

	utls "github.com/refraction-networking/utls"
)

// The ClientHello of Debian's Chromium 156 (156.0.8078.79), as captured on
// loopback by TestChromiumJA4 and scripts/ja4-capture.sh. Its JA4, with
// the GREASE signature algorithm it now sends at the head of its list, is
//
//	t13d1517h2_8daaf6152771_<one of 16 hashes, one per GREASE value>
//
// Compared with uTLS's HelloChrome_133 (= HelloChrome_Auto in v1.8.2) it
// adds:
//   - a GREASE value in front of signature_algorithms, and the ML-DSA
//     schemes 0x0904, 0x0905, 0x0906 (mldsa44, mldsa65, mldsa87) after it;
//   - extension 0xca34 (Trust Anchor Identifiers,
//     draft-ietf-tls-trust-anchor-ids, at Chrome's experimental code
//     point) carrying a fixed list from Chromium's built-in root store.
//
// Everything else (ciphers, groups, key shares incl. X25519MLKEM768, ALPS
// 0x44cd with "h2", ECH GREASE, brotli certificate compression, no
// padding, a 32-byte session id) is as in HelloChrome_133.
const (
	// extTrustAnchorIDs is the code point Chromium 156 uses for Trust
	// Anchor Identifiers.
	extTrustAnchorIDs = 0xca34
	// chromeTrustAnchorIDsHex is the body of Chromium 156's 0xca34
	// extension: a 16-bit length and 28 length-prefixed relative OIDs.
	// Chromium sends the same bytes on every connection; they change
	// with its root store, so recapture them with each Chromium upgrade.
	chromeTrustAnchorIDsHex = "00b8" +
		"0582df130201" + "0582df130206" + "0582df13020d" + "0582df13020e" +
		"0582df13020f" + "0582df130212" + "0582df130213" + "0582df130214" +
		"08839a648c9b2d0107" + "08839a648c9b2d0108" + "08839a648c9b2d0109" +
		"08839a648c9b2d010a" + "08839a648c9b2d010b" + "08839a648c9b2d010c" +
		"08839a648c9b2d010d" + "08839a648c9b2d0112" + "08839a648c9b2d0113" +
		"04d6790901" + "04d6790904" + "04d6790905" + "04d6790906" +
		"04d6790907" + "04d6790908" + "04d679090a" + "04d679090b" +
		"04d679090c" + "04d679090d" + "04d679090f"
)

// ChromeTrustAnchorIDs returns the body of the Trust Anchor Identifiers
// extension (0xca34) that Chromium 156 sends in its hellos over TCP and
// over QUIC alike: a fresh copy on each call, which the caller may keep.
// The QUIC carrier gives it to its Chrome-parrot QUIC stack, so that one
// copy of the list serves both hellos.
func ChromeTrustAnchorIDs() []byte {
	b, err := hex.DecodeString(chromeTrustAnchorIDsHex)
	if err != nil {
		panic("tlscarrier: bad chromeTrustAnchorIDsHex: " + err.Error()) // a constant
	}
	return b
}

// chromeHelloSpec returns a fresh ClientHello spec that copies Chromium
// 156's, for use with [utls.HelloCustom]:
//
//	uc := utls.UClient(conn, cfg, utls.HelloCustom)
//	spec, err := chromeHelloSpec()
//	...
//	err = uc.ApplyPreset(spec)
//
// Call it once per connection: like Chromium, each spec has its own random
// extension order and its own GREASE signature algorithm. uTLS fills in the
// other GREASE values, the key shares, the session id and the ECH GREASE
// payload (whose length, like Chromium's, is one of four) when the spec is
// applied.
//
// The spec has no pre_shared_key extension, so it must not be used with a
// ClientSessionCache: Chromium's resumed hellos differ, and this spec does
// not copy them.
func chromeHelloSpec() (*utls.ClientHelloSpec, error) {
	tai := ChromeTrustAnchorIDs()
	sigGREASE, err := randomGREASE()
	if err != nil {
		return nil, fmt.Errorf("chrome hello spec: %w", err)
	}
	// BoringSSL sends one GREASE extension first, then all the others in
	// a uniformly random order, then a second GREASE extension with a
	// one-byte body. uTLS's ShuffleChromeTLSExtensions skips swaps that
	// touch a fixed position and so does not shuffle uniformly; shuffle
	// the middle ourselves.
	middle := []utls.TLSExtension{
		&utls.SNIExtension{},
		&utls.ExtendedMasterSecretExtension{},
		&utls.RenegotiationInfoExtension{Renegotiation: utls.RenegotiateOnceAsClient},
		&utls.SupportedCurvesExtension{Curves: []utls.CurveID{
			utls.GREASE_PLACEHOLDER,
			utls.X25519MLKEM768,
			utls.X25519,
			utls.CurveP256,
			utls.CurveP384,
		}},
		&utls.SupportedPointsExtension{SupportedPoints: []byte{0}}, // uncompressed
		&utls.SessionTicketExtension{},
		&utls.ALPNExtension{AlpnProtocols: []string{"h2", "http/1.1"}},
		&utls.StatusRequestExtension{},
		&utls.SignatureAlgorithmsExtension{SupportedSignatureAlgorithms: []utls.SignatureScheme{
			sigGREASE,
			0x0904, // mldsa44
			0x0905, // mldsa65
			0x0906, // mldsa87
			utls.ECDSAWithP256AndSHA256,
			utls.PSSWithSHA256,
			utls.PKCS1WithSHA256,
			utls.ECDSAWithP384AndSHA384,
			utls.PSSWithSHA384,
			utls.PKCS1WithSHA384,
			utls.PSSWithSHA512,
			utls.PKCS1WithSHA512,
		}},
		&utls.SCTExtension{},
		&utls.KeyShareExtension{KeyShares: []utls.KeyShare{
			{Group: utls.CurveID(utls.GREASE_PLACEHOLDER), Data: []byte{0}},
			{Group: utls.X25519MLKEM768},
			{Group: utls.X25519},
		}},
		&utls.PSKKeyExchangeModesExtension{Modes: []uint8{utls.PskModeDHE}},
		&utls.SupportedVersionsExtension{Versions: []uint16{
			utls.GREASE_PLACEHOLDER,
			utls.VersionTLS13,
			utls.VersionTLS12,
		}},
		&utls.UtlsCompressCertExtension{Algorithms: []utls.CertCompressionAlgo{utls.CertCompressionBrotli}},
		&utls.ApplicationSettingsExtensionNew{SupportedProtocols: []string{"h2"}},
		utls.BoringGREASEECH(),
		&utls.GenericExtension{Id: extTrustAnchorIDs, Data: tai},
	}
	mrand.Shuffle(len(middle), func(i, j int) { middle[i], middle[j] = middle[j], middle[i] })
	exts := make([]utls.TLSExtension, 0, len(middle)+2)
	exts = append(exts, &utls.UtlsGREASEExtension{})
	exts = append(exts, middle...)
	exts = append(exts, &utls.UtlsGREASEExtension{})

	return &utls.ClientHelloSpec{
		CipherSuites: []uint16{
			utls.GREASE_PLACEHOLDER,
			utls.TLS_AES_128_GCM_SHA256,
			utls.TLS_AES_256_GCM_SHA384,
			utls.TLS_CHACHA20_POLY1305_SHA256,
			utls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,
			utls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,
			utls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
			utls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
			utls.TLS_RSA_WITH_AES_128_GCM_SHA256,
			utls.TLS_RSA_WITH_AES_256_GCM_SHA384,
			utls.TLS_RSA_WITH_AES_128_CBC_SHA,
			utls.TLS_RSA_WITH_AES_256_CBC_SHA,
		},
		CompressionMethods: []uint8{0}, // null
		Extensions:         exts,
	}, nil
}

// randomGREASE returns one of the 16 GREASE values of RFC 8701, chosen
// uniformly with crypto/rand.
func randomGREASE() (utls.SignatureScheme, error) {
	var b [1]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("random GREASE value: %w", err)
	}
	v := uint16(b[0]&0xf0) | 0x0a
	return utls.SignatureScheme(v<<8 | v), nil
}
