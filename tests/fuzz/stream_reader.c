/* stream_reader.c: a libFuzzer target for the StreamReader's readline,
 * readuntil, readexactly and read over arbitrary chunkings (issue #19).
 * The property itself is Lua, tests/fuzz/stream_reader.lua (its comment
 * says what the input decides and what is checked: the results against a
 * model of CPython's StreamReader, bytes out == bytes in, no call hanging
 * after EOF); make test runs the same file over the seed corpus
 * (tests/scripts/test_fuzz_corpus.lua).  A failed property aborts, with
 * the divergence on stderr.
 * Run with `make fuzz` (clang's -fsanitize=fuzzer,address,undefined); the
 * seed corpus is tests/fuzz/stream_reader/. */
#define FUZZ_PROPERTY "stream_reader"
#define FUZZ_MAX_INPUT 4096
#include "lua_property.h"
