// Package link defines the merpati share link: one string, usually handed
// out as a QR code, that carries everything a client needs to reach a
// relay.
//
// A link looks like this (one line; raw base64url without padding for the
// binary fields):
//
//	merpati://<key>@relay1.example:443?r=relay2.example:443,[2001:db8::1]:443&pin=<pin>&sni=www.example.com&c=tls,quic&dns=b.example.net&lk=<listkey>#Alice
//
// The user information part is the person's access key. The host is the
// first relay; more relays follow in r, comma-separated. pin is the SHA-256
// of the relay certificate's SubjectPublicKeyInfo, sni the cover server
// name sent in the hello, c the carriers to use in the order given (absent
// means all of them), dns the bootstrap domain(s) and lk the ed25519 key
// that signs the relay list published there, bk the bootstrap key(s)
// (comma-separated audience secrets from which the client derives the DNS
// names it asks and the key that decrypts the list), ak the relays' X25519 key
// for sealed tokens (after lk). The fragment is a label for people. Parameters are written in this order and only when set.
//
// [Parse] is strict: it rejects unknown or repeated parameters, wrong
// lengths and malformed addresses, so that a mistyped link fails loudly
// instead of half working. Its errors never contain the access key.
//
// The package also builds Telegram's own proxy links ([SocksLink],
// [ProxyLink]) and draws QR codes for terminals ([TerminalQR]).
package link

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Scheme is the URL scheme of a share link.
const Scheme = "merpati"

// Carrier names, as used in [Link.Carriers].
const (
	CarrierTLS  = "tls"  // TLS over TCP, looking like Chrome
	CarrierQUIC = "quic" // QUIC over UDP, looking like Chrome
)

// Sizes of the binary fields, in bytes.
const (
	KeySize     = 32 // Link.Key
	PinSize     = 32 // Link.Pin, a SHA-256 digest
	ListKeySize = 32 // Link.ListKey, an ed25519 public key
)

// MaxNameLen is the longest [Link.Name] accepted, in bytes.
const MaxNameLen = 64

// Query parameter names.
const (
	paramRelays    = "r"
	paramPin       = "pin"
	paramSNI       = "sni"
	paramCarriers  = "c"
	paramBootstrap = "dns"
	paramListKey   = "lk"
	paramAuthKey   = "ak"
	paramBootKeys  = "bk"
)

// Errors returned by [Parse] and [Link.Validate], wrapped with details.
var (
	// ErrScheme means the string is not a merpati:// link.
	ErrScheme = errors.New("link: not a merpati:// link")
	// ErrSyntax means the string is not a well-formed link URL.
	ErrSyntax = errors.New("link: malformed link")
	// ErrUnknownParam means the link has query parameters this version
	// does not know. The error names them.
	ErrUnknownParam = errors.New("link: unknown parameter")
	// ErrRepeatedParam means a query parameter appears more than once.
	ErrRepeatedParam = errors.New("link: repeated parameter")
	// ErrMissing means a required field is absent or zero.
	ErrMissing = errors.New("link: missing field")
	// ErrInvalid means a field has a bad value or length.
	ErrInvalid = errors.New("link: invalid field")
)

// b64 is the encoding of the binary fields: base64url without padding,
// strict about trailing bits so that every value has one spelling.
var b64 = base64.RawURLEncoding.Strict()

