package bootstrap

import "github.com/miekg/dns"

// ResolverOrder returns the names of f's resolvers in the order asked.
func ResolverOrder(f *Fetcher) []string {
	var names []string
	for _, r := range f.resolvers {
		names = append(names, r.name())
	}
	return names
}

// Padded is padded, for tests.
func Padded(q *dns.Msg) *dns.Msg { return padded(q) }
