#!/bin/bash
# pkgconfig.sh: installs moonloop into a temporary prefix with `make install`
# and builds scripts/embed/host.c from that prefix the way a user would,
# with nothing but `pkg-config --cflags --libs moonloop`: against the shared
# library (found at run time through LD_LIBRARY_PATH), and with --static
# against the static one.  Checks what is installed (the soname and its
# links, only ml_ symbols exported, no REPL object in the static library,
# moonloop.pc, the man page), that neither `make` nor `make install` runs
# apt-get, that `make` on a machine without the packages names `make deps`,
# and that `make uninstall` removes everything.
# usage: tests/embed/pkgconfig.sh [BUILD_DIR] [EXTRA_CFLAGS] [SAN]   (from the repo root)
# Prints a final line "N passed, N failed"; exits 1 if any failed.
build=${1:-build}
extra=${2:-}
san=${3:-0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0
failed=0

ok() { passed=$((passed + 1)); }
ko() { failed=$((failed + 1)); echo "FAIL: $1"; }
# check NAME COMMAND...: the command succeeds.
check() { local n=$1; shift; if "$@"; then ok; else ko "$n"; fi; }
# expect NAME OUTPUT_FILE PATTERN: the output has a line matching PATTERN.
expect() {
  if grep -qE -- "$3" "$2"; then ok; else ko "$1: no line matching /$3/"; sed 's/^/  | /' "$2"; fi
}
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit; }

version=$(sed -n 's/^#define MOONLOOP_VERSION "\(.*\)"/\1/p' vm/moonloop.h)
major=${version%%.*}

# A fake apt-get and dpkg-query first on the PATH: `make install` must
# call neither.
mkdir -p "$tmp/bin"
for t in apt-get dpkg-query; do
  printf '#!/bin/sh\necho "%s $*" >> "%s/called"\nexit 1\n' "$t" "$tmp" > "$tmp/bin/$t"
  chmod +x "$tmp/bin/$t"
done

# make install into a prefix.  MAKEFLAGS from a parent make is dropped so
# that its goals and jobserver don't leak in; SAN and BUILD select the
# build that is already there, so nothing is rebuilt.
install_into() {
  env -u MAKEFLAGS -u MAKELEVEL PATH="$tmp/bin:$PATH" \
    make --no-print-directory -s install PREFIX="$1" BUILD="$build" SAN="$san" \
      ${CFLAGS:+CFLAGS="$CFLAGS"} > "$tmp/install.out" 2>&1
}
prefix=$tmp/prefix
if install_into "$prefix"; then ok; else ko "make install failed"; cat "$tmp/install.out"; finish; fi
if [ -e "$tmp/called" ]; then ko "make install ran: $(cat "$tmp/called")"; else ok; fi

for f in bin/moonloop include/moonloop.h include/moonloop.hpp lib/libmoonloop.a "lib/libmoonloop.so.$version" \
         lib/pkgconfig/moonloop.pc share/man/man1/moonloop.1; do
  check "installed $f" test -f "$prefix/$f"
done
check "lib/libmoonloop.so.$major -> libmoonloop.so.$version" \
  test "$(readlink "$prefix/lib/libmoonloop.so.$major")" = "libmoonloop.so.$version"
check "lib/libmoonloop.so -> libmoonloop.so.$major" \
  test "$(readlink "$prefix/lib/libmoonloop.so")" = "libmoonloop.so.$major"
out=$tmp/version.out
"$prefix/bin/moonloop" --version > "$out" 2>&1
expect "installed binary" "$out" "^moonloop $version "

# The shared library: its soname, and only the API's functions exported.
so=$prefix/lib/libmoonloop.so.$version
readelf -d "$so" > "$tmp/dynamic" 2>&1
expect "soname" "$tmp/dynamic" "SONAME.*\[libmoonloop\.so\.$major\]"
nm -D --defined-only "$so" | awk '{ print $NF }' | sort > "$tmp/exported"
grep -E '^[A-Za-z].*[ *]ml_[a-z][a-z0-9_]*\(' vm/moonloop.h |
  sed -E 's/.*[ *](ml_[a-z][a-z0-9_]*)\(.*/\1/' | sort -u > "$tmp/declared"
if grep -vE '^ml_[a-z]' "$tmp/exported" > "$tmp/stray"; then
  ko "libmoonloop.so exports symbols outside the API:"; head -n 20 "$tmp/stray"
else ok; fi
if cmp -s "$tmp/exported" "$tmp/declared"; then ok; else
  ko "exported symbols differ from moonloop.h's functions (< exported, > declared):"
  diff "$tmp/exported" "$tmp/declared" | grep '^[<>]'
fi
check "moonloop.h declares functions" test "$(wc -l < "$tmp/declared")" -gt 20

