package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// A proc is a child process of the benchmark whose output lines are kept
// (and written to a log file) so that the benchmark can wait for one.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  *os.File

	mu    sync.Mutex
	lines []string
	grew  chan struct{} // closed and replaced when lines grows or the process ends
	done  bool

	exited chan struct{}  // closed once the process has ended
	stdin  io.WriteCloser // nil unless started with startInteractive
}

// startProc starts path with args, logging its output to logDir/name.log.
func startProc(name, logDir, path string, args ...string) (*proc, error) {
	return start(name, logDir, false, path, args...)
}

// startInteractive is startProc with a pipe to the process's standard
// input (see proc.send).
func startInteractive(name, logDir, path string, args ...string) (*proc, error) {
	return start(name, logDir, true, path, args...)
}

func start(name, logDir string, interactive bool, path string, args ...string) (*proc, error) {
	// Appended to: a role started again (a fresh server per idle
	// count) keeps the earlier runs' output.
	f, err := os.OpenFile(logDir+"/"+name+".log", os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "$ %s %s\n", path, strings.Join(args, " "))
	p := &proc{name: name, log: f, grew: make(chan struct{}), exited: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	// Its own process group: an interrupt of the benchmark reaches the
	// benchmark only, which then stops each child itself.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		f.Close()
		return nil, err
	}
	errOut, err := p.cmd.StderrPipe()
	if err != nil {
		f.Close()
		return nil, err
	}
	if interactive {
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			f.Close()
			return nil, err
		}
	}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	var wg sync.WaitGroup
	for _, r := range []io.Reader{out, errOut} {
		wg.Go(func() {
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				p.add(sc.Text())
			}
		})
	}
	go func() {
		wg.Wait()
		err := p.cmd.Wait()
		p.mu.Lock()
		fmt.Fprintf(p.log, "exit: %v\n", err)
		p.done = true
		close(p.grew)
		p.grew = make(chan struct{})
		p.mu.Unlock()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) add(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.log, line)
	p.lines = append(p.lines, line)
	close(p.grew)
	p.grew = make(chan struct{})
}

// pid returns the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// waitFor waits until a line from the n-th on (counting from 0) matches
// re, and returns the line's submatches and the number of lines seen.
func (p *proc) waitFor(re *regexp.Regexp, from int, timeout time.Duration) ([]string, int, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		for i := from; i < len(p.lines); i++ {
			if m := re.FindStringSubmatch(p.lines[i]); m != nil {
				p.mu.Unlock()
				return m, i + 1, nil
			}
		}
		from = len(p.lines)
		grew, done := p.grew, p.done
		p.mu.Unlock()
		if done {
			return nil, from, fmt.Errorf("%s exited before printing %q; see %s", p.name, re, p.log.Name())
		}
		select {
		case <-grew:
		case <-deadline.C:
			return nil, from, fmt.Errorf("%s printed no line matching %q within %v; see %s", p.name, re, timeout, p.log.Name())
		}
	}
}

var listeningRE = regexp.MustCompile(`^listening (\S+)$`)

// addr waits for the "listening ADDR" line of a benchnet role.
func (p *proc) addr() (string, error) {
	m, _, err := p.waitFor(listeningRE, 0, 30*time.Second)
	if err != nil {
		return "", err
	}
	return m[1], nil
}

// send writes a command line to the process's standard input and waits
// for its answer line, which must match re.
func (p *proc) send(cmd string, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	p.mu.Lock()
	from := len(p.lines)
	p.mu.Unlock()
	if _, err := io.WriteString(p.stdin, cmd+"\n"); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", p.name, cmd, err)
	}
	m, _, err := p.waitFor(re, from, timeout)
	return m, err
}

// stop ends the process with SIGTERM (SIGKILL after 10 s) and waits.
func (p *proc) stop() {
	if p.stdin != nil {
		p.stdin.Close()
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
	}
	p.log.Close()
}

// cpuSeconds returns the user plus system CPU time pid has used.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold
	// spaces: count fields after its closing one. utime and stime are
	// fields 14 and 15.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return float64(ut+st) / clockTicks, nil
}

// rssKB returns the resident set size of pid (VmRSS) in KiB.
func rssKB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// syscalls returns how many read-like and write-like system calls pid
// has made (syscr and syscw in /proc/PID/io).
func syscalls(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	var n, found float64
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "syscr" && k != "syscw") {
			continue
		}
		c, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/io: %s: %w", pid, k, err)
		}
		n += float64(c)
		found++
	}
	if found != 2 {
		return 0, fmt.Errorf("/proc/%d/io: no syscr and syscw", pid)
	}
	return n, nil
}

// syscallsOf returns the read and write system calls of each of ps so
// far (nil entries, and processes whose counts cannot be read, give 0).
func syscallsOf(ps ...*proc) []float64 { return perProc(syscalls, ps) }

// cpuOf returns the CPU seconds of each of ps (nil entries give 0).
func cpuOf(ps ...*proc) []float64 { return perProc(cpuSeconds, ps) }

// perProc returns read(pid) for each of ps, 0 for nil entries and
// failed reads.
func perProc(read func(pid int) (float64, error), ps []*proc) []float64 {
	out := make([]float64, len(ps))
	for i, p := range ps {
		if p != nil {
			out[i], _ = read(p.pid())
		}
	}
	return out
}

// raiseNoFile raises the soft limit of open files to the hard one; child
// processes inherit it.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, err
		}
	}
	return rl.Cur, nil
}
