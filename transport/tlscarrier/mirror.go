package tlscarrier

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	utls "github.com/refraction-networking/utls"
)

// MirrorConfig configures a [Mirror].
type MirrorConfig struct {
	// Cover is the cover site's "host:port" and ServerName the name
	// clients send it. Required.
	Cover, ServerName string
	// Certificate is the relay's own certificate, whose key clients pin.
	// Required.
	Certificate tls.Certificate
	// Interval is how often the cover site's flight is learned again;
	// zero means 6 hours (a certificate renewal, a server upgrade).
	// After a failed learn (the cover site down at the relay's start,
	// say), [Mirror.Run] tries again sooner: after a minute, then twice
	// as long each time, up to Interval, less up to a quarter at random.
	Interval time.Duration
	// Logger receives what cannot be mirrored; nil discards.
	Logger *slog.Logger
}

// A Mirror makes the relay's TLS server flight, which key holders get,
// the shape of the cover site's, which probers get for the same hello:
// it learns the cover's flight ([LearnFlight]) and gives the relay's TLS
// server the cover's key share group, a certificate chain of the cover's
// lengths (the relay's own leaf, of the cover leaf's length, then the
// cover's intermediates, with the cover's OCSP staple and SCTs), and the
// cover's session ticket records: crypto/tls's own where the cover sends
// its tickets in its first flight, and where it sends them after the
// client's Finished, filler records of their sizes (lateTickets, which
// the carrier's accept sends). What it cannot copy it reports
// ([Mirror.Gaps]).
type Mirror struct {
	cfg MirrorConfig
	log *slog.Logger
	cur atomic.Pointer[mirrorState]
	// mu guards cfg.Cover and cfg.ServerName, which [Mirror.Switch]
	// changes, and orders their change with the storing of a flight
	// learned from the site they name.
	mu sync.Mutex
	// failed is set while the last learn failed; Run then retries
	// sooner than Interval.
	failed atomic.Bool
	// retryMin is the first wait after a failed learn (tests shorten
	// it); it doubles up to cfg.Interval.
	retryMin time.Duration
}

// mirrorRetryMin is the first wait of [Mirror.Run] after a failed learn.
const mirrorRetryMin = time.Minute

// mirrorState is one learned flight and what the relay serves for it.
type mirrorState struct {
	flight *Flight
	cert   tls.Certificate // shaped like the cover's chain
	gaps   []string
}

