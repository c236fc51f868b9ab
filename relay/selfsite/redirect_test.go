package selfsite

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestRedirectHandler(t *testing.T) {
	for _, tc := range []struct {
		port       int
		host, uri  string
		wantTarget string
	}{
		{443, "relay.example.net", "/", "https://relay.example.net/"},
		{443, "relay.example.net:80", "/a/b?c=d", "https://relay.example.net/a/b?c=d"},
		{8443, "relay.example.net", "/x", "https://relay.example.net:8443/x"},
		{443, "", "/", "https://site.example/"},
		{443, "[2001:db8::1]:80", "/", "https://[2001:db8::1]/"},
	} {
		r := httptest.NewRequest(http.MethodGet, "http://placeholder"+tc.uri, nil)
		r.Host = tc.host
		rec := httptest.NewRecorder()
		RedirectHandler("site.example", tc.port).ServeHTTP(rec, r)
		if rec.Code != http.StatusPermanentRedirect {
			t.Errorf("%s%s: status %d, want 308", tc.host, tc.uri, rec.Code)
		}
		if got := rec.Header().Get("Location"); got != tc.wantTarget {
			t.Errorf("%s%s: Location %q, want %q", tc.host, tc.uri, got, tc.wantTarget)
		}
		if rec.Header().Get("Server") != "Caddy" || rec.Header().Get("Connection") != "close" || rec.Body.Len() != 0 {
			t.Errorf("%s%s: headers %v, body %q", tc.host, tc.uri, rec.Header(), rec.Body.String())
		}
	}
}
