#!/bin/sh
# callgrind.sh: instructions per operation of the core benchmarks
# (ml_bench.lua gather, sleep0, queue, timers) under valgrind's callgrind,
# for one or more moonloop binaries, side by side: the way the
# "instructions a task" figures of docs/performance.md are measured.
#
# usage: scripts/bench/callgrind.sh BINARY [BINARY...]
#   e.g. scripts/bench/callgrind.sh /work/wt/prehouse-t/build/moonloop build/moonloop
#
# Each figure is (Ir of `BINARY ml_bench.lua NAME N` - Ir of a start-up-only
# run, `BINARY hello.lua`) / N: what one operation costs, start-up and
# close excluded.  Instruction counts repeat on a loaded machine (unlike
# wall time), so this is the way to compare two trees on a shared VM.
# ROWS (default "gather:20000 sleep0:100000 queue:50000 timers:20000")
# picks the benchmarks and their N; KEEP=dir keeps the callgrind.out files
# there (for callgrind_annotate).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
ROWS=${ROWS:-"gather:20000 sleep0:100000 queue:50000 timers:20000"}
[ $# -ge 1 ] || {
  echo "usage: $0 BINARY [BINARY...]" >&2
  exit 2
}
command -v valgrind >/dev/null || {
  echo "callgrind.sh: valgrind is not installed" >&2
  exit 2
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# ir OUTFILE BINARY ARGS...: runs under callgrind, prints the total Ir.
ir() {
  out=$1
  shift
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>"$out.log" || {
    echo "callgrind.sh: '$*' failed:" >&2
    cat "$out.log" >&2
    exit 1
  }
  sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$out"
}

printf '%-8s %8s' benchmark N
for b in "$@"; do printf ' %14s' "$(basename "$(cd "$(dirname "$b")/.." && pwd)")"; done
[ $# -eq 2 ] && printf ' %8s' change
printf '\n'
i=0
for b in "$@"; do
  i=$((i + 1))
  eval "base_$i=\$(ir \"\$tmp/hello.$i\" \"\$b\" \"\$here/hello.lua\")"
done
for row in $ROWS; do
  name=${row%%:*}
  n=${row#*:}
  printf '%-8s %8s' "$name" "$n"
  i=0
  first=
  for b in "$@"; do
    i=$((i + 1))
    eval "base=\$base_$i"
    total=$(ir "$tmp/$name.$i" "$b" "$here/ml_bench.lua" "$name" "$n")
    per=$(awk -v t="$total" -v s="$base" -v n="$n" 'BEGIN { printf "%.0f", (t - s) / n }')
    printf ' %14s' "$per"
    if [ -n "${KEEP:-}" ]; then
      mkdir -p "$KEEP"
      cp "$tmp/$name.$i" "$KEEP/callgrind.$name.$i"
    fi
    [ -z "$first" ] && first=$per
    last=$per
  done
  [ $# -eq 2 ] && awk -v a="$first" -v b="$last" 'BEGIN { printf " %+7.1f%%", (b - a) * 100 / a }'
  printf '\n'
done
