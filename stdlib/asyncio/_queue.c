/* _queue.c: asyncio._queue, the C core of asyncio.Queue, PriorityQueue and
 * LifoQueue (the classes are stdlib/asyncio/queues.lua): the items, and the
 * tasks waiting to get, put or join, with no allocation per put or get,
 * even when a task has to wait.
 *
 * A queue is a Lua table (the class instance, with the field maxsize)
 * whose [1] is the Queue userdata.  Its user values are the items table (a
 * ring for FIFO, a stack for LIFO, a binary heap for PriorityQueue; its
 * array part is sized by us and only grows, so storing an item never
 * allocates) and the waiter pool (a userdata array of Waiter, recycled
 * through a free list).  An item handed to a waiting getter goes onto the
 * getter's own stack (handoff).  The pool keeps task pointers without
 * anchoring them: a waiting task is
 * suspended, hence pending, hence anchored by the scheduler, and it stops
 * waiting only by being woken from here or by being cancelled, whose hook
 * unlinks it first (queue_gc covers the one way around that).
 *
 * Waiting: a task links a Waiter into one of three FIFO lists and suspends
 * with ml__task_suspend_always, whose continuation (get_k, put_k, join_k)
 * always runs afterwards: when the task is woken, and also when
 * CancelledError is raised instead, which happens if the task was
 * cancelled at any point, before or after it was woken.  The continuation
 * is the one place that frees the waiter, so what a cancelled task was
 * given is never lost:
 *   - put hands its item straight to the first waiting getter (W_HANDED)
 *     and wakes it; a getter cancelled before it ran gives the item to the
 *     next waiting getter, or back to the queue (see give_back).
 *   - get, having removed an item (or having been handed one, which counts
 *     the same), wakes the first waiting putter (W_WOKEN), which then puts
 *     its item itself; one cancelled before it ran passes the wake-up on if
 *     there is room.  Putters are not handed a slot with their item in it,
 *     so that a put cancelled after it was woken leaves nothing behind.
 *   - a task cancelled while still waiting is unlinked by the cancel hook
 *     at once (W_CANCELLED), so it never wins anything.
 * A getter only waits when the queue is empty and put hands items to
 * waiting getters first, so while a getter waits the queue is empty. */
#include <string.h>
#include "core/module.h"

#define QUEUE_MAGIC 0x51756575u
#define QUEUE_MT "asyncio.QueueCore"
#define MAX_DEPTH 200 /* nesting of list tables PriorityQueue compares */

/* Storage kinds; K_CUSTOM calls the class's Lua _put and _get. */
enum { K_CUSTOM, K_FIFO, K_LIFO, K_HEAP };
/* User values of the Queue userdata: the items and the waiter pool. */
enum { UV_ITEMS = 1, UV_POOL, UV_COUNT = UV_POOL };
/* Waiter states. */
enum { W_FREE, W_WAITING, W_HANDED, W_WOKEN, W_CANCELLED };
/* Waiter lists. */
enum { GETTERS, PUTTERS, JOINERS, NLISTS };

typedef struct Waiter {
  ml_Task *task;
  lua_State *th;       /* the thread that waits (the task's, or a
                          generator's in it): a getter is handed its item
                          on this thread's stack */
  int prev, next;      /* links in its list; next links the free list */
  unsigned char state; /* W_* */
  unsigned char list;  /* GETTERS, PUTTERS or JOINERS */
} Waiter;

typedef struct WList {
  int head, tail, len; /* pool indexes, -1 if none */
} WList;

typedef struct Queue {
  unsigned magic;
  int kind; /* K_* */
  int shutdown;
  lua_Number maxsize;         /* <= 0: unbounded */
  lua_Integer n;              /* items queued (K_CUSTOM; the others use len) */
  lua_Integer unfinished;     /* items put and not yet task_done() */
  lua_Integer head, len, cap; /* the items table: ring [head, head+len) */
  lua_Integer nback;          /* items given back, next out before the rest */
  Waiter *w;                  /* the pool, in the UV_POOL userdata */
  int wcap, wfree;            /* pool size, first free waiter (-1: none) */
  WList lists[NLISTS];
} Queue;

static lua_Integer count(const Queue *q) { return q->kind == K_CUSTOM ? q->n : q->len; }

