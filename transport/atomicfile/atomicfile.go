// Package atomicfile replaces a file's content in one step, so that a
// reader sees the old content or the new, never a mix, and a writer killed
// midway leaves the old file in place.
//
// It owns the temporary file beside the target (".NAME.<digits>", NAME
// being the target's base name), the sync and the rename, and the clean-up
// of temporary files a killed writer left. It does not create directories
// or lock the file against other writers: callers that read, modify and
// write a file shared with other processes lock it themselves (the relay's
// keys file, see relay/access.LockFile).
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Write writes data to a new temporary file beside path, with mode perm
// (not reduced by the umask), syncs it and renames it over path. The
// directory must exist. On failure the temporary file is removed and path
// is left as it was; the error names path.
func Write(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// RemoveStale removes the temporary files ".NAME.<digits>" that [Write]
// leaves beside path when its writer is killed before the rename; they may
// hold data the caller has since replaced (revoked keys, say). Call it
// only when no other writer of path can be running (under the file's
// lock). Other dot files, such as an editor's ".NAME.swp", are left
// alone, and errors are ignored: the files are only litter.
func RemoveStale(path string) {
	dir, prefix := filepath.Dir(path), "."+filepath.Base(path)+"."
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || rest == "" || strings.Trim(rest, "0123456789") != "" || !e.Type().IsRegular() {
			continue
		}
		os.Remove(filepath.Join(dir, e.Name()))
	}
}
