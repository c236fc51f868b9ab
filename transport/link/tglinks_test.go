package link_test

import (
	"net/url"
	"testing"

	"github.com/merpati/merpati/transport/link"
)

func TestSocksLink(t *testing.T) {
	tests := []struct {
		host       string
		port       uint16
		user, pass string
		want       string
	}{
		{"127.0.0.1", 1080, "", "", "tg://socks?server=127.0.0.1&port=1080"},
		{"localhost", 9050, "alice", "p&ss w=rd", "tg://socks?server=localhost&port=9050&user=alice&pass=p%26ss+w%3Drd"},
		{"[::1]", 1080, "", "", "tg://socks?server=%3A%3A1&port=1080"},
		{"::1", 1080, "", "secret", "tg://socks?server=%3A%3A1&port=1080&user=&pass=secret"},
	}
	for _, tt := range tests {
		got := link.SocksLink(tt.host, tt.port, tt.user, tt.pass)
		if got != tt.want {
			t.Errorf("SocksLink(%q, %d, %q, %q) = %q, want %q", tt.host, tt.port, tt.user, tt.pass, got, tt.want)
		}
		// Telegram decodes the query; check it gets the values back.
		u, err := url.Parse(got)
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", got, err)
		}
		q := u.Query()
		if u.Scheme != "tg" || u.Host != "socks" || q.Get("port") != "1080" && q.Get("port") != "9050" ||
			q.Get("user") != tt.user || q.Get("pass") != tt.pass {
			t.Errorf("%q decodes to %v", got, q)
		}
	}
}

func TestProxyLink(t *testing.T) {
	tests := []struct {
		server    string
		port      uint16
		secret    string
		wantQuery string
	}{
		{"relay.example", 443, "ee0123456789abcdef0123456789abcdef7777772e6578616d706c652e636f6d",
			"server=relay.example&port=443&secret=ee0123456789abcdef0123456789abcdef7777772e6578616d706c652e636f6d"},
		{"[2001:db8::1]", 8443, "7gEjRWeJq83vASNFZ4mrze93d3cuZXhhbXBsZS5jb20",
			"server=2001%3Adb8%3A%3A1&port=8443&secret=7gEjRWeJq83vASNFZ4mrze93d3cuZXhhbXBsZS5jb20"},
		{"192.0.2.1", 1, "7g+/=", "server=192.0.2.1&port=1&secret=7g%2B%2F%3D"},
	}
	for _, tt := range tests {
		tg, https := link.ProxyLink(tt.server, tt.port, tt.secret)
		if want := "tg://proxy?" + tt.wantQuery; tg != want {
			t.Errorf("tg link = %q, want %q", tg, want)
		}
		if want := "https://t.me/proxy?" + tt.wantQuery; https != want {
			t.Errorf("https link = %q, want %q", https, want)
		}
		u, err := url.Parse(https)
		if err != nil {
			t.Fatal(err)
		}
		if got := u.Query().Get("secret"); got != tt.secret {
			t.Errorf("secret decodes to %q, want %q", got, tt.secret)
		}
	}
}