// A Link is a parsed share link. The zero value is not a valid link; see
// [Link.Validate] for the rules.
type Link struct {
	// Relays are the relay addresses as "host:port", at least one, without
	// duplicates. host is a DNS name or an IP address; IPv6 addresses are
	// in brackets. The port is 1-65535 in decimal without leading zeros.
	Relays []string
	// Pin is the SHA-256 of the relay certificate's SubjectPublicKeyInfo.
	// Required (not all zero).
	Pin [PinSize]byte
	// SNI is the cover server name sent in the client's hello. Required; a
	// DNS name, not an IP address.
	SNI string
	// Carriers lists the carriers to use, each [CarrierTLS] or
	// [CarrierQUIC] at most once, in order of preference. Empty means all
	// carriers; see [Link.CarrierList].
	Carriers []string
	// Key is the person's access key. Required (not all zero).
	Key [KeySize]byte
	// Name is an optional label for people: valid UTF-8 without control
	// characters, at most [MaxNameLen] bytes.
	Name string
	// Bootstrap lists optional DNS domains that publish a signed relay
	// list. Underscores are allowed in labels. Setting Bootstrap requires
	// ListKey.
	Bootstrap []string
	// ListKey is the ed25519 public key that signs the bootstrap relay
	// list: nil (or empty) or [ListKeySize] bytes.
	ListKey []byte
	// BootstrapKeys are the audience secrets of the bootstrap relay
	// lists this link may fetch, each [BootstrapKeySize] bytes: the client
	// derives from one the DNS names it asks for and the key that decrypts
	// the list published there (see package transport/relaylist). Whoever
	// holds the link can read its audiences' lists, nobody else can.
	// Setting BootstrapKeys requires Bootstrap; Bootstrap without
	// BootstrapKeys is the old public list format, which clients no longer
	// fetch (see [ErrOldBootstrap]).
	BootstrapKeys [][BootstrapKeySize]byte
	// AuthKey is the relays' static X25519 public key, with which the TLS
	// carrier seals its token so that a relay finds the key at once: nil
	// (or empty) or [AuthKeySize] bytes. Without it the client sends a
	// plain token, which relays check against every key.
	AuthKey []byte
}

// AuthKeySize is the length of [Link.AuthKey].
const AuthKeySize = 32

// BootstrapKeySize is the length of each of [Link.BootstrapKeys].
const BootstrapKeySize = 32

// MaxBootstrapKeys is the most bootstrap keys a link may carry.
const MaxBootstrapKeys = 8

// ErrOldBootstrap is returned by [Link.CheckBootstrap] for a link with
// bootstrap domains and a list key but no bootstrap key (bk=): such links
// point at the old, unencrypted DNS list, which relays no longer publish
// and clients no longer fetch. The link's relays still work; only the
// bootstrap is off until the user imports a new link.
var ErrOldBootstrap = errors.New("link: the link's DNS bootstrap (dns= and lk= without bk=) uses the old unencrypted relay list, " +
	"which is no longer fetched: ask the relay operator for a new link (one with bk=, made by \"merpati-relay list share\")")

// CheckBootstrap reports whether l can fetch a bootstrap relay list: nil
// if it has bootstrap domains, a list key and at least one bootstrap key,
// [ErrOldBootstrap] if it has domains and a list key but no bootstrap key,
// and [ErrMissing] if it has no bootstrap domains.
func (l Link) CheckBootstrap() error {
	switch {
	case len(l.Bootstrap) == 0 || len(l.ListKey) == 0:
		return fmt.Errorf("%w: %s and %s (no DNS bootstrap)", ErrMissing, paramBootstrap, paramListKey)
	case len(l.BootstrapKeys) == 0:
		return ErrOldBootstrap
	}
	return nil
}

