//go:build !unix

package transport

import "syscall"

const canWaitConn = false

// WriteNow writes nothing here: the caller's usual write does.
func WriteNow(syscall.RawConn, []byte) int { return 0 }