static int full(const Queue *q) { return q->maxsize > 0 && (lua_Number)count(q) >= q->maxsize; }

/* [-0, +1] pushes the Queue userdata of self (argument 1) and returns it;
 * raises if self is not a queue. */
static Queue *check_queue(lua_State *L) {
  Queue *q = NULL;
  if (lua_type(L, 1) != LUA_TTABLE) luaL_checktype(L, 1, LUA_TTABLE);
  /* The fast path that ml__udata_test cannot match (module.h): a size
   * and a magic number, two API calls where a metatable test is four
   * (+6% instructions on the queue benchmark, measured).  Safe: the size
   * is checked before the magic is read. */
  if (lua_rawgeti(L, 1, 1) == LUA_TUSERDATA && lua_rawlen(L, -1) == sizeof(Queue))
    q = lua_touserdata(L, -1);
  if (q == NULL || q->magic != QUEUE_MAGIC) luaL_argerror(L, 1, "asyncio.Queue expected");
  return q;
}

/* ---------------------------------------------------------------- */
/* Waiters.                                                            */

/* Doubles the pool.  [-0, +0]; may raise MemoryError, and leaves the
 * queue as it was if it does. */
static void pool_grow(lua_State *L, Queue *q, int ci) {
  int ncap = q->wcap ? 2 * q->wcap : 4, i;
  Waiter *nw;
  if (ncap > (1 << 24)) luaL_error(L, "too many tasks waiting on a queue");
  nw = lua_newuserdatauv(L, (size_t)ncap * sizeof(Waiter), 0);
  if (q->wcap) memcpy(nw, q->w, (size_t)q->wcap * sizeof(Waiter));
  for (i = q->wcap; i < ncap; i++) {
    nw[i].task = NULL;
    nw[i].th = NULL;
    nw[i].prev = -1;
    nw[i].next = i + 1 < ncap ? i + 1 : -1;
    nw[i].state = W_FREE;
    nw[i].list = 0;
  }
  lua_setiuservalue(L, ci, UV_POOL);
  q->wfree = q->wcap; /* the old pool was full */
  q->w = nw;
  q->wcap = ncap;
}

static void w_link(Queue *q, int list, int i) {
  WList *l = &q->lists[list];
  Waiter *w = &q->w[i];
  w->list = (unsigned char)list;
  w->next = -1;
  w->prev = l->tail;
  if (l->tail >= 0) q->w[l->tail].next = i;
  else l->head = i;
  l->tail = i;
  l->len++;
}

static void w_unlink(Queue *q, int i) {
  Waiter *w = &q->w[i];
  WList *l = &q->lists[w->list];
  if (w->prev >= 0) q->w[w->prev].next = w->next;
  else l->head = w->next;
  if (w->next >= 0) q->w[w->next].prev = w->prev;
  else l->tail = w->prev;
  w->prev = w->next = -1;
  l->len--;
}

/* Links task t at the tail of list; returns the waiter's index.
 * [-0, +0]; may raise MemoryError before linking anything. */
static int w_new(lua_State *L, Queue *q, int ci, int list, ml_Task *t) {
  int i;
  if (q->wfree < 0) pool_grow(L, q, ci);
  i = q->wfree;
  q->wfree = q->w[i].next;
  q->w[i].task = t;
  q->w[i].state = W_WAITING;
  w_link(q, list, i);
  return i;
}

/* Returns waiter i to the free list (its value cleared, if it had one). */
static void w_release(Queue *q, int i) {
  q->w[i].state = W_FREE;
  q->w[i].task = NULL;
  q->w[i].next = q->wfree;
  q->wfree = i;
}

/* Wakes the first waiter of list, if any. */
static void wake_first(Queue *q, int list) {
  int i = q->lists[list].head;
  if (i < 0) return;
  w_unlink(q, i);
  q->w[i].state = W_WOKEN;
  ml__task_wake(q->w[i].task);
}

static void wake_all(Queue *q, int list) {
  while (q->lists[list].head >= 0) wake_first(q, list);
}

/* Hands the value at vi to waiting getter i and wakes it: the value goes
 * onto the getter's own stack, right above its get's [self, core], where
 * get_k finds it as its result (a suspended thread's stack is the place
 * lua_resume's documentation gives for values passed to it; a user value
 * slot per waiter cost five API calls more a hand-off).  [-0, +0] */