// Parse parses and validates a share link. The scheme is matched without
// regard to case; everything else is strict, as described in the package
// documentation and [Link.Validate]. A trailing "/" after the first relay
// is tolerated. Errors wrap the sentinels of this package and never
// contain the access key.
func Parse(s string) (*Link, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url.Error repeats the whole string, key included; keep only
		// the reason.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("%w: %v", ErrSyntax, err)
	}
	if u.Scheme != Scheme { // url.Parse lowercases the scheme
		return nil, ErrScheme
	}
	if u.Opaque != "" {
		return nil, fmt.Errorf("%w: missing // after scheme", ErrSyntax)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("%w: unexpected path", ErrSyntax)
	}

	var l Link
	if u.User == nil || u.User.Username() == "" {
		return nil, fmt.Errorf("%w: key", ErrMissing)
	}
	if _, ok := u.User.Password(); ok {
		return nil, fmt.Errorf("%w: key: unexpected ':'", ErrInvalid)
	}
	if err := decodeFixed(l.Key[:], u.User.Username()); err != nil {
		return nil, fmt.Errorf("%w: key: %v", ErrInvalid, err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%w: relay", ErrMissing)
	}
	l.Relays = []string{u.Host}

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("%w: query: %v", ErrSyntax, err)
	}
	var unknown, repeated []string
	for k, v := range q {
		switch k {
		case paramRelays, paramPin, paramSNI, paramCarriers, paramBootstrap, paramListKey, paramAuthKey, paramBootKeys:
		default:
			unknown = append(unknown, strconv.Quote(k))
		}
		if len(v) > 1 {
			repeated = append(repeated, strconv.Quote(k))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, fmt.Errorf("%w: %s", ErrUnknownParam, strings.Join(unknown, ", "))
	}
	if len(repeated) > 0 {
		slices.Sort(repeated)
		return nil, fmt.Errorf("%w: %s", ErrRepeatedParam, strings.Join(repeated, ", "))
	}

	if v, ok := q[paramRelays]; ok {
		l.Relays = append(l.Relays, strings.Split(v[0], ",")...)
	}
	v, ok := q[paramPin]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrMissing, paramPin)
	}
	if err := decodeFixed(l.Pin[:], v[0]); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, paramPin, err)
	}
	v, ok = q[paramSNI]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrMissing, paramSNI)
	}
	l.SNI = v[0]
	if v, ok := q[paramCarriers]; ok {
		l.Carriers = strings.Split(v[0], ",")
	}
	if v, ok := q[paramBootstrap]; ok {
		l.Bootstrap = strings.Split(v[0], ",")
	}
	if v, ok := q[paramListKey]; ok {
		l.ListKey = make([]byte, ListKeySize)
		if err := decodeFixed(l.ListKey, v[0]); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, paramListKey, err)
		}
	}
	if v, ok := q[paramBootKeys]; ok {
		for i, k := range strings.Split(v[0], ",") {
			if i >= MaxBootstrapKeys {
				return nil, fmt.Errorf("%w: %s: more than %d keys", ErrInvalid, paramBootKeys, MaxBootstrapKeys)
			}
			var bk [BootstrapKeySize]byte
			if err := decodeFixed(bk[:], k); err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, paramBootKeys, err)
			}
			l.BootstrapKeys = append(l.BootstrapKeys, bk)
		}
	}
	if v, ok := q[paramAuthKey]; ok {
		l.AuthKey = make([]byte, AuthKeySize)
		if err := decodeFixed(l.AuthKey, v[0]); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, paramAuthKey, err)
		}
	}
	l.Name = u.Fragment

	if err := l.Validate(); err != nil {
		return nil, err
	}
	return &l, nil
}

// decodeFixed decodes base64url s into exactly len(dst) bytes. Its errors
// do not repeat s.
func decodeFixed(dst []byte, s string) error {
	if b64.EncodedLen(len(dst)) != len(s) {
		return fmt.Errorf("want %d base64url characters, got %d", b64.EncodedLen(len(dst)), len(s))
	}
	if _, err := b64.Decode(dst, []byte(s)); err != nil {
		return errors.New("bad base64url")
	}
	return nil
}

