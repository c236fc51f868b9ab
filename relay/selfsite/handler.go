package selfsite

import (
	"errors"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
)

// indexNames are the files a directory is served as, in Caddy's order.
var indexNames = []string{"index.html", "index.txt"}

// notFoundPage is the file served, with status 404, for what is not found,
// if Dir has it (the common Caddy set-up of an error page); otherwise a 404
// has no body, as stock Caddy's does.
const notFoundPage = "404.html"

// fileServer serves the files of fsys the way Caddy's file_server does
// with its defaults, so that the site looks like the small Caddy site it
// claims to be (Server: Caddy):
//   - a directory is served as its index.html (or index.txt), and
//     without one is not found: there are no listings;
//   - URLs are canonical: a directory's ends in "/", a file's does not,
//     else a 308 redirect fixes it;
//   - only GET and HEAD get a file; other methods get 405 with Allow
//     (which the QUIC carrier relies on: see package doc);
//   - errors have an empty body;
//   - files have Caddy's ETag (modification time in nanoseconds and size,
//     base 36), Last-Modified, Vary: Accept-Encoding, and the ranges and
//     conditional requests of [http.ServeContent].
//
// net/http's FileServer is not used as is because it differs from Caddy
// where a prober can see it: it lists directories, redirects
// "/index.html" to "./" and answers errors with a text body of Go's own.
type fileServer struct {
	fsys fs.FS
	// altSvc is the Alt-Svc header of responses over TCP.
	altSvc string
}

func (h *fileServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Server", "Caddy")
	if r.ProtoMajor < 3 {
		// Caddy advertises HTTP/3 on HTTP/1 and HTTP/2 only.
		hdr.Set("Alt-Svc", h.altSvc)
	}
	upath := r.URL.Path
	if !strings.HasPrefix(upath, "/") {
		upath = "/" + upath
	}
	name := strings.TrimPrefix(path.Clean(upath), "/")
	if name == "" {
		name = "."
	}
	info, err := fs.Stat(h.fsys, name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	implicitIndex := false
	if info.IsDir() {
		for _, idx := range indexNames {
			ii, err := fs.Stat(h.fsys, path.Join(name, idx))
			if err == nil && ii.Mode().IsRegular() {
				info, name, implicitIndex = ii, path.Join(name, idx), true
				break
			}
		}
	}
	if !info.Mode().IsRegular() {
		h.notFound(w, r)
		return
	}
	switch {
	case implicitIndex && !strings.HasSuffix(upath, "/"):
		redirect(w, r, upath+"/")
		return
	case !implicitIndex && strings.HasSuffix(upath, "/"):
		redirect(w, r, strings.TrimSuffix(upath, "/"))
		return
	}
	f, err := h.fsys.Open(name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	defer f.Close()
	hdr.Add("Vary", "Accept-Encoding")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Add("Allow", "GET, HEAD")
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	rs, ok := f.(io.ReadSeeker)
	if !ok {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	mod := info.ModTime()
	if useful(mod) {
		hdr.Set("Etag", etag(mod, info.Size()))
	} else {
		mod = time.Time{}
	}
	if ct := mime.TypeByExtension(path.Ext(name)); ct != "" {
		hdr.Set("Content-Type", ct)
	} else {
		// No sniffing, as Caddy: a nil value keeps ServeContent from
		// guessing.
		hdr["Content-Type"] = nil
	}
	http.ServeContent(w, r, info.Name(), mod, rs)
}

// fail answers a request whose file could not be had.
func (h *fileServer) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, fs.ErrPermission) {
		w.WriteHeader(http.StatusForbidden)
		return
	}
	h.notFound(w, r)
}

// notFound answers 404, with [notFoundPage] if there is one.
func (h *fileServer) notFound(w http.ResponseWriter, r *http.Request) {
	page, err := fs.ReadFile(h.fsys, notFoundPage)
	if err != nil {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(page)))
	w.WriteHeader(http.StatusNotFound)
	if r.Method != http.MethodHead {
		w.Write(page)
	}
}

// redirect sends a 308 to the canonical form of the path, with the query.
func redirect(w http.ResponseWriter, r *http.Request, to string) {
	// "//host" would leave the site.
	for strings.HasPrefix(to, "//") {
		to = to[1:]
	}
	if r.URL.RawQuery != "" {
		to += "?" + r.URL.RawQuery
	}
	http.Redirect(w, r, to, http.StatusPermanentRedirect)
}

// useful reports whether a modification time says anything: those at or
// just after the epoch are what build systems set, and Caddy leaves them
// out of ETag and Last-Modified.
func useful(t time.Time) bool {
	s := t.Unix()
	return s != 0 && s != 1
}

// etag is Caddy's strong entity tag for a file: its modification time in
// nanoseconds and its size, in base 36.
func etag(mod time.Time, size int64) string {
	return `"` + strconv.FormatInt(mod.UnixNano(), 36) + "-" + strconv.FormatInt(size, 36) + `"`
}