static void handoff(lua_State *L, Queue *q, int i, int vi) {
  lua_State *th = q->w[i].th;
  w_unlink(q, i);
  lua_pushvalue(L, vi);
  lua_xmove(L, th, 1);
  q->w[i].state = W_HANDED;
  ml__task_wake(q->w[i].task);
}

static void give_back(lua_State *L, Queue *q, int ci, int vi);

/* The cancel hook of every waiter: a task cancelled while it waits leaves
 * its list at once, so that nothing is given to it; its continuation frees
 * the waiter.  The waiter's index is the suspension's context.  It also
 * runs for a getter cancelled after it was handed an item but before it
 * ran (ml__task_suspend_always asks for that): the item goes on at once to
 * the next getter, or back to the front of the queue, so that an item put
 * later cannot overtake it (asyncio keeps that order too).  [-0, +0] on L
 * (the handed item moves off the getter's stack). */
static int wait_hook(lua_State *L, ml_Task *t, void *ud) {
  Queue *q = ud;
  int i = (int)ml__task_kctx(t);
  if (i < 0 || i >= q->wcap || q->w[i].task != t) {
    for (i = 0; i < q->wcap && q->w[i].task != t; i++) {}
    if (i == q->wcap) return 0;
  }
  if (q->w[i].state == W_WAITING) {
    w_unlink(q, i);
    q->w[i].state = W_CANCELLED;
  } else if (q->w[i].state == W_HANDED && lua_checkstack(L, 4)) {
    lua_State *th = q->w[i].th; /* [self, core, item]: see handoff */
    int top = lua_gettop(L), g;
    lua_pushvalue(th, 2);
    lua_xmove(th, L, 1); /* the queue's core */
    lua_xmove(th, L, 1); /* the item, off the getter's stack */
    q->w[i].state = W_CANCELLED;
    if ((g = q->lists[GETTERS].head) >= 0) handoff(L, q, g, top + 2);
    else give_back(L, q, top + 1, top + 2);
    lua_settop(L, top);
  }
  return 0;
}

/* Makes the running task wait in list, then returns k(L, status, i): with
 * LUA_YIELD when it was woken, or LUA_ERRRUN with the CancelledError on
 * top if it was cancelled.  Whatever could raise is checked before the
 * waiter is linked, so k always runs once it is: no lua_pcallk around
 * the suspension (docs/performance.md, "Queue ping-pong").  [-0, +0]
 * up to the suspension: k sees the stack as it was (a getter handed an
 * item has it pushed on top, see handoff). */
static int wait(lua_State *L, Queue *q, int ci, int list, lua_KFunction k) {
  ml_Task *t = ml__task_current(L);
  int i;
  ml__task_check_suspendable(L);
  i = w_new(L, q, ci, list, t);
  q->w[i].th = L;
  return ml__task_suspend_always(L, wait_hook, q, i, k);
}

/* What a continuation does first: unlinks waiter i if it never got to
 * suspend, and frees it; returns its state.  A getter W_HANDED has its
 * item on its stack, right above [self, core] (handoff). */
static int w_finish(Queue *q, int i) {
  int st = q->w[i].state;
  if (st == W_WAITING) w_unlink(q, i);
  w_release(q, i);
  return st;
}

#define FAILED(status) ((status) != LUA_OK && (status) != LUA_YIELD)

/* ---------------------------------------------------------------- */
/* Storage.  The raw operations work on the items table (len, head) and
 * raise only for PriorityQueue comparisons, which swap items so that the
 * table always holds each item once. */

/* [-0, +1] pushes the items table, grown first if it is full. */
static void items_room(lua_State *L, Queue *q, int ci) {
  lua_Integer ncap, i, cap;
  for (;;) {
    lua_getiuservalue(L, ci, UV_ITEMS);
    if (q->len < q->cap) return;
    cap = q->cap;
    ncap = cap ? 2 * cap : 4;
    if (ncap > (1 << 30)) luaL_error(L, "queue too long");
    lua_createtable(L, (int)ncap, 0); /* only keys 1..ncap: never rehashed */
    /* Making it may have run finalizers, and one may have used this queue
     * (grown it, or taken items): then look again. */
    if (q->cap == cap && q->len >= q->cap) break;
    lua_pop(L, 2);
  }
  lua_getiuservalue(L, ci, UV_ITEMS); /* the items, as they are now */
  lua_replace(L, -3);                 /* [items, new] */
  for (i = 0; i < q->len; i++) {
    lua_rawgeti(L, -2, ((q->head + i) & (q->cap - 1)) + 1);
    lua_rawseti(L, -2, i + 1);
  }
  q->head = 0;
  q->cap = ncap;
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, ci, UV_ITEMS);
  lua_remove(L, -2);
}

