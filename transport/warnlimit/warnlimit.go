// Package warnlimit keeps the log from becoming a megaphone for whoever
// can provoke a warning: probers (replays, probes while the cover site is
// down) and key holders (every refused stream). It passes one line per
// kind of warning per interval and counts the ones it holds back. It does
// not decide what is worth a warning.
package warnlimit

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Every is how often one kind of warning may be logged. Probers can
// trigger some warnings at will (replays, probes while the cover site is
// down), and key holders others (every refused stream); the log must not
// become their megaphone.
const Every = 10 * time.Second

// maxKinds bounds the memory of a Limiter: past it, kinds not
// seen for Every are forgotten.
const maxKinds = 4096

// A Limiter passes one line per kind every Every and counts the
// ones it holds back. A kind is a message, or a message and an access key
// for the lines a key holder can provoke, so that one key's flood neither
// fills the log nor hides another key's lines. The zero value is ready to
// use.
type Limiter struct {
	mu   sync.Mutex
	last map[warnKind]time.Time
	held map[warnKind]int
}

type warnKind struct{ msg, key string }

// Warn logs msg at Warn level unless the same msg was logged less than
// Every ago; the next one that passes says how many were suppressed.
func (w *Limiter) Warn(log *slog.Logger, msg string, args ...any) {
	w.emit(log, slog.LevelWarn, "", msg, args...)
}

// KeyWarn is Warn for a line the holder of key can provoke: limited per
// message and key, with the key added as the "key" attribute.
func (w *Limiter) KeyWarn(log *slog.Logger, key, msg string, args ...any) {
	w.emit(log, slog.LevelWarn, key, msg, args...)
}

// KeyInfo is KeyWarn at Info level.
func (w *Limiter) KeyInfo(log *slog.Logger, key, msg string, args ...any) {
	w.emit(log, slog.LevelInfo, key, msg, args...)
}

func (w *Limiter) emit(log *slog.Logger, level slog.Level, key, msg string, args ...any) {
	if !log.Enabled(context.Background(), level) {
		return
	}
	k := warnKind{msg, key}
	now := time.Now()
	w.mu.Lock()
	if w.last == nil {
		w.last, w.held = make(map[warnKind]time.Time), make(map[warnKind]int)
	}
	if now.Sub(w.last[k]) < Every {
		w.held[k]++
		w.mu.Unlock()
		return
	}
	if len(w.last) >= maxKinds {
		for old, t := range w.last {
			if now.Sub(t) >= Every {
				delete(w.last, old)
				delete(w.held, old)
			}
		}
	}
	w.last[k] = now
	held := w.held[k]
	delete(w.held, k)
	w.mu.Unlock()
	if key != "" {
		args = append([]any{"key", key}, args...)
	}
	if held > 0 {
		args = append(args, "suppressed", held)
	}
	log.Log(context.Background(), level, msg, args...)
}
