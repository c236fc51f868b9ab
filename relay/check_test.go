package relay

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAllowRanges: an allow range that makes the relay an open proxy is
// refused; huge ones and ones that reach the relay's own machine or
// private networks are warned about, with how to fix them.
func TestAllowRanges(t *testing.T) {
	base := Settings{Listen: ":443", Public: []string{"relay.example.net:443"}, Cover: "https://www.example.org"}
	for _, a := range []string{"0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/4", "2000::/3"} {
		s := base
		s.Allow = []string{a}
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), "remove it") {
			t.Errorf("allow %s: %v, want a refusal saying how to fix it", a, err)
		}
	}
	for a, want := range map[string]string{
		"127.0.0.0/8":     "open",
		"10.0.0.0/12":     "open",
		"127.0.0.1/32":    "loopback",
		"169.254.0.0/24":  "metadata",
		"10.201.100.0/24": "private",
		"2001:db8::/32":   "open",
		"192.0.2.0/24":    "",
		"2001:db8::/64":   "",
	} {
		s := base
		s.Allow = []string{a}
		if err := s.Validate(); err != nil {
			t.Errorf("allow %s refused: %v", a, err)
		}
		w := s.Warnings()
		switch {
		case want == "" && len(w) != 0:
			t.Errorf("allow %s: warnings %q, want none", a, w)
		case want != "" && (len(w) != 1 || !strings.Contains(w[0], want) || !strings.Contains(w[0], "remove it")):
			t.Errorf("allow %s: warnings %q, want one about %q with a fix", a, w, want)
		}
	}
}

// TestCheckPermissions: secrets others can read stop the relay; ones its
// group can read are warned about.
func TestCheckPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "r")
	d, err := Init(dir, Settings{Listen: "127.0.0.1:0", Public: []string{"127.0.0.1:443"}, Cover: "https://www.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if w, err := d.Check(); err != nil || len(w) != 0 {
		t.Fatalf("fresh relay: %q, %v", w, err)
	}
	for _, f := range []string{KeyFile, KeysFile} {
		path := filepath.Join(dir, f)
		os.Chmod(path, 0o644)
		if _, err := d.Check(); err == nil || !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Errorf("%s world-readable: %v, want a refusal saying chmod 600", f, err)
		}
		os.Chmod(path, 0o640)
		if w, err := d.Check(); err != nil || len(w) != 1 || !strings.Contains(w[0], "chmod 600 "+path) {
			t.Errorf("%s group-readable: %q, %v, want one warning", f, w, err)
		}
		os.Chmod(path, 0o600)
	}
}

// TestCheckCover: a cover site that is down, or does not speak TLS, is
// reported.
func TestCheckCover(t *testing.T) {
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer up.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	go func() {
		for {
			c, err := plain.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for addr, wantErr := range map[string]bool{
		strings.TrimPrefix(up.URL, "https://"): false,
		closed:                                 true,
		plain.Addr().String():                  true,
	} {
		d := &Dir{Settings: Settings{Cover: "https://" + addr, SNI: "www.example.org"}}
		if err := d.CheckCover(context.Background()); (err != nil) != wantErr {
			t.Errorf("cover %s: %v", addr, err)
		}
	}
}
