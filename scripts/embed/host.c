/* host.c: a small game-like host that embeds moonloop.  It runs a level
 * script under a sandbox, a memory cap and a CPU budget, drives it from
 * its own frame loop (poll(2) plus ml_state_step), and gives it two host
 * functions and one asynchronous operation completed by worker threads.
 *
 * Build it as a user would (docs/embedding.md walks through it):
 *   cc host.c -Ivm build/libmoonloop.a $(pkg-config --cflags --libs lua5.4 openssl) \
 *      -lwslay -lev -lm -ldl -lpthread -ledit
 * Run:  ./host scripts/embed/script.lua */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "moonloop.h"

#define MAX_ENEMIES 64
#define MAX_LOADS 32
#define FRAME_SECONDS (1.0 / 60)

/* The game's own state, which scripts reach through host functions. */
typedef struct Game {
  int frame;
  int nenemies;
  char enemies[MAX_ENEMIES][32];
  pthread_t loaders[MAX_LOADS];
  int nloads;
} Game;

/* ---- two host functions ---- */

/* game.spawn_enemy(kind, hp) -> id */
static int game_spawn_enemy(lua_State *L) {
  Game *g = ml_state_userdata(ml_state_from_lua(L));
  const char *kind = luaL_checkstring(L, 1);
  lua_Integer hp = luaL_checkinteger(L, 2);
  if (g->nenemies == MAX_ENEMIES) return luaL_error(L, "too many enemies");
  snprintf(g->enemies[g->nenemies], sizeof g->enemies[0], "%s(%d)", kind, (int)hp);
  lua_pushinteger(L, ++g->nenemies);
  return 1;
}

/* game.frame() -> the number of the current frame */
static int game_frame(lua_State *L) {
  Game *g = ml_state_userdata(ml_state_from_lua(L));
  lua_pushinteger(L, g->frame);
  return 1;
}

/* ---- one asynchronous operation, completed by a worker thread ---- */

typedef struct Load {
  ml_Future *fut;
  char name[64];
} Load;

/* Runs on a worker thread: "loads" an asset, then completes the future
 * with the thread-safe calls (the only ones allowed off the loop). */
static void *load_worker(void *arg) {
  Load *job = arg;
  unsigned sum = 0;
  char result[128];
  if (strstr(job->name, "missing")) {
    ml_future_reject_threadsafe(job->fut, "FileNotFoundError", "no such asset");
  } else {
    for (const char *p = job->name; *p; p++) sum = sum * 31 + (unsigned char)*p;
    usleep(2000); /* the disk */
    snprintf(result, sizeof result, "%s (%u bytes)", job->name, sum % 4096);
    ml_future_resolve_threadsafe(job->fut, result, strlen(result));
  }
  free(job);
  return NULL;
}

/* game.load_asset(name) -> a Future the script awaits */
static int game_load_asset(lua_State *L) {
  Game *g = ml_state_userdata(ml_state_from_lua(L));
  const char *name = luaL_checkstring(L, 1);
  Load *job;
  if (g->nloads == MAX_LOADS) return luaL_error(L, "too many loads");
  job = calloc(1, sizeof *job);
  if (job == NULL) return luaL_error(L, "out of memory");
  snprintf(job->name, sizeof job->name, "%s", name);
  job->fut = ml_future_new(L); /* pushed: the value we return */
  if (job->fut == NULL) {
    free(job);
    return luaL_error(L, "out of memory");
  }
  if (pthread_create(&g->loaders[g->nloads], NULL, load_worker, job) != 0) {
    ml_future_reject(L, job->fut, "RuntimeError", "cannot start a loader");
    free(job);
    return 1;
  }
  g->nloads++;
  return 1;
}

static const luaL_Reg game_funcs[] = {
  {"spawn_enemy", game_spawn_enemy},
  {"frame", game_frame},
  {"load_asset", game_load_asset},
  {NULL, NULL},
};

/* Uncaught script errors: the game logs them and carries on. */
static void on_script_error(ml_State *S, const char *msg, void *ud) {
  (void)S;
  (void)ud;
  fprintf(stdout, "[host] script error: %s\n", msg);
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "script.lua";
  static const char *const allow[] = {ML_SANDBOX_DEFAULT, NULL};
  Game game = {0};
  ml_State *S;
  lua_State *L;
  ml_Future *level;
  int rc, status = 0;

  S = ml_state_new(NULL); /* a private loop: the frame loop drives it */
  if (S == NULL) {
    fprintf(stderr, "[host] cannot create a moonloop state\n");
    return 1;
  }
  L = ml_state_lua(S);
  ml_state_set_userdata(S, &game);
  ml_state_set_error_handler(S, on_script_error, NULL);

  /* Limits and the sandbox come before any script code runs. */
  if (ml_state_sandbox(S, allow) != ML_OK ||
      ml_module_register_funcs(S, "game", game_funcs) != ML_OK ||
      ml_state_set_memory_limit(S, 32u << 20) != ML_OK) {
    fprintf(stderr, "[host] set-up failed: %s\n", ml_state_error(S));
    ml_state_close(S);
    return 1;
  }
  ml_state_set_cpu_budget(S, 20 * 1000 * 1000);

  /* The level script runs as a task, so it may await at top level. */
  if ((rc = ml_load_file(L, path)) != ML_OK ||
      (rc = ml_task_spawn(L, 0, "level", &level)) != ML_OK) {
    fprintf(stderr, "[host] cannot start %s: %s\n", path, ml_state_error(S));
    ml_state_close(S);
    return 1;
  }

  /* The frame loop: step moonloop, then sleep until the next frame, or
   * earlier if moonloop's fd is readable (I/O, a worker's completion). */
  for (;;) {
    int fd;
    double timeout;
    rc = ml_state_step(S, &fd, &timeout);
    if (rc < 0) {
      fprintf(stderr, "[host] step failed: %s\n", ml_state_error(S));
      status = 1;
      break;
    }
    if (rc == 0) break; /* idle: the level is over */
    game.frame++;
    if (timeout < 0 || timeout > FRAME_SECONDS) timeout = FRAME_SECONDS;
    if (timeout > 0) {
      struct pollfd p = {fd, POLLIN, 0};
      poll(&p, fd >= 0, (int)(timeout * 1000 + 0.5));
    }
  }

  /* The level's outcome. */
  if (ml_future_state(level) == ML_FUTURE_RESULT) {
    ml_future_push_result(L, level);
    printf("[host] level result: %s\n", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(none)");
    lua_settop(L, 0);
  } else if (ml_future_push_error(L, level) == ML_OK) {
    printf("[host] level failed: %s\n", luaL_tolstring(L, -1, NULL));
    lua_settop(L, 0);
  }
  ml_future_release(L, level);
  printf("[host] enemies:");
  for (int i = 0; i < game.nenemies; i++) printf(" %s", game.enemies[i]);
  printf("\n[host] memory cap held: %s\n", ml_state_memory_peak(S) <= (32u << 20) ? "yes" : "no");

  for (int i = 0; i < game.nloads; i++) pthread_join(game.loaders[i], NULL);
  ml_state_close(S);
  return status;
}
