# moonloop: the Lua 5.4 VM with async/await on a libev loop.
#
#   make            build build/moonloop, build/libmoonloop.a and build/libmoonloop.so
#   make test       install missing packages, build, run every test suite
#   make test SAN=1 the same under AddressSanitizer + UBSan (in build-san/)
#   make run        install missing packages, build, run the tour script
#   make bench      benchmarks against peers (see docs/performance.md)
#   make soak       1,000 connections echoing for 10 minutes, RSS and fds watched
#   make fuzz       the libFuzzer targets, FUZZ_SECONDS each (docs/reliability.md)
#   make deps       install missing Debian packages (apt-get, as root);
#                   make bench-deps and make fuzz-deps, the peers and clang
#   make install    PREFIX=/usr/local (and DESTDIR= for staging); make uninstall
#
# Only deps, test and run install packages (and bench-deps, fuzz-deps when
# asked by name): they run `deps` first, then re-enter make so that the
# pkg-config queries below see what deps has just installed.  Every other
# target (`make`, `make install`, `make bench`, `make fuzz`) installs
# nothing: if a package is missing it stops and names the target that does.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
SAN ?= 0
ifeq ($(SAN),1)
BUILD ?= build-san
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
# ml_assert and the stack-balance checks of vm/core/module.h
CHECKS = -DML_CHECKS=1
OPT = -O1
else
BUILD ?= build
SANFLAGS =
OPT = -O2
endif

PKG_CONFIG ?= pkg-config
LUA_CFLAGS = $(shell $(PKG_CONFIG) --cflags lua5.4 2>/dev/null)
LUA_LIBS = $(shell $(PKG_CONFIG) --libs lua5.4 2>/dev/null)
# libedit's headers only: the REPL loads libedit.so.2 with dlopen when it
# starts on a terminal (vm/cli/edit.c), because linking it (and the three
# libraries it brings) costs every run of the command.
EDIT_CFLAGS = $(shell $(PKG_CONFIG) --cflags libedit 2>/dev/null)
CHECK_CFLAGS = $(shell $(PKG_CONFIG) --cflags check 2>/dev/null)
CHECK_LIBS = $(shell $(PKG_CONFIG) --libs check 2>/dev/null)
# OpenSSL's headers only: stdlib/ssl/openssl.c loads libssl.so.3 and
# libcrypto.so.3 with dlopen on the first `require "ssl"` (or WebSocket),
# because linking them costs every start-up the loader's relocations,
# TLS or not.  docs/performance.md, "Start-up".
SSL_CFLAGS = $(shell $(PKG_CONFIG) --cflags openssl 2>/dev/null)
# libcurl's headers only: stdlib/http/_curl.c loads libcurl.so.4 with
# dlopen on the first `require "http"`, because linking it costs every
# start-up ~12M instructions (the dynamic linker loading its 30-odd
# libraries), HTTP or not.  docs/performance.md, "Start-up".
CURL_CFLAGS = $(shell $(PKG_CONFIG) --cflags libcurl 2>/dev/null)
# lua-cjson (the json module) is linked into the library itself: the
# objects of Debian's liblua5.4-cjson.a (position-independent) go into
# libmoonloop.a and libmoonloop.so, so hosts link nothing more.
CJSON_A = $(shell $(CC) -print-file-name=liblua5.4-cjson.a)

# The version and the shared library's soname come from moonloop.h.
VERSION := $(shell sed -n 's/^\#define MOONLOOP_VERSION "\(.*\)"/\1/p' vm/moonloop.h)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))
SONAME = libmoonloop.so.$(SOMAJOR)
SOFILE = libmoonloop.so.$(VERSION)

CC ?= cc
CFLAGS ?= $(OPT) -g
# Every object is position-independent: the same objects make the static
# and the shared library.  -fno-semantic-interposition keeps the compiler
# inlining and calling directly within the library, as without -fPIC (the
# version script below makes every non-ml_ symbol local anyway).
ALL_CFLAGS = -std=gnu11 -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE -MMD -MP \
	-fPIC -fno-semantic-interposition \
	-Ivm -Istdlib -I$(BUILD) $(LUA_CFLAGS) $(SSL_CFLAGS) $(CURL_CFLAGS) $(SANFLAGS) $(CHECKS) $(CFLAGS)
