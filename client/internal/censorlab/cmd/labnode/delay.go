package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"syscall"
	"time"
	"unsafe"
)

// Linux TUN interface constants (linux/if_tun.h).
const (
	iffTUN    = 0x0001
	iffNoPI   = 0x1000
	tunSetIff = 0x400454ca
)

// openTUN creates the TUN interface name (layer 3, no packet information
// header) and returns it as a file.
func openTUN(name string) (*os.File, error) {
	if len(name) == 0 || len(name) > 15 {
		return nil, fmt.Errorf("tun name %q: want 1-15 bytes", name)
	}
	fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	// struct ifreq: a 16-byte name, then a union whose first member here
	// is the short flags.
	var ifr [40]byte
	copy(ifr[:16], name)
	*(*uint16)(unsafe.Pointer(&ifr[16])) = iffTUN | iffNoPI
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), tunSetIff, uintptr(unsafe.Pointer(&ifr[0]))); errno != 0 {
		syscall.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, errno)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), nil
}

// delayQueue bounds the packets in flight; more are dropped, as a router's
// full queue would.
const delayQueue = 8192

// cmdDelay is netem for kernels without it: the censor routes the packets
// it forwards into a TUN interface (see censorlab's Lab.Netem), and this
// writes each back after the delay, dropping the given share at random.
// Constant delay keeps packets in order.
func cmdDelay(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("delay", stderr)
	dev := fs.String("dev", "delay0", "TUN interface to create")
	delay := fs.Duration("delay", 0, "delay per packet")
	loss := fs.Float64("loss", 0, "percentage of packets to drop")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *delay < 0 || *loss < 0 || *loss >= 100 {
		return errors.New("delay: --delay and --loss out of range")
	}
	f, err := openTUN(*dev)
	if err != nil {
		return fmt.Errorf("delay: %w", err)
	}
	context.AfterFunc(ctx, func() { f.Close() })
	type packet struct {
		b  []byte
		at time.Time
	}
	queue := make(chan packet, delayQueue)
	go func() {
		for p := range queue {
			if d := time.Until(p.at); d > 0 {
				time.Sleep(d)
			}
			f.Write(p.b) // a packet the kernel refuses is lost, like any other
		}
	}()
	fmt.Fprintf(stderr, "labnode delay: %s delay %v loss %v%%\n", *dev, *delay, *loss)
	buf := make([]byte, 65536)
	for {
		n, err := f.Read(buf)
		if err != nil {
			close(queue)
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("delay: %w", err)
		}
		if *loss > 0 && rand.Float64()*100 < *loss {
			continue
		}
		select {
		case queue <- packet{b: append([]byte(nil), buf[:n]...), at: time.Now().Add(*delay)}:
		default:
		}
	}
}
