package mtproxy

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"time"
)

// AcceptApp completes the proxy's side of a FakeTLS connection whose hello
// h has passed [ClientHello.Verify] with key: it writes the server hello
// to conn, reads the app's obfuscated2 init from r (a reader over conn
// holding any bytes read ahead; nil means conn) and returns the app's
// decrypted byte stream and what the init announced. Deadlines are the
// caller's.
func AcceptApp(conn net.Conn, r io.Reader, key Key, h *ClientHello) (*ObfsConn, Init, error) {
	sh, err := ServerHello(key, h)
	if err != nil {
		return nil, Init{}, err
	}
	if _, err := conn.Write(sh); err != nil {
		return nil, Init{}, fmt.Errorf("write server hello: %w", err)
	}
	tc := NewTLSConn(conn, r)
	var init [InitLen]byte
	if _, err := io.ReadFull(tc, init[:]); err != nil {
		return nil, Init{}, fmt.Errorf("read obfuscated2 init: %w", err)
	}
	in, c, err := AcceptInit(init, key[:])
	if err != nil {
		return nil, Init{}, err
	}
	return NewObfsConn(tc, c), in, nil
}

// StartDC begins obfuscated2 without a secret on conn, a connection to a
// datacenter, as apps and proxies speak to Telegram: it sends a fresh init
// for protocol p and datacenter dc and returns the encrypted stream.
func StartDC(conn net.Conn, p Protocol, dc int) (*ObfsConn, error) {
	init, c, err := NewInit(rand.Reader, p, dc, nil)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(init[:]); err != nil {
		return nil, fmt.Errorf("write obfuscated2 init: %w", err)
	}
	return NewObfsConn(conn, c), nil
}

// ClientHandshake is the app's side of FakeTLS plus obfuscated2, for tests,
// benchmarks and tools: it signs hello (a TLS ClientHello record, which it
// copies; its random and session id are overwritten) with s.Key at now, sends it, checks
// the proxy's server hello, sends an obfuscated2 init for p and dc, and
// returns the plaintext stream to the datacenter.
func ClientHandshake(conn net.Conn, s Secret, hello []byte, now time.Time, p Protocol, dc int) (*ObfsConn, error) {
	rec := bytes.Clone(hello)
	h, err := ParseClientHello(rec)
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
	init, c, err := NewInit(rand.Reader, p, dc, s.Key[:])
	if err != nil {
		return nil, err
	}
	// Buffer reads: each record is a header and a payload, two reads
	// from the conn without a buffer.
	tc := NewClientTLSConn(conn, bufio.NewReaderSize(conn, 64<<10))
	if _, err := tc.Write(init[:]); err != nil {
		return nil, fmt.Errorf("write obfuscated2 init: %w", err)
	}
	return NewObfsConn(tc, c), nil
}