# The static library holds no REPL object: nothing in it needs libedit.
nm "$prefix/lib/libmoonloop.a" 2> /dev/null | grep -E ' U (readline|rl_|el_|history_|add_history|using_history)' \
  > "$tmp/edit" && { ko "libmoonloop.a needs libedit:"; sort -u "$tmp/edit" | head; } || ok
if ar t "$prefix/lib/libmoonloop.a" | grep -E '^(repl|complete|pretty|main)\.o$' > "$tmp/cli"; then
  ko "libmoonloop.a holds CLI objects: $(tr '\n' ' ' < "$tmp/cli")"
else ok; fi

# moonloop.pc.
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
check "pkg-config --validate moonloop" pkg-config --validate moonloop
check "pkg-config --modversion" test "$(pkg-config --modversion moonloop)" = "$version"
check "moonloop.pc requires lua5.4" test "$(pkg-config --print-requires moonloop)" = "lua5.4"
cflags=$(pkg-config --cflags moonloop)
libs=$(pkg-config --libs moonloop)
slibs=$(pkg-config --static --libs moonloop)
check "cflags name the prefix and Lua" grep -q -- "-I$prefix/include .*-I.*lua5.4" <<< "$cflags"
for l in -lmoonloop -llua5.4 -lwslay -lev -lpthread -lm -ldl; do
  check "--static --libs has $l" grep -qw -- "$l" <<< "$slibs"
done
check "libedit is the CLI's, not the library's" test -z "$(grep -o 'edit' <<< "$slibs")"

# man page renders without a warning.
if command -v groff > /dev/null; then
  groff -man -ww -z "$prefix/share/man/man1/moonloop.1" > "$tmp/man.err" 2>&1
  check "moonloop.1 renders cleanly" test ! -s "$tmp/man.err"
  [ -s "$tmp/man.err" ] && cat "$tmp/man.err"
else echo "(groff not installed: moonloop.1 not rendered)"; fi

# The man page is the command's: its version, every option of the usage
# text in vm/cli/main.c, the environment variable.
man=docs/moonloop.1
check "moonloop.1 is of version $version" grep -q "^\.TH MOONLOOP 1 .*\"moonloop $version\"" "$man"
for opt in $(sed -n '/static const char usage/,/;$/p' vm/cli/main.c | grep -oE '(^|[ ,])--?[a-z]([a-z-]*[a-z])?' |
             sed 's/^[ ,]*//' | sort -u); do
  # as a bold roff token of its own: `.B \-i`, `.BR \-v ", " \-\-version`
  re=$(printf '%s' "$opt" | sed 's/-/\\\\-/g')
  check "moonloop.1 documents $opt" grep -qE -- "^\.B[IR]? (.* )?$re( |\$)" "$man"
done
check "moonloop.1 documents MOONLOOP_DEBUG" grep -q MOONLOOP_DEBUG "$man"

# run_host NAME BINARY [ENV...]: runs the host on its level script and
# checks what it prints (the same lines as tests/embed/host.sh).
run_host() {
  local name=$1 host=$2 out=$tmp/$1.out
  shift 2
  if env "$@" "$host" scripts/embed/script.lua > "$out" 2>&1; then ok; else
    ko "$name host exited with $? on script.lua"; cat "$out"
  fi
  expect "$name: waves" "$out" '^wave 3: enemy #3$'
  expect "$name: worker completions" "$out" '^loaded hero\.png \([0-9]+ bytes\)$'
  expect "$name: worker rejection" "$out" '^missing asset: FileNotFoundError: no such asset$'
  expect "$name: CPU budget" "$out" '^\[host\] script error: .*RuntimeError: task ran past its CPU budget'
  expect "$name: memory cap" "$out" '^\[host\] memory cap held: yes$'
  expect "$name: sandbox" "$out" '^sandbox: io=nil os\.execute=nil$'
  expect "$name: result" "$out" '^\[host\] level result: level done at frame N$'
}

# Against the shared library.
# shellcheck disable=SC2086
if cc $extra -o "$tmp/host_so" scripts/embed/host.c $cflags $libs 2> "$tmp/cc.err"; then ok; else
  ko "host.c does not build with pkg-config --cflags --libs moonloop"; cat "$tmp/cc.err"; finish
fi
readelf -d "$tmp/host_so" > "$tmp/host_so.dyn" 2>&1
expect "host linked to the soname" "$tmp/host_so.dyn" "NEEDED.*\[libmoonloop\.so\.$major\]"
LD_LIBRARY_PATH=$prefix/lib ldd "$tmp/host_so" > "$tmp/ldd" 2>&1
expect "host loads the installed library" "$tmp/ldd" "libmoonloop\.so\.$major => $prefix/lib/"
run_host shared "$tmp/host_so" LD_LIBRARY_PATH="$prefix/lib"

