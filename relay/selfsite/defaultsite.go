package selfsite

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"html/template"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// WriteDefaultSite writes a small ordinary web site into dir (index.html,
// style.css, robots.txt, favicon.ico) if dir is missing or empty, creating
// it (mode 0755); if dir holds anything, it is the operator's site and is
// left alone, and no file is ever overwritten. The site is a hobbyist's
// notebook page: its topic, wording details and colours are picked at
// random among a few, so that relays that keep the default do not all
// serve one page. Operators are better served by a site of their own.
func WriteDefaultSite(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("selfsite: default site: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("selfsite: default site: %w", err)
	}
	if len(entries) > 0 {
		return nil
	}
	files, err := defaultSite(time.Now())
	if err != nil {
		return fmt.Errorf("selfsite: default site: %w", err)
	}
	for _, f := range files {
		if err := writeNew(filepath.Join(dir, f.name), f.data); err != nil {
			return fmt.Errorf("selfsite: default site: %w", err)
		}
	}
	return nil
}

// writeNew writes a file that must not exist yet; one that appeared
// meanwhile is the operator's and is kept.
func writeNew(name string, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// siteFile is one file of the default site.
type siteFile struct {
	name string
	data []byte
}

// topic is one of the default site's subjects.
type topic struct {
	Title, Tagline string
	Intro          []string
	Notes          []string
	Outro          string
}

var topics = []topic{
	{
		Title:   "Notes from the workbench",
		Tagline: "Old radios, a soldering iron and too many spare parts.",
		Intro: []string{
			"This is where I keep notes on the valve radios and cassette decks I bring back to life in the evenings. Most of them come from flea markets and attics; a few were my grandfather's.",
			"Nothing here is professional advice. Mains voltages and charged capacitors are dangerous, and old sets deserve patience more than speed.",
		},
		Notes: []string{
			"Recapping a 1958 table radio, and why the dial lamp was the hardest part",
			"Cleaning tuning capacitors without bending the plates",
			"A cheap variac, a light bulb and a first power-up",
			"Belts for cassette decks: measuring, ordering, fitting",
		},
		Outro: "If you have a set you would like to talk about, you probably know how to find me.",
	},
	{
		Title:   "A small garden log",
		Tagline: "Twelve square metres, a compost bin and a lot of optimism.",
		Intro: []string{
			"I started this page to remember what I planted where, and what came of it. It turned into a diary of the garden behind our building: beans, tomatoes, herbs and whatever the neighbours hand over the fence.",
			"The climate here is short summers and long wet autumns, so most of what works for me is about starting early and covering things up.",
		},
		Notes: []string{
			"Seed trays on the windowsill: what germinated and what sulked",
			"Building raised beds from old scaffolding boards",
			"The great slug problem, year three",
			"Saving bean seeds for next spring",
		},
		Outro: "Pages get updated when it rains too much to be outside, which is often.",
	},
	{
		Title:   "Trail notes",
		Tagline: "Day hikes, a secondhand bicycle and maps with coffee stains.",
		Intro: []string{
			"These are write-ups of routes I have walked or ridden, mostly within a train ride of home. I note how long things actually took, where the water is, and which paths exist only on paper.",
			"Conditions change; check before you go, and carry more water than you think you need.",
		},
		Notes: []string{
			"The ridge loop in early spring: mud, wind and one excellent bakery",
			"Fixing a rear derailleur at the side of a gravel road",
			"Packing list for a two-day walk with a single hut night",
			"Three short walks for a rainy Sunday",
		},
		Outro: "Corrections are welcome, especially about paths that have since been closed.",
	},
	{
		Title:   "Kitchen notebook",
		Tagline: "Sourdough, pickles and slow experiments.",
		Intro: []string{
			"I bake most weekends and ferment whatever is cheap at the market. This notebook is where the recipes end up once they have worked at least twice.",
			"Quantities are in grams because cups never behaved for me. Timings depend on your kitchen more than on anything written here.",
		},
		Notes: []string{
			"A forgiving rye starter and how to wake it after a holiday",
			"Quick pickled cucumbers, the version that stayed crunchy",
			"Focaccia for people who are scared of wet dough",
			"What went wrong with the kimchi (and what went right)",
		},
		Outro: "Recipes are shared as they are; adjust salt and patience to taste.",
	},
}

// accents are the colours the default site may use.
var accents = []color.RGBA{
	{0x2a, 0x6f, 0x97, 0xff}, {0x6a, 0x4c, 0x93, 0xff}, {0x38, 0x7d, 0x4f, 0xff},
	{0xb5, 0x5d, 0x2f, 0xff}, {0x8c, 0x2f, 0x39, 0xff}, {0x3d, 0x5a, 0x80, 0xff},
}

// fonts are the font stacks the default site may use.
var fonts = []string{
	`Georgia, "Times New Roman", serif`,
	`-apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif`,
	`"Iowan Old Style", Palatino, "Book Antiqua", serif`,
	`system-ui, "Helvetica Neue", Arial, sans-serif`,
}

var indexTmpl = template.Must(template.New("index").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}}</title>
<link rel="stylesheet" href="/style.css">
<link rel="icon" href="/favicon.ico">
</head>
<body>
<header>
<h1>{{.Title}}</h1>
<p class="tagline">{{.Tagline}}</p>
</header>
<main>
{{range .Intro}}<p>{{.}}</p>
{{end}}
<h2>Recent notes</h2>
<ul class="notes">
{{range .Dated}}<li><span class="date">{{.Date}}</span> {{.Text}}</li>
{{end}}</ul>
<p>{{.Outro}}</p>
</main>
<footer>
<p>&copy; {{.Year}}</p>
</footer>
</body>
</html>
`))

const styleTmpl = `body {
	max-width: 42rem;
	margin: 2rem auto;
	padding: 0 1rem;
	font-family: %s;
	line-height: 1.6;
	color: #222;
	background: #fdfcf8;
}
header {
	border-bottom: 3px solid %s;
	margin-bottom: 1.5rem;
}
h1 {
	margin-bottom: 0.2rem;
	color: %[2]s;
}
.tagline {
	margin-top: 0;
	color: #666;
	font-style: italic;
}
a {
	color: %[2]s;
}
ul.notes {
	padding-left: 1.2rem;
}
.date {
	color: #777;
	font-size: 0.9em;
	margin-right: 0.4rem;
}
footer {
	margin-top: 3rem;
	font-size: 0.85em;
	color: #888;
}
`

// defaultSite returns the files of a default site made at now.
func defaultSite(now time.Time) ([]siteFile, error) {
	t := topics[pick(len(topics))]
	accent := accents[pick(len(accents))]
	font := fonts[pick(len(fonts))]

	type dated struct{ Date, Text string }
	var notes []dated
	// The notes go back a few months from now, a few weeks apart.
	d := now.AddDate(0, 0, -(3 + pick(20)))
	for _, n := range t.Notes {
		notes = append(notes, dated{d.Format("2 Jan 2006"), n})
		d = d.AddDate(0, 0, -(12 + pick(40)))
	}
	var index bytes.Buffer
	err := indexTmpl.Execute(&index, struct {
		topic
		Dated []dated
		Year  int
	}{t, notes, now.Year()})
	if err != nil {
		return nil, err
	}
	hex := fmt.Sprintf("#%02x%02x%02x", accent.R, accent.G, accent.B)
	icon, err := favicon(accent)
	if err != nil {
		return nil, err
	}
	return []siteFile{
		{"index.html", index.Bytes()},
		{"style.css", fmt.Appendf(nil, styleTmpl, font, hex)},
		{"robots.txt", []byte("User-agent: *\nDisallow:\n")},
		{"favicon.ico", icon},
	}, nil
}

// pick returns a random index below n.
func pick(n int) int {
	v, err := rand.Int(rand.Reader, big.NewInt(int64(n)))
	if err != nil {
		return 0
	}
	return int(v.Int64())
}

// favicon returns a 32×32 icon, a disc of the accent colour, as an ICO
// file holding a PNG image (as browsers since 2007 read them).
func favicon(c color.RGBA) ([]byte, error) {
	const size = 32
	img := image.NewNRGBA(image.Rect(0, 0, size, size))
	for y := range size {
		for x := range size {
			dx, dy := float64(x)-15.5, float64(y)-15.5
			if dx*dx+dy*dy <= 15*15 {
				img.Set(x, y, c)
			}
		}
	}
	var p bytes.Buffer
	if err := png.Encode(&p, img); err != nil {
		return nil, err
	}
	var ico bytes.Buffer
	le16 := func(v int) { ico.Write([]byte{byte(v), byte(v >> 8)}) }
	le32 := func(v int) { ico.Write([]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}) }
	// ICONDIR: reserved, type 1 (icon), one image.
	le16(0)
	le16(1)
	le16(1)
	// ICONDIRENTRY: width, height, colours, reserved, planes, bits per
	// pixel, size of the image, its offset (after this 6+16 byte header).
	ico.Write([]byte{size, size, 0, 0})
	le16(1)
	le16(32)
	le32(p.Len())
	le32(6 + 16)
	ico.Write(p.Bytes())
	return ico.Bytes(), nil
}
