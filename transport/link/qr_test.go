package link_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"rsc.io/qr"

	"github.com/merpati/merpati/transport/link"
)

// parseTerminalQR turns the half blocks of s back into a matrix of light
// (true) and dark modules, two rows per line.
func parseTerminalQR(t *testing.T, s string) [][]bool {
	t.Helper()
	if !strings.HasSuffix(s, "\n") {
		t.Fatal("output does not end in a newline")
	}
	var rows [][]bool
	for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		var top, bottom []bool
		for _, r := range line {
			switch r {
			case '█':
				top, bottom = append(top, true), append(bottom, true)
			case '▀':
				top, bottom = append(top, true), append(bottom, false)
			case '▄':
				top, bottom = append(top, false), append(bottom, true)
			case ' ':
				top, bottom = append(top, false), append(bottom, false)
			default:
				t.Fatalf("unexpected rune %q", r)
			}
		}
		rows = append(rows, top, bottom)
	}
	return rows
}

func TestTerminalQR(t *testing.T) {
	for _, text := range []string{
		"a",
		"HELLO WORLD",
		"tg://proxy?server=127.0.0.1&port=443&secret=ee00112233445566778899aabbccddeeff",
		valid().String(),
	} {
		got, err := link.TerminalQR(text)
		if err != nil {
			t.Fatalf("TerminalQR(%q): %v", text, err)
		}
		code, err := qr.Encode(text, qr.M)
		if err != nil {
			t.Fatal(err)
		}
		size := code.Size + 8
		lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
		if len(lines) != (size+1)/2 {
			t.Errorf("%d lines, want %d", len(lines), (size+1)/2)
		}
		for i, line := range lines {
			if n := utf8.RuneCountInString(line); n != size {
				t.Fatalf("line %d is %d columns, want %d", i, n, size)
			}
		}
		m := parseTerminalQR(t, got)
		// An odd size leaves the bottom half of the last line empty.
		if size%2 == 1 {
			for x, light := range m[size] {
				if light {
					t.Fatalf("module (%d, %d) below the code is drawn", x, size)
				}
			}
		}
		for y := range size {
			for x := range size {
				cx, cy := x-4, y-4
				want := true // quiet zone
				if cx >= 0 && cy >= 0 && cx < code.Size && cy < code.Size {
					want = !code.Black(cx, cy)
				}
				if m[y][x] != want {
					t.Fatalf("text %q: module (%d, %d) light = %v, want %v", text, x, y, m[y][x], want)
				}
			}
		}
		t.Logf("%d bytes of text: %d modules, %d lines", len(text), code.Size, len(lines))
	}
}

func TestTerminalQRTooLong(t *testing.T) {
	if _, err := link.TerminalQR(strings.Repeat("\x01", 5000)); err == nil {
		t.Error("TerminalQR accepted 5000 bytes")
	}
}
