#!/usr/bin/env bash
# Memory per idle keep-alive client connection: starts Switchyard (one
# worker) in front of an nginx upstream, opens CONNECTIONS client
# connections one after another, each making one request and then staying
# open and idle, and prints the growth of Switchyard's resident set divided
# by the number of connections. One at a time, so that the figure is what
# an idle connection keeps, not what a burst of busy ones left behind.
#
# Usage:  benches/idle_memory.sh            # 5,000 connections
#         CONNECTIONS=20000 benches/idle_memory.sh
#
# Knobs: CONNECTIONS (5000), PORT_BASE (18400), BUILD (1: cargo build
# --release first), SWITCHYARD_BIN. Needs nginx, python3, curl.

set -euo pipefail

CONNECTIONS=${CONNECTIONS:-5000}
PORT_BASE=${PORT_BASE:-18400}
BUILD=${BUILD:-1}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SWITCHYARD_BIN=${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}
UP=$PORT_BASE PORT=$((PORT_BASE + 1))

die() { echo "idle_memory.sh: $*" >&2; exit 1; }
for tool in nginx python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install nginx python3 curl)"
done
if ((BUILD)); then
    (cd "$ROOT" && cargo build --release --bin switchyard --quiet) || die "build failed"
fi

RUN=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
nginx_upstream_conf "$RUN" "\
    server { listen 127.0.0.1:$UP; location / { return 200 upstream; } }" >"$RUN/upstream.conf"
nginx -p "$RUN/nginx" -c "$RUN/upstream.conf" >"$RUN/nginx.out" 2>&1 &
PIDS+=($!)

SWITCHYARD_LOG=warn "$SWITCHYARD_BIN" run --listen "127.0.0.1:$PORT" --stable "127.0.0.1:$UP" \
    --workers 1 --admin 127.0.0.1:0 >"$RUN/switchyard.log" 2>&1 &
PROXY=$!
PIDS+=("$PROXY")
for ((i = 0; i < 100; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/" 2>/dev/null) == 200 ]] && break
    sleep 0.1
done
((i < 100)) || die "switchyard did not answer on port $PORT"

rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$PROXY/status"; }
before=$(rss)
python3 - "$CONNECTIONS" "$PORT" "$RUN/ready" <<'PY' &
import socket, sys, time
n, port, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    held.append(s)
open(ready, "w").close()
time.sleep(600)
PY
CLIENT=$!
PIDS+=("$CLIENT")
while [[ ! -e $RUN/ready ]]; do
    kill -0 "$CLIENT" 2>/dev/null || die "the client failed (open-files limit? ulimit -n)"
    sleep 0.2
done
after=$(rss)
awk -v b="$before" -v a="$after" -v n="$CONNECTIONS" \
    'BEGIN { printf "%d idle keep-alive connections: RSS %.1f -> %.1f MiB, %.1f KiB per connection\n", n, b / 1024, a / 1024, (a - b) / n }'
