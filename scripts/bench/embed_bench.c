/* embed_bench.c: the embedding API's figures (docs/performance.md,
 * "Embedding"): what a state costs to make, with and without the
 * sandbox; Lua VM speed with and without a CPU budget; pattern matching
 * with Lua's matcher and the budget's counting one; ml_state_step
 * with 0, 1,000 and 10,000 sleeping tasks; cross-thread completions per
 * second (four threads completing promises).  Built by make bench (and
 * make build) as BUILD/embed_bench, against libmoonloop.a and moonloop.h
 * only, as a host is.
 *
 * usage: embed_bench [create|vm|match|step|xthread]...   (none: all of them)
 * Prints one line per figure: "name value unit".  QUICK=1 makes every
 * loop ten times shorter (a smoke test). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "moonloop.h"

static int quick;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, n, sizeof *v, cmp_double);
  return v[n / 2];
}

static void die(ml_State *S, const char *what) {
  fprintf(stderr, "embed_bench: %s: %s\n", what, S ? ml_state_error(S) : "no state");
  exit(1);
}

/* Loads src and spawns it as a task, handle in *t (if t is not NULL). */
static void spawn(ml_State *S, const char *src, ml_Future **t) {
  lua_State *L = ml_state_lua(S);
  if (ml_load_string(L, src, strlen(src), "=bench") != ML_OK) die(S, "load");
  if (ml_task_spawn(L, 0, "bench", t) != ML_OK) die(S, "spawn");
}

/* ---- state creation: time and Lua heap, plain and sandboxed ---- */

static void bench_create(void) {
  enum { N = 41 };
  double t[2][N];
  size_t heap[2] = {0, 0};
  int i, k, n = quick ? 5 : N;
  for (i = 0; i < n; i++) {
    for (k = 0; k < 2; k++) {
      double t0 = now();
      ml_State *S = ml_state_new(NULL);
      if (S == NULL) die(NULL, "ml_state_new");
      if (k == 1 && ml_state_sandbox(S, NULL) != ML_OK) die(S, "sandbox");
      t[k][i] = now() - t0;
      heap[k] = ml_state_memory_used(S);
      ml_state_close(S);
    }
  }
  printf("create_plain %.1f us\n", median(t[0], n) * 1e6);
  printf("create_sandboxed %.1f us\n", median(t[1], n) * 1e6);
  printf("heap_plain %.1f KB\n", heap[0] / 1024.0);
  printf("heap_sandboxed %.1f KB\n", heap[1] / 1024.0);
  printf("create_ratio %.2f x\n", median(t[1], n) / median(t[0], n));
  printf("heap_ratio %.2f x\n", (double)heap[1] / heap[0]);
}

/* ---- VM speed with and without a budget ---- */

/* Runs src as one task, in a state with no budget (kind 0), an
 * instruction budget that never runs out (1) or a time budget that never
 * runs out (2); its wall time. */
static double run_vm(const char *src, int kind) {
  ml_State *S = ml_state_new(NULL);
  ml_Future *t;
  double t0;
  if (S == NULL) die(NULL, "ml_state_new");
  if (kind == 1) ml_state_set_cpu_budget(S, 1000000000000UL);
  if (kind == 2 && ml_state_set_time_budget(S, 1000000000000UL) != ML_OK) die(S, "time budget");
  spawn(S, src, &t);
  t0 = now();
  if (ml_state_run(S) != ML_OK) die(S, "run");
  t0 = now() - t0;
  if (ml_future_state(t) != ML_FUTURE_RESULT) {
    lua_State *L = ml_state_lua(S);
    ml_future_push_error(L, t);
    fprintf(stderr, "embed_bench: vm task failed: %s\n", lua_tostring(L, -1));
    exit(1);
  }
  ml_future_release(ml_state_lua(S), t);
  ml_state_close(S);
  return t0;
}

/* The loops run as one long step (the watchdog puts the count hook on
 * after the first millisecond: the instruction budget's cost is the
 * hook's for nearly all of it, the time budget's none), and as steps of
 * about 0.1 ms (an await every 10,000 iterations: no step lives long
 * enough to get the hook). */
