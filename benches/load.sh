#!/usr/bin/env bash
# Load test: Switchyard, nginx and HAProxy side by side, in the layout of
# /work/shared/PERF.md ("How to measure here"):
#
#   CPU 0: the load generator (wrk / h2load) and two upstream servers
#          (one nginx, two ports, 64-byte bodies, no logs);
#   CPU 1: the proxy under test, alone, with one worker.
#
# Every proxy routes one route 90/10 over the two upstreams with keep-alive
# upstream connections. Targets are warmed up, then measured in interleaved
# rounds (A B C, A B C, ...) so that drift on this shared machine hits all of
# them alike; the median, min and max over the rounds are reported.
#
# Usage:  benches/load.sh                         # full run, 5-6 minutes if idle
#         DURATION=3 ROUNDS=1 benches/load.sh     # quick run, about a minute
#
# Needs nginx, haproxy, wrk and h2load (apt-get install nginx haproxy wrk
# nghttp2-client), two CPUs and no network. Runtime files go to a mktemp
# directory, removed at the end; every process started here is stopped on
# exit, error or Ctrl-C.
#
# Knobs (environment):
#   DURATION   seconds per measured run                     (10)
#   ROUNDS     interleaved rounds per scenario               (3)
#   SCENARIOS  any of: keepalive close h2c tls-keepalive tls-close  (all)
#              tls-*: HTTPS with one ECDSA P-256 certificate (openssl, made
#              here); tls-close makes a TLS handshake per request
#   TARGETS    any of: switchyard nginx haproxy upstream nometrics relay  (the
#              first three; "upstream" hits an upstream directly: the ceiling,
#              HTTP/1.1 only; "nometrics" is Switchyard with --no-request-metrics,
#              so that TARGETS='switchyard nometrics' measures what counting costs;
#              "relay" is HAProxy in TCP mode, a byte relay that does no HTTP work
#              and ties each client connection to one upstream connection, 90/10
#              by connection: the floor for any proxy that reads and writes once
#              per direction, keep-alive only)
#   WARMUP     seconds of warm-up per target and scenario    (2)
#   CONNECTIONS  wrk connections                             (50)
#   H2_CONNECTIONS, H2_STREAMS  h2load -c and -m             (10, 5)
#   PORT_BASE  first of the local ports used                 (18000)
#   H2_LATENCY 1: h2load logs every request, for p50/p99 (h2load prints no
#              percentiles); 0: no log, no h2c latency columns            (1)
#   QUIET      1: before each run wait (QUIET_WAIT s at most, 60) until other
#              processes leave the machine idle, and measure a run again (twice
#              at most) when they or hypervisor steal took over 10% of a core
#              during it; 0: neither                                         (1)
#   PROXY_CPU_QUOTA  percent of a core each proxy may use (cgroup v1 cpu
#              quota), e.g. 40: with the proxies capped below what the load
#              side can feed, a handshake per request measures the proxies'
#              capacity, not the load generator's; empty: no cap          ()
#   PROFILE    1: sample each proxy's CPU during each run (perf record -e
#              cpu-clock, PROFILE_HZ per second, 999) and print where a
#              request's CPU time went: user space, and in the kernel the
#              sends (with the peer's TCP receive and wake-up, which loopback
#              runs in the sender's context), the receives, epoll, the rest;
#              needs perf (Debian's linux-perf); 0: no sampling          (0)
#   PROFILE_KEEP  a directory: keep each run's perf data there, named
#              SCENARIO.TARGET.ROUND.perf, for `perf report -i`; empty: drop it ()
#   BUILD      1: cargo build --release first; 0: use the binary as it is (1)
#   SWITCHYARD_BIN  the binary                   (target/release/switchyard)
#   SWITCHYARD_LOG  its log filter                                      (warn)
#
# Progress goes to stderr; the result tables go to stdout, so
# `benches/load.sh > results.md` keeps only what can be pasted into a README.

set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
SCENARIOS=${SCENARIOS:-keepalive close h2c tls-keepalive tls-close}
TARGETS=${TARGETS:-switchyard nginx haproxy}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
H2_CONNECTIONS=${H2_CONNECTIONS:-10}
H2_STREAMS=${H2_STREAMS:-5}
PORT_BASE=${PORT_BASE:-18000}
BUILD=${BUILD:-1}
H2_LATENCY=${H2_LATENCY:-1}
QUIET=${QUIET:-1}
QUIET_WAIT=${QUIET_WAIT:-60}
PROXY_CPU_QUOTA=${PROXY_CPU_QUOTA:-}
PROFILE=${PROFILE:-0}
PROFILE_HZ=${PROFILE_HZ:-999}
PROFILE_KEEP=${PROFILE_KEEP:-}
CGROUP_ROOT=/sys/fs/cgroup/cpu

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SWITCHYARD_BIN=${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}
# Switchyard logs at info by default; only warnings are of interest here.
export SWITCHYARD_LOG=${SWITCHYARD_LOG:-warn}
# The command line to repeat this run: the main knobs, and others if set.
COMMAND_LINE="DURATION=$DURATION ROUNDS=$ROUNDS SCENARIOS='$SCENARIOS' TARGETS='$TARGETS'"
[[ $WARMUP == 2 ]] || COMMAND_LINE+=" WARMUP=$WARMUP"
[[ $CONNECTIONS == 50 ]] || COMMAND_LINE+=" CONNECTIONS=$CONNECTIONS"
[[ $H2_CONNECTIONS == 10 ]] || COMMAND_LINE+=" H2_CONNECTIONS=$H2_CONNECTIONS"
[[ $H2_STREAMS == 5 ]] || COMMAND_LINE+=" H2_STREAMS=$H2_STREAMS"
[[ $H2_LATENCY == 1 ]] || COMMAND_LINE+=" H2_LATENCY=$H2_LATENCY"
[[ -z $PROXY_CPU_QUOTA ]] || COMMAND_LINE+=" PROXY_CPU_QUOTA=$PROXY_CPU_QUOTA"
((!PROFILE)) || COMMAND_LINE+=" PROFILE=1"
COMMAND_LINE+=" benches/load.sh"

# The proxy gets a core of its own; everything else shares the other one.
PROXY_CPU=1
LOAD_CPU=0

