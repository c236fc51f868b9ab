package cmdmain

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestLogFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string // a substring of the error, or "" for none
		json    bool
		debug   bool // debug messages pass
		info    bool // info messages pass
	}{
		{name: "defaults", info: true},
		{name: "debug json", args: []string{"-log-level", "debug", "-log-format", "json"}, json: true, debug: true, info: true},
		{name: "warn", args: []string{"-log-level", "WARN"}},
		{name: "bad level", args: []string{"-log-level", "loud"}, wantErr: "--log-level"},
		{name: "bad format", args: []string{"-log-format", "xml"}, wantErr: "--log-format"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			f := AddLogFlags(fs, "info")
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			log, err := f.Logger(&buf)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("d")
			log.Info("i")
			out := buf.String()
			if got := strings.Contains(out, "msg=d") || strings.Contains(out, `"msg":"d"`); got != tc.debug {
				t.Errorf("debug logged %v, want %v:\n%s", got, tc.debug, out)
			}
			if got := strings.Contains(out, "msg=i") || strings.Contains(out, `"msg":"i"`); got != tc.info {
				t.Errorf("info logged %v, want %v:\n%s", got, tc.info, out)
			}
			if tc.json && out != "" && !json.Valid([]byte(strings.SplitN(out, "\n", 2)[0])) {
				t.Errorf("not JSON:\n%s", out)
			}
		})
	}
}
