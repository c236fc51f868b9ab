package link

import (
	"net/url"
	"strconv"
	"strings"
)

// SocksLink returns a Telegram link that adds a SOCKS5 proxy to the app:
//
//	tg://socks?server=127.0.0.1&port=1080[&user=...&pass=...]
//
// host is a DNS name or an IP address; brackets around an IPv6 address are
// removed. user and pass are added when either is not empty.
func SocksLink(host string, port uint16, user, pass string) string {
	var b strings.Builder
	b.WriteString("tg://socks?server=")
	b.WriteString(url.QueryEscape(unbracket(host)))
	b.WriteString("&port=")
	b.WriteString(strconv.Itoa(int(port)))
	if user != "" || pass != "" {
		b.WriteString("&user=")
		b.WriteString(url.QueryEscape(user))
		b.WriteString("&pass=")
		b.WriteString(url.QueryEscape(pass))
	}
	return b.String()
}

// ProxyLink returns the two forms of a Telegram link that adds an MTProxy
// to the app: the tg:// link that opens the app directly, and the
// https://t.me/proxy link that works from a browser. server is a DNS name
// or an IP address (brackets around an IPv6 address are removed). secret is
// passed through as given (hex or base64, with its "dd" or "ee" prefix),
// only percent-encoded where a query needs it.
func ProxyLink(server string, port uint16, secret string) (tg, https string) {
	q := "server=" + url.QueryEscape(unbracket(server)) +
		"&port=" + strconv.Itoa(int(port)) +
		"&secret=" + url.QueryEscape(secret)
	return "tg://proxy?" + q, "https://t.me/proxy?" + q
}

// unbracket removes the brackets around an IPv6 address literal.
func unbracket(host string) string {
	if len(host) >= 2 && host[0] == '[' && host[len(host)-1] == ']' {
		return host[1 : len(host)-1]
	}
	return host
}
