package link

import (
	"fmt"
	"strings"

	"rsc.io/qr"
)

// quietZone is the light border a QR code needs around it, in modules
// (ISO/IEC 18004 §6.3.8).
const quietZone = 4

// TerminalQR returns the QR code of text (error correction level M) drawn
// with Unicode half blocks, two modules per character cell vertically, one
// line per pair of module rows, each line ending in "\n", with a quiet
// zone of 4 modules on every side.
//
// It is drawn for the usual terminal with light text on a dark background:
// the light modules (and the quiet zone) are drawn as blocks in the text
// colour, the dark modules are left as spaces showing the background. On a
// terminal with dark text on a light background the code comes out
// inverted, which many but not all scanners accept. The module matrix has
// an odd number of rows, so the last line draws only the upper halves.
//
// The code grows with text: a full merpati link of about 290 bytes (three
// relays, bootstrap, list key) gives 69 modules, so 77 columns and 39
// lines; a link with one relay and no bootstrap needs about 49 columns.
func TerminalQR(text string) (string, error) {
	code, err := qr.Encode(text, qr.M)
	if err != nil {
		return "", fmt.Errorf("link: encode QR code: %w", err)
	}
	size := code.Size + 2*quietZone
	// light reports whether module (x, y) of the bordered code is light;
	// rows beyond the bottom are background, which is dark.
	light := func(x, y int) bool {
		if y >= size {
			return false
		}
		x -= quietZone
		y -= quietZone
		if x < 0 || y < 0 || x >= code.Size || y >= code.Size {
			return true
		}
		return !code.Black(x, y)
	}
	var b strings.Builder
	b.Grow((size + 1) / 2 * (size*len("█") + 1))
	for y := 0; y < size; y += 2 {
		for x := 0; x < size; x++ {
			switch top, bottom := light(x, y), light(x, y+1); {
			case top && bottom:
				b.WriteString("█")
			case top:
				b.WriteString("▀")
			case bottom:
				b.WriteString("▄")
			default:
				b.WriteByte(' ')
			}
		}
		b.WriteByte('\n')
	}
	return b.String(), nil
}
