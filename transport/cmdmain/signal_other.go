//go:build !unix

package cmdmain

import "os"

// heapProfileSignal is nil where there is no SIGUSR1: no heap profiles.
var heapProfileSignal os.Signal
