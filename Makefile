# moonloop: the Lua 5.4 VM with async/await on a libev loop.
#
#   make            build build/moonloop and build/libmoonloop.a
#   make test       build, then run the Check suites and the script tests
#   make test SAN=1 the same under AddressSanitizer + UBSan (in build-san/)
#   make run        build, then run the tour script
#   make bench      benchmarks against peers (see docs/performance.md)
#   make deps       install missing Debian packages (apt-get, as root)
#   make install PREFIX=/usr/local
#
# Every public target first runs `deps`, then re-enters make so that the
# pkg-config queries below see the packages deps has just installed.

PREFIX ?= /usr/local
SAN ?= 0
ifeq ($(SAN),1)
BUILD ?= build-san
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT = -O1
else
BUILD ?= build
SANFLAGS =
OPT = -O2
endif

LUA_CFLAGS = $(shell pkg-config --cflags lua5.4 2>/dev/null)
LUA_LIBS = $(shell pkg-config --libs lua5.4 2>/dev/null)
CHECK_CFLAGS = $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

CC ?= cc
CFLAGS ?= $(OPT) -g
ALL_CFLAGS = -std=gnu11 -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE -MMD -MP \
	-Ivm -Istdlib -I$(BUILD) $(LUA_CFLAGS) $(SANFLAGS) $(CFLAGS)
LIBS = $(LUA_LIBS) -lev -ledit -lpthread -lm -ldl
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
LIB_OBJ = $(CORE_OBJ) $(EMBED_SRC:%.c=$(BUILD)/%.o) $(STD_C:%.c=$(BUILD)/%.o) $(BUILD)/stdlib_lua.o
CLI_OBJ = $(CLI_SRC:%.c=$(BUILD)/%.o)
# Unit suites of the core alone, and of the whole library.
CHECK_CORE_SRC = $(filter-out tests/unit/check_embed.c tests/unit/check_main.c,$(wildcard tests/unit/check_*.c))
CHECK_LIB_SRC = tests/unit/check_embed.c

DEB_PKGS = liblua5.4-dev libev-dev check pkg-config libedit-dev tmux socat netcat-openbsd python3
BENCH_PKGS = python3-uvloop hyperfine nodejs

.PHONY: all build test run bench deps bench-deps install clean check-suites script-tests embed-host fuzz

all: deps
	@$(MAKE) --no-print-directory build

build: $(BUILD)/moonloop $(BUILD)/libmoonloop.a $(BUILD)/check_core $(BUILD)/check_lib

test: deps
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory check-suites script-tests embed-host

run: deps
	@$(MAKE) --no-print-directory build
	$(BUILD)/moonloop scripts/tour.lua

bench: deps bench-deps
	@$(MAKE) --no-print-directory build
	bash scripts/bench/run.sh $(BUILD)/moonloop

check-suites: $(BUILD)/check_core $(BUILD)/check_lib
	$(BUILD)/check_core
	$(BUILD)/check_lib

script-tests: $(BUILD)/moonloop
	bash tests/scripts/run.sh $(BUILD)/moonloop

# The embedding example, built as a user would and run (tests/embed/host.sh).
embed-host: $(BUILD)/libmoonloop.a
	bash tests/embed/host.sh $(BUILD) "$(SANFLAGS)"

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

bench-deps:
	@missing=""; for p in $(BENCH_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
	  echo "make bench-deps: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || \
	    echo "make bench-deps: could not install$$missing; those peers will be skipped"; \
	elif [ -n "$$missing" ]; then echo "make bench-deps: not installed:$$missing (peers skipped)"; fi

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# Lua modules compiled to bytecode into C by a build-time tool: the core's
# own (asyncio.exceptions) and the stdlib's.
$(BUILD)/bytecode: stdlib/tools/bytecode.c vm/dialect/asyncpass.c vm/dialect/buf.c vm/dialect/asyncpass.h
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -O1 -Ivm $(LUA_CFLAGS) -o $@ stdlib/tools/bytecode.c vm/dialect/asyncpass.c vm/dialect/buf.c $(LUA_LIBS)

$(BUILD)/core_lua.c: vm/core/exceptions.lua $(BUILD)/bytecode
	$(BUILD)/bytecode -s ml__core_lua $(CORE_LUA) > $@.tmp && mv $@.tmp $@

$(BUILD)/stdlib_lua.c: $(STD_LUA) $(BUILD)/bytecode
	$(BUILD)/bytecode -s ml__embedded_lua $(STD_LUA) > $@.tmp && mv $@.tmp $@

$(BUILD)/core_lua.o $(BUILD)/stdlib_lua.o: $(BUILD)/%.o: $(BUILD)/%.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libmoonloop.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/moonloop: $(CLI_OBJ) $(BUILD)/libmoonloop.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/unit/check_core_suites.h: $(CHECK_CORE_SRC)
	@mkdir -p $(dir $@)
	@{ for f in $(CHECK_CORE_SRC); do sed -n 's/^Suite \*\([a-z_0-9]*\)_suite(void).*/SUITE(\1)/p' $$f; done; } > $@

$(BUILD)/tests/unit/check_lib_suites.h: $(CHECK_LIB_SRC)
	@mkdir -p $(dir $@)
	@{ for f in $(CHECK_LIB_SRC); do sed -n 's/^Suite \*\([a-z_0-9]*\)_suite(void).*/SUITE(\1)/p' $$f; done; } > $@

$(BUILD)/tests/unit/check_%_main.o: tests/unit/check_main.c $(BUILD)/tests/unit/check_%_suites.h
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -DCHECK_SUITES='"check_$*_suites.h"' -I$(BUILD)/tests/unit -c $< -o $@

# The core's suites link the core and the dialect alone: no stdlib module.
$(BUILD)/check_core: $(CHECK_CORE_SRC:%.c=$(BUILD)/%.o) $(BUILD)/tests/unit/check_core_main.o $(CORE_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LUA_LIBS) -lev -lpthread -lm -ldl

$(BUILD)/check_lib: $(CHECK_LIB_SRC:%.c=$(BUILD)/%.o) $(BUILD)/tests/unit/check_lib_main.o $(BUILD)/libmoonloop.a
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LIBS)

$(BUILD)/tests/%.o: tests/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -c $< -o $@

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Fuzzes the source pass for a bounded time with libFuzzer (needs clang,
# which this target installs); not part of `make test`.
FUZZ_SECONDS ?= 60
fuzz: deps
	@command -v clang >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq clang >/dev/null; } || \
	  { echo "make fuzz: needs clang (apt-get install clang)"; exit 1; }
	@mkdir -p build/fuzz/corpus-asyncpass
	clang -g -O1 -fsanitize=fuzzer,address,undefined -Ivm $(LUA_CFLAGS) -o build/fuzz/asyncpass \
	  tests/fuzz/asyncpass.c vm/dialect/asyncpass.c vm/dialect/buf.c $(LUA_LIBS)
	build/fuzz/asyncpass -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-asyncpass scripts tests/scripts 2>&1 | tail -n 5

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include
	install -m 755 $(BUILD)/moonloop $(DESTDIR)$(PREFIX)/bin/moonloop
	install -m 644 $(BUILD)/libmoonloop.a $(DESTDIR)$(PREFIX)/lib/libmoonloop.a
	install -m 644 vm/moonloop.h $(DESTDIR)$(PREFIX)/include/moonloop.h

clean:
	rm -rf build build-san
