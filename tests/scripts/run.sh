#!/usr/bin/env bash
# Runs every tests/scripts/test_*.lua in its own moonloop process and sums
# their "N passed, N failed" lines.  A script that crashes, hangs (120 s)
# or prints no summary counts as one failure; so does one that reports a
# coroutine never awaited (a case whose body was made but never run, as
# pcall(fn) of an async fn does, passes without testing anything).
# usage: tests/scripts/run.sh path/to/moonloop [test files...]
set -u
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); shift
cd "$(dirname "$0")/../.."
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(tests/scripts/test_*.lua)
export MOONLOOP_BIN="$bin"
total_p=0; total_f=0
for f in "${files[@]}"; do
  out=$(timeout -k 5 120 "$bin" "$f" 2>&1); rc=$?
  summary=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  if [ -z "$summary" ]; then
    printf '%s\n' "$out" | tail -n 20
    echo "FAIL $f: no summary (exit status $rc)"
    total_f=$((total_f + 1)); continue
  fi
  p=${summary%% passed*}; fl=${summary#*, }; fl=${fl%% failed}
  if printf '%s\n' "$out" | grep -qE '^moonloop: RuntimeWarning: coroutine .* was never awaited'; then
    fl=$((fl + 1)); never="FAIL $f: a coroutine was never awaited (a body that never ran)"
  else never=""; fi
  if [ "$fl" != 0 ] || [ $rc -ne 0 ]; then
    printf '%s\n' "$out" | grep -E '^(FAIL|moonloop:)' | head -n 20
    [ "$fl" = 0 ] && fl=1 && echo "FAIL $f: exit status $rc"
    [ -n "$never" ] && echo "$never"
  fi
  echo "$f: $summary"
  total_p=$((total_p + p)); total_f=$((total_f + fl))
done
echo "scripts: $total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
