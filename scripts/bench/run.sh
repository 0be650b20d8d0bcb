#!/usr/bin/env bash
# run.sh: runs moonloop's benchmarks and its peers' and prints one table
# (what `make bench` does; the method is in docs/performance.md).
#
# usage: scripts/bench/run.sh [BUILD/moonloop]
#
# Environment:
#   RUNS=5          runs of each fast benchmark (median taken)
#   ECHO_RUNS=5     runs of each echo server, ECHO_SECONDS=4 each
#   MEM_RUNS=3      runs of the memory benchmark
#   STARTUP_RUNS=200
#   QUICK=1         one run of everything, short echo runs (a smoke test)
#   PIN=0           do not pin the echo server and load client to cores
#   ONLY="gather gather_eager gather_warm sleep0 queue timers timers_warm timers1m echo echo1 idle memory startup
#         spawn tothread pipe64 tls httpclient httpserver embed workers"   a subset (echo and echo1 also give the latency rows)
#   TIMERS1M_RUNS=1 runs of the 1,000,000-timer benchmark (tens of seconds in Python)
#   IDLE_CONNS=10000 connections of the idle-connections benchmark
#   HTTP_N=20000 HTTP_CONC=50   the HTTP client row's GETs and concurrency
#   HELLO_RUNS=3 HELLO_SECONDS=4   the workers rows (HTTP hello, 1 and 2 workers; wrk runs)
#   HTTPD_SECONDS=4  each wrk run of the HTTP server rows (wrk -t1 -c50)
#   TLS_SECONDS=4    each TLS handshake and echo run
#
# Everything runs on 127.0.0.1 with ports found free; every process this
# script starts is killed when it exits, however it exits.

set -u

