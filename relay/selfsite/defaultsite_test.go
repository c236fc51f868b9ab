package selfsite

import (
	"bytes"
	"encoding/binary"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

// TestWriteDefaultSite checks the default site's files: a page that
// parses and links its stylesheet and icon, and an icon that is an ICO
// holding a PNG.
func TestWriteDefaultSite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "www", "site")
	if err := WriteDefaultSite(dir); err != nil {
		t.Fatal(err)
	}
	read := func(name string) []byte {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got, want := strings.Join(names, " "), "favicon.ico index.html robots.txt style.css"; got != want {
		t.Errorf("files %q, want %q", got, want)
	}

	index := read("index.html")
	doc, err := html.Parse(bytes.NewReader(index))
	if err != nil {
		t.Fatal(err)
	}
	var title string
	links := map[string]bool{}
	paragraphs := 0
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			switch n.Data {
			case "title":
				if n.FirstChild != nil {
					title = n.FirstChild.Data
				}
			case "link":
				for _, a := range n.Attr {
					if a.Key == "href" {
						links[a.Val] = true
					}
				}
			case "p":
				paragraphs++
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	if title == "" || paragraphs < 3 || !links["/style.css"] || !links["/favicon.ico"] {
		t.Errorf("index.html: title %q, %d paragraphs, links %v", title, paragraphs, links)
	}
	if !bytes.Contains(index, []byte(time.Now().Format("2006"))) {
		t.Error("index.html: no current year")
	}
	if css := read("style.css"); !bytes.Contains(css, []byte("font-family:")) || bytes.Contains(css, []byte("%!")) {
		t.Errorf("style.css: %s", css)
	}
	if got := string(read("robots.txt")); !strings.HasPrefix(got, "User-agent: *\n") {
		t.Errorf("robots.txt: %q", got)
	}

	ico := read("favicon.ico")
	if len(ico) < 22 || binary.LittleEndian.Uint16(ico[2:]) != 1 || binary.LittleEndian.Uint16(ico[4:]) != 1 {
		t.Fatalf("favicon.ico: bad header % x", ico[:min(len(ico), 22)])
	}
	size, off := binary.LittleEndian.Uint32(ico[14:]), binary.LittleEndian.Uint32(ico[18:])
	if int(off)+int(size) != len(ico) {
		t.Fatalf("favicon.ico: image at %d, %d bytes, in a file of %d", off, size, len(ico))
	}
	img, err := png.Decode(bytes.NewReader(ico[off:]))
	if err != nil {
		t.Fatalf("favicon.ico: %v", err)
	}
	if b := img.Bounds(); b.Dx() != int(ico[6]) || b.Dy() != int(ico[7]) {
		t.Errorf("favicon.ico: image %v, directory says %dx%d", b, ico[6], ico[7])
	}
}

// TestWriteDefaultSiteKeepsOperatorFiles checks that a directory with
// anything in it is left alone, and that a second call changes nothing.
func TestWriteDefaultSiteKeepsOperatorFiles(t *testing.T) {
	dir := t.TempDir()
	mine := filepath.Join(dir, "index.html")
	if err := os.WriteFile(mine, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteDefaultSite(dir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if data, _ := os.ReadFile(mine); string(data) != "mine" || len(entries) != 1 {
		t.Errorf("operator's directory changed: index.html %q, %d files", data, len(entries))
	}

	fresh := filepath.Join(t.TempDir(), "site")
	if err := WriteDefaultSite(fresh); err != nil {
		t.Fatal(err)
	}
	style := filepath.Join(fresh, "style.css")
	if err := os.WriteFile(style, []byte("edited"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(fresh, "robots.txt")); err != nil {
		t.Fatal(err)
	}
	if err := WriteDefaultSite(fresh); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(style); string(data) != "edited" {
		t.Errorf("style.css overwritten: %q", data)
	}
	if _, err := os.Stat(filepath.Join(fresh, "robots.txt")); err == nil {
		t.Error("robots.txt written again into a non-empty directory")
	}
}

// TestWriteNewKeepsExisting checks that writeNew never overwrites.
func TestWriteNewKeepsExisting(t *testing.T) {
	name := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(name, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeNew(name, []byte("new")); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(name); string(data) != "old" {
		t.Errorf("overwritten: %q", data)
	}
}
