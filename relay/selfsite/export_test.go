package selfsite

import (
	"log/slog"
	"strings"
	"testing"
)

// testDomain is the name the tests' sites are for; in the Pebble test,
// the test's DNS server resolves it to 127.0.0.1.
const testDomain = "site.merpati.test"

// SetRenewalWindow sets c's renewal window (see Config.renewalWindow),
// for the external tests.
func SetRenewalWindow(c *Config, ratio float64) { c.renewalWindow = ratio }

// CachedCertificates returns how many certificates for domain s holds in
// its cache, for the external tests.
func CachedCertificates(s *Site, domain string) int {
	return len(s.cache.AllMatchingCertificates(domain))
}

// testLogger logs to the test, at debug level.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// tWriter writes to the test log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
