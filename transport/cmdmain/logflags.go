package cmdmain

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
)

// Logging holds a command's logging flags, as [AddLogFlags] defined them.
type Logging struct {
	level, format *string
}

// AddLogFlags defines -log-level (debug, info, warn or error; default
// level) and -log-format (text or json; default text) on fs.
func AddLogFlags(fs *flag.FlagSet, level string) *Logging {
	return &Logging{
		level:  fs.String("log-level", level, "log level: debug, info, warn, error"),
		format: fs.String("log-format", "text", "log format: text or json"),
	}
}

// Logger returns a logger that writes to w at the level and in the format
// the flags hold, once their FlagSet has parsed the arguments. An invalid
// value is an error that names its flag.
func (l *Logging) Logger(w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*l.level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch *l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: want text or json, not %q", *l.format)
}
