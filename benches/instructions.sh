#!/usr/bin/env bash
# Instructions per request in Switchyard's own code (user space), counted
# by callgrind: unlike req/s, the count does not move with whatever else
# the machine is doing, so it shows what a hot-path change saves even on a
# busy or shared machine (see /work/shared/PERF.md). Kernel time (syscalls,
# loopback TCP) is not in it: load.sh measures the whole.
#
# Layout: one nginx upstream with two ports (64-byte bodies), Switchyard
# under valgrind with one worker and a 90/10 split, wrk with keep-alive.
# After a warm-up the counters are zeroed, wrk runs DURATION seconds, and
# the instructions counted are divided by the requests wrk completed.
#
# Usage:  benches/instructions.sh                          # HTTP/1.1 keep-alive
#         LOAD=h2c benches/instructions.sh                 # h2c, h2load -c10 -m5
#         LOAD=http10 benches/instructions.sh              # HTTP/1.0 keep-alive GETs, as `ab -k` sends them
#         LOAD=close benches/instructions.sh               # a new connection per request (Connection: close)
#         ARGS=--no-request-metrics benches/instructions.sh  # without counting
#         RETRIES='{"attempts": 1, "on": ["reset", "503"]}' benches/instructions.sh  # a route that retries
#         UPLOAD=chunked benches/instructions.sh            # POSTs of 1 KiB, chunked (or UPLOAD=length)
#         UPLOAD=length UPLOAD_BYTES=262144 benches/instructions.sh  # POSTs of 256 KiB (streamed: over the 64 KiB read-ahead)
#         FAST_PATH=false benches/instructions.sh           # the route's fast path off: hyper's path
#         PROXY=nginx benches/instructions.sh               # nginx as the proxy instead, as load.sh configures it
#
# Knobs: PROXY (switchyard or nginx), LOAD (http1, http10, close or h2c), FAST_PATH (true or false), UPLOAD (none, chunked or length: HTTP/1.1 POSTs of UPLOAD_BYTES, 1024), DURATION (10 s), CONNECTIONS (10), ARGS (extra `switchyard run`
# flags), RETRIES (the route's `retries`, from a config file), PORT_BASE (18200), BUILD (1: cargo build --release first),
# SWITCHYARD_BIN (a `cargo build --profile profiling` binary for line tables in KEEP's output), KEEP (a directory: keep callgrind's output). Needs valgrind, nginx, wrk (or h2load), curl.

set -euo pipefail

LOAD=${LOAD:-http1}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-10}
ARGS=${ARGS:-}
RETRIES=${RETRIES:-}
FAST_PATH=${FAST_PATH:-true}
PROXY_NAME=${PROXY:-switchyard}
UPLOAD=${UPLOAD:-none}
UPLOAD_BYTES=${UPLOAD_BYTES:-1024}
PORT_BASE=${PORT_BASE:-18200}
BUILD=${BUILD:-1}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SWITCHYARD_BIN=${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}
UP1=$PORT_BASE UP2=$((PORT_BASE + 1)) PORT=$((PORT_BASE + 2))

die() { echo "instructions.sh: $*" >&2; exit 1; }
case $LOAD in
http1 | http10 | close) LOADER=wrk ;;
h2c) LOADER=h2load ;;
*) echo "instructions.sh: LOAD is http1, http10, close or h2c, not $LOAD" >&2; exit 1 ;;
esac
[[ $LOAD == http1 || $UPLOAD == none ]] || die "UPLOAD is for LOAD=http1"
case $UPLOAD in
none | chunked | length) ;;
*) echo "instructions.sh: UPLOAD is none, chunked or length, not $UPLOAD" >&2; exit 1 ;;
esac
for tool in valgrind callgrind_control nginx "$LOADER" curl; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install valgrind nginx wrk curl)"
done
[[ $PROXY_NAME == switchyard || $PROXY_NAME == nginx ]] || die "PROXY is switchyard or nginx, not $PROXY_NAME"
if ((BUILD)) && [[ $PROXY_NAME == switchyard ]]; then
    (cd "$ROOT" && cargo build --release --bin switchyard --quiet) || die "build failed"
fi

RUN=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n ${KEEP:-} ]]; then cp "$RUN"/callgrind.out* "$KEEP"/ 2>/dev/null || true; fi
    rm -rf "$RUN"
}
trap cleanup EXIT

