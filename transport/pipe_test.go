package transport

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"sync/atomic"
	"testing"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); ch <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-ch
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func TestSpliceHalfClose(t *testing.T) {
	client, a := tcpPair(t)
	b, server := tcpPair(t)
	var counted atomic.Int64
	done := make(chan [2]int64)
	go func() {
		x, y := Splice(a, b, func(n int) { counted.Add(int64(n)) })
		done <- [2]int64{x, y}
	}()
	up := make([]byte, 1<<20)
	rand.Read(up)
	// The client sends everything and half-closes; the server reads to EOF
	// and only then answers, which works only if half-close propagates.
	go func() {
		client.Write(up)
		client.CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, up) {
		t.Fatalf("server read %d bytes, err %v", len(got), err)
	}
	server.Write([]byte("answer"))
	server.Close()
	ans, err := io.ReadAll(client)
	if err != nil || string(ans) != "answer" {
		t.Fatalf("client read %q, %v", ans, err)
	}
	n := <-done
	if n[0] != int64(len(up)) || n[1] != 6 || counted.Load() != int64(len(up))+6 {
		t.Fatalf("counts %v, counted %d", n, counted.Load())
	}
	client.Close()
}