/* The pushes: [-0, +0] store the value at vi. */
static void fifo_push(lua_State *L, Queue *q, int ci, int vi) {
  items_room(L, q, ci);
  lua_pushvalue(L, vi);
  lua_rawseti(L, -2, ((q->head + q->len) & (q->cap - 1)) + 1);
  q->len++;
  lua_pop(L, 1);
}

/* The pops: [-0, +2] push the items table, then the item removed. */
static void fifo_pop(lua_State *L, Queue *q, int ci) {
  lua_getiuservalue(L, ci, UV_ITEMS);
  lua_rawgeti(L, -1, q->head + 1);
  lua_pushnil(L);
  lua_rawseti(L, -3, q->head + 1);
  q->head = (q->head + 1) & (q->cap - 1);
  q->len--;
  if (q->nback > 0) q->nback--;
}

/* [-0, +0] */
static void lifo_push(lua_State *L, Queue *q, int ci, int vi) {
  items_room(L, q, ci);
  lua_pushvalue(L, vi);
  lua_rawseti(L, -2, q->len + 1);
  q->len++;
  lua_pop(L, 1);
}

/* [-0, +2] pushes the items table, then the item removed. */
static void lifo_pop(lua_State *L, Queue *q, int ci) {
  lua_getiuservalue(L, ci, UV_ITEMS);
  lua_rawgeti(L, -1, q->len);
  lua_pushnil(L);
  lua_rawseti(L, -3, q->len);
  q->len--;
  if (q->nback > q->len) q->nback = q->len;
}

/* a < b, where list tables without __lt compare element by element like
 * Python's tuples: the first pair of elements that are not == decides,
 * and a list that is a prefix of the other is smaller.  May raise (items
 * that do not compare); a and b are absolute indexes.  [-0, +0] */
static int lt(lua_State *L, int a, int b, int depth) {
  lua_Integer na, nb, i, m;
  if (lua_type(L, a) != LUA_TTABLE || lua_type(L, b) != LUA_TTABLE)
    return lua_compare(L, a, b, LUA_OPLT);
  if (luaL_getmetafield(L, a, "__lt") != LUA_TNIL) {
    lua_pop(L, 1);
    return lua_compare(L, a, b, LUA_OPLT);
  }
  if (depth >= MAX_DEPTH) return luaL_error(L, "PriorityQueue items nested too deeply to compare");
  luaL_checkstack(L, 4, NULL);
  na = luaL_len(L, a);
  nb = luaL_len(L, b);
  m = na < nb ? na : nb;
  for (i = 1; i <= m; i++) {
    int top = lua_gettop(L);
    lua_geti(L, a, i);
    lua_geti(L, b, i);
    if (!lua_compare(L, top + 1, top + 2, LUA_OPEQ)) {
      int r = lt(L, top + 1, top + 2, depth + 1);
      lua_settop(L, top);
      return r;
    }
    lua_settop(L, top);
  }
  return na < nb;
}

/* [-0, +0] sifts the value at vi up into the heap. */
static void heap_push(lua_State *L, Queue *q, int ci, int vi) {
  lua_Integer i, p;
  int t;
  items_room(L, q, ci);
  t = lua_gettop(L);
  i = ++q->len;
  lua_pushvalue(L, vi);
  lua_rawseti(L, t, i);
  while (i > 1) {
    p = i / 2;
    lua_rawgeti(L, t, i); /* the new item */
    lua_rawgeti(L, t, p); /* its parent */
    if (!lt(L, t + 1, t + 2, 0)) break;
    lua_rawseti(L, t, i); /* swap them */
    lua_rawseti(L, t, p);
    i = p;
  }
  lua_settop(L, t - 1);
}

