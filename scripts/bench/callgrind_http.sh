#!/usr/bin/env bash
# callgrind_http.sh: instructions a request of the HTTP server of make
# bench's httpserver rows (http_server.lua).
#
# usage: scripts/bench/callgrind_http.sh [MOONLOOP [PATH]]
#   MOONLOOP  the binary (default build/moonloop); the server is taken from
#             the tree it was built in (MOONLOOP/../../scripts/bench)
#   PATH      the route (default /; /json for the JSON row)
# environment: CONNS (50), N1 (100), N2 (700) requests a connection in the
#             short and the long run; REPS (3) pairs of runs;
#             KEEP=DIR keeps the callgrind files there
#
# Method (docs/performance.md, "HTTP server, hello"): the server runs
# under valgrind --tool=callgrind, driven by httpcount (CONNS keep-alive
# connections, each N GETs one after the other, each after the whole
# previous response), once with N1 and once with N2; the server is stopped
# with TERM.  (Ir(N2) - Ir(N1)) / (CONNS * (N2 - N1)) leaves start-up and
# the connections' set-up out.  Repeat runs agree within ~1%.
set -euo pipefail
ML=${1:-build/moonloop}
ROUTE=${2:-/}
CONNS=${CONNS:-50} N1=${N1:-100} N2=${N2:-700} REPS=${REPS:-3}
ML=$(cd "$(dirname "$ML")" && pwd)/$(basename "$ML")
HERE=$(cd "$(dirname "$0")" && pwd)
SRV=$(dirname "$(dirname "$ML")")/scripts/bench
[ -x "$ML" ] || { echo "callgrind_http: $ML is not an executable" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "callgrind_http: valgrind is not installed" >&2; exit 2; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -o "$TMP/httpcount" "$HERE/httpcount.c"

run() {
  local n=$1 port out pid i
  out=$TMP/cg.http.$n.$RANDOM
  port=$((20000 + RANDOM % 20000))
  valgrind --tool=callgrind --callgrind-out-file="$out" "$ML" "$SRV/http_server.lua" "$port" \
    2>"$TMP/vg.err" >/dev/null &
  pid=$!
  for i in $(seq 150); do
    "$TMP/httpcount" 127.0.0.1 "$port" 1 1 >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { cat "$TMP/vg.err" >&2; return 1; }
    sleep 0.2
  done
  timeout 600 "$TMP/httpcount" 127.0.0.1 "$port" "$CONNS" "$n" "$ROUTE" >/dev/null ||
    { kill $pid; wait $pid 2>/dev/null; echo "callgrind_http: the client failed" >&2; return 1; }
  kill -TERM $pid
  wait $pid 2>/dev/null || true
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
  sed -n 's/^summary: //p' "$out"
}

reqs=$((CONNS * (N2 - N1)))
printf '%14s %14s %10s\n' "Ir(N1)" "Ir(N2)" "Ir/request"
for r in $(seq "$REPS"); do
  a=$(run "$N1") b=$(run "$N2")
  printf '%14d %14d %10.1f\n' "$a" "$b" "$(echo "($b - $a) / $reqs" | bc -l)"
done
