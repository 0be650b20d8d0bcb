/* tls_record.c: a libFuzzer target for the TLS record path.  Each input
 * is written, as a peer would write it, into one end of a socket pair
 * whose other end is a server-side TLS stream (asyncio._stream under the
 * ssl layer, stdlib/ssl/_tls.c); the peer then closes.  Properties: the
 * layer never crashes or reads out of bounds (ASan/UBSan), and the
 * connection always ends (a hang is a libFuzzer timeout).  The server's
 * certificate is made once, with the openssl command, in a temporary
 * directory.
 * Run with `make fuzz-tls` (clang's -fsanitize=fuzzer,address,undefined);
 * the seed corpus, tests/fuzz/tls_record/, holds real ClientHellos. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "moonloop.h"

static ml_State *S;

static const char setup[] =
  "local dir = ...\n"
  "local ssl = require 'ssl'\n"
  "local socket = require 'socket'\n"
  "local St = require 'asyncio._stream'\n"
  "local ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n"
  "ctx:load_cert_chain(dir .. '/c.pem', dir .. '/c.key')\n"
  "ctx:set_alpn_protocols({ 'h2', 'http/1.1' })\n"
  "ctx:set_servername_callback(function(obj, name) if name == 'x' then return 112 end end)\n"
  "local tls = ssl._server_opts({ ssl = ctx, ssl_handshake_timeout = 1 })\n"
  "function fuzz_one(data)\n"
  "  local loop = asyncio.get_running_loop()\n"
  "  local a, b = socket.socketpair()\n"
  "  local r, w = St._stream(a)\n"
  "  local hs = asyncio.create_task(ssl._handshake(loop, w.transport, tls))\n"
  "  b:send(data)\n"
  "  b:close()\n"
  "  if pcall(await, hs) then\n"
  "    w:write('x')\n"
  "    pcall(function() await r:read() end)\n"
  "  end\n"
  "  w:close()\n"
  "  pcall(function() await w:wait_closed() end)\n"
  "end\n";

static int init(void) {
  char dir[] = "/tmp/moonloop-fuzz-tls.XXXXXX", cmd[1024];
  lua_State *L;
  if (mkdtemp(dir) == NULL) return -1;
  snprintf(cmd, sizeof cmd,
           "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
           "-keyout %s/c.key -out %s/c.pem >/dev/null 2>&1",
           dir, dir);
  if (system(cmd) != 0) return -1;
  S = ml_state_new(NULL);
  if (S == NULL) return -1;
  L = ml_state_lua(S);
  if (ml_load_string(L, setup, sizeof setup - 1, "=fuzz-setup") != 0) return -1;
  lua_pushstring(L, dir);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "tls_record: setup failed: %s\n", lua_tostring(L, -1));
    return -1;
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  lua_State *L;
  ml_Future *t;
  if (!ready) {
    if (init() != 0) abort();
    ready = 1;
  }
  if (size > 65536) return 0; /* a socket pair's buffer takes it at once */
  L = ml_state_lua(S);
  lua_getglobal(L, "fuzz_one");
  lua_pushlstring(L, (const char *)data, size);
  if (ml_task_spawn(L, 1, "fuzz", &t) != 0) abort();
  if (ml_state_run_until(S, t) != 0) abort();
  if (ml_future_state(t) != ML_FUTURE_RESULT) {
    ml_future_push_error(L, t);
    fprintf(stderr, "tls_record: %s\n", lua_tostring(L, -1));
    abort();
  }
  ml_future_release(L, t);
  lua_settop(L, 0);
  return 0;
}
