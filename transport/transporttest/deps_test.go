package transporttest

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNotImportedByProduction: no package of the module imports
// transporttest outside its tests (which go list leaves out of Imports).
func TestNotImportedByProduction(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	const self = "github.com/merpati/merpati/transport/transporttest"
	out, err := exec.Command(goTool, "list", "-e", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "github.com/merpati/merpati/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		for _, imp := range f[1:] {
			if imp == self && f[0] != self {
				t.Errorf("%s imports %s: production code must not", f[0], self)
			}
		}
	}
}