/* [-0, +2] pushes the items table, then the smallest item removed. */
static void heap_pop(lua_State *L, Queue *q, int ci) {
  lua_Integer i, c, n = q->len;
  int t;
  lua_getiuservalue(L, ci, UV_ITEMS);
  t = lua_gettop(L);
  lua_rawgeti(L, t, 1); /* the result, at t + 1 */
  lua_rawgeti(L, t, n); /* the last item goes to the root */
  lua_rawseti(L, t, 1);
  lua_pushnil(L);
  lua_rawseti(L, t, n);
  q->len = --n;
  for (i = 1; (c = 2 * i) <= n; i = c) {
    lua_rawgeti(L, t, c); /* the smaller child, at t + 2 */
    if (c < n) {
      lua_rawgeti(L, t, c + 1);
      if (lt(L, t + 3, t + 2, 0)) {
        c++;
        lua_replace(L, t + 2);
      } else {
        lua_pop(L, 1);
      }
    }
    lua_rawgeti(L, t, i); /* the item sifted down, at t + 3 */
    if (!lt(L, t + 2, t + 3, 0)) break;
    lua_rawseti(L, t, c); /* swap them */
    lua_rawseti(L, t, i);
  }
  lua_settop(L, t + 1);
}

/* Adds the value at vi.  Self is argument 1, for K_CUSTOM.  [-0, +0] */
static void st_push(lua_State *L, Queue *q, int ci, int vi) {
  switch (q->kind) {
  case K_FIFO: fifo_push(L, q, ci, vi); break;
  case K_LIFO: lifo_push(L, q, ci, vi); break;
  case K_HEAP: heap_push(L, q, ci, vi); break;
  default:
    lua_getfield(L, 1, "_put");
    lua_pushvalue(L, 1);
    lua_pushvalue(L, vi);
    lua_call(L, 2, 0);
    q->n++;
  }
}

/* Removes the next item (the queue is not empty).  [-0, +2] pushes
 * something (the items table) and then the item. */
static void st_pop(lua_State *L, Queue *q, int ci) {
  switch (q->kind) {
  case K_FIFO: fifo_pop(L, q, ci); break;
  case K_LIFO: lifo_pop(L, q, ci); break;
  case K_HEAP: heap_pop(L, q, ci); break;
  default:
    lua_pushnil(L);
    lua_getfield(L, 1, "_get");
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    q->n--;
  }
}

/* Puts back the value at vi, an item handed to a getter that was
 * cancelled before it could take it.  Items are handed over only while
 * the queue is empty, and given back in the order they were handed over
 * (getters run in the order they were woken), so the item belongs after
 * the items given back before it and before everything else: at the
 * front of a FIFO, at the bottom of a LIFO.  [-0, +0] */
static void give_back(lua_State *L, Queue *q, int ci, int vi) {
  lua_Integer k, m;
  int t;
  if (q->kind != K_FIFO && q->kind != K_LIFO) {
    st_push(L, q, ci, vi);
    return;
  }
  items_room(L, q, ci);
  t = lua_gettop(L);
  m = q->cap - 1;
  if (q->kind == K_FIFO) {
    q->head = (q->head - 1) & m;
    for (k = 0; k < q->nback; k++) {
      lua_rawgeti(L, t, ((q->head + k + 1) & m) + 1);
      lua_rawseti(L, t, ((q->head + k) & m) + 1);
    }
    k = ((q->head + q->nback) & m) + 1;
  } else {
    for (k = q->len; k > q->nback; k--) {
      lua_rawgeti(L, t, k);
      lua_rawseti(L, t, k + 1);
    }
    k = q->nback + 1;
  }
  lua_pushvalue(L, vi);
  lua_rawseti(L, t, k);
  q->len++;
  q->nback++;
  lua_settop(L, t - 1);
}

/* ---------------------------------------------------------------- */
/* put and get.                                                        */

/* Puts the value at vi, room or not: to the first waiting getter if there
 * is one, else into the queue.  [-0, +0] */
static void put_now(lua_State *L, Queue *q, int ci, int vi) {
  int g = q->lists[GETTERS].head;
  if (g >= 0) {
    handoff(L, q, g, vi);
    /* The getter took the item as if from the queue: like any removal,
     * that wakes a putter (there is one only while woken putters have
     * not run yet). */
    wake_first(q, PUTTERS);
  } else {
    st_push(L, q, ci, vi);
  }
  q->unfinished++;
}

