//go:build !unix

package transport

const canWaitConn = false
