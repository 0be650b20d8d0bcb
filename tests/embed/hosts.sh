#!/bin/bash
# hosts.sh: builds every host program tests/embed/*.c (with cc) and *.cc
# (C++ hosts, with g++) the way a user would (against libmoonloop.a and
# moonloop.h / moonloop.hpp only) and runs it; each prints
# "N passed, N failed".  Prints the sum; exits 1 if any failed.
# usage: tests/embed/hosts.sh [BUILD_DIR] [EXTRA_CFLAGS]   (from the repo root)
build=${1:-build}
extra=${2:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0
for src in tests/embed/*.c tests/embed/*.cc; do
  [ -e "$src" ] || continue
  name=$(basename "${src%.*}")
  case "$src" in
    *.cc) compiler=${CXX:-g++} ;;
    *) compiler=${CC:-cc} ;;
  esac
  # shellcheck disable=SC2086
  if ! $compiler $extra -O1 -g -o "$tmp/$name" "$src" -Ivm "$build/libmoonloop.a" \
       $(pkg-config --cflags --libs lua5.4 openssl) -lwslay -lev -lm -ldl -lpthread 2> "$tmp/$name.err"; then
    echo "FAIL $src does not build"; cat "$tmp/$name.err"
    failed=$((failed + 1)); continue
  fi
  out=$(timeout -k 5 300 "$tmp/$name" 2>&1); rc=$?
  summary=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  if [ -z "$summary" ]; then
    printf '%s\n' "$out" | tail -n 20
    echo "FAIL $src: no summary (exit status $rc)"
    failed=$((failed + 1)); continue
  fi
  p=${summary%% passed*}; f=${summary#*, }; f=${f%% failed}
  printf '%s\n' "$out" | grep -E '^FAIL' | head -n 20
  [ "$f" = 0 ] && [ $rc -ne 0 ] && { echo "FAIL $src: exit status $rc"; f=1; }
  echo "$src: $summary"
  passed=$((passed + p)); failed=$((failed + f))
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
