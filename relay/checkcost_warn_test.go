package relay

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestWarnCheckCosts: the relay warns at start when a hello's check costs
// enough to show in a prober's time: plain tokens allowed with more than
// legacyWarnKeys keys, more than mtproxyWarnSecrets MTProxy secrets.
func TestWarnCheckCosts(t *testing.T) {
	for _, tc := range []struct {
		keys         int
		legacy       bool
		legacyWarned bool
		mtWarned     bool
	}{
		{legacyWarnKeys, true, false, false},
		{legacyWarnKeys + 1, false, false, false},
		{legacyWarnKeys + 1, true, true, false},
		{mtproxyWarnSecrets + 1, false, false, true},
	} {
		rig := newAuthRig(t, tc.keys, tc.legacy)
		var logs bytes.Buffer
		rig.r.log = slog.New(slog.NewTextHandler(&logs, nil))
		rig.r.warnCheckCosts()
		out := logs.String()
		if got := strings.Contains(out, "legacy_tokens is on with many keys") && strings.Contains(out, "set \\\"legacy_tokens\\\": false"); got != tc.legacyWarned {
			t.Errorf("%d keys, legacy %v: legacy warning %v, want %v:\n%s", tc.keys, tc.legacy, got, tc.legacyWarned, out)
		}
		if got := strings.Contains(out, "many MTProxy secrets"); got != tc.mtWarned {
			t.Errorf("%d keys (each with a secret): MTProxy warning %v, want %v:\n%s", tc.keys, got, tc.mtWarned, out)
		}
	}
}
