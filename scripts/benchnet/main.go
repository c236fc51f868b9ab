// Command benchnet benchmarks merpati's carriers against plain tunnels of
// the same topology, with every hop a separate process on loopback, and
// prints a table of medians and the ratios issue 13 sets targets for.
// scripts/bench.sh builds the binaries and runs it.
//
// Usage:
//
//	benchnet run --bin DIR [--only PATHS] [--tests TESTS] [--count 3] [--size 1GiB] [--psize 10MiB]
//	             [--streams 100] [--buf 64KiB] [--opens 1000] [--rtts 2000] [--sessions 1000,10000]
//	             [--idle-window 15s] [--handshakes 300] [--workdir DIR] [--keep] [-v]
//	benchnet dc --listen ADDR [--obfs] [--buf 64KiB]
//	benchnet cover --listen ADDR
//	benchnet tls-server --listen ADDR --cert FILE --key FILE [--buf 64KiB]
//	benchnet tls-client --listen ADDR --server ADDR --pin HEX [--buf 64KiB]
//	benchnet quic-server --listen ADDR --cert FILE --key FILE [--buf 64KiB]
//	benchnet quic-client --listen ADDR --server ADDR --pin HEX [--buf 64KiB]
//	benchnet splice --listen ADDR --to ADDR [--buf 64KiB]
//	benchnet sessions --kind tls|plain-tls|quic|plain-quic|mtproxy|splice --addr ADDR (--link LINK | --pin HEX | --secret SECRET)
//	             [--buf 64KiB] [--stream [--dc ADDR]]
//
// run is the benchmark: it starts every other role below as a child
// process of its own, plus the real merpati-relay and merpati binaries
// from --bin, and plays the app itself. The paths (--only, comma-separated;
// default all):
//
//	tls         app → SOCKS5 → merpati (link forcing the TLS carrier) → merpati-relay → dc
//	plain-tls   app → SOCKS5 → tls-client (one crypto/tls connection per stream) → tls-server → dc
//	quic        app → SOCKS5 → merpati (link forcing the QUIC carrier) → merpati-relay → dc
//	plain-quic  app → SOCKS5 → quic-client (one quic-go stream per app stream, one connection) → quic-server → dc
//	mtproxy     app (FakeTLS + obfuscated2, an "ee" secret) → merpati-relay's direct mode → dc --obfs
//	splice      app (obfuscated2) → splice (a one-hop TCP forwarder) → dc --obfs
//
// The tests (--tests, comma-separated; default all):
//
//	1      one stream, --size bytes down then up: MB/s, and CPU seconds per
//	       GiB of the client-side and relay-side processes (utime+stime
//	       from /proc/PID/stat around the transfer)
//	100    --streams concurrent streams of --psize bytes each, down then up:
//	       aggregate MB/s and CPU per GiB
//	open   --opens streams opened one after another (SOCKS5 or the
//	       MTProxy handshake, the relay's dial, and a 20-byte packet
//	       echoed): streams/s
//	rtt    --rtts round trips of a 100-byte packet on one open stream:
//	       p50 and p99
//	hs     --handshakes new carrier sessions (tls, quic) or connections
//	       (plain-tls, plain-quic) opened by the sessions driver process,
//	       8 at a time: handshakes/s, and CPU per handshake of the driver
//	       and of the relay side
//	idle   for each of --sessions, a fresh relay (or tls-server,
//	       quic-server, splice) and a sessions driver holding that many
//	       idle carrier sessions (without streams), tunnel connections,
//	       or app connections to the DC (mtproxy, splice: each echoes
//	       one --buf packet first, and holds two TCP connections on the
//	       relay side, so a count needs twice its descriptors and is
//	       left out where RLIMIT_NOFILE is short): relay-side memory per
//	       session (VmRSS delta) and CPU (percent of one core over
//	       --idle-window). A fresh server per count keeps every session
//	       younger than the relay's idle timeout (64 s without a stream).
//	idle-stream
//	       tls, plain-tls, quic, plain-quic: test idle with each session
//	       (or tunnel connection) holding a stream to the DC open after
//	       echoing one --buf packet on it, as an app's session between
//	       its messages (on the TCP paths a count needs twice its
//	       descriptors, as above).
//
// MTProxy and splice connections come from loopback addresses in 250
// different /24 networks in turn: the relay checks at most 50 MTProxy
// hellos a second from one network and sends the rest to its cover site.
//
// An interrupt stops the run between measurements and prints the table of
// what was measured. A measurement that fails is reported and left out;
// the run goes on and exits with status 1. Each process's output is in
// the work directory's logs/ (kept with --keep or --workdir).
//
// Each test runs --count times, in rounds that go through every path in
// turn so that all paths see the same background, and the table shows
// medians. Every process reads and writes with --buf bytes at a time
// (merpati's own internals excepted), and the plain tunnels speak SOCKS5
// on the app side and open each stream with the target's address, so that
// both sides of each comparison do the same work.
//
// The fake datacenter (dc) reads an 8-byte header per connection: the mode
// in its first byte ('d' send, 'u' receive, 'e' echo) and a length in the
// other seven (big-endian). It sends or receives that many bytes, in
// MTProto intermediate packets of --buf bytes (the relay's MTProxy mode
// cuts a datacenter's stream at packet boundaries), and acknowledges an
// upload with a 20-byte packet. With --obfs it first accepts an
// obfuscated2 init without a secret, as Telegram's datacenters do.
//
// Each role prints "listening ADDR" on standard output once it serves.
// Everything listens and dials on loopback only.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/merpati/merpati/transport/cmdmain"
)

func main() { os.Exit(cmdmain.Main("benchnet", run)) }

const usage = `usage:
  benchnet run --bin DIR [--only tls,plain-tls,quic,plain-quic,mtproxy,splice] [--tests 1,100,open,rtt,rtt-load,hs,idle,idle-stream]
               [--count 3] [--size 1GiB] [--psize 10MiB] [--streams 100] [--sessions 1000,10000] ...
  benchnet dc|cover|tls-server|tls-client|quic-server|quic-client|splice|sessions ...   (roles run starts)
Run "benchnet COMMAND -h" for a command's flags.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return flag.ErrHelp
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(ctx, rest, stdout, stderr)
	case "dc":
		return cmdDC(ctx, rest, stdout, stderr)
	case "cover":
		return cmdCover(ctx, rest, stdout, stderr)
	case "tls-server":
		return cmdTLSServer(ctx, rest, stdout, stderr)
	case "tls-client":
		return cmdTLSClient(ctx, rest, stdout, stderr)
	case "quic-server":
		return cmdQUICServer(ctx, rest, stdout, stderr)
	case "quic-client":
		return cmdQUICClient(ctx, rest, stdout, stderr)
	case "splice":
		return cmdSplice(ctx, rest, stdout, stderr)
	case "sessions":
		return cmdSessions(ctx, rest, stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintln(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("benchnet "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}
