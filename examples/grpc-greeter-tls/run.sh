#!/usr/bin/env bash
# Starts the TLS Greeter example: makes the certificates if certs/ has none
# (make_certs.sh), starts greeter_server_tls.py on 127.0.0.1:50052 (TLS) in the
# background, then nuncio in the foreground with this folder's nuncio.yaml:
#
#   examples/grpc-greeter-tls/run.sh build/nuncio [NUNCIO_CONFIG]
#
# Ctrl-C stops nuncio; the Greeter server is stopped when nuncio exits.
set -u

PYTHON=/usr/bin/python3
# The ports of this folder's ambassador.yaml (Mapping service, Listener).
GREETER_PORT="${GREETER_PORT:-50052}"
LISTENER_PORT="${LISTENER_PORT:-8443}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ $# -lt 1 ]; then
    echo "usage: $0 NUNCIO_BIN [NUNCIO_CONFIG]   (e.g. $0 build/nuncio)" >&2
    exit 2
fi
NUNCIO_BIN="$1"
NUNCIO_CONF="${2:-$HERE/nuncio.yaml}"
shift $(( $# < 2 ? $# : 2 ))

die() { echo "run.sh: $*" >&2; exit 1; }

[ -x "$NUNCIO_BIN" ] || die "$NUNCIO_BIN is not an executable (run 'make build' first)"
[ -f "$NUNCIO_CONF" ] || die "config $NUNCIO_CONF not found"
[ -x "$PYTHON" ] || die "$PYTHON not found (install python3-grpcio python3-grpc-tools: 'make deps')"

if [ ! -f "$HERE/certs/greeter-tls-secret.yaml" ]; then
    bash "$HERE/make_certs.sh" "$HERE/certs" || die "make_certs.sh failed"
fi

# A port is in use if something listens on it: binding it (with SO_REUSEADDR,
# as servers do, so TIME_WAIT leftovers do not count) fails.
port_in_use() {
    "$PYTHON" - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
}
for spec in "$GREETER_PORT:the TLS Greeter server" "$LISTENER_PORT:nuncio's HTTPS Listener"; do
    port="${spec%%:*}"
    if port_in_use "$port"; then
        echo "run.sh: port $port (${spec#*:}) is already in use; stop whatever listens there" >&2
        echo "        (see: ss -ltnp 'sport = :$port') and run again." >&2
        exit 1
    fi
done

GREETER_PID=
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
    if [ -n "$GREETER_PID" ] && kill -0 "$GREETER_PID" 2>/dev/null; then
        kill -TERM "$GREETER_PID" 2>/dev/null
        wait "$GREETER_PID" 2>/dev/null
    fi
    GREETER_PID=
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM   # until nuncio runs (then: passed on to it)

"$PYTHON" -u "$HERE/greeter_server_tls.py" --port "$GREETER_PORT" &
GREETER_PID=$!

# Readiness: poll until the server accepts TCP connections (or has died).
ready=
for _ in $(seq 1 200); do
    if ! kill -0 "$GREETER_PID" 2>/dev/null; then
        wait "$GREETER_PID"
        die "the TLS Greeter server exited (status $?) before serving on 127.0.0.1:$GREETER_PORT"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$GREETER_PORT") 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.05
done
[ -n "$ready" ] || die "the TLS Greeter server did not accept connections on 127.0.0.1:$GREETER_PORT within 10 s"

cat <<MSG

============================================================================
 TLS Greeter server: 127.0.0.1:$GREETER_PORT (pid $GREETER_PID)
 Starting nuncio: $NUNCIO_BIN -c $NUNCIO_CONF
 HTTPS Listener: localhost:$LISTENER_PORT (TLS, and cleartext redirected)

 In another terminal, call the Greeter through nuncio over TLS:

   /usr/bin/python3 examples/grpc-greeter-tls/greeter_client_tls.py --target localhost:$LISTENER_PORT

 Press Ctrl-C here to stop nuncio and the Greeter server.
============================================================================

MSG

# nuncio in the foreground of this terminal, as a child we wait for: the EXIT
# trap must still stop the Greeter server. Ctrl-C / SIGTERM are passed on to
# nuncio as SIGTERM (its clean shutdown).
"$NUNCIO_BIN" -c "$NUNCIO_CONF" "$@" &
NUNCIO_PID=$!
trap 'kill -TERM "$NUNCIO_PID" 2>/dev/null' INT TERM
while kill -0 "$NUNCIO_PID" 2>/dev/null; do
    wait "$NUNCIO_PID"
done
wait "$NUNCIO_PID"
status=$?
echo "run.sh: nuncio exited with status $status; stopping the TLS Greeter server" >&2
exit "$status"