# What the library needs (moonloop.pc says the same to hosts); the CLI
# links the same (libedit, OpenSSL and libcurl are loaded when used).
# libwslay: the WebSocket framing of stdlib/http/_ws.c.
LIB_LIBS = $(LUA_LIBS) -lwslay -lev -lpthread -lm -ldl
LIBS = $(LIB_LIBS)
LDFLAGS += $(SANFLAGS) -rdynamic

# The layers (docs/internals.md): the core and the dialect link alone (the
# core's unit tests prove it); the embedding layer and the stdlib make
# libmoonloop; the CLI is linked into the binary only.
CORE_SRC = $(wildcard vm/core/*.c) $(wildcard vm/dialect/*.c)
CORE_LUA = asyncio.exceptions=vm/core/exceptions.lua
EMBED_SRC = $(wildcard vm/embed/*.c)
CLI_SRC = $(wildcard vm/cli/*.c)
STD_C = stdlib/init.c $(wildcard stdlib/*/[a-z_]*.c)
STD_C := $(filter-out stdlib/tools/%,$(STD_C))
STD_LUA = $(wildcard stdlib/*.lua stdlib/*/*.lua)
CORE_OBJ = $(CORE_SRC:%.c=$(BUILD)/%.o) $(BUILD)/core_lua.o
# llhttp (the HTTP server's parser) is compiled from the C sources Debian's
# node-llhttp package ships; nothing of it is kept in this repository.
LLHTTP_SRC ?= /usr/share/llhttp
LLHTTP_INC ?= /usr/share/include/llhttp
LLHTTP_OBJ = $(BUILD)/llhttp/llhttp.o $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o
CJSON_OBJ = $(BUILD)/cjson/lua_cjson.o $(BUILD)/cjson/strbuf.o $(BUILD)/cjson/fpconv.o
LIB_OBJ = $(CORE_OBJ) $(EMBED_SRC:%.c=$(BUILD)/%.o) $(STD_C:%.c=$(BUILD)/%.o) $(BUILD)/stdlib_lua.o \
	$(BUILD)/sandbox_lua.o $(BUILD)/modgraph.o $(LLHTTP_OBJ) $(CJSON_OBJ)
CLI_OBJ = $(CLI_SRC:%.c=$(BUILD)/%.o)
# Unit suites of the core alone, and of the whole library.
CHECK_LIB_SRC = tests/unit/check_embed.c tests/unit/check_process.c tests/unit/check_threads.c tests/unit/check_worker.c \
	tests/unit/check_strmatch.c tests/unit/check_embed_control.c
CHECK_CORE_SRC = $(filter-out $(CHECK_LIB_SRC) tests/unit/check_main.c,$(wildcard tests/unit/check_*.c))

DEB_PKGS = liblua5.4-dev libev-dev check pkg-config libedit-dev tmux socat netcat-openbsd python3 libssl-dev openssl \
	node-llhttp libwslay-dev curl wrk python3-websockets \
	lua-cjson-dev libcurl4-openssl-dev nginx-light redis-server g++
BENCH_PKGS = python3-uvloop hyperfine nodejs python3-aiohttp python3-httptools libnginx-mod-http-lua

.PHONY: bench-check fuzz-deps FORCE all build test run bench deps bench-deps need need-check install uninstall clean \
	check-suites script-tests embed-host embed-pkgconfig stress-modes soak fuzz fuzz-tls fuzz-lib fuzz-stream fuzz-repl fuzz-http \
	format format-check asyncio-index

all: $(BUILD)/moonloop $(BUILD)/libmoonloop.a $(BUILD)/libmoonloop.so

build: all $(BUILD)/check_core $(BUILD)/check_lib $(BUILD)/embed_bench

test: deps
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory check-suites script-tests embed-host embed-pkgconfig stress-modes

run: deps
	@$(MAKE) --no-print-directory build
	$(BUILD)/moonloop scripts/tour.lua

# bench installs nothing (only deps, run and test may): the peers it finds
# missing are named and skipped; `make bench-deps` installs them.
bench: need bench-check
	@$(MAKE) --no-print-directory build
	bash scripts/bench/run.sh $(BUILD)/moonloop