// NewMirror checks cfg and returns a Mirror that has learned nothing yet:
// until [Mirror.Learn] succeeds, the relay serves its own flight.
func NewMirror(cfg MirrorConfig) (*Mirror, error) {
	switch {
	case cfg.Cover == "" || cfg.ServerName == "":
		return nil, errors.New("tlscarrier: MirrorConfig.Cover and ServerName: required")
	case len(cfg.Certificate.Certificate) == 0:
		return nil, errors.New("tlscarrier: MirrorConfig.Certificate: required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 6 * time.Hour
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Mirror{cfg: cfg, log: log, retryMin: mirrorRetryMin}, nil
}

// Learn learns the cover site's flight now and makes the relay's answer
// follow it. It returns the gaps: what the relay's flight still differs
// in.
func (m *Mirror) Learn(ctx context.Context) ([]string, error) {
	m.mu.Lock()
	cover, name := m.cfg.Cover, m.cfg.ServerName
	m.mu.Unlock()
	st, err := m.learn(ctx, cover, name)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cfg.Cover != cover || m.cfg.ServerName != name {
		// Switch learned the new site's flight meanwhile, or tries to.
		return nil, fmt.Errorf("tlscarrier: the cover site changed from %s while its flight was learned", cover)
	}
	m.failed.Store(err != nil)
	if err != nil {
		return nil, err
	}
	m.cur.Store(st)
	return st.gaps, nil
}

// Switch learns the flight of the cover site at cover ("host:port"),
// named serverName, and if that succeeds follows that site from then on,
// in place of the one it followed (a relay's settings reloaded); if it
// fails, nothing changes. It returns the new gaps.
func (m *Mirror) Switch(ctx context.Context, cover, serverName string) ([]string, error) {
	st, err := m.learn(ctx, cover, serverName)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cfg.Cover, m.cfg.ServerName = cover, serverName
	m.cur.Store(st)
	m.failed.Store(false)
	return st.gaps, nil
}

// learn learns the flight of the cover site at cover and what the relay
// serves for it.
func (m *Mirror) learn(ctx context.Context, cover, serverName string) (*mirrorState, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	f, err := LearnFlight(ctx, cover, serverName)
	if err != nil {
		return nil, err
	}
	st := &mirrorState{flight: f, cert: m.cfg.Certificate}
	st.gaps = append(st.gaps, f.Gaps()...)
	if f.Group != utls.X25519 {
		// The FakeTLS answer's key share is the one group apps offer.
		st.gaps = append(st.gaps, fmt.Sprintf(MTProxyGap+"answers apps with an X25519 ServerHello; the cover site chose %v", f.Group))
	}
	st.gaps = append(st.gaps, mtproxyGaps(f)...)
	if cert, err := shapeCertificate(m.cfg.Certificate, f); err != nil {
		st.gaps = append(st.gaps, fmt.Sprintf("certificate: %v", err))
	} else {
		st.cert = cert
	}
	leaf := m.cfg.Certificate.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(m.cfg.Certificate.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tlscarrier: relay certificate: %w", err)
		}
	}
	if k := keyName(leaf); k != f.LeafKey {
		st.gaps = append(st.gaps, fmt.Sprintf("the relay's key is %s, the cover site's %s: CertificateVerify sizes differ (make the relay with a %s key: init does when the cover site answers)", k, f.LeafKey, f.LeafKey))
	}
	return st, nil
}

// Run learns the cover site's flight every [MirrorConfig.Interval] until
// ctx is done, logging what changed and what cannot be mirrored. While
// the last learn failed, or none was made, it tries again sooner: see
// [MirrorConfig.Interval].
func (m *Mirror) Run(ctx context.Context) {
	var retry time.Duration // the last wait after a failure; 0 after a success
	for {
		wait := m.cfg.Interval
		if m.failed.Load() || m.cur.Load() == nil {
			retry = min(max(2*retry, m.retryMin), m.cfg.Interval)
			// Less up to a quarter at random, so that relays that
			// failed together do not retry together.
			wait = retry - mrand.N(retry/4+1)
		} else {
			retry = 0
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		old := m.cur.Load()
		gaps, err := m.Learn(ctx)
		if err != nil {
			if ctx.Err() == nil {
				m.log.Warn("cover site's TLS flight not learned; keeping the last", "err", err)
			}
			continue
		}
		if old == nil || old.flight.String() != m.cur.Load().flight.String() {
			m.log.Info("cover site's TLS flight changed", "flight", m.cur.Load().flight.String(), "gaps", gaps)
		}
	}
}

// Flight returns the cover site's flight last learned, or nil.
func (m *Mirror) Flight() *Flight {
	if st := m.cur.Load(); st != nil {
		return st.flight
	}
	return nil
}

// Gaps returns what the relay's flight differs in from the cover site's
// last learned one; before it was learned, it says so.
func (m *Mirror) Gaps() []string {
	if st := m.cur.Load(); st != nil {
		return st.gaps
	}
	return []string{"the cover site's flight is not learned yet (the relay keeps trying): key holders get crypto/tls's own"}
}

// ApplyHandshake gives a relay TLS server config the cover site's
// certificate chain shape and key share group, as last learned; before it
// was learned it leaves c alone. The QUIC carrier uses it for key
// holders' handshakes, whose datagram sizes follow the chain.
func (m *Mirror) ApplyHandshake(c *tls.Config) {
	if st := m.cur.Load(); st != nil {
		st.applyHandshake(c)
	}
}

// applyHandshake gives c the chain and key share group of st.
func (st *mirrorState) applyHandshake(c *tls.Config) {
	c.Certificates = []tls.Certificate{st.cert}
	if st.flight.Group != 0 {
		c.CurvePreferences = []tls.CurveID{tls.CurveID(st.flight.Group)}
	}
}

// serverConfig adjusts a relay TLS server config for the cover's flight.
func (st *mirrorState) serverConfig(c *tls.Config) {
	st.applyHandshake(c)
	if len(st.flight.Tickets) == st.flight.EarlyTickets {
		// The cover sends its tickets (if any) in its first flight, as
		// crypto/tls does: one, in a record of the same size when the
		// cover site is a Go server too.
		c.SessionTicketsDisabled = len(st.flight.Tickets) == 0
		return
	}
	// Tickets after the client's Finished: AfterHandshake sends records
	// of their sizes instead.
	c.SessionTicketsDisabled = true
}

// MTProxyAppData returns the size for the ApplicationData record of a
// FakeTLS server hello (see [mtproxy.AcceptAppSized]): the payload bytes
// of the cover site's encrypted handshake records, or 0 before the flight
// was learned. Apps take that part of the answer in one record, where the
// cover sends several.
func (m *Mirror) MTProxyAppData() int {
	st := m.cur.Load()
	if st == nil {
		return 0
	}
	n := 0
	for _, r := range st.flight.Handshake {
		n += r - 5
	}
	return n
}

// lateTickets returns the sizes of the ticket records the cover site
// sends after the client's Finished, which the relay imitates.
func (m *Mirror) lateTickets() []int {
	st := m.cur.Load()
	if st == nil || len(st.flight.Tickets) == st.flight.EarlyTickets {
		return nil
	}
	return st.flight.Tickets[st.flight.EarlyTickets:]
}

// MTProxyGap begins each of [Mirror.Gaps] that concerns MTProxy mode's
// answer to stock apps only (they take exactly that answer), not key
// holders' flight.
const MTProxyGap = "MTProxy mode "

// mtproxyGaps lists what of f MTProxy mode's answer to apps does not
// follow: it sends the cover's encrypted handshake as one
// ApplicationData record ([Mirror.MTProxyAppData]) and no session ticket,
// as apps expect of a FakeTLS proxy.
func mtproxyGaps(f *Flight) []string {
	var g []string
	if n := len(f.Handshake); n > 1 {
		g = append(g, fmt.Sprintf(MTProxyGap+"answers apps with one ApplicationData record where the cover site sends %d %v", n, f.Handshake))
	}
	if n := len(f.Tickets); n > 0 {
		g = append(g, fmt.Sprintf(MTProxyGap+"sends apps no session tickets where the cover site sends %d %v", n, f.Tickets))
	}
	return g
}

// Gaps lists what of f a relay's crypto/tls server cannot reproduce,
// whatever its key.
func (f *Flight) Gaps() []string {
	var g []string
	if f.Version != tls.VersionTLS13 {
		g = append(g, fmt.Sprintf("the cover site answers TLS %#04x, the relay only 1.3", f.Version))
	}
	if f.CipherSuite != tls.TLS_AES_128_GCM_SHA256 {
		g = append(g, fmt.Sprintf("the cover site chose cipher %#04x, the relay's crypto/tls chooses 0x1301 for Chrome", f.CipherSuite))
	}
	if f.EarlyTickets > 1 {
		g = append(g, fmt.Sprintf("the cover site sends %d tickets in its first flight, crypto/tls one", f.EarlyTickets))
	}
	if f.Version == tls.VersionTLS13 && len(f.Handshake) != 4 {
		// BoringSSL packs handshake messages into as few records as
		// fit; crypto/tls seals each of EncryptedExtensions,
		// Certificate, CertificateVerify and Finished alone.
		g = append(g, fmt.Sprintf("the cover site sends its encrypted handshake in %d records %v, crypto/tls in 4, one per message", len(f.Handshake), f.Handshake))
	}
	return g
}

// oidPadding names the extension that pads the relay's leaf to the cover
// leaf's length: a non-critical private extension, which TLS clients
// ignore (and which only key holders, inside the encryption, ever see).
var oidPadding = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 99, 1}

// shapeCertificate returns cert with its leaf re-made (same key, same
// names, so the same pin) at the length of f's leaf, followed by f's
// intermediates, and f's OCSP staple and SCTs.
func shapeCertificate(cert tls.Certificate, f *Flight) (tls.Certificate, error) {
	if len(f.Chain) == 0 {
		return cert, errors.New("the cover site sent no certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return cert, err
	}
	signer, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return cert, errors.New("the relay's key cannot sign")
	}
	want := len(f.Chain[0])
	der, err := paddedLeaf(leaf, signer, want)
	if err != nil {
		return cert, err
	}
	out := tls.Certificate{
		Certificate:                 append([][]byte{der}, f.Chain[1:]...),
		PrivateKey:                  cert.PrivateKey,
		OCSPStaple:                  f.OCSP,
		SignedCertificateTimestamps: f.SCTs,
	}
	if out.Leaf, err = x509.ParseCertificate(der); err != nil {
		return cert, err
	}
	return out, nil
}

// paddedLeaf re-signs leaf's template so that its DER is want bytes
// long. It has two knobs: the serial number's length, 1 to 20 bytes (RFC
// 5280 section 4.1.2.2), which moves the length a byte at a time, and a
// padding extension, which costs 15 bytes of framing and OID besides its
// padding. The padding alone cannot reach every length: the first 14
// bytes past the unpadded leaf, and the lengths skipped where a DER length
// field inside the extensions grows a byte (at 128 and 256); the serial
// number's length reaches those. Where the length of the signed part
// itself grows a byte (at 256: a small Ed25519 leaf's), one total is
// out of reach but for a signature of another length, which only ECDSA's
// give: ECDSA signatures vary by a byte or two in DER, so each try signs
// anew and corrects by what came out.
func paddedLeaf(leaf *x509.Certificate, key crypto.Signer, want int) ([]byte, error) {
	tmpl := &x509.Certificate{
		Subject:               leaf.Subject,
		DNSNames:              leaf.DNSNames,
		NotBefore:             leaf.NotBefore,
		NotAfter:              leaf.NotAfter,
		KeyUsage:              leaf.KeyUsage,
		ExtKeyUsage:           leaf.ExtKeyUsage,
		BasicConstraintsValid: true,
	}
	build := func(serialLen, pad int) ([]byte, error) {
		t := *tmpl
		sn := make([]byte, serialLen)
		rand.Read(sn)
		// Positive and of serialLen bytes in DER: the top bit clear,
		// the next one set.
		sn[0] = sn[0]&0x3f | 0x40
		t.SerialNumber = new(big.Int).SetBytes(sn)
		if pad >= 0 {
			t.ExtraExtensions = []pkix.Extension{{Id: oidPadding, Value: make([]byte, pad)}}
		}
		return x509.CreateCertificate(rand.Reader, &t, &t, key.Public(), key)
	}
	const (
		serial0   = 16 // NewCertificateLike's: 127 random bits
		maxSerial = 20
		extCost   = 15 // a padding extension's bytes besides its padding
	)
	serial, pad := serial0, -1 // -1: no padding extension
	for range 300 {
		der, err := build(serial, pad)
		if err != nil {
			return nil, err
		}
		d := want - len(der)
		switch {
		case d == 0:
			return der, nil
		case serial+d >= 1 && serial+d <= maxSerial:
			serial += d
		case pad < 0 && d < 0:
			return nil, fmt.Errorf("the cover site's leaf (%d bytes) is shorter than the relay's least (%d)", want, len(der)-(serial-1))
		case pad < 0:
			pad, serial = max(0, d+serial-serial0-extCost), serial0
		case pad+d+serial-serial0 < 0:
			// Shorter than the extension's least: do without it.
			pad, serial = -1, serial0
		default:
			pad, serial = pad+d+serial-serial0, serial0
		}
	}
	return nil, fmt.Errorf("no leaf of %d bytes came out", want)
}

// frameTypeFiller is the HTTP/2 frame type of the records that stand in
// for the cover site's late session tickets: a type no HTTP/2 version
// defines (0x0b + 0x1f*N, reserved for greasing), which receivers ignore
// (RFC 9113 section 5.5).
const frameTypeFiller = 0x0b

// fillerFrame returns an HTTP/2 frame on stream 0 that, written alone to
// a TLS 1.3 connection, makes a record of n bytes: 5 of header, the frame,
// a content type byte and a 16-byte tag. ok is false when n is too short
// for a frame.
func fillerFrame(n int) (frame []byte, ok bool) {
	payload := n - 5 - 1 - 16 - 9
	if payload < 0 || payload > 1<<14 {
		return nil, false
	}
	frame = make([]byte, 9+payload)
	frame[0], frame[1], frame[2] = byte(payload>>16), byte(payload>>8), byte(payload)
	frame[3] = frameTypeFiller
	rand.Read(frame[9:])
	return frame, true
}