// Validate reports whether l is a complete, well-formed link, with an
// error wrapping [ErrMissing] or [ErrInvalid] that names the first bad
// field.
func (l Link) Validate() error {
	if len(l.Relays) == 0 {
		return fmt.Errorf("%w: relay", ErrMissing)
	}
	for i, r := range l.Relays {
		if err := checkRelay(r); err != nil {
			return fmt.Errorf("%w: relay %q: %v", ErrInvalid, r, err)
		}
		if slices.Contains(l.Relays[:i], r) {
			return fmt.Errorf("%w: relay %q listed twice", ErrInvalid, r)
		}
	}
	if l.Pin == [PinSize]byte{} {
		return fmt.Errorf("%w: %s", ErrMissing, paramPin)
	}
	if l.SNI == "" {
		return fmt.Errorf("%w: %s", ErrMissing, paramSNI)
	}
	if err := checkDNSName(l.SNI, false); err != nil {
		return fmt.Errorf("%w: %s %q: %v", ErrInvalid, paramSNI, l.SNI, err)
	}
	for i, c := range l.Carriers {
		if c != CarrierTLS && c != CarrierQUIC {
			return fmt.Errorf("%w: carrier %q: want %q or %q", ErrInvalid, c, CarrierTLS, CarrierQUIC)
		}
		if slices.Contains(l.Carriers[:i], c) {
			return fmt.Errorf("%w: carrier %q listed twice", ErrInvalid, c)
		}
	}
	if l.Key == [KeySize]byte{} {
		return fmt.Errorf("%w: key", ErrMissing)
	}
	if err := checkName(l.Name); err != nil {
		return fmt.Errorf("%w: name: %v", ErrInvalid, err)
	}
	for i, d := range l.Bootstrap {
		if err := checkDNSName(d, true); err != nil {
			return fmt.Errorf("%w: bootstrap domain %q: %v", ErrInvalid, d, err)
		}
		if slices.Contains(l.Bootstrap[:i], d) {
			return fmt.Errorf("%w: bootstrap domain %q listed twice", ErrInvalid, d)
		}
	}
	if n := len(l.ListKey); n != 0 && n != ListKeySize {
		return fmt.Errorf("%w: list key: %d bytes, want %d", ErrInvalid, n, ListKeySize)
	}
	if n := len(l.AuthKey); n != 0 && n != AuthKeySize {
		return fmt.Errorf("%w: auth key: %d bytes, want %d", ErrInvalid, n, AuthKeySize)
	}
	if len(l.Bootstrap) > 0 && len(l.ListKey) == 0 {
		return fmt.Errorf("%w: list key, needed for bootstrap domains", ErrMissing)
	}
	if len(l.BootstrapKeys) > MaxBootstrapKeys {
		return fmt.Errorf("%w: %d bootstrap keys, at most %d", ErrInvalid, len(l.BootstrapKeys), MaxBootstrapKeys)
	}
	for i, k := range l.BootstrapKeys {
		if k == [BootstrapKeySize]byte{} {
			return fmt.Errorf("%w: bootstrap key %d is all zero", ErrInvalid, i)
		}
		if slices.Contains(l.BootstrapKeys[:i], k) {
			return fmt.Errorf("%w: bootstrap key %d listed twice", ErrInvalid, i)
		}
	}
	if len(l.BootstrapKeys) > 0 && len(l.Bootstrap) == 0 {
		return fmt.Errorf("%w: bootstrap domain, needed for bootstrap keys", ErrMissing)
	}
	return nil
}

// checkRelay checks a "host:port" relay address.
func checkRelay(r string) error {
	host, port, err := net.SplitHostPort(r)
	if err != nil {
		return errors.New("want host:port")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != port {
		return errors.New("port must be 1-65535")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return errors.New("IPv6 zone not allowed")
		}
	} else if err := checkDNSName(host, false); err != nil {
		return err
	}
	// One spelling only: no brackets around IPv4 addresses or names,
	// brackets around every IPv6 address.
	if net.JoinHostPort(host, port) != r {
		return errors.New("IPv6 addresses, and only they, go in brackets")
	}
	return nil
}

