package closeset

import (
	"sync"
	"sync/atomic"
	"testing"
)

type closer struct{ closed atomic.Int32 }

func (c *closer) Close() error {
	c.closed.Add(1)
	return nil
}

func TestSet(t *testing.T) {
	var s Set[*closer]
	a, b, c := &closer{}, &closer{}, &closer{}
	if !s.Add(a) || !s.Add(b) {
		t.Fatal("Add refused before CloseAll")
	}
	s.Remove(b)
	if n := s.Len(); n != 1 {
		t.Errorf("Len = %d, want 1", n)
	}
	s.CloseAll()
	if a.closed.Load() != 1 || b.closed.Load() != 0 {
		t.Errorf("closed a %d times, b (removed) %d times; want 1 and 0", a.closed.Load(), b.closed.Load())
	}
	if s.Add(c) {
		t.Error("Add accepted a value after CloseAll")
	}
	if c.closed.Load() != 0 {
		t.Error("a refused value was closed by the set; its caller closes it")
	}
}

// TestSetConcurrent adds, removes and closes from many goroutines (run
// with -race): no value is closed twice, and every value added and never
// removed is closed.
func TestSetConcurrent(t *testing.T) {
	var s Set[*closer]
	cs := make([]*closer, 200)
	added := make([]bool, len(cs))
	var wg sync.WaitGroup
	for i := range cs {
		cs[i] = &closer{}
		wg.Go(func() {
			added[i] = s.Add(cs[i])
			if added[i] && i%2 == 0 {
				s.Remove(cs[i])
			}
		})
	}
	wg.Go(s.CloseAll)
	wg.Wait()
	s.CloseAll()
	for i, c := range cs {
		n := c.closed.Load()
		if n > 1 || (added[i] && i%2 == 1 && n != 1) {
			t.Errorf("value %d (added %v, removed %v) closed %d times", i, added[i], i%2 == 0, n)
		}
	}
}
