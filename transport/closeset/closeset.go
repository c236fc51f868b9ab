// Package closeset keeps the things a server is serving (connections,
// sessions) in one set, to close them all when it stops: one hook for the
// whole set instead of one per connection, which an idle connection
// would otherwise pay for as long as it lives.
package closeset

import (
	"io"
	"sync"
)

// A Set holds values to close together. The zero Set is empty and ready
// for use; a Set must not be copied after first use.
type Set[T interface {
	comparable
	io.Closer
}] struct {
	mu     sync.Mutex
	m      map[T]struct{}
	closed bool
}

// Add adds x, unless the set was closed: then it reports false, and the
// caller closes x itself.
func (s *Set[T]) Add(x T) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.m == nil {
		s.m = make(map[T]struct{})
	}
	s.m[x] = struct{}{}
	return true
}

// Remove removes x, which its owner closes or has closed.
func (s *Set[T]) Remove(x T) {
	s.mu.Lock()
	delete(s.m, x)
	s.mu.Unlock()
}

// Len returns how many values the set holds.
func (s *Set[T]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// CloseAll closes every value in the set, outside its lock, and makes
// the set refuse new ones; later calls do nothing. The values stay in the
// set until removed.
func (s *Set[T]) CloseAll() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	all := make([]T, 0, len(s.m))
	for x := range s.m {
		all = append(all, x)
	}
	s.mu.Unlock()
	for _, x := range all {
		x.Close()
	}
}