// checkDNSName checks that s is a DNS name of letters, digits and hyphens
// (RFC 1123 §2.1; underscores too if underscore is true), without a
// trailing dot, whose last label is not all digits so that it cannot be
// an IPv4 address.
func checkDNSName(s string, underscore bool) error {
	if s == "" {
		return errors.New("empty name")
	}
	if len(s) > 253 {
		return errors.New("name longer than 253 bytes")
	}
	labels := strings.Split(s, ".")
	for _, label := range labels {
		if label == "" {
			return errors.New("empty label")
		}
		if len(label) > 63 {
			return errors.New("label longer than 63 bytes")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return errors.New("label starts or ends with '-'")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-':
			case c == '_' && underscore:
			default:
				return fmt.Errorf("bad character %q", c)
			}
		}
	}
	last := labels[len(labels)-1]
	if strings.Trim(last, "0123456789") == "" {
		return errors.New("numeric top-level label")
	}
	return nil
}

// checkName checks a link's label.
func checkName(s string) error {
	if len(s) > MaxNameLen {
		return fmt.Errorf("longer than %d bytes", MaxNameLen)
	}
	if !utf8.ValidString(s) {
		return errors.New("not UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return errors.New("control character")
		}
	}
	return nil
}

// CarrierList returns the carriers to use in order of preference: a copy
// of l.Carriers, or every carrier ([CarrierTLS], then [CarrierQUIC]) if it
// is empty.
func (l Link) CarrierList() []string {
	if len(l.Carriers) == 0 {
		return []string{CarrierTLS, CarrierQUIC}
	}
	return slices.Clone(l.Carriers)
}

// String returns l as a merpati:// link. It does not validate l; for a
// valid l, [Parse] of the result returns a Link equal to l (with empty
// slices as nil). The result contains the access key.
func (l Link) String() string {
	var q strings.Builder
	add := func(k, v string) {
		if q.Len() > 0 {
			q.WriteByte('&')
		}
		q.WriteString(k)
		q.WriteByte('=')
		q.WriteString(escapeValue(v))
	}
	var first string
	if len(l.Relays) > 0 {
		first = l.Relays[0]
		if len(l.Relays) > 1 {
			add(paramRelays, strings.Join(l.Relays[1:], ","))
		}
	}
	add(paramPin, b64.EncodeToString(l.Pin[:]))
	if l.SNI != "" {
		add(paramSNI, l.SNI)
	}
	if len(l.Carriers) > 0 {
		add(paramCarriers, strings.Join(l.Carriers, ","))
	}
	if len(l.Bootstrap) > 0 {
		add(paramBootstrap, strings.Join(l.Bootstrap, ","))
	}
	if len(l.ListKey) > 0 {
		add(paramListKey, b64.EncodeToString(l.ListKey))
	}
	if len(l.BootstrapKeys) > 0 {
		ks := make([]string, len(l.BootstrapKeys))
		for i, k := range l.BootstrapKeys {
			ks[i] = b64.EncodeToString(k[:])
		}
		add(paramBootKeys, strings.Join(ks, ","))
	}
	if len(l.AuthKey) > 0 {
		add(paramAuthKey, b64.EncodeToString(l.AuthKey))
	}
	u := url.URL{
		Scheme:   Scheme,
		User:     url.User(b64.EncodeToString(l.Key[:])),
		Host:     first,
		RawQuery: q.String(),
		Fragment: l.Name,
	}
	return u.String()
}

// escapeValue percent-encodes a query value. Unlike url.QueryEscape it
// leaves ':' and ',' alone (both are allowed in a query by RFC 3986 §3.4),
// which keeps links, and so their QR codes, short.
func escapeValue(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == ':', c == ',':
			b.WriteByte(c)
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

// MarshalText implements [encoding.TextMarshaler]. It returns an error
// for an invalid link.
func (l Link) MarshalText() ([]byte, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	return []byte(l.String()), nil
}

// UnmarshalText implements [encoding.TextUnmarshaler] with [Parse]. On
// error *l is left unchanged.
func (l *Link) UnmarshalText(text []byte) error {
	p, err := Parse(string(text))
	if err != nil {
		return err
	}
	*l = *p
	return nil
}
