package tlscarrier

import (
	"fmt"
	"net"

	utls "github.com/refraction-networking/utls"
)

// ChromeClient returns a uTLS client on conn whose ClientHello copies
// Chromium's, like the carrier's but without the access token, for other
// TLS connections the client makes that should look like the browser (the
// bootstrap's DNS-over-HTTPS). cfg verifies the server as usual; it should
// offer the ALPN protocols Chromium offers ("h2", "http/1.1"), and must
// not set a ClientSessionCache. The handshake happens on first use or with
// HandshakeContext.
func ChromeClient(conn net.Conn, cfg *utls.Config) (*utls.UConn, error) {
	spec, err := chromeHelloSpec()
	if err != nil {
		return nil, err
	}
	uc := utls.UClient(conn, cfg, utls.HelloCustom)
	if err := uc.ApplyPreset(spec); err != nil {
		return nil, fmt.Errorf("apply hello spec: %w", err)
	}
	return uc, nil
}
