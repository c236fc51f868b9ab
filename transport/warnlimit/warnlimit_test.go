package warnlimit

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestWarnLimiter(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var w Limiter
	for range 100 {
		w.Warn(log, "replayed hello sent to cover site", "key", "alice")
	}
	w.Warn(log, "cover site unreachable")
	if n := strings.Count(buf.String(), "replayed hello"); n != 1 {
		t.Errorf("%d replay warnings logged, want 1:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "cover site unreachable") {
		t.Error("a different warning was held back")
	}
	// Pretend the interval passed: the next one reports what was held.
	w.mu.Lock()
	for k := range w.last {
		w.last[k] = w.last[k].Add(-Every)
	}
	w.mu.Unlock()
	buf.Reset()
	w.Warn(log, "replayed hello sent to cover site", "key", "bob")
	if !strings.Contains(buf.String(), "suppressed=99") {
		t.Errorf("suppressed count missing: %s", buf.String())
	}
}

func TestWarnLimiterPerKey(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var w Limiter
	for range 100 {
		w.KeyInfo(log, "flood", "stream refused: key at its stream limit (max_streams)")
	}
	w.KeyInfo(log, "other", "stream refused: key at its stream limit (max_streams)")
	if n := strings.Count(buf.String(), "key=flood"); n != 1 {
		t.Errorf("%d lines for the flooding key, want 1:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "key=other") {
		t.Errorf("another key's line was held back:\n%s", buf.String())
	}
}
