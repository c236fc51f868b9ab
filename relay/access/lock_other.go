//go:build !unix

package access

import (
	"errors"
	"fmt"
	"os"
	"runtime"
)

// tryLock fails: keys files are locked with flock(2), which only Unix
// systems have, and an unlocked read-modify-write loses keys.
func tryLock(*os.File) (bool, error) {
	return false, fmt.Errorf("file locking on %s: %w", runtime.GOOS, errors.ErrUnsupported)
}
