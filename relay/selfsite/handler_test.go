package selfsite

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// newTestSite makes a directory of files and a fileServer over it.
func newTestSite(t testing.TB) (*fileServer, string) {
	t.Helper()
	base := t.TempDir()
	dir := filepath.Join(base, "www")
	files := map[string]string{
		"index.html":         "<p>home</p>\n",
		"style.css":          "body{}\n",
		"notes/index.txt":    "notes\n",
		"empty/.keep":        "",
		"data.unknownext":    "\x00\x01binary",
		"withidx/index.html": "<p>sub</p>\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(base, "secret"), []byte("outside"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(base, "secret"), filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return &fileServer{fsys: root.FS(), altSvc: `h3=":443"; ma=2592000`}, dir
}

func serve(h http.Handler, method, target string, proto int, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, nil)
	req.ProtoMajor = proto
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestFileServer checks the answers that make the site look like Caddy's
// file server with its defaults.
func TestFileServer(t *testing.T) {
	h, _ := newTestSite(t)
	tests := []struct {
		method, target string
		code           int
		body           string
		location       string
		allow          string
	}{
		{"GET", "/", 200, "<p>home</p>\n", "", ""},
		{"HEAD", "/", 200, "", "", ""},
		{"GET", "/index.html", 200, "<p>home</p>\n", "", ""}, // no redirect to "./"
		{"GET", "/style.css", 200, "body{}\n", "", ""},
		{"GET", "/style.css/", 308, "", "/style.css", ""},
		{"GET", "/withidx", 308, "", "/withidx/", ""},
		{"GET", "/withidx?q=1", 308, "", "/withidx/?q=1", ""},
		{"GET", "/withidx/", 200, "<p>sub</p>\n", "", ""},
		{"GET", "/notes/", 200, "notes\n", "", ""},
		{"GET", "/empty/", 404, "", "", ""}, // no listing
		{"GET", "/empty", 404, "", "", ""},
		{"GET", "/missing", 404, "", "", ""},
		{"GET", "/../secret", 404, "", "", ""},
		{"GET", "/escape", 404, "", "", ""}, // symlink out of the root
		{"POST", "/", 405, "", "", "GET, HEAD"},
		{"PUT", "/style.css", 405, "", "", "GET, HEAD"},
		{"POST", "/missing", 404, "", "", ""},
		{"OPTIONS", "/", 405, "", "", "GET, HEAD"},
	}
	for _, tt := range tests {
		rec := serve(h, tt.method, tt.target, 1, nil)
		name := tt.method + " " + tt.target
		if rec.Code != tt.code {
			t.Errorf("%s: status %d, want %d", name, rec.Code, tt.code)
		}
		if tt.code != 308 && rec.Body.String() != tt.body {
			t.Errorf("%s: body %q, want %q", name, rec.Body.String(), tt.body)
		}
		if got := rec.Header().Get("Location"); got != tt.location {
			t.Errorf("%s: Location %q, want %q", name, got, tt.location)
		}
		if got := rec.Header().Get("Allow"); got != tt.allow {
			t.Errorf("%s: Allow %q, want %q", name, got, tt.allow)
		}
		if got := rec.Header().Get("Server"); got != "Caddy" {
			t.Errorf("%s: Server %q, want Caddy", name, got)
		}
		if got := rec.Header().Get("Alt-Svc"); got != `h3=":443"; ma=2592000` {
			t.Errorf("%s: Alt-Svc %q", name, got)
		}
	}
}

// TestFileServerHeaders checks a file's validators and type, conditional
// and range requests, and Alt-Svc on HTTP/3.
func TestFileServerHeaders(t *testing.T) {
	h, dir := newTestSite(t)
	mod := time.Date(2025, 6, 1, 12, 30, 0, 123456789, time.UTC)
	if err := os.Chtimes(filepath.Join(dir, "index.html"), mod, mod); err != nil {
		t.Fatal(err)
	}
	rec := serve(h, "GET", "/", 1, nil)
	// Caddy's: modification time in nanoseconds and size, base 36.
	if got, want := rec.Header().Get("Etag"), `"dab74kom4ff9-c"`; got != want {
		t.Errorf("ETag %q, want %q", got, want)
	}
	if got := rec.Header().Get("Last-Modified"); got != mod.Format(http.TimeFormat) {
		t.Errorf("Last-Modified %q", got)
	}
	if got := rec.Header().Get("Content-Type"); got != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", got)
	}
	if got := rec.Header().Get("Vary"); got != "Accept-Encoding" {
		t.Errorf("Vary %q, want Accept-Encoding", got)
	}
	if got := rec.Header().Get("Accept-Ranges"); got != "bytes" {
		t.Errorf("Accept-Ranges %q", got)
	}
	etagValue := rec.Header().Get("Etag")
	if rec := serve(h, "GET", "/", 1, map[string]string{"If-None-Match": etagValue}); rec.Code != 304 {
		t.Errorf("If-None-Match: status %d, want 304", rec.Code)
	}
	if rec := serve(h, "GET", "/", 1, map[string]string{"Range": "bytes=0-3"}); rec.Code != 206 || rec.Body.String() != "<p>h" {
		t.Errorf("Range: %d %q, want 206 \"<p>h\"", rec.Code, rec.Body.String())
	}
	if rec := serve(h, "GET", "/", 3, nil); rec.Header().Get("Alt-Svc") != "" {
		t.Errorf("HTTP/3 response has Alt-Svc %q", rec.Header().Get("Alt-Svc"))
	}
	// No sniffing of unknown types, as Caddy.
	if rec := serve(h, "GET", "/data.unknownext", 1, nil); rec.Code != 200 || rec.Header().Get("Content-Type") != "" {
		t.Errorf("unknown type: %d, Content-Type %q, want 200 and none", rec.Code, rec.Header().Get("Content-Type"))
	}
	// Build-system modification times give no validators.
	if err := os.Chtimes(filepath.Join(dir, "style.css"), time.Unix(1, 0), time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	if rec := serve(h, "GET", "/style.css", 1, nil); rec.Header().Get("Etag") != "" || rec.Header().Get("Last-Modified") != "" {
		t.Errorf("epoch file: ETag %q, Last-Modified %q, want none", rec.Header().Get("Etag"), rec.Header().Get("Last-Modified"))
	}
}

// TestFileServerNotFoundPage checks that a 404.html in the directory is
// the 404 page.
func TestFileServerNotFoundPage(t *testing.T) {
	h, dir := newTestSite(t)
	const page = "<h1>Not here</h1>\n"
	if err := os.WriteFile(filepath.Join(dir, "404.html"), []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/missing", "/empty/"} {
		rec := serve(h, "GET", target, 1, nil)
		if rec.Code != 404 || rec.Body.String() != page || rec.Header().Get("Content-Type") != "text/html; charset=utf-8" {
			t.Errorf("GET %s: %d %q (%s), want 404 and the page", target, rec.Code, rec.Body.String(), rec.Header().Get("Content-Type"))
		}
	}
	if rec := serve(h, "HEAD", "/missing", 1, nil); rec.Code != 404 || rec.Body.Len() != 0 {
		t.Errorf("HEAD /missing: %d, %d bytes, want 404 and no body", rec.Code, rec.Body.Len())
	}
}

// FuzzFileServer sends arbitrary paths and methods: the file server must
// not panic, must answer with one of the statuses it uses, and must never
// serve a file outside its directory (through "..", encodings or the
// symlink).
func FuzzFileServer(f *testing.F) {
	for _, p := range []string{"/", "/index.html", "/../secret", "/escape", "//etc/passwd", "/withidx", "/style.css/",
		"/%2e%2e/secret", "/notes/../../secret", "\x00", "", "/empty/./", "//", "/withidx//"} {
		f.Add("GET", p)
	}
	f.Add("POST", "/")
	f.Add("HEAD", "/missing")
	h, _ := newTestSite(f)
	f.Fuzz(func(t *testing.T, method, p string) {
		req := &http.Request{
			Method:     method,
			URL:        &url.URL{Path: p, RawQuery: "a=1"},
			Proto:      "HTTP/1.1",
			ProtoMajor: 1,
			ProtoMinor: 1,
			Header:     http.Header{},
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 304, 308, 403, 404, 405:
		default:
			t.Fatalf("%s %q: status %d", method, p, rec.Code)
		}
		if strings.Contains(rec.Body.String(), "outside") {
			t.Fatalf("%s %q: served a file outside the directory", method, p)
		}
		if loc := rec.Header().Get("Location"); strings.HasPrefix(loc, "//") {
			t.Fatalf("%s %q: redirect off the site to %q", method, p, loc)
		}
	})
}