# The embedding API's figures (docs/performance.md, "Embedding"), a host
# built against libmoonloop.a and moonloop.h alone; run.sh runs it.
$(BUILD)/embed_bench: scripts/bench/embed_bench.c $(BUILD)/libmoonloop.a vm/moonloop.h
	$(CC) -std=gnu11 -O2 -g -Wall -Wextra $(SANFLAGS) -Ivm $(LUA_CFLAGS) -o $@ $< $(BUILD)/libmoonloop.a $(LIB_LIBS)

check-suites: $(BUILD)/check_core $(BUILD)/check_lib
	$(BUILD)/check_core
	$(BUILD)/check_lib

script-tests: $(BUILD)/moonloop
	bash tests/scripts/run.sh $(BUILD)/moonloop

# The allocation-failure and GC-stress modes over tests/stress/*.lua
# (docs/reliability.md): STRESS_RUNS runs a workload, fewer under SAN=1.
STRESS_RUNS ?= $(if $(filter 1,$(SAN)),60,250)
stress-modes: $(BUILD)/moonloop
	STRESS_RUNS=$(STRESS_RUNS) bash tests/stress/run.sh $(BUILD)/moonloop

# The soak (not in make test): SOAK_CONNS connections echoing for
# SOAK_MINUTES, the server's RSS and fds sampled every 10 s against a
# stated slack; tests/soak/soak.sh says the parameters.
soak: need
	@$(MAKE) --no-print-directory $(BUILD)/moonloop
	bash tests/soak/soak.sh $(BUILD)/moonloop

# The embedding example, built as a user would and run (tests/embed/host.sh).
embed-host: $(BUILD)/libmoonloop.a
	bash tests/embed/host.sh $(BUILD) "$(SANFLAGS)"
	bash tests/embed/hosts.sh $(BUILD) "$(SANFLAGS)"

# Installs into a temporary prefix and builds the example host from
# nothing but `pkg-config moonloop`, against both libraries.
embed-pkgconfig: all
	CFLAGS='$(CFLAGS)' bash tests/embed/pkgconfig.sh $(BUILD) "$(SANFLAGS)" $(SAN)

# What building needs, checked before anything compiles.  It never installs:
# it names the missing Debian packages and `make deps`.
need:
	@missing=""; \
	if command -v $(PKG_CONFIG) >/dev/null 2>&1; then \
	  $(PKG_CONFIG) --exists lua5.4 || missing="$$missing liblua5.4-dev"; \
	  $(PKG_CONFIG) --exists libedit || missing="$$missing libedit-dev"; \
	  $(PKG_CONFIG) --exists openssl || missing="$$missing libssl-dev"; \
	  $(PKG_CONFIG) --exists libcurl || missing="$$missing libcurl4-openssl-dev"; \
	  $(PKG_CONFIG) --exists lua5.4-cjson || missing="$$missing lua-cjson-dev"; \
	else missing=" pkg-config"; fi; \
	printf '\#include <ev.h>\n' | $(CC) -E -x c - >/dev/null 2>&1 || missing="$$missing libev-dev"; \
	[ -f $(LLHTTP_SRC)/llhttp.c ] && [ -f $(LLHTTP_INC)/llhttp.h ] || missing="$$missing node-llhttp"; \
	if [ -n "$$missing" ]; then \
	  echo "make: cannot build, missing:$$missing" >&2; \
	  echo "make: run 'make deps' as root to install them (or: sudo apt-get install$$missing)" >&2; \
	  exit 1; \
	fi

need-check: need
	@$(PKG_CONFIG) --exists check || { \
	  echo "make: cannot build the unit tests, missing: check" >&2; \
	  echo "make: run 'make deps' as root to install it (or: sudo apt-get install check)" >&2; exit 1; }

# Installs what is missing; as non-root it prints the command instead.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "make deps: installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || exit 1; \
	  else \
	    echo "make deps: missing packages; run: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

