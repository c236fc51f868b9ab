// Package selfsite is the relay's own cover site ("self-steal"): a small
// static web site that the relay serves itself, on loopback, under a
// certificate for the relay's own domain obtained and renewed by ACME
// (github.com/caddyserver/certmagic), for operators who have no web site
// to stand in front of.
//
// The relay treats it as any cover site: connections that do not
// authenticate are spliced, byte for byte, to [Site.TCPAddr], and QUIC
// datagrams that do not, to [Site.UDPAddr] (the same port number). A
// prober on TCP or QUIC thus meets a Caddy-like site with a real
// certificate, the same one on both transports.
//
// The certificate is obtained with the TLS-ALPN-01 challenge (RFC 8737)
// only, through the relay's own front door: the CA connects to
// Domain:443, the relay splices the connection here like any other that
// does not authenticate, and the site's TLS configuration (certmagic's)
// answers the challenge. Hence the order of wiring:
//
//	site, err := selfsite.Start(ctx, cfg)   // listens on loopback
//	// the relay starts with Cover = site.TCPAddr().String()
//	// and listens on the public port 443, TCP and UDP
//	err = site.Obtain(ctx)                   // the CA checks, through the relay
//	...
//	site.Close()
//
// Until a certificate is had, handshakes for the domain get a self-signed
// placeholder, so that the relay's own checks of its cover site find it
// up. Renewal afterwards is certmagic's maintenance, in the background;
// so is OCSP stapling, where the CA offers OCSP (Let's Encrypt no longer
// does). The ACME account, certificate and key are kept in
// Config.Storage, and reused on the next start without asking the CA.
//
// The site answers every method but GET and HEAD with 405, as Caddy's
// file server does; the relay's QUIC carrier relies on the cover site
// not answering a POST with 200.
package selfsite
