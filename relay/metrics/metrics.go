// Package metrics counts what a relay does, for Prometheus and for the
// operator's `merpati-relay status`: sessions and streams by carrier,
// bytes relayed, hellos by outcome, the time hello checks take, dial
// errors by datacenter, and every key's usage and live sessions.
//
// A [Metrics] keeps its own registry (not Prometheus' global one), so
// several relays in one process (tests) count apart. Its methods are safe
// for concurrent use, and do nothing on a nil *Metrics: a relay without
// metrics calls them all the same.
package metrics

import (
	"maps"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Outcomes of a hello check, the "result" label of
// merpati_hello_checks_total.
const (
	// KeyHolder: the hello carried a valid token of an access key.
	KeyHolder = "key_holder"
	// NoKey: no key's token (a prober, a browser, or a wrong link).
	NoKey = "no_key"
	// Replay: a valid proof seen before, sent to the cover site.
	Replay = "replay"
	// MTProxyApp: a stock Telegram app's FakeTLS hello signed by a key's
	// MTProxy secret.
	MTProxyApp = "mtproxy"
	// OverQuota: an app of a key over its byte quota, sent to the cover
	// site.
	OverQuota = "over_quota"
	// StreamLimit: an app of a key at its stream limit, sent to the
	// cover site.
	StreamLimit = "stream_limit"
)

// Kinds of hello check, the "check" label.
const (
	// CheckToken is the check of a merpati client's token (one X25519
	// for a sealed token).
	CheckToken = "token"
	// CheckMTProxy is the check of an app's hello against every MTProxy
	// secret (an HMAC each).
	CheckMTProxy = "mtproxy"
)

// Metrics are one relay's counters. Create them with [New].
type Metrics struct {
	reg *prometheus.Registry

	sessions      *prometheus.GaugeVec
	sessionsTotal *prometheus.CounterVec
	sessionsRef   *prometheus.CounterVec
	streams       *prometheus.GaugeVec
	streamsTotal  *prometheus.CounterVec
	streamsRef    *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	checks        *prometheus.CounterVec
	checkTime     *prometheus.HistogramVec
	cover         *prometheus.CounterVec
	dialErrors    *prometheus.CounterVec

	usage func() map[string]int64

	mu   sync.Mutex
	live map[string]*Live // by key name; entries with nothing live are removed
}

// Live is what one key has open now.
type Live struct {
	// Sessions are carrier sessions (TLS or QUIC connections of merpati
	// clients); a stock app's MTProxy connection counts as a stream.
	Sessions int `json:"sessions"`
	// Streams are Telegram connections.
	Streams int `json:"streams"`
}

// New returns metrics whose per-key usage comes from usage (bytes relayed
// per key name, such as [access.Keyring.Usage]); nil means none.
//
// [access.Keyring.Usage]: https://pkg.go.dev/github.com/merpati/merpati/relay/access#Keyring.Usage
func New(usage func() map[string]int64) *Metrics {
	m := &Metrics{
		reg:   prometheus.NewRegistry(),
		usage: usage,
		live:  make(map[string]*Live),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "merpati_sessions",
			Help: "Carrier sessions open now (tls, quic; mtproxy: stock apps' connections).",
		}, []string{"carrier"}),
		sessionsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "merpati_sessions_total",
			Help: "Carrier sessions admitted.",
		}, []string{"carrier"}),
		sessionsRef: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "merpati_sessions_refused_total",
			Help: "Authenticated sessions refused (key at its session limit, or revoked).",
		}, []string{"carrier"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "merpati_streams",
			Help: "Streams (Telegram connections) open now.",
		}, []string{"carrier"}),
		streamsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "merpati_streams_total",
			Help: "Streams opened and counted against their key.",
		}, []string{"carrier"}),
		streamsRef: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "merpati_streams_refused_total",
			Help: "Streams refused, by reason (stream_limit, quota, not_allowed, too_many_dials, early_data, bad_request).",
		}, []string{"reason"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "merpati_relayed_bytes_total",
			Help: "Bytes relayed between clients and datacenters, both directions.",
		}, []string{"carrier"}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "merpati_hello_checks_total",
			Help: "Hellos checked, by check (token, mtproxy) and result (key_holder, no_key, replay, mtproxy, over_quota, stream_limit).",
		}, []string{"carrier", "check", "result"}),
		checkTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "merpati_hello_check_seconds",
			Help:    "Time to check one hello, by check (token, mtproxy).",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 9), // 1 us to 65 ms
		}, []string{"check"}),
		cover: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "merpati_cover_connections_total",
			Help: "TCP connections sent to the cover site, by reason (no_hello, unparsable_hello, not_key_holder).",
		}, []string{"reason"}),
		dialErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "merpati_dial_errors_total",
			Help: "Failed dials to datacenters, by datacenter number (addr: a target given by address).",
		}, []string{"dc"}),
	}
	m.reg.MustRegister(m.sessions, m.sessionsTotal, m.sessionsRef, m.streams, m.streamsTotal, m.streamsRef,
		m.bytes, m.checks, m.checkTime, m.cover, m.dialErrors, keyCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the registry the metrics are in.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler returns the HTTP handler of the Prometheus endpoint.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// SessionOpened counts an admitted session of key on carrier, and
// returns the function to call once when it has ended. A session whose
// carrier is mtproxy counts, for its key, as a stream (the stream it
// holds counts through [Metrics.StreamOpened]), not as a session.
func (m *Metrics) SessionOpened(carrier, key string, countsForKey bool) (closed func()) {
	if m == nil {
		return func() {}
	}
	m.sessions.WithLabelValues(carrier).Inc()
	m.sessionsTotal.WithLabelValues(carrier).Inc()
	if countsForKey {
		m.addLive(key, 1, 0)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			m.sessions.WithLabelValues(carrier).Dec()
			if countsForKey {
				m.addLive(key, -1, 0)
			}
		})
	}
}

