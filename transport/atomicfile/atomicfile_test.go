package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestWrite checks that Write creates and replaces the file with the mode
// asked for, even over a file readable by others, and leaves no temporary
// file behind.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		data string
		perm os.FileMode
	}{{"new", 0o600}, {"newer", 0o640}} {
		if err := Write(path, []byte(tc.data), tc.perm); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != tc.data {
			t.Fatalf("content %q, %v; want %q", got, err, tc.data)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != tc.perm {
			t.Fatalf("mode %v, %v; want %v", fi.Mode().Perm(), err, tc.perm)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("directory holds %d files, want only keys.json", len(ents))
	}
}

// TestWriteFailure checks that a failed Write names the file and leaves
// no file behind.
func TestWriteFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "keys.json")
	err := Write(path, []byte("x"), 0o600)
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Write into a missing directory: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("file exists after a failed write: %v", err)
	}
}

// TestRemoveStale checks that RemoveStale removes Write's temporary files
// and nothing else.
func TestRemoveStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	stale := []string{".keys.json.12345", ".keys.json.987"}
	keep := []string{"keys.json", ".keys.json.swp", ".keys.json.lock", "keys.json.1", ".keys.json.", ".usage.json.123"}
	for _, n := range append(stale, keep...) {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	RemoveStale(path)
	for _, n := range stale {
		if _, err := os.Stat(filepath.Join(dir, n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", n, err)
		}
	}
	for _, n := range keep {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s removed: %v", n, err)
		}
	}
}
