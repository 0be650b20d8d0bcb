#!/usr/bin/env bash
# make soak (docs/reliability.md): SOAK_CONNS connections (1,000) echoing
# through a moonloop streams server for SOAK_MINUTES (10; SOAK_SECONDS, if
# set, overrides it), each sending 64 bytes every ~SOAK_INTERVAL seconds
# (0.1) and checking the echo.  The server's RSS and fd count are sampled
# every SOAK_SAMPLE seconds (10) and printed as a curve.  The baseline is
# the sample one interval after every connection is up (the warm-up).  It
# fails if RSS ever grows past the baseline by more than
# max(SOAK_RSS_SLACK_PCT % (10), SOAK_RSS_SLACK_KB (8192) kB), if the fd
# count ever passes the baseline by more than SOAK_FD_SLACK (0), if a
# message is lost or wrong, or if, once the clients are gone, the server's
# fds do not return to their count before the first connection.
# Traffic is on 127.0.0.1 only; every loop is bounded by the duration.
# usage: tests/soak/soak.sh path/to/moonloop
set -u
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
cd "$(dirname "$0")/../.."
conns=${SOAK_CONNS:-1000}
seconds=${SOAK_SECONDS:-$(( ${SOAK_MINUTES:-10} * 60 ))}
interval=${SOAK_INTERVAL:-0.1}
sample=${SOAK_SAMPLE:-10}
rss_pct=${SOAK_RSS_SLACK_PCT:-10}
rss_kb=${SOAK_RSS_SLACK_KB:-8192}
fd_slack=${SOAK_FD_SLACK:-0}
need=$((2 * conns + 64))
[ "$(ulimit -n)" -lt $need ] && { ulimit -n $need || { echo "soak: cannot raise the fd limit to $need" >&2; exit 1; }; }

tmp=$(mktemp -d /tmp/moonloop-soak.XXXXXX)
cleanup() { kill "$spid" "$cpid" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"; }
spid=""; cpid=""
trap cleanup EXIT

"$bin" tests/soak/server.lua > "$tmp/server.out" 2>&1 &
spid=$!
for _ in $(seq 100); do grep -q '^port ' "$tmp/server.out" && break; sleep 0.1; done
port=$(sed -n 's/^port //p' "$tmp/server.out")
[ -n "$port" ] || { echo "soak: the server did not start:"; cat "$tmp/server.out"; exit 1; }
rss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/$spid/status; }
fds() { ls /proc/$spid/fd | wc -l; }
idle_fds=$(fds)
echo "soak: $conns connections x ${seconds} s, a message every ~${interval} s each; server pid $spid, port $port, $idle_fds fds idle"

"$bin" tests/soak/client.lua "$port" "$conns" "$seconds" "$interval" > "$tmp/client.out" 2>&1 &
cpid=$!
for _ in $(seq 600); do grep -q '^connected ' "$tmp/client.out" && break; kill -0 $cpid 2>/dev/null || break; sleep 0.1; done
grep -q '^connected ' "$tmp/client.out" || { echo "soak: the client did not connect:"; cat "$tmp/client.out"; exit 1; }
start=$(date +%s)
printf '%8s %10s %6s\n' "t (s)" "RSS (kB)" "fds"
base_rss=""; base_fds=""; max_rss=0; max_fds=0; fail=0
while kill -0 $cpid 2>/dev/null; do
  t=$(( $(date +%s) - start ))
  r=$(rss); f=$(fds)
  [ -z "$r" ] && { echo "soak: the server died"; fail=1; break; }
  printf '%8d %10d %6d\n' "$t" "$r" "$f"
  if [ -z "$base_rss" ]; then
    [ "$t" -ge "$sample" ] && { base_rss=$r; base_fds=$f; }
  else
    [ "$r" -gt $max_rss ] && max_rss=$r
    [ "$f" -gt $max_fds ] && max_fds=$f
  fi
  # sleep until the next sample, but notice the client's end within 1 s
  for _ in $(seq "$sample"); do kill -0 $cpid 2>/dev/null || break; sleep 1; done
done
wait $cpid; crc=$?
cat "$tmp/client.out" | grep -v '^connected '
[ $crc -eq 0 ] || { echo "soak: FAIL: the client failed (exit status $crc)"; fail=1; }
if [ -n "$base_rss" ]; then
  slack=$(( base_rss * rss_pct / 100 )); [ $slack -lt $rss_kb ] && slack=$rss_kb
  echo "soak: RSS baseline $base_rss kB, max after it $max_rss kB (slack $slack kB); fds baseline $base_fds, max $max_fds (slack $fd_slack)"
  [ $max_rss -gt $((base_rss + slack)) ] && { echo "soak: FAIL: RSS grew past the slack"; fail=1; }
  [ $max_fds -gt $((base_fds + fd_slack)) ] && { echo "soak: FAIL: the fd count grew"; fail=1; }
else
  echo "soak: FAIL: the run was shorter than one sample after the warm-up (SOAK_SECONDS > 2 x SOAK_SAMPLE)"; fail=1
fi
for _ in $(seq 100); do [ "$(fds)" -le "$idle_fds" ] && break; sleep 0.1; done
f=$(fds); r=$(rss)
echo "soak: after the clients left: $f fds (idle: $idle_fds), RSS $r kB"
[ "$f" -gt "$idle_fds" ] && { echo "soak: FAIL: fds left open after the clients closed"; fail=1; }
[ $fail -eq 0 ] && echo "soak: 1 passed, 0 failed" || echo "soak: 0 passed, 1 failed"
exit $fail