body64() {
    local s="$1 upstream, 64-byte body "
    while ((${#s} < 64)); do s+="."; done
    printf '%s' "${s:0:64}"
}

# shellcheck source=benches/common.sh
source "$ROOT/benches/common.sh"
# An upload is read whole before its answer, as an application would:
# `return` alone answers at once (an early answer, which ends the
# connection), so the body is buffered by a `proxy_pass` to the same
# server first.
uploads="location /upload { client_body_buffer_size 1m; proxy_pass http://127.0.0.1:$UP1/read; }
        location = /read { return 200; }"
nginx_upstream_conf "$RUN" "\
    server { listen 127.0.0.1:$UP1; location / { return 200 \"$(body64 stable)\"; } $uploads }
    server { listen 127.0.0.1:$UP2; location / { return 200 \"$(body64 canary)\"; } $uploads }" \
    >"$RUN/upstream.conf"
nginx -p "$RUN/nginx" -c "$RUN/upstream.conf" >"$RUN/nginx.out" 2>&1 &
PIDS+=($!)

# The same split from a config file when the route retries or has its
# fast path off.
if [[ -n $RETRIES || $FAST_PATH != true ]]; then
    retries=
    [[ -z $RETRIES ]] || retries=", \"retries\": $RETRIES"
    cat >"$RUN/switchyard.json" <<EOF
{
  "listeners": [{"address": "127.0.0.1:$PORT"}],
  "pools": {"stable": {"endpoints": ["127.0.0.1:$UP1"]}, "canary": {"endpoints": ["127.0.0.1:$UP2"]}},
  "routes": [{"name": "default", "split": {"baseline": "stable", "weights": {"stable": 9000, "canary": 1000}},
              "fast_path": $FAST_PATH$retries}]
}
EOF
    ROUTE=(--config "$RUN/switchyard.json")
else
    ROUTE=(--listen "127.0.0.1:$PORT" --stable "127.0.0.1:$UP1" --canary "127.0.0.1:$UP2" --canary-weight 10)
fi
if [[ $PROXY_NAME == nginx ]]; then
    # nginx as load.sh runs it (upstream keep-alive, HTTP/1.1, the same
    # 90/10 split), one process (no master) so that callgrind counts the
    # worker; h2c prior knowledge on the same port.
    [[ $LOAD != h2c ]] || h2=" http2"
    mkdir -p "$RUN/proxy"
    nginx_upstream_conf "$RUN/proxy" "\
    upstream backends {
        server 127.0.0.1:$UP1 weight=9;
        server 127.0.0.1:$UP2 weight=1;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$PORT${h2:-};
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }" | sed '1a master_process off;' >"$RUN/proxy.conf"
    valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.out" \
        nginx -p "$RUN/proxy/nginx" -c "$RUN/proxy.conf" >"$RUN/switchyard.log" 2>&1 &
else
    # shellcheck disable=SC2086 # ARGS is a list of flags
    SWITCHYARD_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$RUN/callgrind.out" \
        "$SWITCHYARD_BIN" run "${ROUTE[@]}" --workers 1 --admin 127.0.0.1:0 $ARGS \
        >"$RUN/switchyard.log" 2>&1 &
fi
PROXY=$!
PIDS+=("$PROXY")
# nginx's h2c port speaks HTTP/2 alone.
ASK=()
[[ $PROXY_NAME$LOAD != nginxh2c ]] || ASK=(--http2-prior-knowledge)

for ((i = 0; i < 300; i++)); do
    [[ $(curl -s "${ASK[@]}" -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/" 2>/dev/null) == 200 ]] && break
    kill -0 "$PROXY" 2>/dev/null || { cat "$RUN/switchyard.log" >&2; die "$PROXY_NAME exited"; }
    sleep 0.1
done
((i < 300)) || die "$PROXY_NAME did not answer on port $PORT"

# An upload: wrk sends this request as written (its own formatting would
# add a Content-Length to a chunked body).
SCRIPT=()
if [[ $UPLOAD != none ]]; then
    case $UPLOAD in
    chunked) framing="Transfer-Encoding: chunked\\r\\n\\r\\n$(printf '%x' "$UPLOAD_BYTES")\\r\\n\" .. data .. \"\\r\\n0\\r\\n\\r\\n" ;;
    length) framing="Content-Length: $UPLOAD_BYTES\\r\\n\\r\\n\" .. data .. \"" ;;
    esac
    cat >"$RUN/upload.lua" <<EOF
local data = string.rep("x", $UPLOAD_BYTES)
local raw = "POST /upload HTTP/1.1\r\nHost: 127.0.0.1:$PORT\r\n$framing"
request = function() return raw end
EOF
    SCRIPT=(-s "$RUN/upload.lua")
elif [[ $LOAD == http10 ]]; then
    # ApacheBench's request (`ab -k`): HTTP/1.0, keep-alive asked for.
    cat >"$RUN/http10.lua" <<EOF
local raw = "GET / HTTP/1.0\r\nHost: 127.0.0.1:$PORT\r\nConnection: Keep-Alive\r\nUser-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n"
request = function() return raw end
EOF
    SCRIPT=(-s "$RUN/http10.lua")
elif [[ $LOAD == close ]]; then
    SCRIPT=(-H "Connection: close")
fi

# Prints the number of requests completed, or fails on any error.
load() {
    local seconds=$1 out
    if [[ $LOAD == h2c ]]; then
        out=$(h2load -c"$CONNECTIONS" -m5 -D"$seconds" "http://127.0.0.1:$PORT/")
        awk '/^requests:/ { if ($10 != 0 || $12 != 0) { print "h2load saw failures: " $0 > "/dev/stderr"; exit 1 } print $8 }' <<<"$out"
    else
        out=$(wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" "${SCRIPT[@]}" "http://127.0.0.1:$PORT/")
        if awk '/Non-2xx|Socket errors/ { found = 1 } END { exit !found }' <<<"$out"; then
            die "wrk saw errors: $out"
        fi
        awk '/requests in/ { print $1 }' <<<"$out"
    fi
}

load 2 >/dev/null
callgrind_control --zero "$PROXY" >/dev/null 2>&1
requests=$(load "$DURATION")
callgrind_control --dump=measured "$PROXY" >/dev/null 2>&1

# The dump after the zeroing: its totals are the measured interval's.
dump=$(grep -l 'measured' "$RUN"/callgrind.out* | head -n 1)
instructions=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
[[ -n $instructions && ${requests:-0} -gt 0 ]] || die "no count (dump $dump, requests $requests)"
awk -v i="$instructions" -v r="$requests" -v a="${ARGS:-none}" -v c="$CONNECTIONS" \
    -v l="$LOAD" -v u="$UPLOAD" -v b="$UPLOAD_BYTES" -v p="$PROXY_NAME" 'BEGIN { printf "%.0f instructions per request (%s, %d requests, %s, upload %s (%d bytes), %d connections, extra flags: %s)\n", i / r, p, r, l, u, b, c, a }'