// SessionRefused counts an authenticated session refused on carrier.
func (m *Metrics) SessionRefused(carrier string) {
	if m == nil {
		return
	}
	m.sessionsRef.WithLabelValues(carrier).Inc()
}

// StreamOpened counts a stream of key on carrier, and returns the
// function to call once when it has ended.
func (m *Metrics) StreamOpened(carrier, key string) (closed func()) {
	if m == nil {
		return func() {}
	}
	m.streams.WithLabelValues(carrier).Inc()
	m.streamsTotal.WithLabelValues(carrier).Inc()
	m.addLive(key, 0, 1)
	var once sync.Once
	return func() {
		once.Do(func() {
			m.streams.WithLabelValues(carrier).Dec()
			m.addLive(key, 0, -1)
		})
	}
}

// StreamRefused counts a stream refused for reason.
func (m *Metrics) StreamRefused(reason string) {
	if m == nil {
		return
	}
	m.streamsRef.WithLabelValues(reason).Inc()
}

// Bytes counts n bytes relayed on carrier.
func (m *Metrics) Bytes(carrier string, n int) {
	if m == nil {
		return
	}
	m.bytes.WithLabelValues(carrier).Add(float64(n))
}

// HelloChecked counts one hello check of kind check (CheckToken,
// CheckMTProxy) on carrier, its result and how long it took.
func (m *Metrics) HelloChecked(carrier, check, result string, took time.Duration) {
	if m == nil {
		return
	}
	m.checks.WithLabelValues(carrier, check, result).Inc()
	m.checkTime.WithLabelValues(check).Observe(took.Seconds())
}

// Cover counts a TCP connection sent to the cover site for reason.
func (m *Metrics) Cover(reason string) {
	if m == nil {
		return
	}
	m.cover.WithLabelValues(reason).Inc()
}

// DialError counts a failed dial to datacenter dc; 0 means a target given
// by address.
func (m *Metrics) DialError(dc int32) {
	if m == nil {
		return
	}
	label := "addr"
	if dc != 0 {
		label = strconv.Itoa(int(dc))
	}
	m.dialErrors.WithLabelValues(label).Inc()
}

func (m *Metrics) addLive(key string, sessions, streams int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l := m.live[key]
	if l == nil {
		l = &Live{}
		m.live[key] = l
	}
	l.Sessions += sessions
	l.Streams += streams
	if *l == (Live{}) {
		delete(m.live, key)
	}
}

// LiveByKey returns what each key has open now; keys with nothing open
// are left out. A nil *Metrics returns nil.
func (m *Metrics) LiveByKey() map[string]Live {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]Live, len(m.live))
	for k, l := range m.live {
		out[k] = *l
	}
	return out
}

// Usage returns the bytes relayed per key, as the usage function given to
// [New] reports them.
func (m *Metrics) Usage() map[string]int64 {
	if m == nil || m.usage == nil {
		return map[string]int64{}
	}
	return m.usage()
}

// keyCollector exports per-key series, labelled with the operator's own
// key names: only keys that exist or have something open, so a removed
// key's series disappear.
type keyCollector struct{ m *Metrics }

var (
	keyUsedDesc = prometheus.NewDesc("merpati_key_used_bytes",
		"Bytes relayed for an access key, as counted against its quota (kept across restarts in usage.json).", []string{"key"}, nil)
	keySessionsDesc = prometheus.NewDesc("merpati_key_sessions",
		"Carrier sessions of an access key open now.", []string{"key"}, nil)
	keyStreamsDesc = prometheus.NewDesc("merpati_key_streams",
		"Streams of an access key open now (MTProxy connections included).", []string{"key"}, nil)
)

func (c keyCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- keyUsedDesc
	ch <- keySessionsDesc
	ch <- keyStreamsDesc
}

func (c keyCollector) Collect(ch chan<- prometheus.Metric) {
	usage := c.m.Usage()
	live := c.m.LiveByKey()
	names := make(map[string]bool, len(usage)+len(live))
	for k := range maps.Keys(usage) {
		names[k] = true
	}
	for k := range maps.Keys(live) {
		names[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(names)) {
		for _, v := range []struct {
			desc *prometheus.Desc
			val  float64
		}{{keyUsedDesc, float64(usage[k])}, {keySessionsDesc, float64(live[k].Sessions)}, {keyStreamsDesc, float64(live[k].Streams)}} {
			// A name that is no valid label value (not UTF-8) is
			// left out rather than failing the scrape.
			if cm, err := prometheus.NewConstMetric(v.desc, prometheus.GaugeValue, v.val, k); err == nil {
				ch <- cm
			}
		}
	}
}
