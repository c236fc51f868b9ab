package socks5_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"github.com/merpati/merpati/client/socks5"
)

// exchange runs Handshake on one end of a net.Pipe while the other end
// writes in and collects everything the server writes back. It must run
// inside a synctest bubble, so a client that stops sending makes the
// handshake time out at once in fake time.
func exchange(cfg socks5.Config, in []byte) (*socks5.Request, []byte, error) {
	c, s := net.Pipe()
	defer c.Close()
	go func() {
		c.Write(in) // fails once s is closed; that is fine
	}()
	out := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(c)
		out <- b
	}()
	req, err := socks5.Handshake(s, cfg)
	s.Close()
	return req, <-out, err
}

// cat concatenates byte slices.
func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

var (
	greetNoAuth   = []byte{5, 1, 0}
	greetUserPass = []byte{5, 1, 2}
	greetBoth     = []byte{5, 2, 0, 2}
	selNoAuth     = []byte{5, 0}
	selUserPass   = []byte{5, 2}
	selNone       = []byte{5, 0xff}
	authOK        = []byte{1, 0}
	authBad       = []byte{1, 1}
	replyOK       = []byte{5, 0, 0, 1, 0, 0, 0, 0, 0, 0}
)

func reply(code byte) []byte { return []byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0} }

func creds(user, pass string) []byte {
	b := []byte{1, byte(len(user))}
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...)
}

