// Package mtproxytest is the app's side of MTProxy's FakeTLS and
// obfuscated2 handshakes, for tests and benchmarks that play a Telegram
// app against a relay or a client's local front.
//
// Package mtproxy holds what the relay and the client run: the proxy's
// side of FakeTLS, both sides of obfuscated2 and the record layer. This
// package adds only what an app does and no proxy does: sign its
// ClientHello with the secret ([SignClientHello]), check the proxy's
// answer ([ReadServerHello]) and send its first records
// ([ClientHandshake]). It also makes the real ClientHello records those
// hellos start from ([HelloRecord]). The binaries do not link it.
package mtproxytest

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/merpati/merpati/transport/hello"
	"github.com/merpati/merpati/transport/mtproxy"
)

// TLS record constants (RFC 8446, Section 5.1) and where the random sits
// in a hello record: after the record header (5), the handshake type (1)
// and length (3) and the version (2).
const (
	recordHeaderLen    = 5
	recordChangeCipher = 0x14
	recordHandshake    = 0x16
	recordApplication  = 0x17

	randomOffset = 11
	randomLen    = 32
)

// ErrServerHello means the proxy's answer is malformed or its digest does
// not match.
var ErrServerHello = errors.New("mtproxytest: bad FakeTLS server hello")

// HelloRecord returns a real TLS ClientHello record, as crypto/tls sends
// it for serverName, to be signed as a FakeTLS hello. It fails tb if
// crypto/tls sends none.
func HelloRecord(tb testing.TB, serverName string) []byte {
	tb.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		tls.Client(c, &tls.Config{ServerName: serverName, InsecureSkipVerify: true}).Handshake()
		c.Close()
	}()
	rec, err := hello.ReadRecord(s)
	if err != nil {
		tb.Fatalf("read crypto/tls ClientHello: %v", err)
	}
	return rec
}

// SignClientHello turns a ClientHello record into a FakeTLS one, as an app
// does: its random becomes HMAC-SHA256(key, the record with the random
// zeroed), with the timestamp now XORed into the last four bytes
// (little-endian Unix seconds). record must be at least a record header, a
// handshake header, a version and a random long; it fails with
// [mtproxy.ErrHello] otherwise.
func SignClientHello(record []byte, key mtproxy.Key, now time.Time) error {
	if len(record) < randomOffset+randomLen {
		return fmt.Errorf("%w: %d bytes", mtproxy.ErrHello, len(record))
	}
	random := record[randomOffset : randomOffset+randomLen]
	clear(random)
	m := hmac.New(sha256.New, key[:])
	m.Write(record)
	d := m.Sum(nil)
	ts := binary.LittleEndian.Uint32(d[randomLen-4:]) ^ uint32(now.Unix())
	binary.LittleEndian.PutUint32(d[randomLen-4:], ts)
	copy(random, d)
	return nil
}

// ReadServerHello reads a FakeTLS proxy's answer from r, as an app does,
// and checks its digest, HMAC-SHA256(key, clientRandom ‖ the answer with
// its server random zeroed), against the client random the app sent. It
// reads exactly the handshake records, the ChangeCipherSpec and one
// ApplicationData record. Every failure wraps [ErrServerHello].
func ReadServerHello(r io.Reader, clientRandom [32]byte, key mtproxy.Key) error {
	var all []byte
	read := func() (byte, error) {
		var hdr [recordHeaderLen]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return 0, err
		}
		n := int(binary.BigEndian.Uint16(hdr[3:]))
		rec := make([]byte, recordHeaderLen+n)
		copy(rec, hdr[:])
		if _, err := io.ReadFull(r, rec[recordHeaderLen:]); err != nil {
			return 0, err
		}
		all = append(all, rec...)
		return hdr[0], nil
	}
	typ, err := read()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrServerHello, err)
	}
	if typ != recordHandshake || len(all) < randomOffset+randomLen {
		return fmt.Errorf("%w: first record", ErrServerHello)
	}
	for typ != recordChangeCipher {
		if typ, err = read(); err != nil {
			return fmt.Errorf("%w: %w", ErrServerHello, err)
		}
		if typ != recordHandshake && typ != recordChangeCipher {
			return fmt.Errorf("%w: record type %#x", ErrServerHello, typ)
		}
	}
	if typ, err = read(); err != nil || typ != recordApplication {
		return fmt.Errorf("%w: no application data record (%v)", ErrServerHello, err)
	}
	got := bytes.Clone(all[randomOffset : randomOffset+randomLen])
	clear(all[randomOffset : randomOffset+randomLen])
	m := hmac.New(sha256.New, key[:])
	m.Write(clientRandom[:])
	m.Write(all)
	if !hmac.Equal(m.Sum(nil), got) {
		return fmt.Errorf("%w: digest", ErrServerHello)
	}
	return nil
}

// ClientHandshake is the app's side of FakeTLS plus obfuscated2: it signs
// record (a TLS ClientHello record, which it copies; its random and session
// id are overwritten) with s.Key at now, sends it, checks the proxy's
// server hello, sends a ChangeCipherSpec record and, in one
// ApplicationData record, an obfuscated2 init for p and dc keyed with the
// secret, and returns the plaintext stream to the datacenter.
func ClientHandshake(conn net.Conn, s mtproxy.Secret, record []byte, now time.Time, p mtproxy.Protocol, dc int) (*mtproxy.ObfsConn, error) {
	rec := bytes.Clone(record)
	h, err := mtproxy.ParseClientHello(rec)
	if err != nil {
		return nil, err
	}
	// A fresh session id makes every hello, and so its digest, unique
	// even within one second, as the apps' random key shares do.
	rand.Read(h.SessionID)
	if err := SignClientHello(rec, s.Key, now); err != nil {
		return nil, err
	}
	if _, err := conn.Write(rec); err != nil {
		return nil, fmt.Errorf("write client hello: %w", err)
	}
	var random [randomLen]byte
	copy(random[:], rec[randomOffset:])
	if err := ReadServerHello(conn, random, s.Key); err != nil {
		return nil, err
	}
	init, c, err := mtproxy.NewInit(rand.Reader, p, dc, s.Key[:])
	if err != nil {
		return nil, err
	}
	// The apps send a ChangeCipherSpec record just before their first
	// ApplicationData record, in the same write.
	first := []byte{recordChangeCipher, 3, 3, 0, 1, 1, recordApplication, 3, 3, 0, mtproxy.InitLen}
	if _, err := conn.Write(append(first, init[:]...)); err != nil {
		return nil, fmt.Errorf("write obfuscated2 init: %w", err)
	}
	// Buffer reads: each record is a header and a payload, two reads
	// from the conn without a buffer.
	tc := mtproxy.NewTLSConn(conn, bufio.NewReaderSize(conn, 64<<10))
	return mtproxy.NewObfsConn(tc, c), nil
}
