package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// median returns the median of vs, NaN if there are none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// med returns the median of one metric of one path.
func (r results) med(path, metric string) float64 { return median(r[path][metric]) }

// num formats v with prec decimals, or "–" for NaN.
func num(v float64, prec int) string {
	if math.IsNaN(v) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', prec, 64)
}

// pair formats two values as "a/b", or "–" if both are missing.
func pair(a, b float64, prec int, sep string) string {
	if math.IsNaN(a) && math.IsNaN(b) {
		return "–"
	}
	return num(a, prec) + sep + num(b, prec)
}

var pathLabels = map[string]string{
	"tls":        "merpati TLS carrier (SOCKS → client → relay → DC)",
	"plain-tls":  "plain TLS tunnel, one connection per stream (SOCKS → TCP→TLS → TLS→TCP → DC)",
	"quic":       "merpati QUIC carrier",
	"plain-quic": "plain quic-go tunnel, one stream per app stream",
	"mtproxy":    "merpati MTProxy direct mode (FakeTLS app → relay → DC)",
	"splice":     "one-hop TCP splice (MTProxy ceiling)",
}

// report prints the tables and the ratios the targets name.
func (l *lab) report(w io.Writer) {
	r := l.res
	c := l.cfg
	rounds := fmt.Sprint(l.rounds)
	if l.rounds < c.count {
		rounds = fmt.Sprintf("%d complete (of %d; the interrupted one's measurements included)", l.rounds, c.count)
	}
	fmt.Fprintf(w, "\nMedians of %s round(s); MB = 10^6 bytes; CPU = utime+stime from /proc of the client-side and relay-side processes; buffers %s.\n\n",
		rounds, formatSize(int64(c.buf)))
	fmt.Fprintf(w, "| path | 1 stream down/up MB/s (%s) | %d×%s down/up MB/s | CPU s/GiB client, relay (1 stream) | CPU s/GiB client, relay (%d streams) | stream opens/s | 100 B RTT p50/p99 µs | same, %d streams downloading | handshakes/s, CPU ms client, relay |\n",
		formatSize(c.size), c.streams, formatSize(c.psize), c.streams, loadStreams)
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, p := range c.only {
		hs := "–"
		if !math.IsNaN(r.med(p, "hs-rate")) {
			hs = fmt.Sprintf("%s, %s, %s", num(r.med(p, "hs-rate"), 0), num(r.med(p, "hs-client-ms"), 2), num(r.med(p, "hs-relay-ms"), 2))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", pathLabels[p],
			pair(r.med(p, "1-d"), r.med(p, "1-u"), 0, "/"),
			pair(r.med(p, "100-d"), r.med(p, "100-u"), 0, "/"),
			pair(r.med(p, "cpu1-client"), r.med(p, "cpu1-relay"), 2, ", "),
			pair(r.med(p, "cpu100-client"), r.med(p, "cpu100-relay"), 2, ", "),
			num(r.med(p, "opens"), 0),
			pair(r.med(p, "rtt-p50"), r.med(p, "rtt-p99"), 0, "/"),
			pair(r.med(p, "rttload-p50"), r.med(p, "rttload-p99"), 0, "/"),
			hs)
	}
	if l.wantsTest("1") || l.wantsTest("100") {
		// syscr and syscw count read(2), write(2) and their vector
		// forms, not recvmsg(2) and sendmsg(2): the QUIC paths' UDP
		// calls would be missing from their rows.
		fmt.Fprintf(w, "\nSystem calls per MiB carried, TCP paths, down and up (reads and writes: syscr+syscw of /proc/PID/io):\n\n")
		fmt.Fprintln(w, "| path | 1 stream, client side | 1 stream, relay side | 100 streams, client side | 100 streams, relay side |")
		fmt.Fprintln(w, "|---|---|---|---|---|")
		for _, p := range c.only {
			if p != "quic" && p != "plain-quic" {
				fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", p, num(r.med(p, "sys1-client"), 1), num(r.med(p, "sys1-relay"), 1),
					num(r.med(p, "sys100-client"), 1), num(r.med(p, "sys100-relay"), 1))
			}
		}
	}
	l.idleTable(w, "idle", idlePaths, "idle", fmt.Sprintf("Idle sessions, relay side (tls, quic: carrier sessions without streams; "+
		"plain-tls, plain-quic: tunnel connections;\nmtproxy, splice: app connections to the DC after one %s echo, "+
		"two TCP connections each); CPU over %v:", formatSize(int64(c.buf)), c.idleWindow))
	l.idleTable(w, "idle-stream", streamIdlePaths, "idlest", fmt.Sprintf("Idle sessions with a stream open, relay side "+
		"(each session or connection echoed one %s packet on a stream\nto the DC and keeps it open; the TCP paths hold "+
		"two TCP connections each); CPU over %v:", formatSize(int64(c.buf)), c.idleWindow))

	// Ratios of the targets.
	var lines []string
	ratio := func(what string, a, b float64, target string) {
		if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
			return
		}
		lines = append(lines, fmt.Sprintf("%-60s %6.2f   (target %s)", what, a/b, target))
	}
	for _, cmp := range []struct{ a, b, name, thr1, thr100 string }{
		{"tls", "plain-tls", "TLS carrier / plain TLS", "≥ 0.9", "≥ 0.9"},
		{"quic", "plain-quic", "QUIC carrier / plain quic-go", "≥ 0.85", "≥ 0.8"},
		{"mtproxy", "splice", "MTProxy direct / splice", "≥ 0.9", "≥ 0.9"},
	} {
		for _, m := range []struct{ key, label, thr string }{
			{"1-d", "1 stream down", cmp.thr1}, {"1-u", "1 stream up", cmp.thr1},
			{"100-d", fmt.Sprintf("%d streams down", c.streams), cmp.thr100},
			{"100-u", fmt.Sprintf("%d streams up", c.streams), cmp.thr100},
		} {
			ratio(cmp.name+", "+m.label, r.med(cmp.a, m.key), r.med(cmp.b, m.key), m.thr)
		}
		if cmp.a == "tls" {
			for _, side := range []string{"client", "relay"} {
				ratio(fmt.Sprintf("TLS carrier / plain TLS, CPU per GiB, %s (1 stream)", side),
					r.med("tls", "cpu1-"+side), r.med("plain-tls", "cpu1-"+side), "≤ 1.15")
				ratio(fmt.Sprintf("TLS carrier / plain TLS, CPU per GiB, %s (%d)", side, c.streams),
					r.med("tls", "cpu100-"+side), r.med("plain-tls", "cpu100-"+side), "≤ 1.15")
			}
			ratio("new TLS-carrier session / plain TLS handshake, relay CPU", r.med("tls", "hs-relay-ms"), r.med("plain-tls", "hs-relay-ms"), "≤ 1.3")
			ratio("TLS carrier / plain TLS, 100 B round trip p50", r.med("tls", "rtt-p50"), r.med("plain-tls", "rtt-p50"), "≤ 1.3")
			ratio(fmt.Sprintf("TLS carrier / plain TLS, round trip p50, %d downloading", loadStreams),
				r.med("tls", "rttload-p50"), r.med("plain-tls", "rttload-p50"), "none")
		}
	}
	for _, n := range c.sessions {
		s := "@" + strconv.Itoa(n)
		if v := r.med("tls", "idle-kb"+s); !math.IsNaN(v) {
			lines = append(lines, fmt.Sprintf("%-60s %6.1f   (target ≤ 25 at 10,000)", fmt.Sprintf("TLS carrier idle KB per session at %d", n), v))
		}
		if v := r.med("tls", "idle-cpu"+s); !math.IsNaN(v) {
			lines = append(lines, fmt.Sprintf("%-60s %6.2f   (target < 1 at 10,000)", fmt.Sprintf("TLS carrier idle CPU %% of a core at %d", n), v))
		}
	}
	if len(lines) > 0 {
		fmt.Fprintf(w, "\nRatios (of the medians):\n%s\n", strings.Join(lines, "\n"))
	}
}

// idleTable prints, under title, the relay's memory and CPU per idle
// session that test measured (metrics prefix-kb@N and prefix-cpu@N) on
// those of paths that ran.
func (l *lab) idleTable(w io.Writer, test string, paths []string, prefix, title string) {
	if !l.wantsTest(test) {
		return
	}
	var ran []string
	for _, p := range l.cfg.only {
		if slices.Contains(paths, p) {
			ran = append(ran, p)
		}
	}
	if len(ran) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s\n\n", title)
	fmt.Fprintln(w, "| path | sessions | relay KB/session (VmRSS delta) | relay idle CPU, % of a core |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, p := range ran {
		for _, n := range l.cfg.sessions {
			s := "@" + strconv.Itoa(n)
			fmt.Fprintf(w, "| %s | %d | %s | %s |\n", p, n, num(l.res.med(p, prefix+"-kb"+s), 1), num(l.res.med(p, prefix+"-cpu"+s), 2))
		}
	}
}
