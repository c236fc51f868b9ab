//go:build !linux

package quiccarrier

import "net"

// udpOffload reports no offload outside Linux.
func udpOffload(net.PacketConn) (gso, gro bool) { return false, false }

const oobSpace = 0

var segmentSizeLen = 0

func segmentSizeMsg(b []byte, _ int) []byte { return b[:0] }

func segmentSize([]byte) int { return 0 }

func isGSOError(error) bool { return false }
