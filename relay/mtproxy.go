package relay

import (
	"github.com/merpati/merpati/relay/access"
	"github.com/merpati/merpati/transport/mtproxy"
)

// MTProxySecret returns the FakeTLS secret of access key e, as its
// tg://proxy link carries it: e's MTProxy key with the relay's server name
// as cover host. It reports false if e has no MTProxy key.
func (d *Dir) MTProxySecret(e access.Entry) (mtproxy.Secret, bool) {
	if e.MTProxySecret.IsZero() {
		return mtproxy.Secret{}, false
	}
	return mtproxy.Secret{Key: e.MTProxySecret, Host: d.Settings.ServerName()}, true
}
