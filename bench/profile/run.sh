#!/bin/bash
# Profiles h3-server under callgrind for share.py: two runs of one request shape.
#
# usage: bench/profile/run.sh NAME CONNECTIONS IN_FLIGHT SMALL LARGE [OUT_DIR]
#   e.g. bench/profile/run.sh r2 32 10 5000 15000     (R2's shape)
#        bench/profile/run.sh r1 1 100 5000 15000     (R1's)
#        bench/profile/run.sh r3 1 1 2000 6000        (R3's)
# then:  bench/profile/share.py OUT_DIR/NAME-5000.out OUT_DIR/NAME-15000.out 10000
#
# Needs valgrind, taskset and release builds of h3-server and quay-load
# (cargo build --release -p quay-examples --bin h3-server --bin quay-load). The
# server runs on core 0 under callgrind, the load generator on core 1; requests are
# 512-byte POSTs answered with 4 KB, as in the R scenarios.
set -euo pipefail
if [ $# -lt 5 ]; then
    sed -n 2,13p "$0" >&2
    exit 2
fi
NAME=$1 CONNECTIONS=$2 IN_FLIGHT=$3 SMALL=$4 LARGE=$5
OUT=${6:-target/profile}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SERVER=$ROOT/target/release/h3-server
LOAD=$ROOT/target/release/quay-load
for tool in valgrind taskset; do
    command -v $tool >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done
for bin in "$SERVER" "$LOAD"; do
    [ -x "$bin" ] || { echo "run.sh: $bin not built (cargo build --release -p quay-examples --bin h3-server --bin quay-load)" >&2; exit 1; }
done
mkdir -p "$OUT"
for n in "$SMALL" "$LARGE"; do
    port=$((20000 + RANDOM % 20000))
    log=$OUT/$NAME-$n.server.log
    RUST_LOG=warn taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$OUT/$NAME-$n.out" \
        "$SERVER" --listen 127.0.0.1:$port --max-connections-per-ip 1000000 \
        --max-handshakes-per-ip 1000000 --max-requests-per-connection 0 >"$log" 2>&1 &
    server=$!
    for _ in $(seq 1 150); do
        grep -q "listening on" "$log" && break
        kill -0 $server 2>/dev/null || { echo "run.sh: the server did not start, see $log" >&2; exit 1; }
        sleep 0.2
    done
    taskset -c 1 "$LOAD" --connect 127.0.0.1:$port --insecure --connections "$CONNECTIONS" \
        --inflight "$IN_FLIGHT" --request-size 512 --response-size 4096 --requests "$n" \
        >"$OUT/$NAME-$n.load.log" 2>&1 || { kill -INT $server; echo "run.sh: the load failed, see $OUT/$NAME-$n.load.log" >&2; exit 1; }
    kill -INT $server
    wait $server || true
    tail -n 1 "$OUT/$NAME-$n.load.log"
done
echo "bench/profile/share.py $OUT/$NAME-$SMALL.out $OUT/$NAME-$LARGE.out $((LARGE - SMALL))"
