package transporttest

import (
	"os/exec"
	"path"
	"strings"
	"testing"
)

// TestNotImportedByProduction: no production package of the module
// depends on transporttest, directly or through another package, outside
// its tests (which go list leaves out of Deps). Test-support packages
// (named ...test, such as relaytest) may.
func TestNotImportedByProduction(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	const self = "github.com/merpati/merpati/transport/transporttest"
	out, err := exec.Command(goTool, "list", "-e", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, "github.com/merpati/merpati/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if strings.HasSuffix(path.Base(f[0]), "test") {
			continue
		}
		for _, imp := range f[1:] {
			if imp == self {
				t.Errorf("%s depends on %s: production code must not", f[0], self)
			}
		}
	}
}