static void bench_vm(void) {
  static const struct {
    const char *name, *src;
  } loops[] = {
    {"vm_forloop", "local x = 0 for i = 1, N do x = x + i end return x"},
    {"vm_mixed", "local function f(a, b) return a * b % 7 end\n"
                 "local t, s = {}, 0\n"
                 "for i = 1, N // 10 do t[i % 1000 + 1] = f(i, 3) s = s + t[i % 1000 + 1] end\n"
                 "return s"},
    {"vm_while", "local i = 0 while i < N do i = i + 1 end return i"},
    {"vm_steps", "local x = 0\n"
                 "for j = 1, N // 10000 do\n"
                 "  for i = 1, 10000 do x = x + i end\n"
                 "  await asyncio.sleep(0)\n"
                 "end\n"
                 "return x"},
  };
  char src[1024];
  int k, r;
  long n = quick ? 3000000 : 30000000;
  for (k = 0; k < (int)(sizeof loops / sizeof *loops); k++) {
    double plain[3], budgeted[3], timed[3];
    snprintf(src, sizeof src, "local N = %ld\n%s", n, loops[k].src);
    for (r = 0; r < 3; r++) { /* interleaved: load changes hit all alike */
      plain[r] = run_vm(src, 0);
      budgeted[r] = run_vm(src, 1);
      timed[r] = run_vm(src, 2);
    }
    printf("%s_plain %.3f s\n", loops[k].name, median(plain, 3));
    printf("%s_budget %.3f s\n", loops[k].name, median(budgeted, 3));
    printf("%s_time_budget %.3f s\n", loops[k].name, median(timed, 3));
    printf("%s_budget_cost %.2f x\n", loops[k].name, median(budgeted, 3) / median(plain, 3));
    printf("%s_time_budget_cost %.2f x\n", loops[k].name, median(timed, 3) / median(plain, 3));
  }
}

/* ---- pattern matching: Lua's matcher against the budgeted one ---- */

/* Runs src as one task of a state that is plain (Lua's own string.find
 * and friends), sandboxed (strmatch.c's counting matcher, no budget:
 * the matcher alone) or budgeted (the counting matcher and the count
 * hook); its wall time. */
static double run_match(const char *src, int kind) {
  ml_State *S = ml_state_new(NULL);
  ml_Future *t;
  double t0;
  if (S == NULL) die(NULL, "ml_state_new");
  if (kind == 1 && ml_state_sandbox(S, NULL) != ML_OK) die(S, "sandbox");
  if (kind == 2) ml_state_set_cpu_budget(S, 1000000000000UL);
  spawn(S, src, &t);
  t0 = now();
  if (ml_state_run(S) != ML_OK) die(S, "run");
  t0 = now() - t0;
  if (ml_future_state(t) != ML_FUTURE_RESULT) die(S, "the match task failed");
  ml_future_release(ml_state_lua(S), t);
  ml_state_close(S);
  return t0;
}

static void bench_match(void) {
  /* A 64 KB text of config-like lines, gone over N times by the
   * patterns a script typically runs: words, trimming, key = value,
   * squeezing spaces, a frontier and a balanced match. */
  static const char *src =
    "local parts = {}\n"
    "for i = 1, 1500 do parts[i] = '  key' .. i .. ' = value (' .. i * 7 .. ') of  line  ' end\n"
    "local text = table.concat(parts, '\\n')\n"
    "local n = 0\n"
    "for r = 1, N do\n"
    "  for w in text:gmatch('%a+') do n = n + 1 end\n"
    "  for line in text:gmatch('[^\\n]+') do\n"
    "    local k, v = line:match('^%s*(%w+)%s*=%s*(.-)%s*$')\n"
    "    if k then n = n + #v end\n"
    "  end\n"
    "  n = n + select(2, text:gsub('%s+', ' '))\n"
    "  n = n + select(2, text:gsub('%f[%w]%d+', '#'))\n"
    "  n = n + select(2, text:gsub('%b()', ''))\n"
    "  n = n + (text:find('value %(99999%)') or 0)\n"
    "end\n"
    "return n";
  char buf[2048];
  double t[3][3];
  int r, k;
  snprintf(buf, sizeof buf, "local N = %d\n%s", quick ? 2 : 20, src);
  for (r = 0; r < 3; r++) /* interleaved: load changes hit all alike */
    for (k = 0; k < 3; k++) t[k][r] = run_match(buf, k);
  printf("match_plain %.3f s\n", median(t[0], 3));
  printf("match_counted %.3f s\n", median(t[1], 3));
  printf("match_budget %.3f s\n", median(t[2], 3));
  printf("match_counted_cost %.2f x\n", median(t[1], 3) / median(t[0], 3));
  printf("match_budget_cost %.2f x\n", median(t[2], 3) / median(t[0], 3));
}

/* ---- ml_state_step with sleeping tasks ---- */