/* Takes the next item (the queue is not empty).  [-0, +2] pushes
 * something, then the item. */
static void get_now(lua_State *L, Queue *q, int ci) {
  st_pop(L, q, ci);
  wake_first(q, PUTTERS);
}

static int put_k(lua_State *L, int status, lua_KContext ctx);

/* [self, item, core]: puts, or waits for room (then put_k).  [-0, +0];
 * returns 0 results, or yields. */
static int put_loop(lua_State *L, Queue *q) {
  if (q->shutdown) return ml__exc_raise(L, "QueueShutDown", NULL);
  if (!full(q)) {
    put_now(L, q, 3, 2);
    return 0;
  }
  return wait(L, q, 3, PUTTERS, put_k);
}

/* Continuation of put_loop's wait: [self, item, core], and the error on
 * top if it failed (rethrown).  [-0, +0] */
static int put_k(lua_State *L, int status, lua_KContext ctx) {
  Queue *q = lua_touserdata(L, 3);
  int st = w_finish(q, (int)ctx); /* never W_HANDED */
  if (FAILED(status)) {
    /* Woken but cancelled before it ran: the room it was woken for goes
     * to the next putter. */
    if (st == W_WOKEN && !full(q)) wake_first(q, PUTTERS);
    return lua_error(L);
  }
  return put_loop(L, q);
}

/* await q:put(item) -> nothing */
static int queue_put(lua_State *L) {
  Queue *q;
  if (lua_gettop(L) != 2) lua_settop(L, 2);
  q = check_queue(L);
  return put_loop(L, q);
}

/* q:put_nowait(item) -> nothing; raises QueueFull or QueueShutDown. */
static int queue_put_nowait(lua_State *L) {
  Queue *q;
  lua_settop(L, 2);
  q = check_queue(L);
  if (q->shutdown) return ml__exc_raise(L, "QueueShutDown", NULL);
  if (full(q)) return ml__exc_raise(L, "QueueFull", NULL);
  put_now(L, q, 3, 2);
  return 0;
}

static int get_k(lua_State *L, int status, lua_KContext ctx);

/* [self, core]: returns 1 result, the item pushed (get_now pushes the
 * items table, then the item), or waits (then get_k). */
static int get_loop(lua_State *L, Queue *q) {
  if (count(q) > 0) {
    get_now(L, q, 2);
    return 1;
  }
  if (q->shutdown) return ml__exc_raise(L, "QueueShutDown", NULL);
  return wait(L, q, 2, GETTERS, get_k);
}

/* [self, core], and the item if it was handed one (handoff), and the
 * error if it failed.  Returns the item on top, or rethrows. */
static int get_k(lua_State *L, int status, lua_KContext ctx) {
  Queue *q = lua_touserdata(L, 2);
  int st = w_finish(q, (int)ctx);
  if (FAILED(status)) {
    /* Handed an item but cancelled before it ran: the item goes to the
     * next getter, or back to the queue. */
    if (st == W_HANDED) {
      int g = q->lists[GETTERS].head;
      if (g >= 0) handoff(L, q, g, 3);
      else give_back(L, q, 2, 3);
    }
    return lua_error(L);
  }
  if (st == W_HANDED) return 1; /* the item, on top */
  return get_loop(L, q);        /* woken by shutdown */
}

/* await q:get() -> item */
static int queue_get(lua_State *L) {
  Queue *q;
  if (lua_gettop(L) != 1) lua_settop(L, 1);
  q = check_queue(L);
  return get_loop(L, q);
}

/* q:get_nowait() -> item; raises QueueEmpty or QueueShutDown. */
static int queue_get_nowait(lua_State *L) {
  Queue *q;
  lua_settop(L, 1);
  q = check_queue(L);
  if (count(q) > 0) {
    get_now(L, q, 2);
    return 1;
  }
  return ml__exc_raise(L, q->shutdown ? "QueueShutDown" : "QueueEmpty", NULL);
}

/* ---------------------------------------------------------------- */
/* join, task_done, shutdown.                                          */

/* Continuation of q:join(): [self, core], the error on top if it
 * failed (rethrown); returns nothing. */
