package relay

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/merpati/merpati/relay/access"
)

func TestSettingsValidate(t *testing.T) {
	good := Settings{Listen: ":443", Public: []string{"relay.example.net:443"}, Cover: "https://www.example.org"}
	if err := good.Validate(); err != nil {
		t.Fatalf("good settings: %v", err)
	}
	if addr, _ := good.CoverAddr(); addr != "www.example.org:443" {
		t.Errorf("cover addr %q", addr)
	}
	if good.ServerName() != "www.example.org" {
		t.Errorf("server name %q", good.ServerName())
	}
	bad := map[string]func(*Settings){
		"no listen":       func(s *Settings) { s.Listen = "" },
		"no public":       func(s *Settings) { s.Public = nil },
		"public no port":  func(s *Settings) { s.Public = []string{"relay.example.net"} },
		"http cover":      func(s *Settings) { s.Cover = "http://www.example.org" },
		"ip cover no sni": func(s *Settings) { s.Cover = "https://127.0.0.1:8443" },
		"bad dc":          func(s *Settings) { s.DC = []string{"two=1.2.3.4:443"} },
		"bad allow":       func(s *Settings) { s.Allow = []string{"10.0.0.0/33"} },
		"bad idle":        func(s *Settings) { s.IdleTimeout = "75" },
		"short idle":      func(s *Settings) { s.IdleTimeout = "500ms" },
		"long idle":       func(s *Settings) { s.IdleTimeout = "2h" },
	}
	for name, mod := range bad {
		s := good
		mod(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	withSNI := good
	withSNI.Cover, withSNI.SNI = "https://127.0.0.1:8443", "cover.example.org"
	if err := withSNI.Validate(); err != nil {
		t.Errorf("ip cover with sni: %v", err)
	}
	withIdle := good
	withIdle.IdleTimeout = "75s"
	if d, err := withIdle.idleTimeout(); err != nil || d != 75*time.Second || withIdle.Validate() != nil {
		t.Errorf("idle_timeout 75s: %v, %v", d, err)
	}
}

func TestInitLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "r")
	s := Settings{Listen: "127.0.0.1:0", Public: []string{"127.0.0.1:443"}, Cover: "https://www.example.org"}
	d, err := Init(dir, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Init(dir, s); err == nil {
		t.Fatal("Init overwrote an existing relay")
	}
	e, err := access.Add(d.KeysPath(), "alice", access.Entry{})
	if err != nil {
		t.Fatal(err)
	}
	again, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Pin != d.Pin {
		t.Fatal("pin changed across loads")
	}
	l := again.Link(e)
	if err := l.Validate(); err != nil || l.Key != e.Key || l.SNI != "www.example.org" {
		t.Fatalf("link %+v: %v", l, err)
	}
	cfg, err := again.Config(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg); err != nil {
		t.Fatal(err)
	}
	// Unknown fields in relay.json are rejected, not ignored.
	os.WriteFile(filepath.Join(dir, SettingsFile), []byte(`{"listen":":443","public":["a:1"],"cover":"https://x.org","colour":"red"}`), 0o600)
	if _, err := LoadDir(dir); err == nil {
		t.Fatal("unknown settings field accepted")
	}
}
