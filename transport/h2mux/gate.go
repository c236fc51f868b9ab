package h2mux

// gateItems is how many DATA items may wait for the session's writer
// before a stream that is about to read more data to write waits its turn
// (see [Stream.WaitWrite]).
const gateItems = 4

// WaitWrite is for a caller that reads data from elsewhere to write it to
// st, as [transport.Splice] does (see [transport.WriteGate]): it waits
// before the read while gateItems DATA items of the session's streams wait
// for the writer, and streams waiting here are let on in turn, one for
// each item written.
//
// Without it, each busy stream reads its next 64 KiB as soon as its last
// write is taken, and waits in the queue with it: with a hundred busy
// streams, several megabytes of data wait, read long before the writer
// encrypts them, and by then out of the CPU's caches, so that both the
// encryption's copy and the read's cost a cache miss per line. With it, the
// data waits in the source socket instead, as it does for a plain TLS
// connection per stream, and is read shortly before it is written.
//
// A stream let on that then queues nothing (its source had no more data
// for now) passes no turn on, but the queue still empties, and the writer
// lets as many streams on as it then may (see [Session.writeFrames]); one
// that waits for its window passes its turn on. WaitWrite returns at once
// if the stream or the session has ended; the next Write reports why.
func (st *Stream) WaitWrite() {
	s := st.s
	if s.gateWaiting.Load() == 0 && s.dataQueued.Load() < gateItems {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.gateQ) == 0 && s.dataQueued.Load() < gateItems || st.writeErrLocked() != nil {
		return
	}
	st.gateOpen = false
	s.gateQ = append(s.gateQ, st)
	s.gateWaiting.Add(1)
	for !st.gateOpen {
		s.mu.Unlock()
		select {
		case <-st.wch:
		case <-s.done:
		}
		s.mu.Lock()
		if !st.gateOpen && st.writeErrLocked() != nil {
			s.leaveGateLocked(st)
			return
		}
	}
}

// openGateLocked lets the first stream waiting in WaitWrite on, if fewer
// than gateItems DATA items are queued.
func (s *Session) openGateLocked() {
	if len(s.gateQ) == 0 || s.dataQueued.Load() >= gateItems {
		return
	}
	st := s.gateQ[0]
	s.removeGateLocked(0)
	st.gateOpen = true
	signal(st.wch)
}

// leaveGateLocked takes st out of the streams waiting in WaitWrite.
func (s *Session) leaveGateLocked(st *Stream) {
	for i, w := range s.gateQ {
		if w == st {
			s.removeGateLocked(i)
			return
		}
	}
}

func (s *Session) removeGateLocked(i int) {
	n := len(s.gateQ)
	copy(s.gateQ[i:], s.gateQ[i+1:])
	s.gateQ[n-1] = nil
	s.gateQ = s.gateQ[:n-1]
	s.gateWaiting.Add(-1)
}

// dataWritten is the writer's note that a queued DATA item is written: it
// lets the next stream waiting in WaitWrite on. s.mu is not held.
func (s *Session) dataWritten() {
	if s.dataQueued.Add(-1) < gateItems && s.gateWaiting.Load() > 0 {
		s.mu.Lock()
		s.openGateLocked()
		s.mu.Unlock()
	}
}
