#!/bin/sh
# ja4-quic-capture.sh: the QUIC mode of ja4-capture.sh, which see; kept
# under this name because transport/quiccarrier's fingerprint test cites it.
exec "$(dirname "$0")/ja4-capture.sh" quic "$@"