static int join_k(lua_State *L, int status, lua_KContext ctx) {
  Queue *q = lua_touserdata(L, 2);
  w_finish(q, (int)ctx); /* never W_HANDED */
  if (FAILED(status)) return lua_error(L);
  return 0; /* woken when the count reached zero, as asyncio's Event */
}

/* await q:join() -> nothing */
static int queue_join(lua_State *L) {
  Queue *q;
  lua_settop(L, 1);
  q = check_queue(L);
  if (q->unfinished <= 0) return 0;
  return wait(L, q, 2, JOINERS, join_k);
}

/* q:task_done() -> nothing; raises ValueError if called too often. */
static int queue_task_done(lua_State *L) {
  Queue *q = check_queue(L);
  if (q->unfinished <= 0)
    return ml__exc_raise(L, "ValueError", "task_done() called too many times");
  if (--q->unfinished == 0) wake_all(q, JOINERS);
  return 0;
}

/* q:shutdown(immediate): put raises QueueShutDown from now on, blocked
 * putters too; get drains what is queued, then raises.  immediate drops
 * the queued items, and those handed to getters that have not run yet,
 * each counting as done for join.  -> nothing */
static int queue_shutdown(lua_State *L) {
  Queue *q;
  int i;
  lua_settop(L, 2);
  q = check_queue(L);
  q->shutdown = 1;
  if (lua_toboolean(L, 2)) {
    while (count(q) > 0) {
      st_pop(L, q, 3);
      lua_pop(L, 2);
      if (q->unfinished > 0) q->unfinished--;
    }
    for (i = 0; i < q->wcap; i++) {
      if (q->w[i].state != W_HANDED) continue;
      lua_pop(q->w[i].th, 1);  /* the item handed, on its stack's top */
      q->w[i].state = W_WOKEN; /* its get finds the queue shut down */
      if (q->unfinished > 0) q->unfinished--;
    }
    if (q->unfinished == 0) wake_all(q, JOINERS);
  }
  wake_all(q, GETTERS);
  wake_all(q, PUTTERS);
  return 0;
}

/* ---------------------------------------------------------------- */
/* The rest.                                                           */

/* q:qsize() -> integer */
static int queue_qsize(lua_State *L) {
  lua_pushinteger(L, count(check_queue(L)));
  return 1;
}

/* q:empty() -> boolean */
static int queue_empty(lua_State *L) {
  lua_pushboolean(L, count(check_queue(L)) == 0);
  return 1;
}

/* q:full() -> boolean */
static int queue_full(lua_State *L) {
  lua_pushboolean(L, full(check_queue(L)));
  return 1;
}

/* A task stays linked here only while it is suspended on this queue, and
 * the suspended frame holds the queue, so the queue outlives its waiters;
 * unless that frame is thrown away without unwinding (coroutine.close on a
 * generator that awaits inside a task).  Then the task still points its
 * cancel hook at this queue: disarm it before the queue goes.
 * __gc(core) -> nothing */
static int queue_gc(lua_State *L) {
  Queue *q = ml__udata_test(L, 1, ML_UT_QUEUE);
  int i;
  if (q == NULL) return 0; /* a script calling __gc on something else */
  for (i = 0; i < q->wcap; i++) {
    ml_Task *t = q->w[i].task;
    if (q->w[i].state == W_WAITING) ml__task_disarm(t, wait_hook, q);
  }
  q->wcap = 0;
  q->wfree = -1;
  q->magic = 0; /* a finalizer that runs later sees no queue here */
  return 0;
}

/* _new(self, kind, maxsize) -> nothing: makes self's Queue, self[1]. */
static int queue_new(lua_State *L) {
  int kind = ml__checkint(L, 2), i;
  lua_Number maxsize = luaL_checknumber(L, 3);
  Queue *q;
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_argcheck(L, kind >= K_CUSTOM && kind <= K_HEAP, 2, "bad storage kind");
  q = lua_newuserdatauv(L, sizeof(Queue), UV_COUNT);
  memset(q, 0, sizeof *q);
  q->magic = QUEUE_MAGIC;
  q->kind = kind;
  q->maxsize = maxsize;
  q->wfree = -1;
  for (i = 0; i < NLISTS; i++) {
    q->lists[i].head = q->lists[i].tail = -1;
    q->lists[i].len = 0;
  }
  q->cap = 4;
  lua_createtable(L, (int)q->cap, 0);
  lua_setiuservalue(L, -2, UV_ITEMS);
  if (ml__udata_newmt(L, ML_UT_QUEUE, QUEUE_MT)) {
    lua_pushcfunction(L, queue_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "asyncio.Queue");
    lua_setfield(L, -2, "__metatable");
  }
  lua_setmetatable(L, -2);
  lua_rawseti(L, 1, 1);
  return 0;
}