bench-check:
	@missing=""; for p in $(BENCH_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	[ -z "$$missing" ] || echo "make bench: not installed:$$missing (those peers are skipped; make bench-deps installs them)"

# Installs the benchmarks' peers (apt-get, as root).
bench-deps:
	@missing=""; for p in $(BENCH_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
	  echo "make bench-deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || \
	    echo "make bench-deps: could not install$$missing; those peers will be skipped"; \
	elif [ -n "$$missing" ]; then echo "make bench-deps: not installed:$$missing (peers skipped)"; fi

# The compile command is recorded in $(BUILD)/cflags: when it changes (say
# CFLAGS=-Werror, as .ci/run passes), every object is rebuilt with it.
$(BUILD)/cflags: FORCE | need
	@mkdir -p $(BUILD)
	@echo '$(CC) $(ALL_CFLAGS)' | cmp -s - $@ || echo '$(CC) $(ALL_CFLAGS)' > $@

FORCE:

$(BUILD)/%.o: %.c $(BUILD)/cflags | need
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(OBJ_CFLAGS) -c $< -o $@

# The HTTP modules see llhttp's header; llhttp itself is built from
# Debian's sources with the library's flags, minus the warnings that are
# its authors' business.
$(BUILD)/stdlib/http/%.o: OBJ_CFLAGS = -I$(LLHTTP_INC)
$(BUILD)/llhttp/%.o: $(LLHTTP_SRC)/%.c $(BUILD)/cflags | need
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -w -I$(LLHTTP_INC) -c $< -o $@

# libedit's headers, for the REPL's objects only.
$(CLI_OBJ): OBJ_CFLAGS = $(EDIT_CFLAGS)

# Lua modules compiled to bytecode into C by a build-time tool: the core's
# own (asyncio.exceptions) and the stdlib's.
$(BUILD)/bytecode: stdlib/tools/bytecode.c vm/dialect/asyncpass.c vm/dialect/buf.c vm/dialect/asyncpass.h | need
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -O1 -Ivm $(LUA_CFLAGS) -o $@ stdlib/tools/bytecode.c vm/dialect/asyncpass.c vm/dialect/buf.c $(LUA_LIBS)

$(BUILD)/core_lua.c: vm/core/exceptions.lua $(BUILD)/bytecode
	$(BUILD)/bytecode -s ml__core_lua $(CORE_LUA) > $@.tmp && mv $@.tmp $@

$(BUILD)/stdlib_lua.c: $(STD_LUA) $(BUILD)/bytecode
	$(BUILD)/bytecode -s ml__embedded_lua $(STD_LUA) > $@.tmp && mv $@.tmp $@

# The sandbox's policy, and the module graph it reads: each stdlib Lua
# module and the modules it requires, read from its source, as C data
# (stdlib/init.c adds the C modules' capabilities and takes the closure
# once per process).
$(BUILD)/modgraph.c: $(STD_LUA)
	@mkdir -p $(BUILD)
	@{ echo '/* Generated by the Makefile from the stdlib sources: module -> its requires. */'; \
	  echo '#include "modules.h"'; \
	  echo 'const ml_ModRequires ml__stdlib_graph[] = {'; \
	  for f in $(STD_LUA); do \
	    n=$${f#stdlib/}; n=$${n%.lua}; n=$$(printf '%s' "$$n" | tr / .); \
	    printf '  {"%s", (const char *const[]){' "$$n"; \
	    grep -oE "require *\(? *[\"'][^\"']+[\"']" "$$f" | sed -E "s/.*[\"']([^\"']+)[\"']$$/\"\1\", /" | sort -u | tr -d '\n'; \
	    echo 'NULL}},'; \
	  done; echo '  {NULL, NULL}};'; } > $@.tmp && mv $@.tmp $@

$(BUILD)/sandbox_lua.c: vm/embed/sandbox.lua $(BUILD)/bytecode
	$(BUILD)/bytecode -s ml__sandbox_lua moonloop.sandbox=vm/embed/sandbox.lua > $@.tmp && mv $@.tmp $@

$(BUILD)/modgraph.o: $(BUILD)/modgraph.c $(BUILD)/cflags
	$(CC) $(ALL_CFLAGS) -Istdlib -c $< -o $@

$(BUILD)/core_lua.o $(BUILD)/stdlib_lua.o $(BUILD)/sandbox_lua.o: $(BUILD)/%.o: $(BUILD)/%.c $(BUILD)/cflags
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# lua-cjson's objects, taken out of Debian's static archive; lua_cjson.o
# reads and writes numbers through stdlib/json/_numbers.c (its comment
# says why), by four renamed symbols.  The archive is built -fPIC but for
# its references to stderr, which go to a hidden copy in _numbers.c so
# that the objects also link into libmoonloop.so.
CJSON_RENAME = --redefine-sym lua_tonumberx=ml__json_tonumberx --redefine-sym fpconv_g_fmt=ml__json_fmt \
	--redefine-sym fpconv_strtod=ml__json_strtod --redefine-sym lua_pushnumber=ml__json_pushnumber
$(CJSON_OBJ): $(CJSON_A) | need
	@mkdir -p $(BUILD)/cjson
	cd $(BUILD)/cjson && ar x $(abspath $(CJSON_A)) $(notdir $@) && touch $(notdir $@)
	objcopy $(if $(filter %/lua_cjson.o,$@),$(CJSON_RENAME),--redefine-sym stderr=ml__json_stderr) $@

$(BUILD)/libmoonloop.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# The shared library exports the ml_ functions of moonloop.h and nothing
# else (vm/moonloop.map); it records what it needs, so -lmoonloop suffices.
$(BUILD)/$(SOFILE): $(LIB_OBJ) vm/moonloop.map
	$(CC) -shared $(SANFLAGS) -Wl,-soname,$(SONAME) -Wl,--version-script=vm/moonloop.map \
	  -Wl,-z,defs -o $@ $(LIB_OBJ) $(LIB_LIBS)

$(BUILD)/$(SONAME): $(BUILD)/$(SOFILE)
	ln -sf $(notdir $<) $@

$(BUILD)/libmoonloop.so: $(BUILD)/$(SONAME)
	ln -sf $(notdir $<) $@

# The binary links the static library: no search path to get right.
$(BUILD)/moonloop: $(CLI_OBJ) $(BUILD)/libmoonloop.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/unit/check_core_suites.h: $(CHECK_CORE_SRC)
	@mkdir -p $(dir $@)
	@{ for f in $(CHECK_CORE_SRC); do sed -n 's/^Suite \*\([a-z_0-9]*\)_suite(void).*/SUITE(\1)/p' $$f; done; } > $@

$(BUILD)/tests/unit/check_lib_suites.h: $(CHECK_LIB_SRC)
	@mkdir -p $(dir $@)
	@{ for f in $(CHECK_LIB_SRC); do sed -n 's/^Suite \*\([a-z_0-9]*\)_suite(void).*/SUITE(\1)/p' $$f; done; } > $@

$(BUILD)/tests/unit/check_%_main.o: tests/unit/check_main.c $(BUILD)/tests/unit/check_%_suites.h $(BUILD)/cflags | need-check
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -DCHECK_SUITES='"check_$*_suites.h"' -I$(BUILD)/tests/unit -c $< -o $@

# The core's suites link the core and the dialect alone: no stdlib module.
$(BUILD)/check_core: $(CHECK_CORE_SRC:%.c=$(BUILD)/%.o) $(BUILD)/tests/unit/check_core_main.o $(CORE_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LUA_LIBS) -lev -lpthread -lm -ldl

$(BUILD)/check_lib: $(CHECK_LIB_SRC:%.c=$(BUILD)/%.o) $(BUILD)/tests/unit/host_util.o $(BUILD)/tests/unit/check_lib_main.o $(BUILD)/libmoonloop.a
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LIB_LIBS)

$(BUILD)/tests/%.o: tests/%.c $(BUILD)/cflags | need-check
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -c $< -o $@

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Fuzzes the source pass, the TLS record path, the StreamReader and the
# REPL's input splitter, each for FUZZ_SECONDS, with libFuzzer (needs
# clang: `make fuzz-deps` installs it); not part of `make test`.  Each
# target's seed corpus is tests/fuzz/<target>/; what it finds goes to
# build/fuzz/corpus-<target>.  docs/reliability.md says what each checks.
FUZZ_SECONDS ?= 60
FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer,address,undefined
# A run's last lines, less the recommended dictionary libFuzzer prints after them:
# the final "#N DONE cov: ft: corpus:" line, "Done N runs", or a crash's summary.
FUZZ_TAIL = 2>&1 | grep -v -e '^"' -e '^\#\#\#\#\#\# ' | tail -n 12
# The fuzzer's exit status is the recipe's, not tail's: a crash fails make.
fuzz fuzz-tls fuzz-stream fuzz-repl fuzz-http: SHELL := /bin/bash
fuzz fuzz-tls fuzz-stream fuzz-repl fuzz-http: .SHELLFLAGS := -o pipefail -c
fuzz: need
	@command -v clang >/dev/null || \
	  { echo "make fuzz: needs clang: run 'make fuzz-deps' as root (or: sudo apt-get install clang)" >&2; exit 1; }
	@mkdir -p build/fuzz/corpus-asyncpass
	clang $(FUZZ_FLAGS) -Ivm $(LUA_CFLAGS) -o build/fuzz/asyncpass \
	  tests/fuzz/asyncpass.c vm/dialect/asyncpass.c vm/dialect/buf.c $(LUA_LIBS)
	build/fuzz/asyncpass -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-asyncpass tests/fuzz/asyncpass scripts tests/scripts $(FUZZ_TAIL)
	@$(MAKE) --no-print-directory fuzz-tls fuzz-stream fuzz-repl fuzz-http

fuzz-deps:
	@command -v clang >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null; } || \
	  { echo "make fuzz-deps: run as root, or: sudo apt-get install clang" >&2; exit 1; }

# The targets that drive the whole library: it is built again by clang
# with coverage for libFuzzer, in build/fuzz-lib.
fuzz-lib:
	@$(MAKE) --no-print-directory BUILD=build/fuzz-lib CC=clang CFLAGS="-g -O1" \
	  SANFLAGS="-fsanitize=fuzzer-no-link,address,undefined" build/fuzz-lib/libmoonloop.a

# The TLS record path: a server-side TLS stream fed arbitrary bytes.
fuzz-tls: fuzz-lib
	@mkdir -p build/fuzz/corpus-tls
	clang $(FUZZ_FLAGS) -Ivm $(LUA_CFLAGS) -o build/fuzz/tls_record \
	  tests/fuzz/tls_record.c build/fuzz-lib/libmoonloop.a $(LIB_LIBS)
	build/fuzz/tls_record -max_total_time=$(FUZZ_SECONDS) -max_len=16384 -timeout=10 \
	  build/fuzz/corpus-tls tests/fuzz/tls_record $(FUZZ_TAIL)

# The StreamReader over arbitrary chunkings, against a model of CPython's
# (the property is tests/fuzz/stream_reader.lua, which make test also runs
# over the seed corpus).
fuzz-stream: fuzz-lib
	@mkdir -p build/fuzz/corpus-stream_reader
	clang $(FUZZ_FLAGS) -Ivm $(LUA_CFLAGS) -DFUZZ_DIR='"$(abspath tests/fuzz)"' -o build/fuzz/stream_reader \
	  tests/fuzz/stream_reader.c build/fuzz-lib/libmoonloop.a $(LIB_LIBS)
	build/fuzz/stream_reader -max_total_time=$(FUZZ_SECONDS) -max_len=1024 -timeout=10 \
	  build/fuzz/corpus-stream_reader tests/fuzz/stream_reader $(FUZZ_TAIL)

# The REPL's input splitter (vm/cli/split.c, a client of moonloop.h).
fuzz-repl: fuzz-lib
	@mkdir -p build/fuzz/corpus-repl_split
	clang $(FUZZ_FLAGS) -Ivm $(LUA_CFLAGS) $(shell $(PKG_CONFIG) --cflags libev 2>/dev/null) -o build/fuzz/repl_split \
	  tests/fuzz/repl_split.c vm/cli/split.c build/fuzz-lib/libmoonloop.a $(LIB_LIBS)
	build/fuzz/repl_split -max_total_time=$(FUZZ_SECONDS) -max_len=2048 -timeout=10 \
	  build/fuzz/corpus-repl_split tests/fuzz/repl_split $(FUZZ_TAIL)

# The HTTP server's request path over 127.0.0.1: pipelined, chunked and
# smuggling-shaped requests against a model, arbitrary bytes in arbitrary
# chunkings (the property is tests/fuzz/http_request.lua, which make test
# also runs over the seed corpus).
fuzz-http: fuzz-lib
	@mkdir -p build/fuzz/corpus-http_request
	clang $(FUZZ_FLAGS) -Ivm $(LUA_CFLAGS) -DFUZZ_DIR='"$(abspath tests/fuzz)"' -o build/fuzz/http_request \
	  tests/fuzz/http_request.c build/fuzz-lib/libmoonloop.a $(LIB_LIBS)
	build/fuzz/http_request -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -timeout=30 \
	  build/fuzz/corpus-http_request tests/fuzz/http_request $(FUZZ_TAIL)

# moonloop.pc: a host compiles with `pkg-config --cflags --libs moonloop`
# (the shared library) or adds --static (the static one, which needs
# libev, pthread, m and dl too).  libedit is the CLI's, not the library's.
define PC
prefix=$(PREFIX)
libdir=$(LIBDIR)
includedir=$(INCLUDEDIR)

Name: moonloop
Description: Lua 5.4 with async/await on a libev event loop, for embedding
Version: $(VERSION)
Requires: lua5.4
Cflags: -I$${includedir}
Libs: -L$${libdir} -lmoonloop
Libs.private: -lwslay -lev -lpthread -lm -ldl
endef
export PC

INSTALLED = $(BINDIR)/moonloop $(INCLUDEDIR)/moonloop.h $(INCLUDEDIR)/moonloop.hpp $(LIBDIR)/libmoonloop.a \
	$(LIBDIR)/$(SOFILE) $(LIBDIR)/$(SONAME) $(LIBDIR)/libmoonloop.so \
	$(PKGCONFIGDIR)/moonloop.pc $(MANDIR)/man1/moonloop.1

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
	  $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 755 $(BUILD)/moonloop $(DESTDIR)$(BINDIR)/moonloop
	install -m 644 vm/moonloop.h $(DESTDIR)$(INCLUDEDIR)/moonloop.h
	install -m 644 vm/moonloop.hpp $(DESTDIR)$(INCLUDEDIR)/moonloop.hpp
	install -m 644 $(BUILD)/libmoonloop.a $(DESTDIR)$(LIBDIR)/libmoonloop.a
	install -m 755 $(BUILD)/$(SOFILE) $(DESTDIR)$(LIBDIR)/
	ln -sf $(SOFILE) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(LIBDIR)/libmoonloop.so
	printf '%s\n' "$$PC" > $(DESTDIR)$(PKGCONFIGDIR)/moonloop.pc
	install -m 644 docs/moonloop.1 $(DESTDIR)$(MANDIR)/man1/moonloop.1
	@# Into a directory of the system's library path, as root: the dynamic
	@# linker's cache must learn of libmoonloop.so.0 (not when staging).
	@case "$(LIBDIR)" in /usr/local/lib|/usr/lib|/lib) \
	  if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig; fi;; \
	esac

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))

