/* http_request.c: a libFuzzer target for the HTTP server's request path
 * (issue #16): arbitrary bytes, in arbitrary chunkings, to a real
 * http.serve server over 127.0.0.1 (llhttp, the C dispatcher in
 * stdlib/http/_server.c, the response writer).  The property itself is
 * Lua, tests/fuzz/http_request.lua (its comment says what the input
 * decides and what is checked: pipelined requests, chunked bodies and
 * smuggling shapes answered as a model says; arbitrary bytes answered
 * with well-formed responses; the connection ending; the server still
 * serving); make test runs the same file over the seed corpus
 * (tests/scripts/test_fuzz_corpus.lua).  A failed property aborts, with
 * the divergence on stderr.
 * Run with `make fuzz` (clang's -fsanitize=fuzzer,address,undefined); the
 * seed corpus is tests/fuzz/http_request/. */
#define FUZZ_PROPERTY "http_request"
#define FUZZ_MAX_INPUT 4096
#include "lua_property.h"