/* _info(self) -> qsize, getters, putters, unfinished, shutdown: for
 * __tostring. */
static int queue_info(lua_State *L) {
  Queue *q = check_queue(L);
  lua_pushinteger(L, count(q));
  lua_pushinteger(L, q->lists[GETTERS].len);
  lua_pushinteger(L, q->lists[PUTTERS].len);
  lua_pushinteger(L, q->unfinished);
  lua_pushboolean(L, q->shutdown);
  return 5;
}

/* The storage of each kind as the methods _put(self, item) and _get(self),
 * for classes that override one and call the other (or their parent's).
 * They move items only: the count is kept by the caller.
 * storage._put(self, item) -> nothing */
static int storage_put(lua_State *L) {
  Queue *q;
  lua_settop(L, 2);
  q = check_queue(L);
  switch ((int)lua_tointeger(L, lua_upvalueindex(1))) {
  case K_FIFO: fifo_push(L, q, 3, 2); break;
  case K_LIFO: lifo_push(L, q, 3, 2); break;
  default: heap_push(L, q, 3, 2); break;
  }
  return 0;
}

/* storage._get(self) -> item; raises if the storage is empty. */
static int storage_get(lua_State *L) {
  Queue *q;
  lua_settop(L, 1);
  q = check_queue(L);
  if (q->len == 0) return luaL_error(L, "get from an empty queue storage");
  switch ((int)lua_tointeger(L, lua_upvalueindex(1))) {
  case K_FIFO: fifo_pop(L, q, 2); break;
  case K_LIFO: lifo_pop(L, q, 2); break;
  default: heap_pop(L, q, 2); break;
  }
  return 1;
}

static const luaL_Reg methods[] = {
  {"put_nowait", queue_put_nowait},
  {"get_nowait", queue_get_nowait},
  {"task_done", queue_task_done},
  {"shutdown", queue_shutdown},
  {"qsize", queue_qsize},
  {"empty", queue_empty},
  {"full", queue_full},
  {NULL, NULL},
};

/* The module: {_methods = {...}, _new, _info, _storage = {[kind] = {put,
 * get}}, _FIFO, _LIFO, _HEAP, _CUSTOM}.  Every name starts with "_", so
 * that asyncio merges none of them; queues.lua builds the classes.
 * [-0, +1] pushes that table. */
int luaopen_asyncio__queue(lua_State *L) {
  int k;
  lua_newtable(L);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  ml__push_async(L, "Queue:put", queue_put);
  lua_setfield(L, -2, "put");
  ml__push_async(L, "Queue:get", queue_get);
  lua_setfield(L, -2, "get");
  ml__push_async(L, "Queue:join", queue_join);
  lua_setfield(L, -2, "join");
  lua_setfield(L, -2, "_methods");
  lua_pushcfunction(L, queue_new);
  lua_setfield(L, -2, "_new");
  lua_pushcfunction(L, queue_info);
  lua_setfield(L, -2, "_info");
  lua_newtable(L);
  for (k = K_FIFO; k <= K_HEAP; k++) {
    lua_newtable(L);
    lua_pushinteger(L, k);
    lua_pushcclosure(L, storage_put, 1);
    lua_setfield(L, -2, "put");
    lua_pushinteger(L, k);
    lua_pushcclosure(L, storage_get, 1);
    lua_setfield(L, -2, "get");
    lua_rawseti(L, -2, k);
  }
  lua_setfield(L, -2, "_storage");
  lua_pushinteger(L, K_CUSTOM);
  lua_setfield(L, -2, "_CUSTOM");
  lua_pushinteger(L, K_FIFO);
  lua_setfield(L, -2, "_FIFO");
  lua_pushinteger(L, K_LIFO);
  lua_setfield(L, -2, "_LIFO");
  lua_pushinteger(L, K_HEAP);
  lua_setfield(L, -2, "_HEAP");
  return 1;
}
