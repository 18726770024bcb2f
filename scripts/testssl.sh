#!/usr/bin/env bash
# Runs testssl.sh (Debian's package) against a Switchyard TLS listener and
# fails on any finding rated HIGH or CRITICAL. Not part of the default test
# run: it takes a minute or two and needs the package.
#
# Usage:  scripts/testssl.sh              # starts its own Switchyard on loopback
#         scripts/testssl.sh HOST:PORT    # checks a listener that is running
#
# Without an argument it builds the binary (cargo build --release), makes an
# ECDSA P-256 certificate with openssl in a temporary directory, starts
# Switchyard with --tls-cert/--tls-key in front of a tiny upstream on
# 127.0.0.1, runs testssl.sh, and stops what it started.
#
# Needs: testssl.sh and openssl (apt-get install testssl.sh openssl).
# Knobs: PORT (18443), BUILD (1), SWITCHYARD_BIN (target/release/switchyard).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${PORT:-18443}
BUILD=${BUILD:-1}
SWITCHYARD_BIN=${SWITCHYARD_BIN:-$ROOT/target/release/switchyard}

say() { printf '%s\n' "$*" >&2; }
die() { say "testssl.sh: $*"; exit 1; }

TESTSSL=$(command -v testssl || command -v testssl.sh || true)
[[ -n $TESTSSL ]] || die "testssl.sh is missing: apt-get install testssl.sh"
command -v openssl >/dev/null || die "openssl is missing: apt-get install openssl"

RUN=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-testssl.XXXXXX")
PIDS=()
cleanup() {
    local status=$? pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
    exit "$status"
}
trap cleanup EXIT

TARGET=${1:-}
ADD_CA=()
if [[ -z $TARGET ]]; then
    if ((BUILD)); then
        say "building: cargo build --release --bin switchyard"
        (cd "$ROOT" && cargo build --release --bin switchyard --quiet) || die "build failed"
    fi
    [[ -x $SWITCHYARD_BIN ]] || die "$SWITCHYARD_BIN not found"
    # A CA of its own (handed to testssl.sh with --add-ca) and a 90-day
    # leaf that names revocation URLs, as a public CA's would: the checks
    # of the certificate itself then pass, and what is left is the server.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
        -subj "/CN=Switchyard test CA" -keyout "$RUN/ca.key" -out "$RUN/ca.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=localhost" -keyout "$RUN/key.pem" -out "$RUN/leaf.csr" 2>/dev/null
    cat >"$RUN/leaf.ext" <<EOF
subjectAltName = DNS:localhost, IP:127.0.0.1
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
authorityInfoAccess = OCSP;URI:http://127.0.0.1:9/ocsp
crlDistributionPoints = URI:http://127.0.0.1:9/ca.crl
EOF
    openssl x509 -req -in "$RUN/leaf.csr" -CA "$RUN/ca.pem" -CAkey "$RUN/ca.key" \
        -CAcreateserial -days 90 -extfile "$RUN/leaf.ext" -out "$RUN/cert.pem" 2>/dev/null
    ADD_CA=(--add-ca "$RUN/ca.pem")
    # The embedded demo's upstream would do, but one route to a closed
    # port is enough: testssl.sh only looks at TLS (and the 502 is fine).
    SWITCHYARD_LOG=warn "$SWITCHYARD_BIN" run --listen "127.0.0.1:$PORT" \
        --stable 127.0.0.1:9 --tls-cert "$RUN/cert.pem" --tls-key "$RUN/key.pem" \
        --admin 127.0.0.1:0 --workers 1 >"$RUN/switchyard.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    TARGET=127.0.0.1:$PORT
fi

say "running testssl.sh against $TARGET (a minute or two)"
# --warnings off: no interactive questions; --color 0: plain text for the log.
"$TESTSSL" --quiet --warnings off --color 0 --severity LOW "${ADD_CA[@]}" \
    --jsonfile "$RUN/findings.json" "$TARGET" >"$RUN/testssl.log" 2>&1 || true
[[ -s $RUN/findings.json ]] || { cat "$RUN/testssl.log" >&2; die "testssl.sh wrote no findings"; }

# A summary: the protocols, the findings by severity, and each finding rated
# LOW or above (and testssl.sh's own warnings); HIGH or CRITICAL fail.
grep -E '^ (SSLv2|SSLv3|TLS 1(\.[0-3])?) ' "$RUN/testssl.log" || true
python3 - "$RUN/findings.json" <<'EOF'
import collections, json, sys
findings = json.load(open(sys.argv[1]))
counts = collections.Counter(f.get("severity", "?") for f in findings)
print("findings by severity:", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
for f in findings:
    if f.get("severity") in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "WARN"):
        print(f"  {f['severity']}: {f['id']}: {f['finding']}")
sys.exit(1 if any(f.get("severity") in ("HIGH", "CRITICAL") for f in findings) else 0)
EOF