ML=${1:-build/moonloop}
case $ML in /*) ;; *) ML=$PWD/$ML ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$(dirname "$ML")/bench
PY=/usr/bin/python3   # Debian's: the interpreter python3-uvloop is built for
RUNS=${RUNS:-5}
ECHO_RUNS=${ECHO_RUNS:-5}
ECHO_SECONDS=${ECHO_SECONDS:-4}
MEM_RUNS=${MEM_RUNS:-3}
STARTUP_RUNS=${STARTUP_RUNS:-200}
TIMERS1M_RUNS=${TIMERS1M_RUNS:-1}
IDLE_CONNS=${IDLE_CONNS:-10000}
ONLY=${ONLY:-gather gather_eager gather_warm sleep0 queue timers timers_warm timers1m echo echo1 idle memory startup spawn tothread pipe64 tls httpclient httpserver embed workers}
HTTP_N=${HTTP_N:-20000}
HTTP_CONC=${HTTP_CONC:-50}
HELLO_RUNS=${HELLO_RUNS:-3}
HELLO_SECONDS=${HELLO_SECONDS:-4}
HTTPD_SECONDS=${HTTPD_SECONDS:-4}
TLS_SECONDS=${TLS_SECONDS:-4}
if [ "${QUICK:-0}" = 1 ]; then
  RUNS=1 ECHO_RUNS=1 ECHO_SECONDS=1 MEM_RUNS=1 STARTUP_RUNS=30 TLS_SECONDS=1 IDLE_CONNS=2000 HTTP_N=2000
  HELLO_RUNS=1 HELLO_SECONDS=1 HTTPD_SECONDS=1
fi
ECHO_CONNS=50
ECHO_SIZE=1024

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mlbench.XXXXXX")
SERVER_PID=""  # the echo server running now (a timeout process leading its own group)

# 0 if pid is a background job of this script that has not ended.  Bash
# reaps its children as soon as they end, and from then on their pid may
# belong to somebody else: ask the job table, never signal a stale pid.
running() { jobs -rp | grep -qx "$1"; }

# Stops the server started by echo_run: TERM to its process group (timeout
# and the server), KILL if it is still there 3 s later.
stop_server() {
  local i
  [ -n "$SERVER_PID" ] || return 0
  running "$SERVER_PID" && kill -TERM -- "-$SERVER_PID" 2>/dev/null
  for i in $(seq 30); do
    running "$SERVER_PID" || break
    sleep 0.1
  done
  running "$SERVER_PID" && kill -KILL -- "-$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}

cleanup() {
  stop_server
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { echo "note: $*" | tee -a "$TMP/notes" >&2; }
want() { case " $ONLY " in *" $1 "*) return 0 ;; esac; return 1; }

# ---- what is available ---------------------------------------------------

have_ml=0 have_asyncio=0 have_uvloop=0 have_node=0 have_c=0 pin=0
if [ -x "$ML" ] && timeout 10 "$ML" "$HERE/hello.lua" 2>/dev/null | grep -q "hello, world"; then
  have_ml=1
else
  note "moonloop ($ML) does not run hello.lua: its column stays empty"
fi
if [ -x "$PY" ] && "$PY" -c 'import asyncio' 2>/dev/null; then have_asyncio=1
else note "$PY not found: the Python peers are skipped"; fi
if [ $have_asyncio = 1 ] && "$PY" -c 'import uvloop' 2>/dev/null; then have_uvloop=1
else note "uvloop not importable by $PY (apt-get install python3-uvloop): skipped"; fi
if command -v node >/dev/null; then have_node=1
else note "node not found (apt-get install nodejs): skipped"; fi

mkdir -p "$OUT"
if ${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -o "$OUT/echo_epoll" "$HERE/echo_epoll.c" &&
   ${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -o "$OUT/echoload" "$HERE/echoload.c" &&
   ${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -o "$OUT/proc_floor" "$HERE/proc_floor.c" &&
   ${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -o "$OUT/idleload" "$HERE/idleload.c"; then
  have_c=1
else
  note "could not build echo_epoll/echoload/proc_floor/idleload: the echo benchmarks and C floors are skipped"
fi

have_tls=0
if ${CC:-cc} -std=gnu11 -O2 -Wall -Wextra -o "$OUT/tlsload" "$HERE/tlsload.c" -lssl -lcrypto -lpthread &&
   command -v openssl >/dev/null; then
  have_tls=1
else
  note "could not build tlsload (libssl-dev) or no openssl command: the TLS benchmarks are skipped"
fi

# On two or more cores the echo server gets core 1 and the load client
# core 0, so they never compete for a core.
SERVER_PIN=() CLIENT_PIN=()
if [ "${PIN:-1}" = 0 ]; then
  note "PIN=0: echo client and server are not pinned"
elif command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin=1 SERVER_PIN=(taskset -c 1) CLIENT_PIN=(taskset -c 0)
else
  note "fewer than 2 cores or no taskset: echo client and server are not pinned"
fi

# ---- helpers ---------------------------------------------------------------

# A TCP port on 127.0.0.1 that nothing listens on.
free_port() {
  local p i
  for i in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  return 1
}

# Waits until pid listens on port (10 s at most).
wait_port() {
  local pid=$1 port=$2 i
  for i in $(seq 100); do
    running "$pid" || return 1
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

median() {  # of the numbers in file $1, or empty
  [ -s "$1" ] || return 0
  sort -g "$1" | awk '{ a[NR] = $1 } END {
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# run_rate BENCH IMPL CMD...: one run; records ops/second from RESULT.
run_rate() {
  local bench=$1 impl=$2; shift 2
  local out
  out=$(timeout --foreground -k 2 120 "$@" 2>"$TMP/err" | grep '^RESULT' | tail -1)
  if [ -z "$out" ]; then
    [ -e "$TMP/failed.$bench.$impl" ] ||
      note "$impl failed on $bench: $(head -1 "$TMP/err" 2>/dev/null)"
    touch "$TMP/failed.$bench.$impl"
    return
  fi
  echo "$out" | awk '$3 > 0 { printf "%.6g\n", $4 / $3 }' >> "$TMP/$bench.$impl"
}

# ---- 1-4: tasks, sleep(0), queues, timers ---------------------------------

for bench in gather gather_eager gather_warm sleep0 queue timers timers_warm timers1m; do
  want "$bench" || continue
  runs=$RUNS
  [ $bench = timers1m ] && runs=$TIMERS1M_RUNS
  echo "running $bench ($runs runs)..." >&2
  for r in $(seq "$runs"); do
    [ $have_ml = 1 ] && run_rate $bench moonloop "$ML" "$HERE/ml_bench.lua" $bench
    # Python 3.11 has no eager tasks: the eager row's peers are the plain
    # gather's, measured above.
    [ $bench = gather_eager ] && continue
    [ $have_asyncio = 1 ] && run_rate $bench asyncio "$PY" "$HERE/peer.py" asyncio $bench
    [ $have_uvloop = 1 ] && run_rate $bench uvloop "$PY" "$HERE/peer.py" uvloop $bench
    [ $have_node = 1 ] && run_rate $bench node node "$HERE/peer.js" $bench
  done
done

# ---- 5-6: TCP echo ---------------------------------------------------------

# echo_run IMPL CMD...: starts the server (CMD gets the port appended),
# drives it with echoload over $CONNS connections (default ECHO_CONNS),
# records messages/second in echo$TAG.IMPL and the latency percentiles
# in lat$TAG.p50.IMPL, .p99., .p999.
echo_run() {
  local impl=$1; shift
  local conns=${CONNS:-$ECHO_CONNS} tag=${TAG:-}
  local port pid out
  port=$(free_port) || { note "no free port found"; return; }
  # timeout (not --foreground) leads a process group of its own, which
  # stop_server signals; it also ends a server this script failed to stop.
  timeout -k 2 $((ECHO_SECONDS + 60)) "${SERVER_PIN[@]}" "$@" "$port" \
    >/dev/null 2>"$TMP/err.$impl" &
  pid=$!
  SERVER_PID=$pid
  if ! wait_port "$pid" "$port"; then
    [ -e "$TMP/failed.echo.$impl" ] ||
      note "$impl echo server did not start: $(head -1 "$TMP/err.$impl")"
    touch "$TMP/failed.echo.$impl"
  else
    out=$(timeout --foreground -k 2 $((ECHO_SECONDS + 30)) "${CLIENT_PIN[@]}" "$OUT/echoload" \
            127.0.0.1 "$port" "$conns" $ECHO_SIZE "$ECHO_SECONDS" 2>>"$TMP/err.$impl" |
          grep -E '^(RESULT|LATENCY)')
    if [ -n "$out" ]; then
      echo "$out" | awk '$1 == "RESULT" { printf "%.6g\n", $4 / $3 }' >> "$TMP/echo$tag.$impl"
      echo "$out" | awk '$1 == "LATENCY" { print $2 }' >> "$TMP/lat$tag.p50.$impl"
      echo "$out" | awk '$1 == "LATENCY" { print $3 }' >> "$TMP/lat$tag.p99.$impl"
      echo "$out" | awk '$1 == "LATENCY" { print $4 }' >> "$TMP/lat$tag.p999.$impl"
    else
      note "$impl: echo run failed: $(tail -1 "$TMP/err.$impl")"
    fi
  fi
  stop_server
}

if want echo && [ $have_c = 1 ]; then
  echo "running echo ($ECHO_RUNS runs of ${ECHO_SECONDS}s per server)..." >&2
  for r in $(seq "$ECHO_RUNS"); do
    if [ $have_ml = 1 ]; then
      echo_run ml_streams "$ML" "$HERE/echo_streams.lua"
      echo_run ml_protocols "$ML" "$HERE/echo_protocol.lua"
      echo_run ml_buffered "$ML" "$HERE/echo_buffered.lua"
    fi
    echo_run epoll "$OUT/echo_epoll"
    [ $have_uvloop = 1 ] && echo_run uvloop_protocols "$PY" "$HERE/echo_server.py" uvloop protocols
    [ $have_asyncio = 1 ] && echo_run asyncio_streams "$PY" "$HERE/echo_server.py" asyncio streams
    [ $have_node = 1 ] && echo_run node node "$HERE/echo_server.js"
  done
fi

# The 1-connection echo (ping-pong): one message in flight, so its rate is
# the round-trip latency of each server.
if want echo1 && [ $have_c = 1 ]; then
  echo "running echo1 ($ECHO_RUNS runs of ${ECHO_SECONDS}s per server, 1 connection)..." >&2
  for r in $(seq "$ECHO_RUNS"); do
    [ $have_ml = 1 ] && CONNS=1 TAG=1 echo_run ml_streams "$ML" "$HERE/echo_streams.lua"
    CONNS=1 TAG=1 echo_run epoll "$OUT/echo_epoll"
    [ $have_uvloop = 1 ] && CONNS=1 TAG=1 echo_run uvloop_protocols "$PY" "$HERE/echo_server.py" uvloop protocols
    [ $have_node = 1 ] && CONNS=1 TAG=1 echo_run node node "$HERE/echo_server.js"
  done
fi

# ---- idle connections -------------------------------------------------------

# idle_run IMPL CMD...: starts the server (CMD gets the port and
# IDLE_CONNS appended), opens IDLE_CONNS idle connections with idleload;
# the server prints the RSS bytes per connection and exits.
idle_run() {
  local impl=$1; shift
  local port pid out
  port=$(free_port) || { note "no free port found"; return; }
  timeout -k 2 90 "$@" "$port" "$IDLE_CONNS" >"$TMP/out.idle.$impl" 2>"$TMP/err.idle.$impl" &
  pid=$!
  SERVER_PID=$pid
  if ! wait_port "$pid" "$port"; then
    note "$impl idle server did not start: $(head -1 "$TMP/err.idle.$impl")"
  elif ! timeout --foreground -k 2 80 "$OUT/idleload" 127.0.0.1 "$port" "$IDLE_CONNS" 60 \
         2>>"$TMP/err.idle.$impl"; then
    note "$impl: idle run failed: $(tail -1 "$TMP/err.idle.$impl")"
  fi
  wait "$pid" 2>/dev/null
  SERVER_PID=""
  out=$(grep '^RESULT' "$TMP/out.idle.$impl" | tail -1)
  [ -n "$out" ] && echo "$out" | awk '{ print $3 }' >> "$TMP/idle.$impl"
}

if want idle && [ $have_c = 1 ]; then
  echo "running idle ($MEM_RUNS runs of $IDLE_CONNS connections)..." >&2
  # Server and client each hold IDLE_CONNS descriptors.
  if ulimit -n $((IDLE_CONNS + 1000)) 2>/dev/null; then
    for r in $(seq "$MEM_RUNS"); do
      [ $have_ml = 1 ] && idle_run ml "$ML" "$HERE/idle_streams.lua"
      [ $have_uvloop = 1 ] && idle_run uvloop "$PY" "$HERE/idle_server.py" uvloop
      [ $have_asyncio = 1 ] && idle_run asyncio "$PY" "$HERE/idle_server.py" asyncio
      [ $have_node = 1 ] && idle_run node node --expose-gc "$HERE/idle_server.js"
    done
  else
    note "ulimit -n $((IDLE_CONNS + 1000)) refused (hard limit $(ulimit -Hn)): idle skipped"
  fi
fi

# ---- 7: memory per parked task ---------------------------------------------

# run_mem IMPL CMD...: records heap and RSS bytes per item.
run_mem() {
  local impl=$1; shift
  local out
  out=$(timeout --foreground -k 2 120 "$@" 2>"$TMP/err" | grep '^RESULT' | tail -1)
  if [ -z "$out" ]; then
    note "$impl failed on memory: $(head -1 "$TMP/err")"
    return
  fi
  echo "$out" | awk '{ print $3 }' >> "$TMP/mem_heap.$impl"
  echo "$out" | awk '{ sub("rss=", "", $5); print $5 }' >> "$TMP/mem_rss.$impl"
}

if want memory; then
  echo "running memory ($MEM_RUNS runs)..." >&2
  # The baseline runs on moonloop's own VM and allocator when it can.
  coro_runner=""
  if [ $have_ml = 1 ]; then coro_runner=$ML
  elif command -v lua5.4 >/dev/null; then
    coro_runner=lua5.4
    note "parked coroutines measured with lua5.4 (system allocator)"
  fi
  for r in $(seq "$MEM_RUNS"); do
    [ $have_ml = 1 ] && run_mem tasks "$ML" "$HERE/parked.lua" 100000
    [ -n "$coro_runner" ] && run_mem coroutine "$coro_runner" "$HERE/parked_coro.lua" 100000
  done
fi

# ---- 9-11: processes and threads -------------------------------------------

for bench in spawn tothread pipe64; do
  want "$bench" || continue
  echo "running $bench ($RUNS runs)..." >&2
  for r in $(seq "$RUNS"); do
    [ $have_ml = 1 ] && run_rate $bench moonloop "$ML" "$HERE/ml_proc.lua" $bench
    [ $have_asyncio = 1 ] && run_rate $bench asyncio "$PY" "$HERE/peer_proc.py" asyncio $bench
    [ $have_uvloop = 1 ] && run_rate $bench uvloop "$PY" "$HERE/peer_proc.py" uvloop $bench
    [ $have_node = 1 ] && [ $bench != tothread ] && run_rate $bench node node "$HERE/peer_proc.js" $bench
    [ $have_c = 1 ] && [ $bench != tothread ] && run_rate $bench floor "$OUT/proc_floor" $bench
  done
done

# ---- HTTP client: GETs against a local nginx ---------------------------------

# nginx (one worker, no master, its files in $TMP/nginx) answers a 13-byte
# body on a kept-alive connection; each client makes HTTP_N GETs, HTTP_CONC
# at once, through one pooled session.  The client runs on core 0 and
# nginx on core 1, as the echo rows do.
if want httpclient; then
  if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    note "nginx not found (apt-get install nginx-light): the HTTP client row is skipped"
  else
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    nd=$TMP/nginx
    mkdir -p "$nd"
    port=$(free_port)
    cat > "$nd/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1;
pid $nd/nginx.pid; error_log $nd/error.log warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $nd/body; proxy_temp_path $nd/proxy; fastcgi_temp_path $nd/fastcgi;
  uwsgi_temp_path $nd/uwsgi; scgi_temp_path $nd/scgi;
  server { listen 127.0.0.1:$port; location / { return 200 "hello, world\n"; } }
}
EOF
    timeout -k 2 600 "${SERVER_PIN[@]}" "$NGINX" -p "$nd" -c "$nd/nginx.conf" 2>"$TMP/nginx.err" &
    SERVER_PID=$!
    if wait_port "$SERVER_PID" "$port"; then
      url=http://127.0.0.1:$port/
      echo "running httpclient ($RUNS runs, $HTTP_N GETs at $HTTP_CONC)..." >&2
      for r in $(seq "$RUNS"); do
        [ $have_ml = 1 ] && run_rate httpclient moonloop "${CLIENT_PIN[@]}" "$ML" "$HERE/http_client.lua" "$url" "$HTTP_N" "$HTTP_CONC"
        if [ $have_asyncio = 1 ] && "$PY" -c 'import aiohttp' 2>/dev/null; then
          run_rate httpclient aiohttp "${CLIENT_PIN[@]}" "$PY" "$HERE/http_client.py" "$url" "$HTTP_N" "$HTTP_CONC"
        elif [ "$r" = 1 ]; then note "aiohttp not importable by $PY (apt-get install python3-aiohttp): skipped"; fi
        [ $have_node = 1 ] && run_rate httpclient node "${CLIENT_PIN[@]}" node "$HERE/http_client.js" "$url" "$HTTP_N" "$HTTP_CONC"
      done
    else
      note "nginx did not start: $(head -1 "$TMP/nginx.err")"
    fi
    stop_server
  fi
fi

# ---- HTTP server: wrk against each server ------------------------------------

# wrk -t1 -c50 for HTTPD_SECONDS on / (13 bytes of text) and /json (a small
# JSON object) of each server: moonloop's http.serve, nginx + lua-nginx-module
# (content_by_lua, cjson; one worker, no master, its files in $TMP/nginx_lua),
# uvloop + httptools on a Protocol, Node's http, aiohttp's web server.  The
# server runs on core 1 and wrk on core 0; each server gets one short warm-up
# run first (LuaJIT, V8 and the Python caches warm, connections made).

# cpu_ticks PID: user + system clock ticks of process PID so far (empty if gone).
cpu_ticks() { [ -n "$1" ] && awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null; }

# httpd_once IMPL: starts IMPL's server, runs wrk on both routes, stops it;
# 1 if the server did not start.
httpd_once() {
  local impl=$1 port pid spid t0 t1 route out cmd=() nd=$TMP/nginx_lua
  port=$(free_port) || { note "no free port found"; return 0; }
  case $impl in
    moonloop) cmd=("$ML" "$HERE/http_server.lua" "$port") ;;
    uvloop|aiohttp) cmd=("$PY" "$HERE/http_server.py" "$impl" "$port") ;;
    node) cmd=(node "$HERE/http_server.js" "$port") ;;
    nginx_lua)
      mkdir -p "$nd"
      cat > "$nd/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off; master_process off; worker_processes 1;
pid $nd/nginx.pid; error_log $nd/error.log warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $nd/body; proxy_temp_path $nd/proxy; fastcgi_temp_path $nd/fastcgi;
  uwsgi_temp_path $nd/uwsgi; scgi_temp_path $nd/scgi;
  init_by_lua_block { cjson = require "cjson" }
  server {
    listen 127.0.0.1:$port;
    location = /json {
      default_type application/json;
      content_by_lua_block { ngx.print(cjson.encode({ message = "hello, world", id = 1, ok = true })) }
    }
    location / {
      default_type text/plain;
      content_by_lua_block { ngx.print("hello, world\n") }
    }
  }
}
EOF
      cmd=("$NGINX" -p "$nd" -c "$nd/nginx.conf") ;;
  esac
  timeout -k 2 $((HTTPD_SECONDS * 4 + 60)) "${SERVER_PIN[@]}" "${cmd[@]}" >/dev/null 2>"$TMP/err.httpd.$impl" &
  pid=$!
  SERVER_PID=$pid
  if ! wait_port "$pid" "$port"; then
    stop_server
    return 1
  fi
  for route in hello json; do
    local path=/; [ $route = json ] && path=/json
    [ $route = hello ] && timeout -k 2 10 "${CLIENT_PIN[@]}" wrk -t1 -c50 -d1s "http://127.0.0.1:$port$path" >/dev/null 2>&1
    # The CPU each side used over the measured run, in clock ticks: the
    # server's from its /proc stat, wrk's from the cumulative child time of
    # the shell that waited for it (printed after wrk's as "CPU <ticks>").
    spid=$(pgrep -P "$pid" | head -1)
    t0=$(cpu_ticks "$spid")
    out=$(timeout -k 2 $((HTTPD_SECONDS + 30)) "${CLIENT_PIN[@]}" bash -c \
            'wrk "$@"; awk "{ print \"CPU\", \$16 + \$17 }" /proc/$$/stat' _ -t1 -c50 \
            -d"${HTTPD_SECONDS}s" "http://127.0.0.1:$port$path" 2>>"$TMP/err.httpd.$impl")
    t1=$(cpu_ticks "$spid")
    # wrk counts non-2xx answers and socket errors apart: a run with either is no figure
    if echo "$out" | grep -q -e 'Non-2xx' -e 'Socket errors'; then
      note "$impl: HTTP server /$route run had errors: $(echo "$out" | grep -e 'Non-2xx' -e 'Socket errors' | head -1)"
    elif echo "$out" | grep -q '^Requests/sec:'; then
      echo "$out" | awk '/^Requests\/sec:/ { print $2 }' >> "$TMP/httpd_$route.$impl"
      # µs of server CPU a request, and wrk's share of its core (%)
      echo "$out" | awk -v t0="$t0" -v t1="$t1" -v s="$HTTPD_SECONDS" -v hz="$(getconf CLK_TCK)" \
        -v f="$TMP/httpd_cpu_$route.$impl" -v g="$TMP/httpd_wrk_$route.$impl" '
        /^Requests\/sec:/ { rate = $2 } /^CPU / { w = $2 }
        END { if (rate > 0 && t0 != "" && t1 > t0) printf "%.6g\n", (t1 - t0) / hz * 1e6 / (rate * s) >> f
              if (w != "") printf "%.6g\n", 100 * w / hz / s >> g }'
    else
      note "$impl: HTTP server /$route run failed: $(tail -1 "$TMP/err.httpd.$impl")"
    fi
  done
  stop_server
  return 0
}

# httpd_run IMPL: httpd_once, up to three times: a port free_port found can
# be taken before the server binds it (an ephemeral port of a client).
httpd_run() {
  local attempt
  for attempt in 1 2 3; do
    httpd_once "$1" && return
  done
  note "$1 HTTP server did not start: $(head -1 "$TMP/err.httpd.$1")"
}

if want httpserver; then
  if ! command -v wrk >/dev/null; then
    note "wrk not found (apt-get install wrk): the HTTP server rows are skipped"
  else
    impls=()
    [ $have_ml = 1 ] && impls+=(moonloop)
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
    if [ -x "$NGINX" ] && [ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ]; then impls+=(nginx_lua)
    else note "nginx or its Lua module not found (apt-get install nginx-light libnginx-mod-http-lua): skipped"; fi
    if [ $have_uvloop = 1 ] && "$PY" -c 'import httptools' 2>/dev/null; then impls+=(uvloop)
    else note "uvloop or httptools not importable by $PY (apt-get install python3-httptools): skipped"; fi
    [ $have_node = 1 ] && impls+=(node)
    if [ $have_asyncio = 1 ] && "$PY" -c 'import aiohttp' 2>/dev/null; then impls+=(aiohttp)
    else note "aiohttp not importable by $PY (apt-get install python3-aiohttp): skipped"; fi
    echo "running httpserver ($RUNS runs of 2 x ${HTTPD_SECONDS}s per server)..." >&2
    for r in $(seq "$RUNS"); do
      for impl in "${impls[@]}"; do httpd_run "$impl"; done
    done
  fi
fi

# ---- HTTP hello on 1 and 2 workers (issue #18) --------------------------------

# Each server answers "hello, world\n" on 127.0.0.1 with N worker processes:
# moonloop --workers N (http.serve, one inherited listening socket), nginx
# (worker_processes N, a master) and Node (node:cluster, N workers).  The
# load is wrk -t1 -c50 over kept-alive connections, pinned to core 0.  With
# 1 worker the server is pinned to core 1: a core each.  With 2 workers the
# server may run on both cores, so one of its workers shares core 0 with
# wrk: on a 2-core machine the 2-worker figure is what the load generator
# leaves, not a clean 2x (docs/performance.md, "Workers").  The per-server
# scaling (2 workers / 1) is printed after the table.

# Waits until file $2 has $3 lines matching $4 while job $1 runs (10 s at most).
wait_lines() {
  local pid=$1 file=$2 n=$3 pat=$4 i
  for i in $(seq 100); do
    running "$pid" || return 1
    [ "$(grep -c -- "$pat" "$file" 2>/dev/null)" -ge "$n" ] && return 0
    sleep 0.1
  done
  return 1
}

# hello_run IMPL N: starts IMPL's server with N workers, runs wrk on it,
# records requests/second in hello$N.IMPL.
hello_run() {
  local impl=$1 n=$2 port pid out ok=0 err=$TMP/err.hello.$1.$2 spin=()
  if [ $pin = 1 ]; then
    if [ "$n" = 1 ]; then spin=("${SERVER_PIN[@]}"); else spin=(taskset -c 0-1); fi
  fi
  port=$(free_port) || { note "no free port found"; return; }
  case $impl in
    moonloop)
      timeout -k 2 $((HELLO_SECONDS + 60)) "${spin[@]}" "$ML" --workers "$n" --listen "127.0.0.1:$port" \
        "$HERE/http_hello.lua" "$port" >/dev/null 2>"$err" &
      pid=$!; SERVER_PID=$pid
      wait_lines "$pid" "$err" "$n" ') ready' && ok=1 ;;
    nginx)
      local nd=$TMP/nginx.hello.$n
      mkdir -p "$nd"
      cat > "$nd/nginx.conf" <<EOF
daemon off; worker_processes $n;
pid $nd/nginx.pid; error_log $nd/error.log warn;
events { worker_connections 1024; }
http {
  access_log off; keepalive_requests 1000000;
  client_body_temp_path $nd/body; proxy_temp_path $nd/proxy; fastcgi_temp_path $nd/fastcgi;
  uwsgi_temp_path $nd/uwsgi; scgi_temp_path $nd/scgi;
  server { listen 127.0.0.1:$port; location / { return 200 "hello, world\n"; } }
}
EOF
      timeout -k 2 $((HELLO_SECONDS + 60)) "${spin[@]}" "$NGINX" -p "$nd" -c "$nd/nginx.conf" 2>"$err" &
      pid=$!; SERVER_PID=$pid
      wait_port "$pid" "$port" && ok=1 ;;
    node)
      timeout -k 2 $((HELLO_SECONDS + 60)) "${spin[@]}" node "$HERE/http_hello.js" "$port" "$n" \
        >/dev/null 2>"$err" &
      pid=$!; SERVER_PID=$pid
      wait_lines "$pid" "$err" 1 '^ready' && ok=1 ;;
  esac
  if [ $ok = 1 ]; then
    out=$(timeout --foreground -k 2 $((HELLO_SECONDS + 30)) "${CLIENT_PIN[@]}" wrk -t1 -c50 \
            -d"${HELLO_SECONDS}s" "http://127.0.0.1:$port/" 2>&1)
    if echo "$out" | grep -qE 'Socket errors|Non-2xx'; then
      note "$impl, $n workers: wrk saw errors, run dropped: $(echo "$out" | grep -E 'Socket errors|Non-2xx' | head -1)"
    else
      echo "$out" | awk '/^Requests\/sec:/ { print $2 }' >> "$TMP/hello$n.$impl"
    fi
  else
    [ -e "$TMP/failed.hello.$impl.$n" ] || note "$impl, $n workers: the server did not start: $(head -1 "$err")"
    touch "$TMP/failed.hello.$impl.$n"
  fi
  stop_server
}

if want workers; then
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  if ! command -v wrk >/dev/null; then
    note "wrk not found (apt-get install wrk): the workers rows are skipped"
  else
    echo "running workers ($HELLO_RUNS runs of ${HELLO_SECONDS}s per server and worker count)..." >&2
    for r in $(seq "$HELLO_RUNS"); do
      for n in 1 2; do
        [ $have_ml = 1 ] && hello_run moonloop $n
        [ -x "$NGINX" ] && hello_run nginx $n
        [ $have_node = 1 ] && hello_run node $n
      done
    done
    [ -x "$NGINX" ] || note "nginx not found (apt-get install nginx-light): the workers rows have no nginx"
  fi
fi

# ---- 12-15: TLS ---------------------------------------------------------------
# One load client (tlsload.c, OpenSSL, no session reuse) for every server;
# server on core 1, client on core 0, as for echo.  Certificates (RSA-2048,
# ECDSA P-256, self-signed) are made here.

# tls_run IMPL MODE KEY RESULTFILE CLIENTARGS...: starts IMPL's TLS server
# (MODE echo|bulk, KEY rsa|ec), runs tlsload CLIENTARGS against it.
tls_run() {
  local impl=$1 mode=$2 key=$3 file=$4; shift 4
  local port pid out cmd=()
  port=$(free_port) || { note "no free port found"; return; }
  case $impl in
    moonloop) cmd=("$ML" "$HERE/tls_server.lua" "$port" "$TMP/$key.crt" "$TMP/$key.key" "$mode") ;;
    uvloop) cmd=("$PY" "$HERE/tls_server.py" uvloop "$port" "$TMP/$key.crt" "$TMP/$key.key" "$mode") ;;
    node) cmd=(node "$HERE/tls_server.js" "$port" "$TMP/$key.crt" "$TMP/$key.key" "$mode") ;;
    openssl) cmd=(bash -c "head -c 67108864 /dev/zero | exec openssl s_server -quiet -naccept 1 \
                  -accept $port -cert $TMP/$key.crt -key $TMP/$key.key >/dev/null") ;;
  esac
  timeout -k 2 $((TLS_SECONDS + 60)) "${SERVER_PIN[@]}" "${cmd[@]}" >/dev/null 2>"$TMP/err.tls.$impl" &
  pid=$!
  SERVER_PID=$pid
  if [ "$impl" = openssl ]; then
    sleep 1  # s_server serves one connection: no probe
  elif ! wait_port "$pid" "$port"; then
    note "$impl TLS server did not start: $(head -1 "$TMP/err.tls.$impl")"
    stop_server
    return
  fi
  out=$(timeout --foreground -k 2 $((TLS_SECONDS + 30)) "${CLIENT_PIN[@]}" "$OUT/tlsload" \
          "$1" 127.0.0.1 "$port" "${@:2}" 2>>"$TMP/err.tls.$impl" | grep '^RESULT')
  if [ -n "$out" ]; then
    echo "$out" | awk '$3 > 0 { printf "%.6g\n", $4 / $3 }' >> "$TMP/$file.$impl"
  else
    note "$impl: TLS $file run failed: $(tail -1 "$TMP/err.tls.$impl")"
  fi
  stop_server
}

if want tls && [ $have_tls = 1 ]; then
  echo "running tls ($RUNS runs of ${TLS_SECONDS}s per server)..." >&2
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$TMP/rsa.key" -out "$TMP/rsa.crt" \
    -days 1 -subj /CN=localhost 2>/dev/null
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/ec.key" \
    -out "$TMP/ec.crt" -days 1 -subj /CN=localhost 2>/dev/null
  impls=()
  [ $have_ml = 1 ] && impls+=(moonloop)
  [ $have_uvloop = 1 ] && impls+=(uvloop)
  [ $have_node = 1 ] && impls+=(node)
  for r in $(seq "$RUNS"); do
    for impl in "${impls[@]}"; do
      tls_run "$impl" echo rsa tls_hs_rsa hs "$TLS_SECONDS" 4
      tls_run "$impl" echo ec tls_hs_ec hs "$TLS_SECONDS" 4
      tls_run "$impl" echo ec tls_echo echo $ECHO_CONNS $ECHO_SIZE "$TLS_SECONDS"
      tls_run "$impl" bulk ec tls_bulk bulk 67108864
    done
    tls_run openssl bulk ec tls_bulk bulk 67108864
  done
fi

# ---- 8: start-up -------------------------------------------------------------

# Records the median wall time of one run in milliseconds.
if want startup; then
  echo "running startup ($STARTUP_RUNS runs each)..." >&2
  names=() cmds=()
  [ $have_ml = 1 ] && names+=(moonloop) cmds+=("$ML $HERE/hello.lua")
  [ $have_asyncio = 1 ] && names+=(python) cmds+=("$PY -c 'import asyncio'")
  [ $have_node = 1 ] && names+=(node) cmds+=("node $HERE/hello.js")
  if [ ${#cmds[@]} -gt 0 ] && command -v hyperfine >/dev/null; then
    hyperfine -N --style none --warmup 20 --runs "$STARTUP_RUNS" \
      --export-csv "$TMP/startup.csv" "${cmds[@]}" >/dev/null 2>"$TMP/err" ||
      note "hyperfine failed: $(tail -1 "$TMP/err")"
    # CSV rows follow the order of the commands: command,mean,stddev,median,...
    i=0
    tail -n +2 "$TMP/startup.csv" 2>/dev/null | while IFS=, read -r _ _ _ med _; do
      awk -v m="$med" 'BEGIN { printf "%.6g\n", m * 1000 }' >> "$TMP/startup.${names[$i]}"
      i=$((i + 1))
    done
  elif [ ${#cmds[@]} -gt 0 ]; then
    note "hyperfine not found (apt-get install hyperfine): start-up is the mean of a" \
         "shell loop of $STARTUP_RUNS runs, fork and exec of the shell included"
    for i in "${!cmds[@]}"; do
      t0=$(date +%s%N)
      for _ in $(seq "$STARTUP_RUNS"); do eval "${cmds[$i]}" >/dev/null 2>&1; done
      t1=$(date +%s%N)
      awk -v a="$t0" -v b="$t1" -v n="$STARTUP_RUNS" \
        'BEGIN { printf "%.6g\n", (b - a) / n / 1e6 }' >> "$TMP/startup.${names[$i]}"
    done
  fi
fi

# ---- 14: the embedding API (embed_bench.c) ----------------------------------

# One run of the host BUILD/embed_bench, which takes its own medians
# (interleaved, 3 to 41 runs a figure) and prints "name value unit" lines;
# each figure goes to a file of its own for the rows.  Its peers are
# moonloop's own baselines: a plain state, no budget, Lua's own matcher,
# no sleeping task.
EB=$(dirname "$ML")/embed_bench
if want embed; then
  if [ ! -x "$EB" ]; then
    note "embed_bench not built ($EB; make build makes it): the embedding rows are skipped"
  else
    echo "running embed_bench..." >&2
    if QUICK=${QUICK:-0} timeout 600 "$EB" > "$TMP/embed.out" 2> "$TMP/err"; then
      while read -r name value _; do echo "$value" > "$TMP/embed.$name"; done < "$TMP/embed.out"
    else
      note "embed_bench failed: $(tail -1 "$TMP/err")"
    fi
  fi
fi

# ---- the table --------------------------------------------------------------

# row GROUP UNIT KIND MLFILE PEER PEERFILE THRESHOLD TARGET
#   KIND rate (higher is better; ratio = moonloop / peer), time (lower is
#   better, in ms with a 5 ms ceiling; ratio = peer / moonloop), less (lower
#   is better, any unit; ratio = peer / moonloop) or mem (ratio = moonloop /
#   peer, the target is a ceiling).  THRESHOLD: the ratio the target asks for, or -.
ROWS=$TMP/rows
row() {
  local ml peer
  ml=$(median "$TMP/$4")
  peer=$(median "$TMP/$6")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${ml:--}" "$5" \
    "${peer:--}" "$7" "$8" >> "$ROWS"
}

T_GATHER="≥ 15× asyncio, ≥ Node"
T_SLEEP="≥ 10× asyncio"
T_QUEUE="≥ 15× asyncio"
T_TIMERS="≥ 10× asyncio"
T_LAT="p99 within 1.2× raw C"
T_ECHO1="≥ 0.95× raw C"
T_IDLE="≤ uvloop"
T_STREAMS="≥ uvloop protocols; ≥ 0.85× raw C"
T_PROTO="≥ 0.9× raw C"
T_MEM="≤ 1.3× the raw coroutine"
T_START="≤ 5 ms; ≥ 25× faster than Python"

: > "$ROWS"
for b in gather:"create+gather 200k tasks":"$T_GATHER":15:1 \
         sleep0:"sleep(0) x 1M":"$T_SLEEP":10:- \
         queue:"Queue ping-pong 200k":"$T_QUEUE":15:- \
         gather_eager:"gather 200k, eager factory":"(peers run plain gather)":-:- \
         timers:"200k timers":"$T_TIMERS":10:- \
         gather_warm:"gather 200k, warm":"(measure)":-:- \
         timers_warm:"200k timers, warm":"(measure)":-:- \
         timers1m:"1M timers, cancel half":"(measure)":-:-; do
  IFS=: read -r bench label target tpy tnode <<<"$b"
  want "$bench" || continue
  peers=$bench
  [ $bench = gather_eager ] && peers=gather
  row "$label" "ops/s" rate "$bench.moonloop" asyncio "$peers.asyncio" "$tpy" "$target"
  row "$label" "ops/s" rate "$bench.moonloop" uvloop "$peers.uvloop" - "$target"
  row "$label" "ops/s" rate "$bench.moonloop" node "$peers.node" "$tnode" "$target"
done
if want echo; then
  for b in streams:"TCP echo, streams":"$T_STREAMS":0.85:1 \
           protocols:"TCP echo, protocols":"$T_PROTO":0.9:- \
           buffered:"TCP echo, BufferedProtocol":"$T_PROTO":0.9:-; do
    IFS=: read -r api label target tc tuv <<<"$b"
    row "$label" "msg/s" rate "echo.ml_$api" "raw C epoll" echo.epoll "$tc" "$target"
    row "$label" "msg/s" rate "echo.ml_$api" "uvloop protocols" echo.uvloop_protocols "$tuv" "$target"
    row "$label" "msg/s" rate "echo.ml_$api" "asyncio streams" echo.asyncio_streams - "$target"
    row "$label" "msg/s" rate "echo.ml_$api" node echo.node - "$target"
  done
fi
for tag in "" 1; do
  if [ -z "$tag" ]; then want echo || continue; what="echo 50c,"; else want echo1 || continue; what="echo 1c,"; fi
  for q in p50:p50 p99:p99 p999:p99.9; do
    IFS=: read -r qf ql <<<"$q"
    thr=-; [ $qf = p99 ] && thr=0.833
    row "$what $ql latency" "us" lat "lat$tag.$qf.ml_streams" "raw C epoll" "lat$tag.$qf.epoll" "$thr" "$T_LAT"
    row "$what $ql latency" "us" lat "lat$tag.$qf.ml_streams" "uvloop protocols" "lat$tag.$qf.uvloop_protocols" - "$T_LAT"
    row "$what $ql latency" "us" lat "lat$tag.$qf.ml_streams" node "lat$tag.$qf.node" - "$T_LAT"
  done
done
if want echo1; then
  row "TCP echo, 1 conn, streams" "msg/s" rate echo1.ml_streams "raw C epoll" echo1.epoll 0.95 "$T_ECHO1"
  row "TCP echo, 1 conn, streams" "msg/s" rate echo1.ml_streams "uvloop protocols" echo1.uvloop_protocols - "$T_ECHO1"
  row "TCP echo, 1 conn, streams" "msg/s" rate echo1.ml_streams node echo1.node - "$T_ECHO1"
fi
if want idle; then
  row "idle conn (readline), RSS" "B/conn" mem idle.ml "uvloop streams" idle.uvloop 1.0 "$T_IDLE"
  row "idle conn (readline), RSS" "B/conn" mem idle.ml "asyncio streams" idle.asyncio - "$T_IDLE"
  row "idle conn (readline), RSS" "B/conn" mem idle.ml "node readline" idle.node - "$T_IDLE"
fi
if want memory; then
  row "parked task, Lua heap" "B/task" mem mem_heap.tasks "Lua coroutine" mem_heap.coroutine 1.3 "$T_MEM"
  row "parked task, RSS" "B/task" mem mem_rss.tasks "Lua coroutine" mem_rss.coroutine - "$T_MEM"
fi
for b in spawn:"spawn+wait /bin/true":"≥ 3× asyncio, ≥ Node":3:1:"procs/s" \
         tothread:"to_thread round trip":"≥ 5× asyncio":5:-:"ops/s" \
         pipe64:"64 MiB pipe read":"≥ the others":1:1:"MiB/s"; do
  IFS=: read -r bench label target tpy tnode unit <<<"$b"
  want "$bench" || continue
  row "$label" "$unit" rate "$bench.moonloop" asyncio "$bench.asyncio" "$tpy" "$target"
  row "$label" "$unit" rate "$bench.moonloop" uvloop "$bench.uvloop" - "$target"
  [ "$bench" != tothread ] && row "$label" "$unit" rate "$bench.moonloop" node "$bench.node" "$tnode" "$target"
  [ "$bench" = spawn ] && row "$label" "$unit" rate "$bench.moonloop" "C posix_spawn (floor)" "$bench.floor" - "$target"
  [ "$bench" = pipe64 ] && row "$label" "$unit" rate "$bench.moonloop" "C read loop (floor)" "$bench.floor" - "$target"
done
if want httpclient; then
  row "HTTP client, $HTTP_N GETs at $HTTP_CONC" "req/s" rate httpclient.moonloop "aiohttp client" httpclient.aiohttp 2 "≥ 2× aiohttp, ≥ 1.5× Node"
  row "HTTP client, $HTTP_N GETs at $HTTP_CONC" "req/s" rate httpclient.moonloop "node fetch" httpclient.node 1.5 "≥ 2× aiohttp, ≥ 1.5× Node"
fi
if want workers; then
  T_HELLO="(measure: 2 workers vs 1; wrk needs a core)"
  row "HTTP hello, 1 worker" "req/s" rate hello1.moonloop "nginx, 1 worker" hello1.nginx - "$T_HELLO"
  row "HTTP hello, 1 worker" "req/s" rate hello1.moonloop "node cluster, 1" hello1.node - "$T_HELLO"
  row "HTTP hello, 2 workers" "req/s" rate hello2.moonloop "nginx, 2 workers" hello2.nginx - "$T_HELLO"
  row "HTTP hello, 2 workers" "req/s" rate hello2.moonloop "node cluster, 2" hello2.node - "$T_HELLO"
  row "HTTP hello, 2 workers" "req/s" rate hello2.moonloop "moonloop, 1 worker" hello1.moonloop - "$T_HELLO"
fi
if want httpserver; then
  T_HTTPD="≥ 1.0× nginx+lua, ≥ 1.3× uvloop+httptools, ≥ 2× Node, ≥ 4× aiohttp"
  for b in hello:"HTTP server, hello (wrk)" json:"HTTP server, JSON (wrk)"; do
    IFS=: read -r route label <<<"$b"
    row "$label" "req/s" rate "httpd_$route.moonloop" "nginx + lua" "httpd_$route.nginx_lua" 1 "$T_HTTPD"
    row "$label" "req/s" rate "httpd_$route.moonloop" "uvloop + httptools" "httpd_$route.uvloop" 1.3 "$T_HTTPD"
    row "$label" "req/s" rate "httpd_$route.moonloop" "node http" "httpd_$route.node" 2 "$T_HTTPD"
    row "$label" "req/s" rate "httpd_$route.moonloop" "aiohttp" "httpd_$route.aiohttp" 4 "$T_HTTPD"
  done
  # What the server itself spends a request: the req/s rows are a ratio of
  # servers only while wrk -t1 has CPU to spare on its core (the note below).
  for b in hello:"HTTP hello, server CPU" json:"HTTP JSON, server CPU"; do
    IFS=: read -r route label <<<"$b"
    for p in nginx_lua:"nginx + lua" uvloop:"uvloop + httptools" node:"node http" aiohttp:aiohttp; do
      row "$label" "us/req" less "httpd_cpu_$route.moonloop" "${p#*:}" "httpd_cpu_$route.${p%%:*}" - \
        "(measure: a server's CPU a request)"
    done
  done
fi
if want tls; then
  T_TLS="≥ 1.2× uvloop, ≥ Node"
  for b in tls_hs_rsa:"TLS handshakes, RSA-2048":"hs/s" \
           tls_hs_ec:"TLS handshakes, ECDSA P256":"hs/s" \
           tls_echo:"TLS echo 1 KiB x 50 conns":"msg/s" \
           tls_bulk:"TLS bulk 64 MiB":"MiB/s"; do
    IFS=: read -r file label unit <<<"$b"
    target=$T_TLS
    [ "$file" = tls_bulk ] && target="$T_TLS; ≥ 0.8× openssl s_server"
    row "$label" "$unit" rate "$file.moonloop" uvloop "$file.uvloop" 1.2 "$target"
    row "$label" "$unit" rate "$file.moonloop" node "$file.node" 1 "$target"
    [ "$file" = tls_bulk ] && row "$label" "$unit" rate "$file.moonloop" "openssl s_server" "$file.openssl" 0.8 "$target"
  done
fi
if want embed; then
  T_SANDBOX="sandboxed within 2x plain"
  row "state creation" "us" less embed.create_sandboxed "plain state" embed.create_plain 0.5 "$T_SANDBOX"
  row "state Lua heap" "KB" mem embed.heap_sandboxed "plain state" embed.heap_plain 2 "$T_SANDBOX"
  for v in forloop mixed while; do
    row "Lua VM ($v, one long step), instruction budget" "s" less "embed.vm_${v}_budget" "no budget" \
      "embed.vm_${v}_plain" - "(measure: hooked after the first 1 ms)"
    row "Lua VM ($v, one long step), time budget" "s" less "embed.vm_${v}_time_budget" "no budget" \
      "embed.vm_${v}_plain" 0.9 "budget far under 2x slower"
  done
  row "Lua VM (steps < 1 ms), instruction budget" "s" less embed.vm_steps_budget "no budget" \
    embed.vm_steps_plain 0.9 "budget far under 2x slower"
  row "Lua VM (steps < 1 ms), time budget" "s" less embed.vm_steps_time_budget "no budget" \
    embed.vm_steps_plain 0.9 "budget far under 2x slower"
  row "patterns, counted matcher" "s" less embed.match_counted "Lua's matcher" embed.match_plain - "(measure)"
  row "patterns, budget" "s" less embed.match_budget "Lua's matcher" embed.match_plain - "(measure)"
  row "ml_state_step, 1k sleepers" "us" less embed.step_1000_sleepers "0 sleepers" embed.step_0_sleepers - \
    "O(log n) in sleepers"
  row "ml_state_step, 10k sleepers" "us" less embed.step_10000_sleepers "0 sleepers" embed.step_0_sleepers \
    0.5 "O(log n) in sleepers"
  row "cross-thread completions" "ops/s" rate embed.xthread_completions "(4 threads)" embed.none - "(measure)"
fi
if want startup; then
  row "start-up, hello world" "ms" time startup.moonloop "python -c 'import asyncio'" startup.python 25 "$T_START"
  row "start-up, hello world" "ms" time startup.moonloop "node" startup.node - "$T_START"
fi

{
  echo
  echo "moonloop benchmarks: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores," \
       "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//')"
  echo "  moonloop: $ML"
  [ $have_asyncio = 1 ] && echo "  python: $("$PY" --version 2>&1)$([ $have_uvloop = 1 ] &&
    echo ", uvloop $("$PY" -c 'import uvloop; print(uvloop.__version__)')")"
  [ $have_node = 1 ] && echo "  node: $(node --version)"
  echo "  medians of $RUNS runs (echo: $ECHO_RUNS x ${ECHO_SECONDS}s, $ECHO_CONNS conns," \
       "$ECHO_SIZE B; memory: $MEM_RUNS; start-up: $STARTUP_RUNS)"
  if [ $pin = 1 ]; then echo "  echo: server pinned to core 1, load client to core 0 (taskset)"; fi
  echo "  ratio: rates moonloop/peer, times peer/moonloop (both: >1 = moonloop better);"
  echo "         memory moonloop/peer (<1.3 wanted); latencies (us) peer/moonloop (>1 = moonloop faster)"
  echo "         embedding rows: the peer is moonloop's own baseline (plain state, no budget, Lua's"
  echo "         matcher, no sleeper); ratio baseline/configured, so 0.5x = twice the baseline's cost"
  echo
  awk -F'\t' '
    function human(v, kind) {
      if (v == "-") return "-"
      if (kind == "rate") {
        if (v >= 1e6) return sprintf("%.2fM", v / 1e6)
        if (v >= 1e3) return sprintf("%.1fk", v / 1e3)
        return sprintf("%.0f", v)
      }
      if (kind == "time") return sprintf("%.2f", v)
      if (kind == "less") return sprintf("%.3g", v)
      if (kind == "lat") return sprintf("%.0f", v)
      return sprintf("%.0f", v)
    }
    BEGIN {
      fmt = "%-26s %-7s %10s  %-27s %10s %8s  %-5s %s\n"
      printf fmt, "benchmark", "unit", "moonloop", "peer", "peer", "ratio", "met", "target (DESIGN.md)"
      printf fmt, "---------", "----", "--------", "----", "----", "-----", "---", "------------------"
    }
    {
      group = $1; unit = $2; kind = $3; ml = $4; peer = $5; pv = $6; thr = $7; target = $8
      ratio = "-"; met = ""
      if (ml != "-" && pv != "-" && ml > 0 && pv > 0) {
        r = (kind == "time" || kind == "lat" || kind == "less") ? pv / ml : ml / pv
        ratio = sprintf("%.2fx", r)
        if (thr != "-") met = (kind == "mem") ? (r <= thr ? "yes" : "NO") : (r >= thr ? "yes" : "NO")
        if (kind == "time" && thr != "-" && ml > 5) met = "NO"  # the 5 ms ceiling
      }
      first = (group != last)
      printf fmt, first ? group : "", first ? unit : "", first ? human(ml, kind) : "",
        peer, human(pv, kind), ratio, met, first ? target : ""
      last = group
    }' "$ROWS"
  if want workers; then
    echo
    echo "  workers: HTTP hello req/s, 1 worker -> 2 workers (wrk -t1 -c50 on core 0; 1 worker on core 1, 2 on both)"
    for impl in moonloop nginx node; do
      a=$(median "$TMP/hello1.$impl") b=$(median "$TMP/hello2.$impl")
      [ -n "$a" ] && [ -n "$b" ] &&
        awk -v i="$impl" -v a="$a" -v b="$b" 'BEGIN { printf "    %-9s %8.0f -> %8.0f   %.2fx\n", i, a, b, b / a }'
    done
  fi
  if want httpserver && [ -s "$TMP/httpd_wrk_hello.moonloop" ]; then
    echo
    echo "  HTTP server rows: wrk -t1's share of its core while it loaded each server (hello, JSON);"
    echo "  near 100% the req/s row measures wrk, and the server CPU rows say what the server costs"
    for impl in moonloop nginx_lua uvloop node aiohttp; do
      a=$(median "$TMP/httpd_wrk_hello.$impl") b=$(median "$TMP/httpd_wrk_json.$impl")
      [ -n "$a" ] && awk -v i="$impl" -v a="$a" -v b="${b:-0}" 'BEGIN { printf "    %-9s %5.1f%%  %5.1f%%\n", i, a, b }'
    done
  fi
  if [ -s "$TMP/notes" ]; then echo; sed 's/^/  /' "$TMP/notes"; fi
} | tee "$OUT/results.txt"
