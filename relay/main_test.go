package relay

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if goroutines outlive the tests: the internal
// tests (limits_test.go and others) start relays of their own, without a
// per-test check; the end-to-end tests (e2e_test.go) check each subtest
// too, with relaytest.CheckLeaks.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
