#!/bin/bash
# host.sh: builds scripts/embed/host.c the way a user would (against
# libmoonloop.a and moonloop.h only), runs it on its level script and on
# a few others, and checks what it prints.
# usage: tests/embed/host.sh [BUILD_DIR] [EXTRA_CFLAGS]   (from the repo root)
# Prints a final line "N passed, N failed"; exits 1 if any failed.
build=${1:-build}
extra=${2:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); }
ko() { failed=$((failed + 1)); echo "FAIL: $1"; }

# expect NAME OUTPUT_FILE PATTERN: the output has a line matching PATTERN.
expect() {
  if grep -qE -- "$3" "$2"; then ok; else ko "$1: no line matching /$3/"; sed 's/^/  | /' "$2"; fi
}

host=$tmp/host
# shellcheck disable=SC2086
if cc $extra -o "$host" scripts/embed/host.c -Ivm "$build/libmoonloop.a" \
     $(pkg-config --cflags --libs lua5.4 openssl) -lwslay -lev -lm -ldl -lpthread 2> "$tmp/cc.err"; then
  ok
else
  ko "host.c does not build"; cat "$tmp/cc.err"
  echo "$passed passed, $failed failed"
  exit 1
fi

# The level script: host functions, worker-thread completions, limits.
out=$tmp/level.out
if "$host" scripts/embed/script.lua > "$out" 2>&1; then ok; else ko "host exited with $? on script.lua"; cat "$out"; fi
expect "waves" "$out" '^wave 3: enemy #3$'
expect "worker completions" "$out" '^loaded hero\.png \([0-9]+ bytes\)$'
expect "worker completions" "$out" '^loaded map\.dat \([0-9]+ bytes\)$'
expect "worker rejection" "$out" '^missing asset: FileNotFoundError: no such asset$'
expect "CPU budget" "$out" '^\[host\] script error: .*RuntimeError: task ran past its CPU budget'
expect "memory cap" "$out" '^memory hog stopped: .*not enough memory'
expect "sandbox" "$out" '^sandbox: io=nil os\.execute=nil$'
expect "result" "$out" '^\[host\] level result: level done at frame N$'
expect "host functions" "$out" '^\[host\] enemies: slime\(10\) slime\(20\) slime\(30\)$'
expect "memory cap" "$out" '^\[host\] memory cap held: yes$'

# A script that reaches for what the sandbox removed.
cat > "$tmp/escape.lua" <<'LUA'
for _, m in ipairs { "io", "debug", "socket" } do
  print(m .. " " .. tostring((pcall(require, m))))
end
print("dofile " .. tostring(dofile) .. ", open_connection " .. tostring(asyncio.open_connection))
return "contained"
LUA
out=$tmp/escape.out
"$host" "$tmp/escape.lua" > "$out" 2>&1
expect "sandbox require" "$out" '^io false$'
expect "sandbox require" "$out" '^debug false$'
expect "sandbox require" "$out" '^socket false$'
expect "sandbox globals" "$out" '^dofile nil, open_connection nil$'
expect "sandbox result" "$out" '^\[host\] level result: contained$'

# A syntax error is reported by the host with the script's line.
printf 'local x = 1\nlocal = 2\n' > "$tmp/bad.lua"
out=$tmp/bad.out
if "$host" "$tmp/bad.lua" > "$out" 2>&1; then ko "host succeeded on a syntax error"; else ok; fi
expect "syntax error" "$out" "cannot start .*bad\.lua:2:"

# A script error fails the level, not the host.
printf 'await asyncio.sleep(0)\nerror("level broke")\n' > "$tmp/fail.lua"
out=$tmp/fail.out
if "$host" "$tmp/fail.lua" > "$out" 2>&1; then ok; else ko "host exited with $? on a failing script"; fi
expect "script error" "$out" '^\[host\] level failed: .*fail\.lua:2: level broke$'

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