func TestHandshake(t *testing.T) {
	users := map[string]string{"alice": "s3cret", "bob": ""}
	connectV4 := []byte{5, 1, 0, 1, 127, 0, 0, 1, 0x01, 0xbb}
	tests := []struct {
		name    string
		users   map[string]string
		in      []byte
		want    *socks5.Request
		wantErr error // errors.Is target; nil means success
		out     []byte
	}{
		{
			name: "ipv4",
			in:   cat(greetNoAuth, connectV4),
			want: &socks5.Request{Host: "127.0.0.1", Port: 443},
			out:  selNoAuth,
		},
		{
			name: "ipv6",
			in: cat(greetNoAuth, []byte{5, 1, 0, 4,
				0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 80}),
			want: &socks5.Request{Host: "2001:db8::1", Port: 80},
			out:  selNoAuth,
		},
		{
			name: "domain",
			in:   cat(greetNoAuth, []byte{5, 1, 0, 3, 12}, []byte("telegram.org"), []byte{0x1f, 0x90}),
			want: &socks5.Request{Host: "telegram.org", Port: 8080},
			out:  selNoAuth,
		},
		{
			name: "nonzero reserved byte tolerated",
			in:   cat(greetNoAuth, []byte{5, 1, 7, 1, 10, 0, 0, 1, 0, 1}),
			want: &socks5.Request{Host: "10.0.0.1", Port: 1},
			out:  selNoAuth,
		},
		{
			name:  "auth success",
			users: users,
			in:    cat(greetBoth, creds("alice", "s3cret"), connectV4),
			want:  &socks5.Request{Host: "127.0.0.1", Port: 443, User: "alice"},
			out:   cat(selUserPass, authOK),
		},
		{
			name:  "auth empty password",
			users: users,
			in:    cat(greetUserPass, creds("bob", ""), connectV4),
			want:  &socks5.Request{Host: "127.0.0.1", Port: 443, User: "bob"},
			out:   cat(selUserPass, authOK),
		},
		{
			name:    "auth wrong password",
			users:   users,
			in:      cat(greetUserPass, creds("alice", "s3creT"), connectV4),
			wantErr: socks5.ErrAuthFailed,
			out:     cat(selUserPass, authBad),
		},
		{
			name:    "auth password prefix",
			users:   users,
			in:      cat(greetUserPass, creds("alice", "s3cre"), connectV4),
			wantErr: socks5.ErrAuthFailed,
			out:     cat(selUserPass, authBad),
		},
		{
			name:    "auth unknown user",
			users:   users,
			in:      cat(greetUserPass, creds("mallory", ""), connectV4),
			wantErr: socks5.ErrAuthFailed,
			out:     cat(selUserPass, authBad),
		},
		{
			name:    "auth required but not offered",
			users:   users,
			in:      cat(greetNoAuth, connectV4),
			wantErr: socks5.ErrNoAcceptableMethod,
			out:     selNone,
		},
		{
			name:    "auth bad subnegotiation version",
			users:   users,
			in:      cat(greetUserPass, []byte{5, 5}, []byte("alice"), []byte{6}, []byte("s3cret")),
			wantErr: socks5.ErrVersion,
			out:     selUserPass,
		},
		{
			name: "no users, client insists on password",
			in:   cat(greetUserPass, creds("anyone", "anything"), connectV4),
			want: &socks5.Request{Host: "127.0.0.1", Port: 443, User: "anyone"},
			out:  cat(selUserPass, authOK),
		},
		{
			name: "no users, both offered, no auth chosen",
			in:   cat(greetBoth, connectV4),
			want: &socks5.Request{Host: "127.0.0.1", Port: 443},
			out:  selNoAuth,
		},
		{
			name:    "no methods",
			in:      []byte{5, 0},
			wantErr: socks5.ErrNoAcceptableMethod,
			out:     selNone,
		},
		{
			name:    "only gssapi",
			in:      []byte{5, 1, 1},
			wantErr: socks5.ErrNoAcceptableMethod,
			out:     selNone,
		},
		{
			name:    "socks4",
			in:      []byte{4, 1, 0, 80, 127, 0, 0, 1, 0},
			wantErr: socks5.ErrVersion,
		},
		{
			name:    "http",
			in:      []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
			wantErr: socks5.ErrVersion,
		},
		{
			name:    "bad request version",
			in:      cat(greetNoAuth, []byte{4, 1, 0, 1, 127, 0, 0, 1, 0, 80}),
			wantErr: socks5.ErrVersion,
			out:     selNoAuth,
		},
		{
			name:    "bind",
			in:      cat(greetNoAuth, []byte{5, 2, 0, 1, 127, 0, 0, 1, 0, 80}),
			wantErr: socks5.ErrCommandNotSupported,
			out:     cat(selNoAuth, reply(7)),
		},
		{
			name:    "udp associate",
			in:      cat(greetNoAuth, []byte{5, 3, 0, 1, 0, 0, 0, 0, 0, 0}),
			wantErr: socks5.ErrCommandNotSupported,
			out:     cat(selNoAuth, reply(7)),
		},
		{
			name:    "unknown command",
			in:      cat(greetNoAuth, []byte{5, 9, 0, 3, 1, 'x', 0, 80}),
			wantErr: socks5.ErrCommandNotSupported,
			out:     cat(selNoAuth, reply(7)),
		},
		{
			name:    "unknown address type",
			in:      cat(greetNoAuth, []byte{5, 1, 0, 2, 1, 2, 3, 4, 0, 80}),
			wantErr: socks5.ErrAddressNotSupported,
			out:     cat(selNoAuth, reply(8)),
		},
		{
			name:    "empty domain",
			in:      cat(greetNoAuth, []byte{5, 1, 0, 3, 0, 0, 80}),
			wantErr: socks5.ErrBadAddress,
			out:     cat(selNoAuth, reply(1)),
		},
		{
			name:    "domain with control byte",
			in:      cat(greetNoAuth, []byte{5, 1, 0, 3, 3, 'a', '\n', 'b', 0, 80}),
			wantErr: socks5.ErrBadAddress,
			out:     cat(selNoAuth, reply(1)),
		},
		{
			name:    "empty",
			in:      nil,
			wantErr: os.ErrDeadlineExceeded,
		},
		{
			name:    "short greeting",
			in:      []byte{5},
			wantErr: os.ErrDeadlineExceeded,
		},
		{
			name:    "short methods",
			in:      []byte{5, 3, 0},
			wantErr: os.ErrDeadlineExceeded,
		},
		{
			name:    "short credentials",
			users:   users,
			in:      cat(greetUserPass, []byte{1, 5, 'a', 'l'}),
			wantErr: os.ErrDeadlineExceeded,
			out:     selUserPass,
		},
		{
			name:    "short ipv6",
			in:      cat(greetNoAuth, []byte{5, 1, 0, 4, 0, 0, 0, 0}),
			wantErr: os.ErrDeadlineExceeded,
			out:     selNoAuth,
		},
		{
			name:    "short domain",
			in:      cat(greetNoAuth, []byte{5, 1, 0, 3, 200, 'a', 'b'}),
			wantErr: os.ErrDeadlineExceeded,
			out:     selNoAuth,
		},
		{
			name:    "missing port",
			in:      cat(greetNoAuth, []byte{5, 1, 0, 1, 1, 2, 3, 4, 0}),
			wantErr: os.ErrDeadlineExceeded,
			out:     selNoAuth,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				cfg := socks5.Config{Users: tt.users, HandshakeTimeout: 5 * time.Second}
				start := time.Now()
				req, out, err := exchange(cfg, tt.in)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("Handshake error = %v, want %v", err, tt.wantErr)
					}
					if req != nil {
						t.Errorf("Handshake returned request %+v with error", req)
					}
				} else {
					if err != nil {
						t.Fatalf("Handshake: %v", err)
					}
					if *req != *tt.want {
						t.Errorf("request = %+v, want %+v", *req, *tt.want)
					}
				}
				if !bytes.Equal(out, tt.out) {
					t.Errorf("server wrote %x, want %x", out, tt.out)
				}
				if errors.Is(tt.wantErr, os.ErrDeadlineExceeded) {
					if d := time.Since(start); d != 5*time.Second {
						t.Errorf("timed out after %v, want 5s", d)
					}
				}
			})
		})
	}
}

