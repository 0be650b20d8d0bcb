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
ALL_CFLAGS = -std=gnu11 -Wall -Wextra -Wno-unused-parameter -D_GNU_SOURCE \
	-Ivm -I$(BUILD) $(LUA_CFLAGS) $(SANFLAGS) $(CFLAGS)
LIBS = $(LUA_LIBS) -lev -ledit -lpthread -lm -ldl
LDFLAGS += $(SANFLAGS) -rdynamic

VM_SRC = $(filter-out vm/main.c,$(wildcard vm/*.c))
STD_C = $(wildcard stdlib/*lib.c)
STD_LUA = $(wildcard stdlib/*.lua stdlib/*/*.lua)
LIB_OBJ = $(VM_SRC:%.c=$(BUILD)/%.o) $(STD_C:%.c=$(BUILD)/%.o) $(BUILD)/embedded.o
CHECK_SRC = $(wildcard tests/check_*.c)

DEB_PKGS = liblua5.4-dev libev-dev check pkg-config libedit-dev tmux socat netcat-openbsd python3
BENCH_PKGS = python3-uvloop hyperfine nodejs

.PHONY: all build test run bench deps bench-deps install clean check-suites script-tests embed-host fuzz

all: deps
	@$(MAKE) --no-print-directory build

build: $(BUILD)/moonloop $(BUILD)/libmoonloop.a $(BUILD)/check_all

test: deps
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory check-suites script-tests embed-host

run: deps
	@$(MAKE) --no-print-directory build
	$(BUILD)/moonloop scripts/tour.lua

bench: deps bench-deps
	@$(MAKE) --no-print-directory build
	bash scripts/bench/run.sh $(BUILD)/moonloop

check-suites: $(BUILD)/check_all
	$(BUILD)/check_all

script-tests: $(BUILD)/moonloop
	bash tests/run_scripts.sh $(BUILD)/moonloop

# The embedding example, built as a user would and run (tests/embed_host.sh).
embed-host: $(BUILD)/libmoonloop.a
	bash tests/embed_host.sh $(BUILD) "$(SANFLAGS)"

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

$(BUILD)/%.o: %.c $(wildcard vm/*.h stdlib/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

# stdlib Lua modules (as bytecode) and the list of C modules, compiled into
# the library by a build-time tool.
$(BUILD)/embed: stdlib/embed.c vm/asyncpass.c vm/buf.c vm/asyncpass.h
	@mkdir -p $(BUILD)
	$(CC) -std=gnu11 -O1 -Ivm $(LUA_CFLAGS) -o $@ stdlib/embed.c vm/asyncpass.c vm/buf.c $(LUA_LIBS)

$(BUILD)/embedded.c: $(STD_LUA) $(STD_C) $(BUILD)/embed
	$(BUILD)/embed $(STD_LUA) -- $(STD_C) > $@.tmp && mv $@.tmp $@

$(BUILD)/embedded.o: $(BUILD)/embedded.c
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libmoonloop.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/moonloop: $(BUILD)/vm/main.o $(BUILD)/libmoonloop.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/check_suites.h: $(CHECK_SRC)
	@mkdir -p $(BUILD)
	@{ for f in $(CHECK_SRC); do sed -n 's/^Suite \*\([a-z_0-9]*\)_suite(void).*/SUITE(\1)/p' $$f; done; } > $@

$(BUILD)/check_all: $(CHECK_SRC:%.c=$(BUILD)/%.o) $(BUILD)/tests/check_main.o $(BUILD)/libmoonloop.a
	$(CC) $(LDFLAGS) -o $@ $^ $(CHECK_LIBS) $(LIBS)

$(BUILD)/tests/check_main.o: tests/check_main.c $(BUILD)/check_suites.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -c $< -o $@

$(BUILD)/tests/%.o: tests/%.c $(wildcard vm/*.h stdlib/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(CHECK_CFLAGS) -c $< -o $@

# Fuzzes the source pass for a bounded time with libFuzzer (needs clang,
# which this target installs); not part of `make test`.
FUZZ_SECONDS ?= 60
fuzz: deps
	@command -v clang >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq clang >/dev/null; } || \
	  { echo "make fuzz: needs clang (apt-get install clang)"; exit 1; }
	@mkdir -p build/fuzz/corpus-asyncpass
	clang -g -O1 -fsanitize=fuzzer,address,undefined -Ivm $(LUA_CFLAGS) -o build/fuzz/asyncpass \
	  tests/fuzz_asyncpass.c vm/asyncpass.c vm/buf.c $(LUA_LIBS)
	build/fuzz/asyncpass -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-asyncpass scripts tests/scripts 2>&1 | tail -n 5

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include
	install -m 755 $(BUILD)/moonloop $(DESTDIR)$(PREFIX)/bin/moonloop
	install -m 644 $(BUILD)/libmoonloop.a $(DESTDIR)$(PREFIX)/lib/libmoonloop.a
	install -m 644 vm/moonloop.h $(DESTDIR)$(PREFIX)/include/moonloop.h

clean:
	rm -rf build build-san
