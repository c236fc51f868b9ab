package relaytest

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// Logs keeps what a relay logged, at every level, as slog text lines,
// for tests to look for. It is safe for concurrent use.
type Logs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p to the logs.
func (l *Logs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything logged so far.
func (l *Logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Count returns how many lines logged so far contain s.
func (l *Logs) Count(s string) int {
	n := 0
	for line := range strings.Lines(l.String()) {
		if strings.Contains(line, s) {
			n++
		}
	}
	return n
}

// WaitFor reports whether a line containing s is logged within d.
func (l *Logs) WaitFor(s string, d time.Duration) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if l.Count(s) > 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// logger returns a debug-level logger that writes to l and, with -v, to
// t's log, each line there prefixed by name.
func (l *Logs) logger(t testing.TB, name string) *slog.Logger {
	var w io.Writer = l
	if testing.Verbose() {
		w = io.MultiWriter(l, tWriter{t, name})
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
