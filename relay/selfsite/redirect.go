package selfsite

import (
	"net"
	"net/http"
	"strconv"
)

// RedirectHandler answers plain HTTP as Caddy's automatic HTTPS redirect
// does for a site it serves: 308 Permanent Redirect to the same host, path
// and query on https:// (at httpsPort, named only if it is not 443), with
// "Connection: close", "Server: Caddy" and no body. A request without a
// Host goes to domain. A relay that is its own cover site serves it on
// port 80, where a real site answers: a closed port 80 beside a web site
// on 443 is a mark of its own.
func RedirectHandler(domain string, httpsPort int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if host == "" {
			host = domain
		}
		if httpsPort != 0 && httpsPort != 443 {
			host = net.JoinHostPort(host, strconv.Itoa(httpsPort))
		} else if net.ParseIP(host) != nil && net.ParseIP(host).To4() == nil {
			host = "[" + host + "]"
		}
		hdr := w.Header()
		hdr.Set("Server", "Caddy")
		hdr.Set("Location", "https://"+host+r.URL.RequestURI())
		hdr.Set("Connection", "close")
		w.WriteHeader(http.StatusPermanentRedirect)
	})
}