// TestHandshakeLeavesEarlyData checks that Handshake reads nothing past the
// request: a client may send its first bytes right after it.
func TestHandshakeLeavesEarlyData(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, s := net.Pipe()
		defer c.Close()
		defer s.Close()
		in := cat(greetNoAuth, []byte{5, 1, 0, 1, 1, 2, 3, 4, 0, 80}, []byte("early"))
		go c.Write(in)
		go io.Copy(io.Discard, c)
		req, err := socks5.Handshake(s, socks5.Config{})
		if err != nil {
			t.Fatal(err)
		}
		if got := req.Addr(); got != "1.2.3.4:80" {
			t.Errorf("Addr() = %q", got)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(s, buf); err != nil {
			t.Fatal(err)
		}
		if string(buf) != "early" {
			t.Errorf("early data = %q", buf)
		}
	})
}

// TestHandshakeClearsDeadline checks that a successful handshake leaves no
// deadline behind for the relaying that follows.
func TestHandshakeClearsDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, s := net.Pipe()
		defer c.Close()
		defer s.Close()
		go c.Write(cat(greetNoAuth, []byte{5, 1, 0, 1, 1, 2, 3, 4, 0, 80}))
		go io.Copy(io.Discard, c)
		if _, err := socks5.Handshake(s, socks5.Config{HandshakeTimeout: time.Second}); err != nil {
			t.Fatal(err)
		}
		go func() {
			time.Sleep(time.Minute)
			c.Write([]byte("x"))
		}()
		buf := make([]byte, 1)
		if _, err := s.Read(buf); err != nil {
			t.Fatalf("read after handshake: %v", err)
		}
	})
}

func TestRequestAddr(t *testing.T) {
	tests := []struct {
		req      socks5.Request
		addr     string
		isDomain bool
	}{
		{socks5.Request{Host: "127.0.0.1", Port: 443}, "127.0.0.1:443", false},
		{socks5.Request{Host: "2001:db8::1", Port: 80}, "[2001:db8::1]:80", false},
		{socks5.Request{Host: "example.com", Port: 8080}, "example.com:8080", true},
	}
	for _, tt := range tests {
		if got := tt.req.Addr(); got != tt.addr {
			t.Errorf("%+v.Addr() = %q, want %q", tt.req, got, tt.addr)
		}
		if got := tt.req.IsDomain(); got != tt.isDomain {
			t.Errorf("%+v.IsDomain() = %v, want %v", tt.req, got, tt.isDomain)
		}
	}
}

// stringAddr is a net.Addr that is neither TCP nor UDP.
type stringAddr string

func (a stringAddr) Network() string { return "test" }
func (a stringAddr) String() string  { return string(a) }

func TestReply(t *testing.T) {
	tests := []struct {
		name  string
		code  socks5.ReplyCode
		bound net.Addr
		want  []byte
	}{
		{"nil", socks5.ReplySucceeded, nil, replyOK},
		{"nil tcp", socks5.ReplyGeneralFailure, (*net.TCPAddr)(nil), reply(1)},
		{"tcp4", socks5.ReplySucceeded, &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1080},
			[]byte{5, 0, 0, 1, 192, 0, 2, 1, 0x04, 0x38}},
		{"tcp6", socks5.ReplyHostUnreachable, &net.TCPAddr{IP: net.ParseIP("2001:db8::2"), Port: 443},
			[]byte{5, 4, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0x01, 0xbb}},
		{"udp", socks5.ReplyConnectionRefused, &net.UDPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 53},
			[]byte{5, 5, 0, 1, 10, 1, 2, 3, 0, 53}},
		{"string", socks5.ReplyTTLExpired, stringAddr("10.0.0.9:258"),
			[]byte{5, 6, 0, 1, 10, 0, 0, 9, 1, 2}},
		{"unparsable", socks5.ReplyNotAllowed, stringAddr("pipe"), reply(2)},
		{"network unreachable", socks5.ReplyNetworkUnreachable, nil, reply(3)},
		{"command", socks5.ReplyCommandNotSupported, nil, reply(7)},
		{"atyp", socks5.ReplyAddressNotSupported, nil, reply(8)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := socks5.Reply(&buf, tt.code, tt.bound); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), tt.want) {
				t.Errorf("Reply wrote %x, want %x", buf.Bytes(), tt.want)
			}
		})
	}
}

func TestReplyWriteError(t *testing.T) {
	c, s := net.Pipe()
	c.Close()
	defer s.Close()
	if err := socks5.Reply(s, socks5.ReplySucceeded, nil); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("Reply on closed pipe: %v", err)
	}
}

func TestReplyCodeString(t *testing.T) {
	for code, want := range map[socks5.ReplyCode]string{
		socks5.ReplySucceeded:           "succeeded",
		socks5.ReplyCommandNotSupported: "command not supported",
		42:                              "reply code 42",
	} {
		if got := code.String(); got != want {
			t.Errorf("ReplyCode(%d).String() = %q, want %q", byte(code), got, want)
		}
	}
}
