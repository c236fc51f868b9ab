package relay

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// warnEvery is how often one kind of warning may be logged. Probers can
// trigger some warnings at will (replays, probes while the cover site is
// down), and key holders others (every refused stream); the log must not
// become their megaphone.
const warnEvery = 10 * time.Second

// maxWarnKinds bounds the memory of a warnLimiter: past it, kinds not
// seen for warnEvery are forgotten.
const maxWarnKinds = 4096

// A warnLimiter passes one line per kind every warnEvery and counts the
// ones it holds back. A kind is a message, or a message and an access key
// for the lines a key holder can provoke, so that one key's flood neither
// fills the log nor hides another key's lines. The zero value is ready to
// use.
type warnLimiter struct {
	mu   sync.Mutex
	last map[warnKind]time.Time
	held map[warnKind]int
}

type warnKind struct{ msg, key string }

// warn logs msg at Warn level unless the same msg was logged less than
// warnEvery ago; the next one that passes says how many were suppressed.
func (w *warnLimiter) warn(log *slog.Logger, msg string, args ...any) {
	w.emit(log, slog.LevelWarn, "", msg, args...)
}

// keyWarn is warn for a line the holder of key can provoke: limited per
// message and key, with the key added as the "key" attribute.
func (w *warnLimiter) keyWarn(log *slog.Logger, key, msg string, args ...any) {
	w.emit(log, slog.LevelWarn, key, msg, args...)
}

// keyInfo is keyWarn at Info level.
func (w *warnLimiter) keyInfo(log *slog.Logger, key, msg string, args ...any) {
	w.emit(log, slog.LevelInfo, key, msg, args...)
}

func (w *warnLimiter) emit(log *slog.Logger, level slog.Level, key, msg string, args ...any) {
	if !log.Enabled(context.Background(), level) {
		return
	}
	k := warnKind{msg, key}
	now := time.Now()
	w.mu.Lock()
	if w.last == nil {
		w.last, w.held = make(map[warnKind]time.Time), make(map[warnKind]int)
	}
	if now.Sub(w.last[k]) < warnEvery {
		w.held[k]++
		w.mu.Unlock()
		return
	}
	if len(w.last) >= maxWarnKinds {
		for old, t := range w.last {
			if now.Sub(t) >= warnEvery {
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