static void bench_step(void) {
  static const int counts[] = {0, 1000, 10000};
  int k, i;
  for (k = 0; k < 3; k++) {
    ml_State *S = ml_state_new(NULL);
    lua_State *L;
    char src[256];
    double t0, per;
    int steps = quick ? 200 : 2000, fd;
    double timeout;
    if (S == NULL) die(NULL, "ml_state_new");
    L = ml_state_lua(S);
    snprintf(src, sizeof src,
             "for i = 1, %d do asyncio.create_task(asyncio.sleep(3600 + i)) end\n"
             "await asyncio.sleep(7200)",
             counts[k]);
    spawn(S, src, NULL);
    /* Until every task sleeps: nothing ready any more. */
    for (i = 0; i < 100; i++) {
      if (ml_state_step(S, &fd, &timeout) < 0) die(S, "step");
      if (timeout > 0) break;
    }
    t0 = now();
    for (i = 0; i < steps; i++)
      if (ml_state_step(S, &fd, &timeout) < 0) die(S, "step");
    per = (now() - t0) / steps;
    if (timeout < 3000) {
      fprintf(stderr, "embed_bench: step timeout %.3f, wanted the first sleeper's\n", timeout);
      exit(1);
    }
    printf("step_%d_sleepers %.2f us\n", counts[k], per * 1e6);
    ml_task_cancel_all(S, NULL);
    (void)L;
    ml_state_close(S);
  }
}

/* ---- cross-thread completions ---- */

enum { XT_THREADS = 4 };

typedef struct XT {
  ml_Promise **p;
  int n;
  int next; /* the next promise to complete (atomic) */
} XT;

static XT xt;

static void *xt_worker(void *ud) {
  int i;
  (void)ud;
  while ((i = __atomic_fetch_add(&xt.next, 1, __ATOMIC_RELAXED)) < xt.n) {
    ml_Values *v = ml_values_new();
    ml_values_push_integer(v, i);
    if (ml_promise_resolve(xt.p[i], v) != ML_OK) abort();
    ml_promise_release(xt.p[i]);
  }
  return NULL;
}

/* bench.promises(n) -> a list of n Futures, whose promises the workers
 * complete once bench.go() starts them. */
static int xt_promises(lua_State *L) {
  int i, n = (int)luaL_checkinteger(L, 1);
  xt.p = calloc(n, sizeof *xt.p);
  xt.n = n;
  xt.next = 0;
  lua_createtable(L, n, 0);
  for (i = 0; i < n; i++) {
    if (ml_promise_new(L, NULL, NULL, &xt.p[i]) != ML_OK) return luaL_error(L, "ml_promise_new");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static pthread_t xt_threads[XT_THREADS];

static int xt_go(lua_State *L) {
  int i;
  (void)L;
  for (i = 0; i < XT_THREADS; i++) pthread_create(&xt_threads[i], NULL, xt_worker, NULL);
  return 0;
}

static void bench_xthread(void) {
  ml_State *S = ml_state_new(NULL);
  ml_Future *t;
  int i, n = quick ? 20000 : 200000;
  char src[512];
  double t0;
  static const luaL_Reg funcs[] = {{"promises", xt_promises}, {"go", xt_go}, {NULL, NULL}};
  if (S == NULL) die(NULL, "ml_state_new");
  ml_module_register_funcs(S, "bench", funcs);
  snprintf(src, sizeof src,
           "local bench = require 'bench'\n"
           "local fs = bench.promises(%d)\n"
           "local t0 = os.clock()\n"
           "bench.go()\n"
           "local sum = 0\n"
           "for i = 1, #fs do sum = sum + await fs[i] end\n"
           "return sum",
           n);
  spawn(S, src, &t);
  /* The first step makes the promises; time from there. */
  ml_state_step(S, NULL, NULL);
  t0 = now();
  if (ml_state_run(S) != ML_OK) die(S, "run");
  t0 = now() - t0;
  for (i = 0; i < XT_THREADS; i++) pthread_join(xt_threads[i], NULL);
  if (ml_future_state(t) != ML_FUTURE_RESULT) die(S, "the xthread task failed");
  ml_future_release(ml_state_lua(S), t);
  ml_state_close(S);
  free(xt.p);
  printf("xthread_completions %.0f per_s\n", n / t0);
}

int main(int argc, char **argv) {
  int i, all = argc < 2;
  quick = getenv("QUICK") && strcmp(getenv("QUICK"), "1") == 0;
  for (i = all ? 0 : 1; i < (all ? 1 : argc); i++) {
    const char *w = all ? NULL : argv[i];
    if (all || strcmp(w, "create") == 0) bench_create();
    if (all || strcmp(w, "vm") == 0) bench_vm();
    if (all || strcmp(w, "match") == 0) bench_match();
    if (all || strcmp(w, "step") == 0) bench_step();
    if (all || strcmp(w, "xthread") == 0) bench_xthread();
  }
  return 0;
}
