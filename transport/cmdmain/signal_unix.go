//go:build unix

package cmdmain

import (
	"os"
	"syscall"
)

// heapProfileSignal asks for a heap profile (see MERPATI_HEAPPROFILE).
var heapProfileSignal os.Signal = syscall.SIGUSR1
