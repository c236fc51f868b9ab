package cmdmain

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"testing"
)

func TestExitStatus(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		out    string
	}{
		{nil, 0, ""},
		{flag.ErrHelp, 2, ""},
		{fmt.Errorf("run: %w", flag.ErrHelp), 2, ""},
		{errors.New("no link"), 1, "merpati: no link\n"},
	} {
		var buf bytes.Buffer
		if got := exitStatus("merpati", tc.err, &buf); got != tc.status || buf.String() != tc.out {
			t.Errorf("%v: status %d, output %q; want %d, %q", tc.err, got, buf.String(), tc.status, tc.out)
		}
	}
}