# Ports: two upstreams, the upstream's stub_status (to count the new
# connections each proxy opens to the upstreams), and one or two per proxy
# (nginx and HAProxy take h2c prior knowledge on a port of its own;
# Switchyard serves HTTP/1.1 and h2c on the same port).
UP1=$((PORT_BASE + 1))
UP2=$((PORT_BASE + 2))
UP_STATUS=$((PORT_BASE + 3))
SY_PORT=$((PORT_BASE + 10))
NM_PORT=$((PORT_BASE + 11))
SY_TLS_PORT=$((PORT_BASE + 12))
NGX_PORT=$((PORT_BASE + 20))
NGX_H2_PORT=$((PORT_BASE + 21))
NGX_TLS_PORT=$((PORT_BASE + 22))
HAP_PORT=$((PORT_BASE + 30))
HAP_H2_PORT=$((PORT_BASE + 31))
HAP_TLS_PORT=$((PORT_BASE + 32))
RELAY_PORT=$((PORT_BASE + 40))

say() { printf '%s\n' "$*" >&2; }
die() { say "load.sh: $*"; exit 1; }

# ---------------------------------------------------------------- checks

for n in "$DURATION" "$ROUNDS" "$WARMUP" "$CONNECTIONS" "$H2_CONNECTIONS" "$H2_STREAMS" "$PORT_BASE"; do
    [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || die "DURATION, ROUNDS, WARMUP, CONNECTIONS, H2_* and PORT_BASE must be positive integers (got '$n')"
done
for s in $SCENARIOS; do
    [[ $s == keepalive || $s == close || $s == h2c || $s == tls-keepalive || $s == tls-close ]] \
        || die "unknown scenario '$s' (keepalive, close, h2c, tls-keepalive, tls-close)"
done
for t in $TARGETS; do
    [[ $t == switchyard || $t == nginx || $t == haproxy || $t == upstream || $t == nometrics || $t == relay ]] \
        || die "unknown target '$t' (switchyard, nginx, haproxy, upstream, nometrics, relay)"
done

missing=()
profiler=()
((!PROFILE)) || profiler=(perf)
for tool in nginx haproxy wrk h2load taskset curl pgrep getconf openssl "${profiler[@]}"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    say "load.sh: missing: ${missing[*]}"
    say "  apt-get install nginx haproxy wrk nghttp2-client   (taskset: util-linux, pgrep: procps)"
    exit 1
fi

if (($(nproc) < 2)); then
    say "load.sh: only one CPU: the proxy shares it with the load generator; ratios only"
    PROXY_CPU=0
fi

CLK_TCK=$(getconf CLK_TCK)

# Many sockets in the connection-per-request scenario: raise the soft limit
# as far as the hard one allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$UP1" "$UP2" "$UP_STATUS" "$SY_PORT" "$NM_PORT" "$SY_TLS_PORT" "$NGX_PORT" "$NGX_H2_PORT" \
    "$NGX_TLS_PORT" "$HAP_PORT" "$HAP_H2_PORT" "$HAP_TLS_PORT" "$RELAY_PORT"; do
    if port_in_use "$p"; then die "port $p is in use; set PORT_BASE to a free range"; fi
done

if ((BUILD)); then
    say "building: cargo build --release --bin switchyard"
    (cd "$ROOT" && cargo build --release --bin switchyard --quiet) || die "build failed"
fi
[[ -z $PROFILE_KEEP ]] || mkdir -p "$PROFILE_KEEP" || die "cannot create PROFILE_KEEP=$PROFILE_KEEP"
[[ -x $SWITCHYARD_BIN ]] || die "$SWITCHYARD_BIN not found: cargo build --release (or BUILD=1)"

# ---------------------------------------------------------------- processes

RUN=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-load.XXXXXX")
# The load generators' output (h2load logs every request) goes to a
# directory of its own: Switchyard watches the one with its config and
# certificates, and a file written there per request costs its watcher
# threads (on the proxy's core) about a third of a core.
mkdir "$RUN/runs"
declare -A PID=()      # name -> pid of every process started here
STATUS=0

# Kills everything started here, on any exit (end, error, Ctrl-C). Children
# first: an nginx worker whose master is killed -9 would stay around.
cleanup() {
    STATUS=$?
    trap - EXIT INT TERM
    local name pid all=()
    for name in "${!PID[@]}"; do
        pid=${PID[$name]}
        kill -0 "$pid" 2>/dev/null || continue
        all+=("$pid")
        mapfile -t -O "${#all[@]}" all < <(pgrep -P "$pid" || true)
        kill -TERM "$pid" 2>/dev/null || true
    done
    # Give them 5 s to stop on their own (Switchyard drains, nginx exits).
    local deadline=$((SECONDS + 5))
    for pid in "${all[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    local group
    for group in "$CGROUP_ROOT"/switchyard-load-$$-*; do
        [[ -d $group ]] && rmdir "$group" 2>/dev/null || true
    done
    # On a failure (not on Ctrl-C or TERM) the logs may say why.
    if ((STATUS != 0 && STATUS != 130 && STATUS != 143)) && [[ -d $RUN ]]; then
        local log
        for log in "$RUN"/*.log; do
            [[ -s $log ]] || continue
            say "--- last lines of $(basename "$log")"
            tail -n 15 "$log" >&2
        done
    fi
    rm -rf "$RUN"
    exit "$STATUS"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CPU COMMAND...: runs COMMAND pinned to CPU in the background,
# output to $RUN/NAME.log. taskset execs the command, so $! is its pid.
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$RUN/$name.log" 2>&1 &
    PID[$name]=$!
}

# alive NAME: whether a process started here still runs; if not, HOW says
# how it ended (Switchyard exits 0 after a SIGTERM or SIGINT it drained for).
alive() {
    kill -0 "${PID[$1]}" 2>/dev/null && return 0
    local status=0
    wait "${PID[$1]}" 2>/dev/null || status=$?
    if ((status > 128)); then HOW="killed by signal $((status - 128))"; else HOW="exit status $status"; fi
    # Nothing here stops a target before the end, so a SIGTERM or SIGINT came
    # from outside (another session's `pkill -f switchyard` matches this one).
    case $status in
        0 | 130 | 143) HOW+=", stopped by a SIGTERM or SIGINT from outside this script" ;;
    esac
    return 1
}

# wait_ready NAME URL: until URL answers 200 (5 s at most).
wait_ready() {
    local name=$1 url=$2 i
    for ((i = 0; i < 50; i++)); do
        alive "$name" || die "$name exited at startup: $HOW (its log follows)"
        if [[ $(curl -sk -o /dev/null -w '%{http_code}' "$url" 2>/dev/null) == 200 ]]; then return 0; fi
        sleep 0.1
    done
    die "$name did not answer 200 on $url"
}

# A 64-byte body that names its upstream, so the split can be checked.
body64() {
    local s="$1 upstream, 64-byte body "
    while ((${#s} < 64)); do s+="."; done
    printf '%s' "${s:0:64}"
}

# nginx gets its prefix, temp paths, pid and error log under $RUN, so that it
# needs nothing from /etc/nginx or /var/lib/nginx.
nginx_common() {
    local name=$1
    mkdir -p "$RUN/$name"
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $RUN/$name/nginx.pid;
error_log $RUN/$name.log warn;
daemon off;
events { worker_connections 10000; }
EOF
}
nginx_temp_paths() {
    local name=$1 t
    for t in client_body proxy fastcgi uwsgi scgi; do
        printf '    %s_temp_path %s/%s/%s;\n' "$t" "$RUN" "$name" "$t"
    done
}

start_upstream() {
    {
        nginx_common upstream
        cat <<EOF
http {
$(nginx_temp_paths upstream)
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server { listen 127.0.0.1:$UP1 backlog=4096; location / { return 200 "$(body64 stable)"; } }
    server { listen 127.0.0.1:$UP2 backlog=4096; location / { return 200 "$(body64 canary)"; } }
    server { listen 127.0.0.1:$UP_STATUS; location / { stub_status; } }
}
EOF
    } >"$RUN/upstream.conf"
    start upstream "$LOAD_CPU" nginx -p "$RUN/upstream" -e "$RUN/upstream.log" -c "$RUN/upstream.conf"
    wait_ready upstream "http://127.0.0.1:$UP1/"
    wait_ready upstream "http://127.0.0.1:$UP2/"
}

# One ECDSA P-256 certificate for every proxy's TLS listener (HAProxy wants
# the certificate and key in one file).
make_certificate() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$RUN/tls.key" -out "$RUN/tls.pem" 2>/dev/null || die "openssl could not make a certificate"
    cat "$RUN/tls.pem" "$RUN/tls.key" >"$RUN/haproxy-tls.pem"
}

# Switchyard from a config file: the one-route command line has one
# listener, and the TLS scenarios need a second one.
start_switchyard() {
    cat >"$RUN/switchyard.json" <<EOF
{
  "listeners": [
    {"address": "127.0.0.1:$SY_PORT"},
    {"address": "127.0.0.1:$SY_TLS_PORT",
     "tls": {"certificates": [{"cert_file": "$RUN/tls.pem", "key_file": "$RUN/tls.key", "default": true}]}}
  ],
  "pools": {
    "stable": {"endpoints": ["127.0.0.1:$UP1"]},
    "canary": {"endpoints": ["127.0.0.1:$UP2"]}
  },
  "routes": [{"name": "default", "split": {"baseline": "stable", "weights": {"stable": 9000, "canary": 1000}}}]
}
EOF
    start switchyard "$PROXY_CPU" "$SWITCHYARD_BIN" run --config "$RUN/switchyard.json" \
        --workers 1 --admin 127.0.0.1:0
    wait_ready switchyard "http://127.0.0.1:$SY_PORT/"
    wait_ready switchyard "https://127.0.0.1:$SY_TLS_PORT/"
}

# The same, counting nothing per request: the metrics' cost is the gap.
start_nometrics() {
    start nometrics "$PROXY_CPU" "$SWITCHYARD_BIN" run \
        --listen "127.0.0.1:$NM_PORT" --stable "127.0.0.1:$UP1" --canary "127.0.0.1:$UP2" \
        --canary-weight 10 --workers 1 --admin 127.0.0.1:0 --no-request-metrics
    wait_ready nometrics "http://127.0.0.1:$NM_PORT/"
}

# nginx as the reverse proxy, configured as one would for production:
# upstream keep-alive (HTTP/1.1, Connection cleared), no access log.
# nginx 1.22 takes h2c prior knowledge on a plaintext `listen ... http2`.
start_nginx() {
    {
        nginx_common nginx
        cat <<EOF
http {
$(nginx_temp_paths nginx)
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    upstream backends {
        server 127.0.0.1:$UP1 weight=9;
        server 127.0.0.1:$UP2 weight=1;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    ssl_certificate $RUN/tls.pem;
    ssl_certificate_key $RUN/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:1m;
    server {
        listen 127.0.0.1:$NGX_PORT backlog=4096;
        listen 127.0.0.1:$NGX_H2_PORT http2 backlog=4096;
        listen 127.0.0.1:$NGX_TLS_PORT ssl http2 backlog=4096;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$RUN/nginx.conf"
    start nginx "$PROXY_CPU" nginx -p "$RUN/nginx" -e "$RUN/nginx.log" -c "$RUN/nginx.conf"
    wait_ready nginx "http://127.0.0.1:$NGX_PORT/"
    wait_ready nginx "https://127.0.0.1:$NGX_TLS_PORT/"
}

# What both HAProxy configurations share: one thread, and the upstreams
# weighted 90/10 (round robin).
haproxy_global() { printf 'global\n    nbthread 1\n    maxconn 8000\n'; }
haproxy_upstreams() {
    printf 'backend upstreams\n    balance roundrobin\n'
    printf '    server stable 127.0.0.1:%s weight 9\n    server canary 127.0.0.1:%s weight 1\n' "$UP1" "$UP2"
}

# HAProxy, one thread, server-side connection reuse, no logs. `proto h2` on
# a bind takes h2c with prior knowledge.
start_haproxy() {
    cat >"$RUN/haproxy.cfg" <<EOF
$(haproxy_global)

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

frontend h1
    bind 127.0.0.1:$HAP_PORT
    default_backend upstreams

frontend h2c
    bind 127.0.0.1:$HAP_H2_PORT proto h2
    default_backend upstreams

frontend tls
    bind 127.0.0.1:$HAP_TLS_PORT ssl crt $RUN/haproxy-tls.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2
    default_backend upstreams

$(haproxy_upstreams)
EOF
    start haproxy "$PROXY_CPU" haproxy -db -f "$RUN/haproxy.cfg"
    wait_ready haproxy "http://127.0.0.1:$HAP_PORT/"
    wait_ready haproxy "https://127.0.0.1:$HAP_TLS_PORT/"
}

# The floor: HAProxy as a plain TCP relay, one thread, no HTTP parsing. Each
# client connection gets an upstream connection of its own for its lifetime
# (no reuse across clients, no per-request routing): 1 read and 1 write per
# direction, what any proxy must do. No splice: 64-byte answers are copied.
start_relay() {
    cat >"$RUN/relay.cfg" <<EOF
$(haproxy_global)

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend relay
    bind 127.0.0.1:$RELAY_PORT
    default_backend upstreams

$(haproxy_upstreams)
EOF
    start relay "$PROXY_CPU" haproxy -db -f "$RUN/relay.cfg"
    wait_ready relay "http://127.0.0.1:$RELAY_PORT/"
}

# url TARGET SCENARIO
url() {
    case $1:$2 in
        switchyard:tls-*) echo "https://127.0.0.1:$SY_TLS_PORT/" ;;
        nginx:tls-*) echo "https://127.0.0.1:$NGX_TLS_PORT/" ;;
        haproxy:tls-*) echo "https://127.0.0.1:$HAP_TLS_PORT/" ;;
        switchyard:*) echo "http://127.0.0.1:$SY_PORT/" ;;
        nometrics:*) echo "http://127.0.0.1:$NM_PORT/" ;;
        nginx:h2c) echo "http://127.0.0.1:$NGX_H2_PORT/" ;;
        nginx:*) echo "http://127.0.0.1:$NGX_PORT/" ;;
        haproxy:h2c) echo "http://127.0.0.1:$HAP_H2_PORT/" ;;
        haproxy:*) echo "http://127.0.0.1:$HAP_PORT/" ;;
        relay:*) echo "http://127.0.0.1:$RELAY_PORT/" ;;
        upstream:*) echo "http://127.0.0.1:$UP1/" ;;
    esac
}

# The process that does a target's work ("upstream" measures the upstream).
proc_of() { if [[ $1 == upstream ]]; then echo upstream; else echo "$1"; fi; }

# ---------------------------------------------------------------- /proc

# tree PID: the pid and its children (nginx: master and worker).
tree() { echo "$1"; pgrep -P "$1" || true; }

# cpu_ticks PID: utime + stime of the process tree, in clock ticks. Fields
# 14 and 15 of /proc/PID/stat, counted after the ")" that ends the name.
cpu_ticks() {
    local total=0 p stat f
    for p in $(tree "$1"); do
        { stat=$(<"/proc/$p/stat"); } 2>/dev/null || continue   # gone meanwhile
        stat=${stat##*) }
        read -r -a f <<<"$stat"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# peak_rss_kib PID: the largest VmHWM in the tree, i.e. the process that
# serves (nginx's worker; the master's is small and constant).
peak_rss_kib() {
    local max=0 p v
    for p in $(tree "$1"); do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
        ((${v:-0} > max)) && max=$v
    done
    echo "$max"
}

# Writing 5 to clear_refs resets VmHWM, so each scenario gets its own peak
# rather than the peak of everything that ran before it.
HWM_RESETS=1
reset_peak_rss() {
    local p
    for p in $(tree "$1"); do
        echo 5 2>/dev/null >"/proc/$p/clear_refs" || HWM_RESETS=0
    done
}

# The upstream's total of accepted connections (stub_status), to count the
# new upstream connections a proxy opens; each reading adds one of its own.
upstream_accepts() {
    curl -s "http://127.0.0.1:$UP_STATUS/" | awk 'NR == 3 {print $1}'
}

# machine_ticks: "busy steal" ticks of all CPUs from /proc/stat; busy is
# user+nice+system+irq+softirq, the same clock as /proc/PID/stat.
machine_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat
}

# wait_quiet: until the machine has been idle (below 10% of a core busy, from
# /proc/stat) for a second, in two half-second samples, for QUIET_WAIT seconds
# at most; our own processes are idle between runs, so what is busy is
# someone else.
wait_quiet() {
    local quiet=0 start=$SECONDS a b
    read -r -a a < <(machine_ticks)
    while ((quiet < 2 && SECONDS - start < QUIET_WAIT)); do
        sleep 0.5
        read -r -a b < <(machine_ticks)
        if (((b[0] - a[0]) * 100 < 5 * CLK_TCK)); then quiet=$((quiet + 1)); else quiet=0; fi
        a=("${b[@]}")
    done
    ((SECONDS - start <= 3)) || say "    waited $((SECONDS - start))s for other processes to quiet down"
}

# busy_percent: share of the whole machine's CPU in use over one second
# (/proc/stat), to warn when something else competes with the benchmark.
busy_percent() {
    local a b
    read -r -a a < <(head -n1 /proc/stat)
    sleep 1
    read -r -a b < <(head -n1 /proc/stat)
    local total=0 idle i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    echo $((total > 0 ? 100 * (total - idle) / total : 0))
}

# ---------------------------------------------------------------- load

# Converts wrk's "380.00us", "1.20ms", "2.00s" to milliseconds.
WRK_AWK='
function ms(v) {
    if (v ~ /us$/) return v / 1000
    if (v ~ /ms$/) return v + 0
    if (v ~ /m$/)  return v * 60000
    if (v ~ /s$/)  return v * 1000
    return v + 0
}
$1 == "50%" { p50 = ms($2) }
$1 == "99%" { p99 = ms($2) }
/ requests in / { reqs = $1 }
/^Requests\/sec:/ { rps = $2 }
/Socket errors:/ { gsub(",", ""); err = err sprintf("socket(connect %s read %s write %s timeout %s) ", $4, $6, $8, $10) }
/Non-2xx or 3xx responses:/ { err = err "non-2xx " $5 " " }
END {
    if (err == "") err = "-"
    printf "%s\t%s\t%.3f\t%.3f\t%s\n", rps + 0, reqs + 0, p50, p99, err
}'

# h2load prints no percentiles; its per-request log does (column 3: µs from
# start to end of the response).
H2_AWK='
/^finished in/ { rps = $4 }
/^requests:/ { reqs = $8; failed = $10; errored = $12; timeout = $14 }
/^status codes:/ { s3 = $5; s4 = $7; s5 = $9 }
END {
    err = ""
    if (failed + errored + timeout > 0) err = sprintf("failed %d errored %d timeout %d ", failed, errored, timeout)
    if (s3 + s4 + s5 > 0) err = err sprintf("non-2xx %d ", s3 + s4 + s5)
    if (err == "") err = "-"
    printf "%s\t%s\t%s\n", rps + 0, reqs + 0, err
}'

# children_ticks: CPU ticks of this shell's reaped children (bash `times`,
# second line). Run in this shell, not in $(...), where the count restarts.
children_ticks() {
    times >"$RUN/times"
    CHILD_TICKS=$(awk -v hz="$CLK_TCK" 'NR == 2 {
        for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] }
        printf "%d", t * hz }' "$RUN/times")
}

# load SCENARIO TARGET SECONDS OUT: runs the load generator on CPU 0 and
# writes one line "rps requests p50_ms p99_ms errors" (tab-separated) to OUT;
# sets LOADGEN_TICKS to the generator's CPU ticks.
load() {
    local scenario=$1 target=$2 secs=$3 out=$4 u c0
    u=$(url "$target" "$scenario")
    children_ticks
    c0=$CHILD_TICKS
    case $scenario in
        keepalive | tls-keepalive)
            taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency "$u" >"$out.raw" 2>&1 ;;
        close | tls-close)
            taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency \
                -H 'Connection: close' "$u" >"$out.raw" 2>&1 ;;
        h2c)
            local log=()
            ((H2_LATENCY)) && log=(--log-file="$out.h2log")
            taskset -c "$LOAD_CPU" h2load -c"$H2_CONNECTIONS" -m"$H2_STREAMS" -D "$secs" \
                "${log[@]}" "$u" >"$out.raw" 2>&1 ;;
    esac
    children_ticks
    LOADGEN_TICKS=$((CHILD_TICKS - c0))
    if [[ $scenario == h2c ]]; then
        local rps reqs err n p50 p99
        IFS=$'\t' read -r rps reqs err < <(awk "$H2_AWK" "$out.raw")
        n=$(wc -l <"$out.h2log" 2>/dev/null || echo 0)
        read -r p50 p99 < <(cut -f3 "$out.h2log" 2>/dev/null | sort -n | awk -v n="$n" '
            NR == int(n * 0.50 + 0.5) { p50 = $1 / 1000 }
            NR == int(n * 0.99 + 0.5) { p99 = $1 / 1000 }
            END { printf "%.3f %.3f\n", p50, p99 }')
        rm -f "$out.h2log"
        printf '%s\t%s\t%s\t%s\t%s\n' "$rps" "$reqs" "$p50" "$p99" "$err" >"$out"
    else
        awk "$WRK_AWK" "$out.raw" >"$out"
    fi
}

title() {
    case $1 in
        keepalive) echo "HTTP/1.1 keep-alive (wrk -t1 -c$CONNECTIONS)" ;;
        close) echo "new connection per request (wrk -t1 -c$CONNECTIONS, Connection: close)" ;;
        h2c) echo "h2c prior knowledge (h2load -c$H2_CONNECTIONS -m$H2_STREAMS)" ;;
        tls-keepalive) echo "HTTPS keep-alive (wrk -t1 -c$CONNECTIONS, ECDSA P-256)" ;;
        tls-close) echo "a TLS handshake per request (wrk -t1 -c$CONNECTIONS, Connection: close, ECDSA P-256)" ;;
    esac
}

targets_for() {
    local t
    for t in $TARGETS; do
        # The upstream has no h2c or TLS port, nometrics no TLS port.
        [[ ($1 == h2c || $1 == tls-*) && $t == upstream ]] && continue
        [[ $1 == tls-* && $t == nometrics ]] && continue
        # The relay ties a client connection to an upstream one: it is a floor
        # for keep-alive only (per request it would open upstream connections).
        [[ $1 != keepalive && $t == relay ]] && continue
        printf '%s ' "$t"
    done
}

# cpu_split PERF_DATA RPS: where the sampled CPU time of one request went,
# in microseconds, tab-separated: user, send, receive, epoll, other kernel,
# total. A kernel function's share is its samples with their callees
# (perf's "children"); the samples are cpu-clock ticks of the proxy's own threads,
# PROFILE_HZ a second, over DURATION seconds at RPS requests a second.
cpu_split() {
    local data=$1 rps=$2 samples kernel
    read -r samples kernel < <(perf report -i "$data" --no-children --sort dso -n -g none --stdio 2>/dev/null |
        awk '/^ *[0-9.]+%/ { n += $2; if ($3 == "[kernel.kallsyms]") k += $2 } END { print n + 0, k + 0 }')
    perf report -i "$data" --children --sort sym -g none --stdio --percent-limit 0 2>/dev/null |
        awk -v n="$samples" -v k="$kernel" -v hz="$PROFILE_HZ" -v secs="$DURATION" -v rps="$rps" '
            $3 == "[k]" { sub("%", "", $1); share[$4] = $1 / 100 }
            END {
                # By the TCP functions every system call of a kind goes
                # through (send, sendto, sendmsg, write, writev), not by the
                # system calls, whose entry perf may not see in the chain.
                send = share["tcp_sendmsg"]
                recv = share["tcp_recvmsg"]
                poll = share["do_epoll_wait"] + share["do_epoll_ctl"]
                us = 1e6 / hz / (secs * rps)
                printf "%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\n", (n - k) * us, send * n * us, recv * n * us,
                    poll * n * us, (k - (send + recv + poll) * n) * us, n * us
            }'
}

# measure SCENARIO TARGET ROUND: one measured run; sets OTHER and STEAL (CPU
# % of a core used by other processes, taken by the hypervisor), with
# PROFILE the run's cpu_split as PROFILE_LINE, and LINE, tab-separated:
# scenario target round rps requests p50 p99 cpu_s_per_100k proxy_cpu_%
# upstream_conns_per_1k errors loadgen+upstream_cpu_% other_cpu_% steal_%
measure() {
    local scenario=$1 target=$2 round=$3 proc pid out
    proc=$(proc_of "$target")
    pid=${PID[$proc]}
    alive "$proc" || die "$target has exited before the run: $HOW (its log follows)"
    out="$RUN/runs/$scenario.$target.$round"
    local a0 a1 t0 t1 u0 u1 w0 w1 m0 m1
    a0=$(upstream_accepts)
    t0=$(cpu_ticks "$pid")
    u0=$(cpu_ticks "${PID[upstream]}")
    read -r -a m0 < <(machine_ticks)
    w0=$(date +%s%N)
    local perf_pid=""
    if ((PROFILE)); then
        perf record -q -e cpu-clock -F "$PROFILE_HZ" -g -o "$out.perf" \
            -p "$(tree "$pid" | paste -sd,)" -- sleep "$DURATION" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    load "$scenario" "$target" "$DURATION" "$out"
    [[ -z $perf_pid ]] || wait "$perf_pid" || true
    w1=$(date +%s%N)
    read -r -a m1 < <(machine_ticks)
    u1=$(cpu_ticks "${PID[upstream]}")
    t1=$(cpu_ticks "$pid")
    a1=$(upstream_accepts)
    alive "$proc" || die "$target exited during the run: $HOW (its log follows)"
    local rps reqs p50 p99 err
    IFS=$'\t' read -r rps reqs p50 p99 err <"$out"
    [[ ${reqs:-0} -gt 0 ]] || { cat "$out.raw" >&2; die "$target/$scenario: no requests completed"; }
    # "Other" CPU: what the machine spent beyond the proxy, the upstream and
    # the load generator (for the "upstream" target its ticks are the proxy's).
    local ours=$((t1 - t0 + LOADGEN_TICKS))
    [[ $target == upstream ]] || ours=$((ours + u1 - u0))
    local line
    line=$(awk -v s="$scenario" -v t="$target" -v r="$round" -v rps="$rps" -v reqs="$reqs" \
        -v p50="$p50" -v p99="$p99" -v err="$err" -v ticks=$((t1 - t0)) -v hz="$CLK_TCK" \
        -v wall=$((w1 - w0)) -v acc=$((a1 - a0 - 1)) -v self="$([[ $target == upstream ]] && echo 1 || echo 0)" \
        -v cpu0=$((LOADGEN_TICKS + u1 - u0)) -v other=$((m1[0] - m0[0] - ours)) -v steal=$((m1[1] - m0[1])) '
        BEGIN {
            cpu = ticks / hz
            secs = wall / 1e9
            # Measuring the upstream itself, its new connections are the load generator ones.
            conns = self ? "-" : sprintf("%.2f", 1000 * acc / reqs)
            other = other < 0 ? 0 : other
            printf "%s\t%s\t%s\t%.0f\t%d\t%.3f\t%.3f\t%.3f\t%.0f\t%s\t%s\t%.0f\t%.0f\t%.0f\n",
                s, t, r, rps, reqs, p50, p99, 1e5 * cpu / reqs, 100 * cpu / secs, conns, err,
                100 * cpu0 / hz / secs, 100 * other / hz / secs, 100 * steal / hz / secs
        }')
    LINE=$line
    if ((PROFILE)); then
        PROFILE_LINE=$(printf '%s\t%s\t%s\t%s' "$scenario" "$target" "$round" "$(cpu_split "$out.perf" "$rps")")
        if [[ -n $PROFILE_KEEP ]]; then
            mv -f "$out.perf" "$PROFILE_KEEP/$scenario.$target.$round.perf"
        else
            rm -f "$out.perf"
        fi
    fi
    local cpu pct conns c0 oth stl
    IFS=$'\t' read -r _ _ _ rps _ p50 p99 cpu pct conns err c0 oth stl <<<"$line"
    OTHER=$oth STEAL=$stl
    say "$(printf '  %-9s round %s  %-10s %7s req/s  p50 %6s ms  p99 %7s ms  %6s CPU s/100k  proxy CPU %3s%%  loadgen+upstream CPU %3s%%  other %2s%%  steal %2s%%  upstream conns/1k %5s  errors %s' \
        "$scenario" "$round" "$target" "$rps" "$p50" "$p99" "$cpu" "$pct" "$c0" "$oth" "$stl" "$conns" "$err")"
}

# ---------------------------------------------------------------- run

say "runtime files in $RUN"
make_certificate
start_upstream
for t in $TARGETS; do
    [[ $t == upstream ]] || "start_$t"
done

# cap NAME: puts a proxy's processes (nginx's master and worker) in a cgroup
# of their own whose CPU quota is PROXY_CPU_QUOTA percent of a core.
cap() {
    local group="$CGROUP_ROOT/switchyard-load-$$-$1" pid
    mkdir -p "$group" || die "cannot create the cgroup $group (cgroup v1 cpu controller, root)"
    echo 100000 >"$group/cpu.cfs_period_us"
    echo $((PROXY_CPU_QUOTA * 1000)) >"$group/cpu.cfs_quota_us"
    for pid in $(tree "${PID[$1]}"); do echo "$pid" >"$group/cgroup.procs"; done
}
if [[ -n $PROXY_CPU_QUOTA ]]; then
    [[ $PROXY_CPU_QUOTA =~ ^[0-9]+$ && $PROXY_CPU_QUOTA -ge 5 && $PROXY_CPU_QUOTA -le 100 ]] \
        || die "PROXY_CPU_QUOTA must be a percentage from 5 to 100 (got '$PROXY_CPU_QUOTA')"
    [[ -d $CGROUP_ROOT ]] || die "PROXY_CPU_QUOTA needs the cgroup v1 cpu controller at $CGROUP_ROOT"
    for t in $TARGETS; do
        [[ $t == upstream ]] || cap "$(proc_of "$t")"
    done
    say "each proxy is capped at ${PROXY_CPU_QUOTA}% of a core"
fi

# Each proxy must split about 90/10: 200 requests on one connection (the
# relay splits by connection: 200 connections).
for t in $TARGETS; do
    [[ $t == upstream ]] && continue
    if [[ $t == relay ]]; then
        canary=$(for ((i = 0; i < 200; i++)); do curl -s "$(url "$t" keepalive)"; echo; done |
            { grep -o canary || true; } | wc -l)
    else
        canary=$(curl -s "$(url "$t" keepalive)?[1-200]" | { grep -o canary || true; } | wc -l)
    fi
    say "split check: $t sent $canary of 200 requests to the canary"
    ((canary >= 8 && canary <= 40)) || die "$t does not split 90/10 (canary got $canary/200)"
done

if ((!QUIET)); then
    busy=$(busy_percent)
    if ((busy > 10)); then
        say "warning: the machine is ${busy}% busy before the run; something else competes for the CPUs"
    fi
fi

: >"$RUN/results.tsv"
: >"$RUN/profile.tsv"
: >"$RUN/rss.tsv"
for scenario in $SCENARIOS; do
    targets=$(targets_for "$scenario")
    [[ -n $targets ]] || { say "skipping $scenario: none of TARGETS speaks it"; continue; }
    say ""
    say "== $(title "$scenario"): warm-up ${WARMUP}s each, then $ROUNDS x ${DURATION}s rounds"
    for t in $targets; do
        reset_peak_rss "${PID[$(proc_of "$t")]}"
        load "$scenario" "$t" "$WARMUP" "$RUN/runs/warmup.$scenario.$t"
    done
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in $targets; do
            # On a shared machine another job (a build, tests) can start at any
            # time: wait for quiet, and measure again a run it disturbed (or
            # one the hypervisor stole from: that cannot be waited out).
            for ((try = 0; ; try++)); do
                ((QUIET)) && wait_quiet
                measure "$scenario" "$t" "$round"
                ((QUIET && (OTHER > 10 || STEAL > 10) && try < 2)) || break
                say "    disturbed (other processes $OTHER%, hypervisor steal $STEAL% of a core): measuring again"
            done
            printf '%s\n' "$LINE" >>"$RUN/results.tsv"
            ((!PROFILE)) || printf '%s\n' "$PROFILE_LINE" >>"$RUN/profile.tsv"
        done
    done
    # A target that died while another one was measured shows here.
    for t in $targets; do
        alive "$(proc_of "$t")" || die "$t exited during the $scenario runs: $HOW (its log follows)"
    done
    for t in $targets; do
        printf '%s\t%s\t%s\n' "$scenario" "$t" "$(peak_rss_kib "${PID[$(proc_of "$t")]}")" >>"$RUN/rss.tsv"
    done
done

# ---------------------------------------------------------------- report

# The median of a[1..n] (sorts a), for the awk programs below.
MEDIAN_AWK='
    function median(a, n,   i, j, x) {
        for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }'

# summarize SCENARIO TARGET: "median min max p50 p99 cpu pct conns errors rss"
# over the rounds (medians; errors: the runs that had any, joined).
summarize() {
    awk -F'\t' -v s="$1" -v t="$2" -v rssfile="$RUN/rss.tsv" "$MEDIAN_AWK"'
        FILENAME == rssfile { if ($1 == s && $2 == t) rss = $3 / 1024; next }
        $1 == s && $2 == t {
            n++; rps[n] = $4; p50[n] = $6; p99[n] = $7; cpu[n] = $8; pct[n] = $9; conns[n] = $10
            if ($11 != "-") { errs = errs "round " $3 ": " $11 "; "; nerr++ }
        }
        END {
            if (!n) exit 1
            min = max = rps[1]; for (i = 2; i <= n; i++) { if (rps[i] < min) min = rps[i]; if (rps[i] > max) max = rps[i] }
            c = conns[1] == "-" ? "-" : sprintf("%.2f", median(conns, n))
            printf "%.0f\t%.0f\t%.0f\t%.2f\t%.2f\t%.2f\t%.0f\t%s\t%s\t%.1f\n", median(rps, n), min, max,
                median(p50, n), median(p99, n), median(cpu, n), median(pct, n), c, nerr ? errs : "-", rss
        }' "$RUN/results.tsv" "$RUN/rss.tsv"
}

# The commit measured, "+dirty" when the work tree has changes; without a
# build here, the binary may be older than the work tree: say when it was built.
revision() {
    local rev
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || rev="no git"
    [[ -z $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] || rev+="+dirty"
    ((BUILD)) || rev="binary built $(date -u -r "$SWITCHYARD_BIN" '+%F %R UTC'), not rebuilt; work tree at $rev"
    echo "$rev"
}

k() { awk -v v="$1" 'BEGIN { printf "%.1fk", v / 1000 }'; }

rows=()
notes=()
for scenario in $SCENARIOS; do
    targets=$(targets_for "$scenario")
    # The best peer: the fastest of nginx and HAProxy by median req/s.
    best_rps=0 best=""
    for t in $targets; do
        [[ $t == nginx || $t == haproxy ]] || continue
        IFS=$'\t' read -r med _ <<<"$(summarize "$scenario" "$t")"
        if ((med > best_rps)); then best_rps=$med best=$t; fi
    done
    for t in $targets; do
        IFS=$'\t' read -r med min max p50 p99 cpu pct conns errs rss <<<"$(summarize "$scenario" "$t")"
        ratio="-"
        if ((best_rps > 0)) && [[ $t != upstream ]]; then
            ratio=$(awk -v a="$med" -v b="$best_rps" 'BEGIN { printf "%.2f×", a / b }')
        fi
        errcol=0
        [[ $errs == - ]] || { errcol="yes"; notes+=("$scenario/$t: $errs"); }
        if [[ $scenario == h2c ]] && ((!H2_LATENCY)); then p50="-" p99="-"; fi
        rows+=("| $scenario | $t | $(k "$med") ($(k "$min")-$(k "$max")) | $ratio | $p50 | $p99 | $cpu | $pct | $rss | $conns | $errcol |")
    done
    if [[ -n $best && " $targets " == *" switchyard "* ]]; then
        IFS=$'\t' read -r sy_med _ _ _ _ sy_cpu _ <<<"$(summarize "$scenario" switchyard)"
        IFS=$'\t' read -r _ _ _ _ _ best_cpu _ <<<"$(summarize "$scenario" "$best")"
        notes+=("$(awk -v s="$scenario" -v b="$best" -v a="$sy_med" -v r="$best_rps" -v c="$sy_cpu" -v d="$best_cpu" \
            'BEGIN { printf "%s: Switchyard %.2f× the req/s of the best peer (%s), at %.2f× its CPU per request", s, a / r, b, c / d }')")
    fi
    if [[ " $targets " == *" switchyard "* && " $targets " == *" relay "* ]]; then
        IFS=$'\t' read -r sy_med _ _ _ _ sy_cpu _ <<<"$(summarize "$scenario" switchyard)"
        IFS=$'\t' read -r rl_med _ _ _ _ rl_cpu _ <<<"$(summarize "$scenario" relay)"
        notes+=("$(awk -v s="$scenario" -v a="$sy_med" -v b="$rl_med" -v c="$sy_cpu" -v d="$rl_cpu" \
            'BEGIN { printf "%s: Switchyard %.2f× the req/s of the TCP relay (no HTTP work), at %.2f× its CPU per request", s, a / b, c / d }')")
    fi
    if [[ " $targets " == *" switchyard "* && " $targets " == *" nometrics "* ]]; then
        IFS=$'\t' read -r sy_med _ _ _ _ sy_cpu _ <<<"$(summarize "$scenario" switchyard)"
        IFS=$'\t' read -r nm_med _ _ _ _ nm_cpu _ <<<"$(summarize "$scenario" nometrics)"
        notes+=("$(awk -v s="$scenario" -v a="$sy_med" -v b="$nm_med" -v c="$sy_cpu" -v d="$nm_cpu" \
            'BEGIN { printf "%s: counting (metrics and canary-health ticks) costs %.1f%% of req/s and %.1f%% more CPU per request", s, 100 * (b - a) / b, 100 * (c - d) / d }')")
    fi
done

# Runs disturbed by the hypervisor (steal) or by other processes, and targets
# that did not keep their core busy (then the load side may be the limit).
disturbed=$(awk -F'\t' '$13 > 10 || $14 > 10 { printf "%s%s round %s %s (other %s%%, steal %s%%)", sep, $1, $3, $2, $13, $14; sep = "; " }' "$RUN/results.tsv")
[[ -z $disturbed ]] || notes+=("disturbed runs (other processes or hypervisor steal above 10% of a core): $disturbed")
idle=""
for scenario in $SCENARIOS; do
    for t in $(targets_for "$scenario"); do
        [[ $t == upstream ]] && continue
        IFS=$'\t' read -r _ _ _ _ _ _ pct _ <<<"$(summarize "$scenario" "$t")"
        ((pct >= 80)) || idle+="${idle:+, }$scenario/$t $pct%"
    done
done
[[ -z $idle ]] || notes+=("proxies below 80% of their core, so limited elsewhere (load side on CPU $LOAD_CPU, other processes, steal): $idle")

hwm_note="peak RSS per scenario (VmHWM reset before each)"
((HWM_RESETS)) || hwm_note="peak RSS since start (VmHWM could not be reset)"

{
    echo
    echo "## Load test: Switchyard vs nginx vs HAProxy"
    echo
    echo "$(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(uname -sr); proxy alone on CPU $PROXY_CPU with one worker; load generator and"
    echo "upstreams (nginx, two ports, 64-byte bodies) on CPU $LOAD_CPU; one route split 90/10; keep-alive"
    echo "to the upstreams. ${DURATION}s per run, $ROUNDS interleaved rounds after a ${WARMUP}s warm-up."
    [[ -z $PROXY_CPU_QUOTA ]] || echo "Each proxy capped at ${PROXY_CPU_QUOTA}% of a core (cgroup CPU quota), so that the load side is not the limit."
    echo "Versions: $("$SWITCHYARD_BIN" --version 2>/dev/null | head -n1) ($(revision)),"\
        "$(nginx -v 2>&1 | sed 's/.*: //'), HAProxy $(haproxy -v | awk 'NR == 1 {print $3}'),"\
        "$(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}'), $(h2load --version | head -n1)."
    echo
    echo "Scenarios: keepalive = $(title keepalive); close = $(title close); h2c = $(title h2c);"
    echo "tls-keepalive = $(title tls-keepalive); tls-close = $(title tls-close)."
    echo "req/s: median (min-max) over the rounds; vs best peer: median req/s over the faster of nginx"
    echo "and HAProxy; p50/p99: medians over the rounds; CPU s/100k: the proxy's user+system CPU seconds"
    echo "per 100,000 requests; CPU %: of the proxy's core; RSS: $hwm_note;"
    echo "upstream conns/1k: new upstream connections per 1,000 requests (including those that replace"
    echo "connections dropped when the previous run stopped mid-request). Absolute figures move with"
    echo "the machine (steal on a shared host): compare the ratios within one run."
    echo
    echo "| scenario | target | req/s | vs best peer | p50 ms | p99 ms | CPU s/100k | CPU % | peak RSS MiB | upstream conns/1k | errors |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    if ((PROFILE)); then
        echo
        echo "Where a request's CPU time went (PROFILE=1: perf cpu-clock samples of the proxy's threads,"
        echo "microseconds per request, medians over the rounds). send: the system calls that write to"
        echo "a socket, with the TCP receive and wake-up of the peer, which loopback runs in the sender's"
        echo "context; receive: those that read; epoll: waiting for and changing interest."
        echo
        echo "| scenario | target | user | send | receive | epoll | other kernel | total |"
        echo "|---|---|---|---|---|---|---|---|"
        for scenario in $SCENARIOS; do
            for t in $(targets_for "$scenario"); do
                awk -F'\t' -v s="$scenario" -v t="$t" "$MEDIAN_AWK"'
                    $1 == s && $2 == t { n++; for (c = 4; c <= 9; c++) v[c, n] = $c }
                    END {
                        if (!n) exit
                        printf "| %s | %s |", s, t
                        for (c = 4; c <= 9; c++) { for (i = 1; i <= n; i++) a[i] = v[c, i]; printf " %.2f |", median(a, n) }
                        printf "\n"
                    }' "$RUN/profile.tsv"
            done
        done
    fi
    echo
    for n in "${notes[@]}"; do echo "- $n"; done
    echo
    echo "Command: \`$COMMAND_LINE\`"
}

# Anything Switchyard logged at warn or above is worth a look.
if [[ " $TARGETS " == *" switchyard "* ]]; then
    warns=$(grep -c -E 'WARN|ERROR' "$RUN/switchyard.log" || true)
    if ((warns > 0)); then
        say ""
        say "Switchyard logged $warns warning/error lines; the first ones:"
        grep -m 5 -E 'WARN|ERROR' "$RUN/switchyard.log" >&2 || true
    fi
fi