# The C layout of .clang-format, over every tracked C and C++ source.
FORMAT_FILES = $(shell git ls-files '*.c' '*.h' '*.cc' '*.hpp' 2>/dev/null)
format:
	@command -v clang-format >/dev/null || { echo "make format needs clang-format (apt-get install clang-format)"; exit 1; }
	clang-format -i $(FORMAT_FILES)
format-check:
	@command -v clang-format >/dev/null || { echo "make format-check needs clang-format (apt-get install clang-format)"; exit 1; }
	@clang-format --dry-run -Werror $(FORMAT_FILES) && echo "format-check: every file is formatted"

# The index of asyncio's lazy loading (stdlib/asyncio.lua, between its
# "generated" markers), remade from what each module adds when loaded
# alone; run it after adding or moving a name of an asyncio.* module
# (tests/scripts/test_lazy.lua says when).
asyncio-index: build
	$(BUILD)/moonloop scripts/asyncio_index.lua $(BUILD)/moonloop > $(BUILD)/asyncio_index.tmp
	awk 'FNR == NR { idx = idx $$0 "\n"; next } \
	     /^-- END generated by scripts\/asyncio_index.lua/ { printf "%s", idx; skip = 0 } \
	     !skip { print } \
	     /^-- BEGIN generated by scripts\/asyncio_index.lua/ { skip = 1 }' \
	  $(BUILD)/asyncio_index.tmp stdlib/asyncio.lua > $(BUILD)/asyncio.lua.tmp
	mv $(BUILD)/asyncio.lua.tmp stdlib/asyncio.lua
	$(MAKE) build

clean:
	rm -rf build build-san
