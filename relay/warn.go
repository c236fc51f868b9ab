package relay

import (
	"log/slog"
	"sync"
	"time"
)

// warnEvery is how often one kind of warning may be logged. Probers can
// trigger some warnings at will (replays, probes while the cover site is
// down); the log must not become their megaphone.
const warnEvery = 10 * time.Second

// A warnLimiter passes one warning per message every warnEvery and counts
// the ones it holds back. The zero value is ready to use.
type warnLimiter struct {
	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

// warn logs msg at Warn level unless the same msg was logged less than
// warnEvery ago; the next one that passes says how many were suppressed.
func (w *warnLimiter) warn(log *slog.Logger, msg string, args ...any) {
	now := time.Now()
	w.mu.Lock()
	if w.last == nil {
		w.last, w.held = make(map[string]time.Time), make(map[string]int)
	}
	if now.Sub(w.last[msg]) < warnEvery {
		w.held[msg]++
		w.mu.Unlock()
		return
	}
	w.last[msg] = now
	held := w.held[msg]
	delete(w.held, msg)
	w.mu.Unlock()
	if held > 0 {
		args = append(args, "suppressed", held)
	}
	log.Warn(msg, args...)
}
