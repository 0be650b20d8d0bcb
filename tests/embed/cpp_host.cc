/* cpp_host.cc: a host written in C++, built as users build one (g++ and
 * moonloop.h / moonloop.hpp; tests/embed/hosts.sh against the build's
 * library, tests/embed/pkgconfig.sh with `pkg-config --cflags --libs
 * moonloop` from an installed prefix), also under ASan (make test SAN=1).
 * Its host functions throw - a std::exception, std::bad_alloc, an int -
 * through ml::guard and ml::protect: each becomes a clean script error
 * that pcall catches or that fails the task, destructors of the throwing
 * frames run, no exception object leaks, and the state keeps running
 * afterwards (an exception that escaped would leave it -EBUSY). */
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "moonloop.hpp"

static int passed, failed;

#define CHECK(cond, ...)                               \
  do {                                                 \
    if (cond) {                                        \
      passed++;                                        \
    } else {                                           \
      failed++;                                        \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
    }                                                  \
  } while (0)

/* Counts destructors run, to see unwinding happen before the Lua error. */
static int destroyed;
struct Tracker {
  std::string name;
  explicit Tracker(const char *n) : name(n) {}
  ~Tracker() { destroyed++; }
};

static int throws_runtime(lua_State *L) {
  Tracker t("runtime");
  std::vector<int> v(100, 1); /* heap memory the unwinding must free */
  (void)L;
  throw std::runtime_error("disk on fire: " + t.name);
}

static int throws_alloc(lua_State *L) {
  Tracker t("alloc");
  (void)L;
  throw std::bad_alloc();
}

static int throws_int(lua_State *L) {
  (void)L;
  throw 42;
}

/* The pattern moonloop.hpp describes: arguments read first, the C++ work
 * in a scope that ends before the results are pushed. */
static int join(lua_State *L) {
  const char *sep = luaL_checkstring(L, 1);
  int n = lua_gettop(L);
  std::vector<std::string> parts;
  for (int i = 2; i <= n; i++) parts.emplace_back(luaL_checkstring(L, i));
  return ml::protect(L, [&] {
    std::string out;
    {
      if (parts.empty()) throw std::invalid_argument("join: nothing to join");
      for (size_t i = 0; i < parts.size(); i++) out += (i ? sep : "") + parts[i];
    }
    lua_pushlstring(L, out.data(), out.size());
    return 1;
  });
}

static const luaL_Reg tools[] = {
  {"fail", ml::guard<throws_runtime>},
  {"join", join},
  {NULL, NULL},
};

static ml_State *new_state(void) {
  ml_State *S = ml_state_new(NULL);
  if (S == NULL) {
    std::fprintf(stderr, "no state\n");
    std::exit(1);
  }
  return S;
}

/* Runs src as a task to its end; how it ended: "ok:<result>",
 * "error:<message>", or "run:<rc>" if the run itself failed. */
static std::string run(ml_State *S, const char *src) {
  lua_State *L = ml_state_lua(S);
  ml_Future *t = NULL;
  if (ml_load_string(L, src, std::strlen(src), "=script") != ML_OK ||
      ml_task_spawn(L, 0, "script", &t) != ML_OK)
    return std::string("spawn:") + ml_state_error(S);
  int rc = ml_state_run(S);
  std::string out;
  if (rc != ML_OK) {
    out = "run:" + std::to_string(rc);
  } else if (ml_future_state(t) == ML_FUTURE_RESULT) {
    int n = ml_future_push_result(L, t);
    const char *r = n > 0 ? lua_tostring(L, -n) : NULL;
    out = std::string("ok:") + (r ? r : "");
    lua_pop(L, n);
  } else if (ml_future_push_error(L, t) == ML_OK) {
    out = std::string("error:") + luaL_tolstring(L, -1, NULL);
    lua_pop(L, 2);
  } else {
    out = "state:" + std::to_string(ml_future_state(t));
  }
  ml_future_release(L, t);
  return out;
}

static bool has(const std::string &s, const char *part) {
  return s.find(part) != std::string::npos;
}

