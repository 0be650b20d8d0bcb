#!/usr/bin/env bash
# callgrind_echo.sh: instructions a message of moonloop's echo servers.
#
# usage: scripts/bench/callgrind_echo.sh [MOONLOOP [FLAVOUR...]]
#   MOONLOOP  the binary (default build/moonloop); the servers are taken
#             from the tree it was built in (MOONLOOP/../../scripts/bench),
#             so two trees are compared each with its own scripts
#   FLAVOUR   protocols, streams, buffered (default: all three)
# environment: CONNS (50), SIZE (1024, as make bench), N1 (100), N2 (600)
#             messages a connection in the short and the long run;
#             KEEP=DIR keeps the callgrind files there (for callgrind_annotate)
#
# Method: each flavour's server runs twice under valgrind --tool=callgrind,
# once driven by echocount (a bounded client: CONNS connections, each doing
# N messages of SIZE bytes one after the other) with N1 messages, once with
# N2; the server is stopped with TERM (callgrind writes its totals then).
# Start-up, the connections' set-up and teardown and the probe that waits
# for the port are the same in both runs, so
#     (Ir(N2) - Ir(N1)) / (CONNS * (N2 - N1))
# is the cost of one echoed message.  What varies between runs is how many
# connections each loop iteration finds ready (with 50 connections under
# valgrind, nearly all of them): repeat runs agree within ~1%.  CONNS=1
# makes every message a whole loop iteration of its own.
set -euo pipefail
ML=${1:-build/moonloop}
shift || true
FLAVOURS=("$@")
[ ${#FLAVOURS[@]} -gt 0 ] || FLAVOURS=(protocols streams buffered)
CONNS=${CONNS:-50} SIZE=${SIZE:-1024} N1=${N1:-100} N2=${N2:-600}
ML=$(cd "$(dirname "$ML")" && pwd)/$(basename "$ML")
HERE=$(cd "$(dirname "$0")" && pwd)
SRV=$(dirname "$(dirname "$ML")")/scripts/bench
[ -x "$ML" ] || { echo "callgrind_echo: $ML is not an executable" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "callgrind_echo: valgrind is not installed" >&2; exit 2; }
[ "$N2" -gt "$N1" ] || { echo "callgrind_echo: N2 must be more than N1" >&2; exit 2; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -o "$TMP/echocount" "$HERE/echocount.c"

# run FLAVOUR N: prints the server's instruction count for N messages a conn.
run() {
  local script=$1 n=$2 port out pid i
  out=$TMP/cg.$(basename "$script" .lua).$n
  port=$((20000 + RANDOM % 20000))
  valgrind --tool=callgrind --callgrind-out-file="$out" "$ML" "$SRV/$script" "$port" \
    2>"$TMP/vg.err" >/dev/null &
  pid=$!
  for i in $(seq 150); do # valgrind starts in ~2 s; give it 30
    "$TMP/echocount" 127.0.0.1 "$port" 1 1 1 >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { cat "$TMP/vg.err" >&2; return 1; }
    sleep 0.2
  done
  timeout 600 "$TMP/echocount" 127.0.0.1 "$port" "$CONNS" "$SIZE" "$n" >/dev/null ||
    { kill $pid; wait $pid 2>/dev/null; echo "callgrind_echo: $script: the client failed" >&2; return 1; }
  kill -TERM $pid
  wait $pid 2>/dev/null || true
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
  sed -n 's/^summary: //p' "$out"
}

printf '%-10s %6s %8s %14s %14s %10s\n' flavour conns msgs "Ir(N1)" "Ir(N2)" "Ir/msg"
for f in "${FLAVOURS[@]}"; do
  case $f in
    protocols) s=echo_protocol.lua ;;
    streams) s=echo_streams.lua ;;
    buffered) s=echo_buffered.lua ;;
    *) echo "callgrind_echo: unknown flavour $f (protocols, streams, buffered)" >&2; exit 2 ;;
  esac
  [ -f "$SRV/$s" ] || { echo "callgrind_echo: no $SRV/$s" >&2; continue; }
  a=$(run $s "$N1") b=$(run $s "$N2")
  msgs=$((CONNS * (N2 - N1)))
  printf '%-10s %6d %8d %14d %14d %10.1f\n' "$f" "$CONNS" $msgs "$a" "$b" \
    "$(echo "($b - $a) / $msgs" | bc -l)"
done
