package relaytest

import (
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runServer starts cmd, a web server the lab runs as a child process
// (Caddy, nginx), and waits until answers reports that it serves at addr;
// if it does not within 30 seconds, or exits, it stops it and says why.
// Once started, the server is stopped (SIGTERM, then kill after 10 s) at
// the end of the test, and it must listen on loopback only.
func runServer(t testing.TB, name string, cmd *exec.Cmd, addr string, answers func() error) error {
	exited, stop, err := startChild(cmd)
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			return fmt.Errorf("%s exited: %v", name, err)
		default:
		}
		err := answers()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("%s does not answer on %s: %w", name, addr, err)
		}
	}
	t.Cleanup(stop)
	if err := checkLoopbackSockets(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	return nil
}

// startChild starts cmd and returns a channel that receives its exit,
// and stop, which ends it (SIGTERM, then kill after 10 s) and returns
// once it has exited; stop may be called more than once.
func startChild(cmd *exec.Cmd) (exited <-chan error, stop func(), err error) {
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		})
	}
	return done, stop, nil
}
