#!/usr/bin/env bash
# The stress modes of docs/reliability.md over the workloads in
# tests/stress/*.lua (each prints "<name> ok" when its own checks pass):
#   allocation failure: a first run counts the allocations (growths) the
#     workload makes (MOONLOOP_ALLOCFAIL=count); then it is run once for
#     every N along that count, at a stride that keeps the runs to
#     STRESS_RUNS (default 250) a workload, with MOONLOOP_ALLOCFAIL=N
#     (the Nth allocation and Lua's retry of it are refused).  Each run
#     must either pass, or fail with the failure named: "not enough
#     memory" / MemoryError / "out of memory" in its output.  Never a
#     signal, a sanitizer report, another error, or a hang (30 s).
#   GC stress: MOONLOOP_GCSTRESS=1 (a whole collection at every
#     allocation check); the workload must pass unchanged.
# usage: tests/stress/run.sh path/to/moonloop [workload.lua...]
set -u
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1"); shift
cd "$(dirname "$0")/../.."
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(tests/stress/*.lua)
runs=${STRESS_RUNS:-250}
passed=0; failed=0

bad() {  # what, N, output
  echo "FAIL $1"
  printf '%s\n' "$2" | tail -n 15 | sed 's/^/  | /'
  failed=$((failed + 1))
}

for f in "${files[@]}"; do
  name=$(basename "$f" .lua)
  out=$(MOONLOOP_ALLOCFAIL=count timeout -k 2 60 "$bin" "$f" 2>&1); rc=$?
  total=$(printf '%s\n' "$out" | sed -n 's/.*MOONLOOP_ALLOCFAIL=count: \([0-9]*\) allocations.*/\1/p' | head -n 1)
  if [ $rc -ne 0 ] || [ -z "$total" ] || ! printf '%s\n' "$out" | grep -q "^$name ok$"; then
    bad "$f: the counting run (exit status $rc)" "$out"; continue
  fi
  stride=$(( (total + runs - 1) / runs )); [ $stride -lt 1 ] && stride=1
  nok=0; nmem=0; nbad=0
  for ((n = 1; n <= total; n += stride)); do
    out=$(MOONLOOP_ALLOCFAIL=$n timeout -k 2 30 "$bin" "$f" 2>&1); rc=$?
    if printf '%s\n' "$out" | grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:'; then
      bad "$f: MOONLOOP_ALLOCFAIL=$n: a sanitizer report (exit status $rc)" "$out"; nbad=$((nbad + 1))
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      bad "$f: MOONLOOP_ALLOCFAIL=$n: hangs (killed after 30 s)" "$out"; nbad=$((nbad + 1))
    elif [ $rc -ge 128 ]; then
      bad "$f: MOONLOOP_ALLOCFAIL=$n: killed by signal $((rc - 128))" "$out"; nbad=$((nbad + 1))
    elif [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q "^$name ok$"; then
      nok=$((nok + 1))
    elif [ $rc -ne 0 ] && printf '%s\n' "$out" | grep -qiE 'not enough memory|MemoryError|out of memory'; then
      nmem=$((nmem + 1))
    else
      bad "$f: MOONLOOP_ALLOCFAIL=$n: neither a pass nor a memory error (exit status $rc)" "$out"
      nbad=$((nbad + 1))
    fi
  done
  echo "$f: allocation failure at N = 1..$total step $stride: $nok passed through, $nmem failed with a memory error, $nbad bad"
  [ $nbad -eq 0 ] && passed=$((passed + 1))
  out=$(MOONLOOP_GCSTRESS=1 timeout -k 2 120 "$bin" "$f" 2>&1); rc=$?
  if [ $rc -eq 0 ] && printf '%s\n' "$out" | grep -q "^$name ok$"; then
    echo "$f: GC stress: ok"; passed=$((passed + 1))
  else
    bad "$f: GC stress (exit status $rc)" "$out"
  fi
done
echo "stress: $passed passed, $failed failed"
[ $failed -eq 0 ]
