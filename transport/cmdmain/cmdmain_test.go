package cmdmain

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
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

func TestHeapProfileOnSignal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "heap")
	stop := heapProfileOnSignal("test", path)
	defer stop()
	if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The profile is gzipped protobuf: it starts with gzip's magic.
		if b, err := os.ReadFile(path); err == nil && len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no heap profile written 10 s after SIGUSR1")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