# A C++ host, with g++ and the same flags: moonloop.h's declarations (and
# Lua's) are extern "C", and moonloop.hpp's guard turns exceptions into
# script errors (tests/embed/cpp_host.cc checks what it prints itself).
# shellcheck disable=SC2086
if ${CXX:-g++} $extra -o "$tmp/cpp_host" tests/embed/cpp_host.cc $cflags $libs 2> "$tmp/cxx.err"; then ok; else
  ko "cpp_host.cc does not build with g++ \$(pkg-config --cflags --libs moonloop)"; cat "$tmp/cxx.err"
fi
if [ -x "$tmp/cpp_host" ]; then
  LD_LIBRARY_PATH=$prefix/lib "$tmp/cpp_host" > "$tmp/cpp_host.out" 2>&1
  expect "C++ host against the shared library" "$tmp/cpp_host.out" '^[1-9][0-9]* passed, 0 failed$'
fi

# Against the static library, from a prefix that holds it alone (with the
# .so beside it the linker would take the .so: that is the rule of -l).
sprefix=$tmp/static
if install_into "$sprefix"; then ok; else ko "make install (static prefix) failed"; cat "$tmp/install.out"; fi
rm -f "$sprefix"/lib/libmoonloop.so*
# shellcheck disable=SC2086
if cc $extra -o "$tmp/host_a" scripts/embed/host.c \
     $(PKG_CONFIG_PATH=$sprefix/lib/pkgconfig pkg-config --static --cflags --libs moonloop) 2> "$tmp/cc.err"; then
  ok
else
  ko "host.c does not build with pkg-config --static --cflags --libs moonloop"; cat "$tmp/cc.err"; finish
fi
readelf -d "$tmp/host_a" > "$tmp/host_a.dyn" 2>&1
if grep -q 'libmoonloop' "$tmp/host_a.dyn"; then ko "the static host needs libmoonloop.so"; else ok; fi
run_host static "$tmp/host_a"

# A staged install (DESTDIR) puts the files under the stage and the final
# paths in moonloop.pc.
stage=$tmp/stage
if env -u MAKEFLAGS -u MAKELEVEL PATH="$tmp/bin:$PATH" make --no-print-directory -s install \
     DESTDIR="$stage" PREFIX=/opt/moonloop BUILD="$build" SAN="$san" ${CFLAGS:+CFLAGS="$CFLAGS"} \
     > "$tmp/stage.out" 2>&1; then ok; else ko "make install DESTDIR= failed"; cat "$tmp/stage.out"; fi
check "staged: files under DESTDIR" test -f "$stage/opt/moonloop/lib/pkgconfig/moonloop.pc" \
  -a -f "$stage/opt/moonloop/lib/libmoonloop.so.$version" -a -f "$stage/opt/moonloop/bin/moonloop"
check "staged: moonloop.pc names the final prefix" grep -qx 'prefix=/opt/moonloop' \
  "$stage/opt/moonloop/lib/pkgconfig/moonloop.pc"

# make uninstall leaves no file behind.
if env -u MAKEFLAGS -u MAKELEVEL PATH="$tmp/bin:$PATH" make --no-print-directory -s uninstall \
     PREFIX="$prefix" BUILD="$build" SAN="$san" > "$tmp/uninstall.out" 2>&1; then ok; else
  ko "make uninstall failed"; cat "$tmp/uninstall.out"
fi
left=$(find "$prefix" ! -type d)
check "make uninstall removed every file${left:+ (left: $left)}" test -z "$left"

# Without the packages, `make` stops before compiling and names `make deps`
# (a pkg-config that finds nothing stands for the missing packages).
printf '#!/bin/sh\nexit 1\n' > "$tmp/bin/pkg-config-none"
chmod +x "$tmp/bin/pkg-config-none"
if env -u MAKEFLAGS -u MAKELEVEL PATH="$tmp/bin:$PATH" make --no-print-directory all \
     BUILD="$tmp/nobuild" PKG_CONFIG="$tmp/bin/pkg-config-none" > "$tmp/nodeps.out" 2>&1; then
  ko "make succeeded without its packages"
else ok; fi
expect "make names make deps" "$tmp/nodeps.out" "run 'make deps'"
expect "make names the packages" "$tmp/nodeps.out" "missing: liblua5\.4-dev libedit-dev"
check "nothing compiled without the packages" test -z "$(find "$tmp/nobuild" -name '*.o' 2> /dev/null)"
if [ -e "$tmp/called" ]; then ko "make ran: $(cat "$tmp/called")"; else ok; fi

finish
