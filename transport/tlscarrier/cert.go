package tlscarrier

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// NewCertificate makes the relay's self-signed certificate for name (the
// cover name) with a fresh ECDSA P-256 key, valid for ten years, and
// returns both in PEM. Clients trust it by its pin, never by its name.
func NewCertificate(name string) (certPEM, keyPEM []byte, err error) {
	return NewCertificateLike(name, "ECDSA-P256")
}

// NewCertificateLike is [NewCertificate] with a key of the kind keyName
// names, as [Flight.LeafKey] does: "ECDSA-P256", "ECDSA-P384",
// "RSA-2048", "RSA-3072", "RSA-4096" or "Ed25519". A relay whose key is of
// its cover site's kind signs its handshake with a CertificateVerify of
// the cover's size.
func NewCertificateLike(name, keyName string) (certPEM, keyPEM []byte, err error) {
	now := time.Now().Add(-time.Hour)
	return NewCertificateValid(name, keyName, now, now.AddDate(10, 0, 0))
}

// NewCertificateValid is [NewCertificateLike] valid from notBefore to
// notAfter: a certificate that stands in for a CA-issued one, such as a
// site's until its own is had, takes a CA's span.
func NewCertificateValid(name, keyName string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	var key crypto.Signer
	switch keyName {
	case "ECDSA-P256":
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ECDSA-P384":
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "RSA-2048", "RSA-3072", "RSA-4096":
		bits, _ := strconv.Atoi(strings.TrimPrefix(keyName, "RSA-"))
		key, err = rsa.GenerateKey(rand.Reader, bits)
	case "Ed25519":
		_, key, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, nil, fmt.Errorf("tlscarrier: no key of kind %q", keyName)
	}
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// Pin returns the pin of the leaf certificate of c: the SHA-256 of its
// SubjectPublicKeyInfo.
func Pin(c tls.Certificate) ([32]byte, error) {
	if len(c.Certificate) == 0 {
		return [32]byte{}, fmt.Errorf("tlscarrier: empty certificate")
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return [32]byte{}, fmt.Errorf("parse certificate: %w", err)
	}
	return sha256.Sum256(leaf.RawSubjectPublicKeyInfo), nil
}
