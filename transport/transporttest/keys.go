package transporttest

import (
	"fmt"
	"sync"
	"time"

	"github.com/merpati/merpati/transport"
	"github.com/merpati/merpati/transport/antireplay"
	"github.com/merpati/merpati/transport/auth"
)

// A KeyName is a [transport.Key] that is just its name: what the test
// [Authenticator] hands back with the sessions it admits.
type KeyName string

// Name returns the name.
func (k KeyName) Name() string { return string(k) }

// An Authenticator is a [transport.Authenticator] for tests: it admits
// proofs made by its named keys within the [auth.Window] of now, refuses
// revoked keys and refuses a token it has admitted before (a replay), as
// the relay's own does. The zero value admits nobody and is ready to use;
// it is safe for concurrent use.
type Authenticator struct {
	// Now returns the current time; nil means time.Now.
	Now func() time.Time

	mu     sync.Mutex
	names  []string
	keys   []auth.Key
	replay antireplay.Cache
}

var _ transport.Authenticator = (*Authenticator)(nil)

// NewAuthenticator returns an Authenticator that admits key under name.
func NewAuthenticator(name string, key auth.Key) *Authenticator {
	a := new(Authenticator)
	a.Add(name, key)
	return a
}

// Add admits key under name (replacing a key of that name).
func (a *Authenticator) Add(name string, key auth.Key) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, n := range a.names {
		if n == name {
			a.keys[i] = key
			return
		}
	}
	a.names = append(a.names, name)
	a.keys = append(a.keys, key)
}

// Revoke stops admitting the key named name. Sessions it already admitted
// are not touched: ending them is the relay's business.
func (a *Authenticator) Revoke(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, n := range a.names {
		if n == name {
			a.names = append(a.names[:i], a.names[i+1:]...)
			a.keys = append(a.keys[:i], a.keys[i+1:]...)
			return
		}
	}
}

// Authenticate implements [transport.Authenticator]. Its errors wrap
// [transport.ErrUnauthenticated].
func (a *Authenticator) Authenticate(p transport.Proof) (transport.Key, error) {
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	i := auth.Match(a.keys, p.Digest, p.Token, now())
	if i < 0 {
		return nil, fmt.Errorf("transporttest: %s proof made by no admitted key: %w", p.Carrier, transport.ErrUnauthenticated)
	}
	if a.replay.Seen(p.Token) {
		return nil, fmt.Errorf("transporttest: %s proof replayed: %w", p.Carrier, transport.ErrUnauthenticated)
	}
	return KeyName(a.names[i]), nil
}
