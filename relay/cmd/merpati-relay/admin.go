package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/merpati/merpati/relay"
	"github.com/merpati/merpati/relay/metrics"
)

// adminSocket is the name of the running relay's admin socket in its
// directory: a unix socket of mode 0600, so only the relay's user (and
// root) may ask it anything.
const adminSocket = "admin.sock"

// keyStatus is what the admin socket says of one key.
type keyStatus struct {
	Name     string `json:"name"`
	Sessions int    `json:"sessions"`
	Streams  int    `json:"streams"`
	Used     int64  `json:"used"`
}

// statusReply is the admin socket's answer to GET /status.
type statusReply struct {
	Keys []keyStatus `json:"keys"`
	// NotMirrored is what key holders' TLS flight (and MTProxy mode's
	// answer) still differs in from the cover site's, as last learned
	// ([relay.Relay.MirrorGaps]).
	NotMirrored []string `json:"not_mirrored,omitempty"`
	// QUICOff says why the relay left the QUIC carrier off although
	// relay.json asks for it ([relay.Relay.QUICOff]).
	QUICOff string `json:"quic_off,omitempty"`
}

// liveState is what the admin socket reports of the running relay
// besides its keys: a *relay.Relay.
type liveState interface {
	MirrorGaps() []string
	QUICOff() string
}

// serveAdmin serves the admin socket in dir until ctx is done; live, if
// not nil, is the relay it reports on besides its keys. A socket
// left by a relay that died is replaced; one a running relay answers on is
// left alone (the error says so).
func serveAdmin(ctx context.Context, dir string, m *metrics.Metrics, live liveState, log *slog.Logger, wg *sync.WaitGroup) error {
	path := filepath.Join(dir, adminSocket)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("admin socket %s: another relay answers on it", path)
	}
	os.Remove(path)
	// The directory is the relay's own (0700); the umask keeps the
	// socket from being open to others even for the moment before the
	// chmod.
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("admin socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		reply := liveStatus(m)
		if live != nil {
			reply.NotMirrored, reply.QUICOff = live.MirrorGaps(), live.QUICOff()
		}
		json.NewEncoder(w).Encode(reply)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin socket failed", "err", err)
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		srv.Close()
		os.Remove(path)
	})
	return nil
}

// liveStatus is every key with usage or something open, by name.
func liveStatus(m *metrics.Metrics) statusReply {
	usage := m.Usage()
	live := m.LiveByKey()
	names := make(map[string]bool)
	for k := range usage {
		names[k] = true
	}
	for k := range live {
		names[k] = true
	}
	reply := statusReply{Keys: []keyStatus{}}
	for _, k := range slices.Sorted(maps.Keys(names)) {
		reply.Keys = append(reply.Keys, keyStatus{Name: k, Sessions: live[k].Sessions, Streams: live[k].Streams, Used: usage[k]})
	}
	return reply
}

// errNotRunning means no relay answers on the directory's admin socket.
var errNotRunning = errors.New("no relay running from this directory (no answer on its admin socket)")

// queryStatus asks the relay running from dir for its live status.
func queryStatus(dir string) (statusReply, error) {
	path := filepath.Join(dir, adminSocket)
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}},
	}
	defer client.CloseIdleConnections()
	var reply statusReply
	resp, err := client.Get("http://relay/status")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return reply, fmt.Errorf("%s: %w", path, errNotRunning)
		}
		return reply, fmt.Errorf("admin socket %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return reply, fmt.Errorf("admin socket %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&reply); err != nil {
		return reply, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return reply, nil
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr)
	dir := fs.String("dir", "", "relay directory (required)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("status: --dir is required")
	}
	reply, err := queryStatus(*dir)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tSESSIONS\tSTREAMS\tUSED")
	var sessions, streams int
	var used int64
	for _, k := range reply.Keys {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", k.Name, k.Sessions, k.Streams, bytesString(k.Used))
		sessions += k.Sessions
		streams += k.Streams
		used += k.Used
	}
	fmt.Fprintf(tw, "TOTAL\t%d\t%d\t%s\n", sessions, streams, bytesString(used))
	if err := tw.Flush(); err != nil {
		return err
	}
	if reply.QUICOff != "" {
		fmt.Fprintf(stdout, "\nQUIC carrier off: %s; set \"no_quic\": true in %s and share links again (link show).\n",
			reply.QUICOff, relay.SettingsFile)
	}
	if len(reply.NotMirrored) > 0 {
		fmt.Fprintln(stdout)
		printNotMirrored(stdout, reply.NotMirrored)
	}
	return nil
}

// printNotMirrored prints what the relay cannot mirror of the cover site,
// one line each.
func printNotMirrored(w io.Writer, gaps []string) {
	for _, g := range gaps {
		fmt.Fprintf(w, "Not mirrored: %s\n", g)
	}
}

// printLiveGaps prints what the relay running from dir cannot mirror of
// the cover site, if one runs and it says; nothing if none runs.
func printLiveGaps(w io.Writer, dir string) {
	reply, err := queryStatus(dir)
	if err != nil || len(reply.NotMirrored) == 0 {
		return
	}
	fmt.Fprintln(w, "\nThe running relay reports what a censor may tell apart from the cover site (merpati-relay status):")
	printNotMirrored(w, reply.NotMirrored)
}

// serveMetrics serves the Prometheus endpoint at addr (path /metrics)
// until ctx is done.
func serveMetrics(ctx context.Context, addr string, m *metrics.Metrics, log *slog.Logger, wg *sync.WaitGroup) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	log.Info("metrics served", "addr", "http://"+ln.Addr().String()+"/metrics")
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics endpoint failed", "err", err)
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		srv.Close()
	})
	return nil
}
