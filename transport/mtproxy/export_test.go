package mtproxy

import "time"

// ServerHello exposes serverHello to the external tests, which check it
// with the app's side in mtproxytest.
var ServerHello = serverHello

// Check exposes check to the external tests.
func (h *ClientHello) Check(key Key) (time.Time, bool) { return h.check(key.Prepare()) }
