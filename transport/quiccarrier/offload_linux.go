package quiccarrier

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpOffload turns on what the kernel offers pc to cut the door's system
// calls, as quic-go does on a bare socket: gso, sending several
// datagrams to one address as one buffer the kernel segments
// (UDP_SEGMENT); gro, receiving a burst of one sender's datagrams as one
// buffer with their size (UDP_GRO). Neither changes a byte on the wire.
// QUIC_GO_DISABLE_GSO=true turns GSO off here as it does in quic-go.
func udpOffload(pc net.PacketConn) (gso, gro bool) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return false, false
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return false, false
	}
	off, _ := strconv.ParseBool(os.Getenv("QUIC_GO_DISABLE_GSO"))
	rc.Control(func(fd uintptr) {
		if !off {
			_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
			gso = err == nil
		}
		gro = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	})
	return gso, gro
}

// oobSpace is room for the control messages a read may carry (UDP_GRO's).
const oobSpace = 64

// segmentSizeLen is the length of the control message segmentSizeMsg
// writes.
var segmentSizeLen = unix.CmsgSpace(2)

// segmentSizeMsg writes into b (segmentSizeLen bytes, from make) the
// control message that makes the kernel cut a send into datagrams of size
// bytes (the last may be shorter), and returns it.
func segmentSizeMsg(b []byte, size int) []byte {
	b = b[:segmentSizeLen]
	clear(b)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], uint16(size))
	return b
}

// segmentSize returns the datagram size a read's control messages give
// for a coalesced buffer (UDP_GRO), or 0.
func segmentSize(oob []byte) int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if m.Header.Level == unix.IPPROTO_UDP && m.Header.Type == unix.UDP_GRO && len(m.Data) >= 2 {
			if len(m.Data) >= 4 {
				return int(binary.NativeEndian.Uint32(m.Data))
			}
			return int(binary.NativeEndian.Uint16(m.Data))
		}
	}
	return 0
}

// isGSOError reports whether a send failed because the path cannot
// segment (a device without checksum offload): the kernel says EIO.
func isGSOError(err error) bool { return errors.Is(err, unix.EIO) }
