#!/usr/bin/env bash
# Starts the gRPC-Web example: the Greeter server (examples/grpc-greeter) on
# 127.0.0.1:50051, a static file server for the page (dist/) on 127.0.0.1:8000,
# and nuncio on :8080 with this folder's ambassador.yaml, in the foreground.
#
#   make build && make -C examples/grpc-web    # nuncio, then the page
#   examples/grpc-web/run.sh [NUNCIO_BIN]       # default: build/nuncio
#
# Then open http://localhost:8000/ . Ctrl-C stops nuncio and the two servers.
set -u

PYTHON=/usr/bin/python3
GREETER_PORT=50051   # the Mapping's service in ambassador.yaml
LISTENER_PORT=8080   # the Listener in ambassador.yaml
PAGE_PORT=8000       # the origins of the Mapping's cors in ambassador.yaml
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
NUNCIO_BIN="${1:-$ROOT/build/nuncio}"
[ $# -gt 0 ] && shift

die() { echo "run.sh: $*" >&2; exit 1; }

[ -x "$NUNCIO_BIN" ] || die "$NUNCIO_BIN is not an executable (run 'make build' first)"
[ -x "$PYTHON" ] || die "$PYTHON not found (install python3-grpcio python3-grpc-tools: 'make deps')"
[ -f "$HERE/dist/app.js" ] && [ -f "$HERE/dist/index.html" ] ||
    die "the page is not built: run 'make -C examples/grpc-web' (or 'npm ci && npm run build' in $HERE)"

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
for spec in "$GREETER_PORT:the Greeter server" "$LISTENER_PORT:nuncio's Listener" "$PAGE_PORT:the page's web server"; do
    port="${spec%%:*}"
    if port_in_use "$port"; then
        echo "run.sh: port $port (${spec#*:}) is already in use; stop whatever listens there" >&2
        echo "        (see: ss -ltnp 'sport = :$port') and run again." >&2
        exit 1
    fi
done

PIDS=()
# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_port() {  # pid port what
    for _ in $(seq 1 200); do
        kill -0 "$1" 2>/dev/null || die "$3 exited before serving on 127.0.0.1:$2"
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.05
    done
    die "$3 did not accept connections on 127.0.0.1:$2 within 10 s"
}

"$PYTHON" -u "$ROOT/examples/grpc-greeter/greeter_server.py" --port "$GREETER_PORT" &
PIDS+=($!)
wait_port "$!" "$GREETER_PORT" "the Greeter server"

"$PYTHON" -m http.server "$PAGE_PORT" --bind 127.0.0.1 --directory "$HERE/dist" 2>/dev/null &
PIDS+=($!)
wait_port "$!" "$PAGE_PORT" "the page's web server"

cat <<MSG

============================================================================
 Greeter server: 127.0.0.1:$GREETER_PORT
 The page:       http://localhost:$PAGE_PORT/   (served from $HERE/dist)
 nuncio:         http://localhost:$LISTENER_PORT  ($NUNCIO_BIN --ambassador $HERE/ambassador.yaml)

 Open http://localhost:$PAGE_PORT/ in a browser: it calls SayHello and
 SayHelloStreamReply through nuncio with gRPC-Web and shows the answers.

 Press Ctrl-C here to stop nuncio and both servers.
============================================================================

MSG

"$NUNCIO_BIN" --ambassador "$HERE/ambassador.yaml" "$@" &
NUNCIO_PID=$!
trap 'kill -TERM "$NUNCIO_PID" 2>/dev/null' INT TERM
while kill -0 "$NUNCIO_PID" 2>/dev/null; do
    wait "$NUNCIO_PID"
done
wait "$NUNCIO_PID"
status=$?
echo "run.sh: nuncio exited with status $status; stopping the Greeter server and the web server" >&2
exit "$status"
