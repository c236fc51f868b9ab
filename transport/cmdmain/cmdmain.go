// Package cmdmain is what the main function of every merpati binary
// (merpati, merpati-relay and the lab tools labnode and merpati-lab)
// shares: the process frame [Main] (a context cancelled by a signal, exit
// statuses) and the -log-level and -log-format flags ([AddLogFlags]).
//
// It owns only that frame; each command's subcommands, flags and usage
// text stay in its own main package, and only main calls os.Exit.
// Libraries never use it: they take a *slog.Logger in their Config.
package cmdmain

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"strings"
	"syscall"
)

// A RunFunc is a command's body: it runs with args (the arguments after
// the program name) until it is done or ctx is cancelled, writing to
// stdout and stderr. It returns [flag.ErrHelp] when it printed its usage
// instead of running.
type RunFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Main runs run with the process's arguments, standard output and error,
// and a context cancelled on an interrupt or SIGTERM, and returns the exit
// status for os.Exit: 0 on success, 2 for [flag.ErrHelp], and 1 for any
// other error, which it prints to stderr as "name: error".
//
// With the environment variable MERPATI_CPUPROFILE set to a file name, it
// writes a CPU profile of the run there (for go tool pprof); "%p" in the
// name stands for the process ID, for several processes at once. With
// MERPATI_HEAPPROFILE set likewise, each SIGUSR1 writes a heap profile
// of what is in use at that moment there (the file is replaced). With
// MERPATI_TRACE set likewise, it writes an execution trace of the run
// there (for go tool trace: where goroutines wait, and for how long).
func Main(name string, run RunFunc) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer startToFile(name, "cpu profile", "MERPATI_CPUPROFILE", pprof.StartCPUProfile, pprof.StopCPUProfile)()
	defer startToFile(name, "trace", "MERPATI_TRACE", trace.Start, trace.Stop)()
	if path := envPath("MERPATI_HEAPPROFILE"); path != "" {
		defer heapProfileOnSignal(name, path)()
	}
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	return exitStatus(name, err, os.Stderr)
}

// envPath returns the file name the environment variable env gives, "%p"
// in it standing for the process ID, or "" if it is not set.
func envPath(env string) string {
	return strings.ReplaceAll(os.Getenv(env), "%p", strconv.Itoa(os.Getpid()))
}

// startToFile starts start writing to the file that the environment
// variable env names (see envPath), if it is set, and returns what stops
// it and closes the file. A failure is printed, not fatal: the program
// runs without it.
func startToFile(name, what, env string, start func(io.Writer) error, stop func()) func() {
	path := envPath(env)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		if err = start(f); err != nil {
			f.Close()
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, name+": "+what+":", err)
		return func() {}
	}
	return func() {
		stop()
		f.Close()
	}
}

// heapProfileOnSignal writes a heap profile to path on every SIGUSR1
// until the returned function is called.
func heapProfileOnSignal(name, path string) (stop func()) {
	if heapProfileSignal == nil {
		fmt.Fprintln(os.Stderr, name+": heap profile: no SIGUSR1 on this system")
		return func() {}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, heapProfileSignal)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-sig:
			}
			// Twice: what sync.Pools hold survives one collection
			// in their victim caches, and is not in use.
			runtime.GC()
			runtime.GC()
			f, err := os.Create(path)
			if err == nil {
				err = pprof.Lookup("heap").WriteTo(f, 0)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, name+": heap profile:", err)
			}
		}
	}()
	return func() { signal.Stop(sig); close(done) }
}

// exitStatus maps run's error to an exit status, printing it to stderr
// unless it is nil or flag.ErrHelp.
func exitStatus(name string, err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 2
	}
	fmt.Fprintln(stderr, name+":", err)
	return 1
}
