package access

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

func TestEntryLimits(t *testing.T) {
	for _, tt := range []struct {
		e                 Entry
		sessions, streams int
	}{
		{Entry{}, DefaultMaxSessions, DefaultMaxStreams},
		{Entry{MaxSessions: 3, MaxStreams: 7}, 3, 7},
		{Entry{MaxConns: 5}, DefaultMaxSessions, 5},                // the former name
		{Entry{MaxConns: 5, MaxStreams: 9}, DefaultMaxSessions, 9}, // the new name wins
	} {
		if got := tt.e.SessionLimit(); got != tt.sessions {
			t.Errorf("%+v: SessionLimit %d, want %d", tt.e, got, tt.sessions)
		}
		if got := tt.e.StreamLimit(); got != tt.streams {
			t.Errorf("%+v: StreamLimit %d, want %d", tt.e, got, tt.streams)
		}
	}
}

func TestTrackSession(t *testing.T) {
	u := &User{}
	u.entry.Store(&Entry{Name: "a", MaxSessions: 2})
	var untracks []func()
	for range 2 {
		untrack, err := u.TrackSession(&closer{})
		if err != nil {
			t.Fatal(err)
		}
		untracks = append(untracks, untrack)
	}
	if _, err := u.TrackSession(&closer{}); !errors.Is(err, ErrTooManySessions) {
		t.Fatalf("third session: %v, want ErrTooManySessions", err)
	}
	// MTProxy connections are tracked for revocation but are not sessions.
	if _, ok := u.Track(io.NopCloser(nil)); !ok {
		t.Fatal("Track refused at the session limit")
	}
	untracks[0]()
	untracks[0]() // twice is harmless
	c := &closer{}
	if _, err := u.TrackSession(c); err != nil {
		t.Fatalf("session after one ended: %v", err)
	}
	if n := u.Sessions(); n != 2 {
		t.Errorf("Sessions %d, want 2", n)
	}
	u.revoke()
	if !c.closed.Load() {
		t.Error("revocation did not close a session")
	}
	if _, err := u.TrackSession(&closer{}); !errors.Is(err, ErrRevoked) {
		t.Errorf("session of a revoked key: %v", err)
	}
}

func TestAcquireDial(t *testing.T) {
	u := &User{}
	ctx := context.Background()
	for range 2 {
		if err := u.AcquireDial(ctx, 2); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := u.AcquireDial(short, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third dial: %v, want to wait until the deadline", err)
	}
	got := make(chan error, 1)
	go func() { got <- u.AcquireDial(ctx, 2) }()
	u.ReleaseDial()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a released dial slot was not handed to a waiting stream")
	}
}
