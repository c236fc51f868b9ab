package relaylist

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// pemType is the PEM block type of a list key file (PKCS #8).
const pemType = "PRIVATE KEY"

// MarshalPrivateKey encodes a list key as a PKCS #8 PEM block, the format
// of `merpati-relay list keygen` files.
func MarshalPrivateKey(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("relaylist: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemType, Bytes: der}), nil
}

// ParsePrivateKey decodes a list key written by [MarshalPrivateKey].
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != pemType {
		return nil, errors.New("relaylist: key file: no PRIVATE KEY PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("relaylist: key file: %w", err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("relaylist: key file: %T, want an ed25519 key", k)
	}
	return ek, nil
}