/* A worker std::thread completes a promise with a table. */
static int fetch(lua_State *L) {
  ml_Promise *p = NULL;
  if (ml_promise_new(L, NULL, NULL, &p) != ML_OK) return luaL_error(L, "no promise");
  std::thread([p] {
    ml_Values *v = ml_values_new();
    ml_values_push_table(v);
    ml_values_push_string(v, "name", 4);
    ml_values_push_string(v, "hero.png", 8);
    ml_values_end_table(v);
    ml_promise_resolve(p, v);
    ml_promise_release(p);
  }).detach();
  return 1;
}

int main() {
  ml_State *S = new_state();
  ml_state_register(S, "throws_runtime", ml::guard<throws_runtime>);
  ml_state_register(S, "throws_alloc", ml::guard<throws_alloc>);
  ml_state_register(S, "throws_int", ml::guard<throws_int>);
  ml_state_register(S, "fetch", fetch);
  ml_module_register_funcs(S, "tools", tools);

  std::string r = run(S, "local ok, e = pcall(throws_runtime)\n"
                         "return tostring(ok) .. ' ' .. tostring(e)");
  CHECK(r == "ok:false disk on fire: runtime",
        "a std::exception is a Lua error with its what(): %s", r.c_str());
  CHECK(destroyed == 1, "the throwing frame's destructors ran: %d", destroyed);

  r = run(S, "local ok, e = pcall(throws_alloc) return tostring(ok) .. ' ' .. tostring(e)");
  CHECK(has(r, "ok:false not enough memory"), "std::bad_alloc says not enough memory: %s",
        r.c_str());
  CHECK(destroyed == 2, "destructors ran: %d", destroyed);

  r = run(S, "local ok, e = pcall(throws_int) return tostring(ok) .. ' ' .. tostring(e)");
  CHECK(has(r, "ok:false") && has(r, "not a std::exception"), "an int thrown: %s", r.c_str());

  /* Uncaught, it fails the task (after an await: a later step) like any
   * script error, and the state is not wedged: the next run works. */
  r = run(S, "await asyncio.sleep(0)\nthrows_runtime()\nreturn 'not reached'");
  CHECK(has(r, "error:") && has(r, "disk on fire"), "an uncaught throw fails the task: %s",
        r.c_str());
  r = run(S, "await asyncio.sleep(0) return 'still running'");
  CHECK(r == "ok:still running", "the state runs after the throw: %s", r.c_str());

  /* From a module's luaL_Reg table, and ml::protect around a lambda. */
  r = run(S, "local tools = require 'tools'\n"
             "local ok, e = pcall(tools.fail)\n"
             "local ok2, e2 = pcall(tools.join, '-')\n"
             "return tools.join(', ', 'a', 'b', 'c') .. '|' .. tostring(e) .. '|' .. tostring(e2)");
  CHECK(r == "ok:a, b, c|disk on fire: runtime|join: nothing to join", "module functions: %s",
        r.c_str());

  /* A throw inside a coroutine the script made, and in a sandboxed state. */
  r = run(S, "local co = coroutine.wrap(function() throws_runtime() end)\n"
             "local ok, e = pcall(co) return tostring(e)");
  CHECK(has(r, "ok:") && has(r, "disk on fire: runtime"), "in a coroutine: %s", r.c_str());

  /* A C++ worker thread completes a promise. */
  r = run(S, "local t = await fetch() return t.name");
  CHECK(r == "ok:hero.png", "a std::thread completion: %s", r.c_str());
  ml_state_close(S);

  S = new_state();
  CHECK(ml_state_sandbox(S, NULL) == ML_OK, "sandbox: %s", ml_state_error(S));
  ml_state_register(S, "throws_runtime",
                    ml::guard<throws_runtime>); /* a global: after the sandbox */
  ml_state_set_cpu_budget(S, 1000000);
  r = run(S, "local ok, e = pcall(throws_runtime) return tostring(e)");
  CHECK(r == "ok:disk on fire: runtime", "sandboxed: %s", r.c_str());
  ml_state_close(S);

  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
