//go:build !unix

package transport

import "syscall"

// waitSocket cannot look at a socket here.
func waitSocket(syscall.Conn) bool { return false }
