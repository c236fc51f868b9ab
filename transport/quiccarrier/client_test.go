package quiccarrier

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	upquic "github.com/quic-go/quic-go"
	uphttp3 "github.com/quic-go/quic-go/http3"

	"github.com/merpati/merpati/transport/auth"
	"github.com/merpati/merpati/transport/tlscarrier"
)

// TestChromeSettingsAccepted has our client, with Chromium's SETTINGS
// (H3_DATAGRAM=1 and a QPACK table among them), its GREASE frame and its
// PRIORITY_UPDATEs, make requests to an upstream quic-go HTTP/3 server, as
// the relay's and Caddy's are, with HTTP datagrams off and on: the server
// must answer both and keep the connection (it closes one whose SETTINGS
// it rejects, e.g. H3_DATAGRAM=1 without QUIC datagrams). The relay's own
// server (datagrams off) is covered by every carrier test.
func TestChromeSettingsAccepted(t *testing.T) {
	for _, datagrams := range []bool{false, true} {
		t.Run(map[bool]string{false: "datagrams-off", true: "datagrams-on"}[datagrams], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			pc, err := net.ListenPacket("udp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			cert := testCertFor(t, testSNI)
			pin, err := tlscarrier.Pin(cert)
			if err != nil {
				t.Fatal(err)
			}
			srv := &uphttp3.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					io.WriteString(w, "cover page")
				}),
				TLSConfig:       uphttp3.ConfigureTLSConfig(serverTLS(cert)),
				QUICConfig:      &upquic.Config{EnableDatagrams: datagrams},
				EnableDatagrams: datagrams,
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				srv.Serve(pc)
			}()
			defer func() { srv.Close(); pc.Close(); <-done }()

			// With the relay's key the requests carry Chromium's header
			// fields, Priority among them.
			relayKey, err := ecdh.X25519().GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			d, err := NewDialer(ClientConfig{
				Addr: pc.LocalAddr().String(), ServerName: testSNI, Pin: pin, Key: auth.NewKey(),
				AuthKey: relayKey.PublicKey().Bytes(),
			})
			if err != nil {
				t.Fatal(err)
			}
			s, err := d.Dial(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for i := range 3 {
				st, err := s.OpenStream(ctx)
				if err != nil {
					t.Fatalf("stream %d: %v", i, err)
				}
				// The server's page, which the client takes for a
				// refusal: the request went through.
				if _, err := io.ReadAll(st); !errors.Is(err, ErrRefused) {
					t.Fatalf("stream %d: read %v, want the page taken for a refusal", i, err)
				}
				st.Close()
			}
			// A SETTINGS error would have closed the connection by now:
			// the server reads the control stream before the requests.
			if err := s.Err(); err != nil {
				t.Fatalf("session ended: %v", err)
			}
		})
	}
}
