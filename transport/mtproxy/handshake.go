package mtproxy

import (
	"crypto/rand"
	"fmt"
	"io"
	"net"
)

// AcceptApp completes the proxy's side of a FakeTLS connection whose hello
// h has passed [ClientHello.Verify] with key: it writes the server hello
// to conn, reads the app's obfuscated2 init from r (a reader over conn
// holding any bytes read ahead; nil means conn) and returns the app's
// decrypted byte stream and what the init announced. Deadlines are the
// caller's.
func AcceptApp(conn net.Conn, r io.Reader, key Key, h *ClientHello) (*ObfsConn, Init, error) {
	return AcceptAppSized(conn, r, key, h, 0)
}

// AcceptAppSized is [AcceptApp] whose server hello carries an
// ApplicationData record of appData bytes, where the encrypted rest of a
// TLS 1.3 server's first flight would be: the payload bytes of the cover
// site's encrypted handshake records, so that the answer's size follows
// the cover's certificate chain (apps take exactly one such record). Zero
// or out of range means a random 1024 to 4095.
func AcceptAppSized(conn net.Conn, r io.Reader, key Key, h *ClientHello, appData int) (*ObfsConn, Init, error) {
	sh, err := serverHello(key, h, appData)
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
