/* sched.c: the scheduler loop, callbacks (handles) and the loop object.
 *
 * One iteration runs the entries that were ready when it began, then
 * polls I/O.  The poll rule: while the ready queue never empties, the
 * kernel is polled (ev_run NOWAIT) after every POLL_STEPS entries run or
 * POLL_SECONDS elapsed, whichever comes first, so a ready socket waits at
 * most that long; when the queue empties, the loop blocks in ev_run ONCE.
 * Polling on every iteration (asyncio's rule) costs one epoll_wait per
 * sleep(0) round trip, which measured ~2x slower on the sleep(0) bench.
 * The clock is read once every POLL_CLOCK_STEPS task steps, not after
 * every iteration: a clock_gettime is 25 ns here, a sixth of a sleep(0)
 * round trip, and iterations of one entry each (ping-pong between two
 * tasks) read it on every step (perf: 8% of the queue benchmark's time).
 * So with slow steps a socket may wait up to POLL_CLOCK_STEPS of them
 * instead of one. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <time.h>
#include "task.h"
#include "coro.h"
#include "sched.h"

#define POLL_STEPS 64
#define POLL_SECONDS 0.0005
#define POLL_CLOCK_STEPS 4
#define ML_HANDLE_MT "asyncio.Handle"
#define ML_LOOP_MT "asyncio.Loop"
#define CBTB_KEY "moonloop.cbtb"
#define HANDLER_KEY "moonloop.exception_handler"
/* In debug mode, an entry that held the loop longer than this is reported,
 * as asyncio's slow_callback_duration. */
#define SLOW_CALLBACK 0.1

static double now_mono(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- callbacks in protected mode ---- */

static int timers_batch(lua_State *L);

static int callback_msgh(lua_State *L) {
  lua_Debug ar;
  int level = 1;
  luaL_traceback(L, L, NULL, 1);
  /* Under timers_run, the last frame is timers_batch's, which the user
   * did not write: leave its line out, as a callback's own pcall would. */
  while (lua_getstack(L, level + 1, &ar)) level++;
  if (lua_getstack(L, level, &ar) && lua_getinfo(L, "f", &ar)) {
    if (lua_tocfunction(L, -1) == timers_batch) {
      size_t len;
      const char *tb = lua_tolstring(L, -2, &len), *nl = tb + len;
      while (nl > tb && *nl != '\n') nl--;
      lua_pushlstring(L, tb, nl > tb ? (size_t)(nl - tb) : len);
      lua_replace(L, -3);
    }
    lua_pop(L, 1);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
  return 1;
}

int ml__callback(lua_State *L, int nargs, const char *context) {
  int base = lua_gettop(L) - nargs, st;
  lua_pushcfunction(L, callback_msgh);
  lua_insert(L, base);
  st = lua_pcall(L, nargs, 0, base);
  if (st != LUA_OK) {
    lua_getfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
    ml__report_tb(L, context);
  }
  lua_remove(L, base);
  return st;
}

/* ---- handles: call_soon, call_later, call_at ----
 *
 * asyncio's design: the state has one ev_timer, armed for the earliest of
 * a 4-ary heap of timer handles ordered by (when, seq), instead of one
 * libev timer per handle.  When it fires, one ready entry is queued that
 * runs every handle due then, in time order, under one protected call
 * (timers_run).
 *
 * A pending handle (in the heap or the ready queue) owns one slot of the
 * anchor table and the Pending of the same index in a C array: its seq,
 * where it is, whether it was cancelled.  The anchor slot holds the
 * function itself when there are no arguments, else the Handle, whose
 * user values are the function and the arguments.  Free slots form a list
 * through their Pendings.  The Handle that call_later returns is a small
 * userdata without __gc (when, seq, slot, cancelled), which refers to its
 * slot only while the slot's Pending carries its seq: seq is unique for
 * the life of the state, so a slot reused by a later handle is told
 * apart.  So the common handle is one small userdata that nothing
 * anchors: a script that drops it leaves it to the collector at once, and
 * it holds no user value for the collector to traverse.
 *
 * The heap is often in order: a sorted array is a heap too, and popping
 * its top is then base++, where a sift costs a comparison or three per
 * level.  Timers of one delay come in order and keep it so.  And when the
 * ev_timer fires with a quarter or more of a large heap due, timers_run
 * sorts the heap first (a radix sort: a few linear passes), so that the
 * due ones, and the rest after them, pop in O(1).
 *
 * The profile's lesson (callgrind, ml_bench.lua timers 50000: all
 * instructions over 50,000, start-up and close included): ~2,460 a timer
 * (~2,330 once tasks got smaller) when each Handle was an 88-byte
 * userdata anchored in the table with its function as a user value.
 * Making it cost ~830 (the userdata ~450, of which the collector ~270, a
 * user value set per value, the metatable, the anchor) and firing it ~880
 * (the heap pop ~310, the anchor, the user values, the call).  With the
 * function itself in the anchor and the state in C (a 56-byte Handle, no
 * user value): ~2,070.  With the sort (~70 a timer, where the pops were
 * ~330): ~1,770, and half the wall time (the pops missed the cache).
 * What is left is mostly the Lua API: the userdata and its collection
 * (~250), the anchor's three table accesses (~200), the metatable (~95),
 * and the call of the callback (~300).
 *
 * cancel() is O(1): the handle lets go of its function and arguments (it
 * clears its anchor slot) and stays in the heap until it reaches the top,
 * or until cancelled handles are more than half of the heap, when the
 * heap is rebuilt without them (asyncio's rule).  A cancelled handle
 * holds nothing in Lua, so the heap code releases its slot in C, never
 * touching the Lua stack.  The top of the heap is never a cancelled
 * handle, so the ev_timer is active exactly while a live timer is
 * pending: a cancelled call_later(100, f) keeps nothing alive.  A handle
 * cancelled in the ready queue keeps its slot until the queue reaches it.
 *
 * Reentrancy: lua_newuserdatauv may run a collector step, and so
 * finalizers that schedule handles themselves; a handle's slot is chosen
 * after it, and nothing is taken until the last step that can raise. */

enum { H_DONE = 0, H_HEAP, H_READY };

/* The Handle userdata: all its methods need, also after it ran. */
typedef struct Handle {
  double when;          /* loop:time() it fires at, or NaN (call_soon) */
  uint64_t seq;         /* names it: pend[slot].seq == seq while pending */
  int slot;             /* its anchor slot */
  unsigned short nargs; /* its user values are fn and the arguments */
  unsigned char cancelled;
} Handle;

/* A pending handle's state, by anchor slot. */
typedef struct Pending {
  uint64_t seq;         /* the handle's; 0 while the slot is free */
  int next;             /* while free: the next free slot, or 0 */
  unsigned char where;  /* H_* */
  unsigned char cancelled;
} Pending;

/* A heap entry's key orders by (when, seq) in one unsigned comparison,
 * which compiles without branches: the high half is when's bits mapped so
 * that doubles order as integers, the low half is seq.  Sifting reads no
 * Pending, and a mispredicted branch per level costs more than the level.
 * A radix sort sorts by the bits of the same halves. */
#ifdef __SIZEOF_INT128__
typedef unsigned __int128 Key;
#define KEY(hi, lo) (((Key)(hi) << 64) | (lo))
#define KEY_HI(k) ((uint64_t)((k) >> 64))
#define KEY_LO(k) ((uint64_t)(k))
#define KEY_LT(a, b) ((a) < (b))
#else
typedef struct Key { uint64_t hi, lo; } Key;
static Key key_make(uint64_t hi, uint64_t lo) { Key k = { hi, lo }; return k; }
#define KEY(hi, lo) key_make(hi, lo)
#define KEY_HI(k) ((k).hi)
#define KEY_LO(k) ((k).lo)
#define KEY_LT(a, b) ((a).hi < (b).hi || ((a).hi == (b).hi && (a).lo < (b).lo))
#endif

typedef struct HeapEnt {
  Key key;
  int slot;
} HeapEnt;

static uint64_t when_bits(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return (u >> 63) ? ~u : u | (UINT64_C(1) << 63);
}

static double bits_when(uint64_t u) {
  double d;
  u = (u >> 63) ? u & ~(UINT64_C(1) << 63) : ~u;
  memcpy(&d, &u, sizeof d);
  return d;
}

typedef struct Timers {
  ml_State *S;
  ev_timer timer;       /* armed for the top of the heap while n > 0 */
  uint64_t armed;       /* when_bits of the deadline it was armed for */
  HeapEnt *heap;        /* the heap is heap[base .. base + n) */
  int base, n, cap;
  int sorted;           /* and it is in order: the top pops with base++ */
  int ncancelled;       /* cancelled handles still in the heap */
  Pending *pend;        /* by anchor slot, 1..nslots; capslots > nslots */
  int nslots, capslots;
  int free;             /* the first free slot, or 0 */
  uint64_t seq;         /* the last handle's */
  uint64_t due_bits;    /* timers_run runs the handles due at the last */
  uint64_t due_seq;     /* firing (when_bits), and none scheduled after it */
  int queued;           /* the entry that runs them is queued */
} Timers;

/* More than this many cancelled handles, and more than half of the heap:
 * rebuild it (asyncio's _MIN_SCHEDULED_TIMER_HANDLES, 50%). */
#define MIN_COMPACT 100
/* A heap of at least this many entries, a quarter of them or more due,
 * is sorted before they run (heap_sort). */
#define SORT_MIN 512

static const char timers_key = 0;  /* registry[&timers_key] = the Timers */

#define HEAP(T) ((T)->heap + (T)->base)

static int ent_lt(const HeapEnt *a, const HeapEnt *b) {
  return KEY_LT(a->key, b->key);
}

/* The heap is 4-ary (libev's choice too): half the levels of a binary
 * heap, and a node's children are adjacent in memory. */
#define PARENT(i) (((i) - 1) / 4)
#define CHILD(i) (4 * (i) + 1)

static void sift_up(HeapEnt *hp, int i) {
  HeapEnt e = hp[i];
  while (i > 0) {
    int p = PARENT(i);
    if (!ent_lt(&e, &hp[p])) break;
    hp[i] = hp[p];
    i = p;
  }
  hp[i] = e;
}

/* The index of the smallest of the children c.. of a node, n entries:
 * a tournament of three comparisons, without branches. */
static inline int min_child(const HeapEnt *hp, int n, int c) {
  int a, b, k;
  if (c + 3 < n) {
    a = c + ent_lt(&hp[c + 1], &hp[c]);
    b = c + 2 + ent_lt(&hp[c + 3], &hp[c + 2]);
    return ent_lt(&hp[b], &hp[a]) ? b : a;
  }
  for (a = c, k = c + 1; k < n; k++) a = ent_lt(&hp[k], &hp[a]) ? k : a;
  return a;
}

static void sift_down(HeapEnt *hp, int n, int i) {
  HeapEnt e = hp[i];
  int c;
  while ((c = CHILD(i)) < n) {
    c = min_child(hp, n, c);
    if (!ent_lt(&hp[c], &e)) break;
    hp[i] = hp[c];
    i = c;
  }
  hp[i] = e;
}

/* Removes the top of a heap not in order, of n entries left.  Floyd's
 * order: the hole at the top moves down along the smallest children to a
 * leaf, and the last entry rises from there, usually not far. */
static void heap_pop_sift(HeapEnt *hp, int n) {
  int i = 0, c;
  while ((c = CHILD(i)) < n) {
    c = min_child(hp, n, c);
    hp[i] = hp[c];
    i = c;
  }
  hp[i] = hp[n];
  sift_up(hp, i);
}

/* Removes the top: in a heap in order, by moving its base.  Popping every
 * due timer is most of the heap's work. */
static inline void heap_pop(Timers *T) {
  int n = --T->n;
  if (n == 0) {
    T->base = 0;
    T->sorted = 1;
  } else if (T->sorted) {
    T->base++;
  } else {
    heap_pop_sift(HEAP(T), n);
  }
}

/* Adds e; heap_reserve made room.  A heap in order stays so when e is
 * not before the last entry, as timers of one delay come. */
static inline void heap_push(Timers *T, HeapEnt e) {
  HeapEnt *hp = HEAP(T);
  int i = T->n++;
  hp[i] = e;
  if (i == 0) T->sorted = 1;
  else if (T->sorted && ent_lt(&e, &hp[i - 1])) T->sorted = 0;
  if (!T->sorted) sift_up(hp, i);
}

/* Counts, up to limit, the entries due (when_bits <= bits) in the subtree
 * of entry i, which is due: the children of an entry not due are not due
 * either, so the search visits only the due ones and their children. */
static int count_due(const HeapEnt *hp, int n, int i, uint64_t bits, int limit) {
  int c = CHILD(i), end = c + 4 < n ? c + 4 : n, got = 1;
  for (; c < end && got < limit; c++)
    if (KEY_HI(hp[c].key) <= bits) got += count_due(hp, n, c, bits, limit - got);
  return got;
}

/* An LSD radix sort of a[0..n) by one half of the keys, WORD (KEY_HI:
 * when, KEY_LO: seq), on the bits in which they differ; tmp holds n
 * entries, cnt 1 << RADIX_BITS counts.  Stable.  Returns a or tmp,
 * whichever holds the result.  A pass sorts by up to RADIX_BITS bits,
 * fewer for fewer entries (counts for at most half as many, at least
 * 256).  Past MAXPASSES passes, it sorts by the highest bits that differ
 * only, and *below tells from which bit on (else 0).  A macro, for a
 * function of each half: one taking the half as an argument measured
 * ~20 instructions a timer slower (a test per entry and pass). */
#define RADIX_BITS 16
#define RADIX_SORT(name, WORD, MAXPASSES) \
static HeapEnt *name(HeapEnt *a, HeapEnt *tmp, uint32_t *cnt, size_t n, int *below) { \
  uint64_t first = WORD(a[0].key), diff = 0, mask; \
  HeapEnt *src = a, *dst = tmp, *t; \
  uint32_t sum, x; \
  size_t i, size; \
  int sh, top, bits = 8, passes; \
  *below = 0; \
  for (i = 1; i < n; i++) diff |= WORD(a[i].key) ^ first; \
  if (diff == 0) return a; \
  sh = __builtin_ctzll(diff); \
  top = 64 - __builtin_clzll(diff); \
  while (bits < RADIX_BITS && (size_t)2 << (bits + 1) <= n) bits++; \
  passes = (top - sh + bits - 1) / bits; \
  if (passes > MAXPASSES) \
    *below = sh = top - MAXPASSES * bits; \
  else \
    bits = (top - sh + passes - 1) / passes; \
  size = (size_t)1 << bits; \
  mask = size - 1; \
  for (; sh < top; sh += bits) { \
    memset(cnt, 0, size * sizeof *cnt); \
    for (i = 0; i < n; i++) cnt[(WORD(src[i].key) >> sh) & mask]++; \
    for (sum = 0, i = 0; i < size; i++) { x = cnt[i]; cnt[i] = sum; sum += x; } \
    for (i = 0; i < n; i++) dst[cnt[(WORD(src[i].key) >> sh) & mask]++] = src[i]; \
    t = src; src = dst; dst = t; \
  } \
  return src; \
}
RADIX_SORT(radix_when, KEY_HI, 2)
RADIX_SORT(radix_seq, KEY_LO, 64)

/* Sorts a[0..n) by key into a or b (scratch for n entries), and returns
 * which.  Two radix passes by when put nearly every entry in place; the
 * runs they leave (of one when, or of whens too close for those passes)
 * are sorted on their own: by insertion when short. */
static HeapEnt *sort_keys(HeapEnt *a, HeapEnt *b, uint32_t *cnt, size_t n) {
  int below, ignored;
  HeapEnt *r = radix_when(a, b, cnt, n, &below), *s = r == a ? b : a, *q, e;
  uint64_t prev = KEY_HI(r[0].key) >> below, cur;
  size_t i = 1, j, k, m;
  while (i < n) {
    cur = KEY_HI(r[i].key) >> below;
    if (cur != prev) {
      prev = cur;
      i++;
      continue;
    }
    for (j = i + 1; j < n && KEY_HI(r[j].key) >> below == cur; j++) continue;
    if (j - --i <= 16) {  /* the run r[i..j) */
      for (k = i + 1; k < j; k++) {
        for (e = r[k], m = k; m > i && ent_lt(&e, &r[m - 1]); m--) r[m] = r[m - 1];
        r[m] = e;
      }
    } else {
      q = below ? sort_keys(r + i, s + i, cnt, j - i) : radix_seq(r + i, s + i, cnt, j - i, &ignored);
      if (q != r + i) memcpy(r + i, q, (j - i) * sizeof *r);
    }
    if (j < n) prev = KEY_HI(r[j].key) >> below;
    i = j + 1;
  }
  return r;
}

/* Puts the heap in order (a heap still: so are the children of every
 * entry) with a radix sort: a few passes over the entries, where popping
 * them costs a sift each.  The sort may end in its scratch array, which
 * then becomes the heap's.  Never raises: out of memory, it leaves the
 * heap as it was. */
static void heap_sort(Timers *T) {
  void *ud;
  lua_Alloc f = lua_getallocf(T->S->L, &ud);
  size_t size = (size_t)T->cap * sizeof(HeapEnt), csize = sizeof(uint32_t) << RADIX_BITS;
  HeapEnt *a, *tmp = f(ud, NULL, 0, size);
  uint32_t *cnt = tmp ? f(ud, NULL, 0, csize) : NULL;
  if (cnt == NULL) {
    if (tmp) f(ud, tmp, size, 0);
    return;
  }
  a = sort_keys(HEAP(T), tmp, cnt, (size_t)T->n);
  if (a == tmp) {
    tmp = T->heap;
    T->heap = a;
    T->base = 0;
  }
  f(ud, tmp, size, 0);
  f(ud, cnt, csize, 0);
  T->sorted = 1;
}

/* Grows an array of the state's allocator (so the memory cap applies) to
 * hold at least need elements; raises MemoryError. */
static void *grow(lua_State *L, void *p, int *cap, int need, size_t elem) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  int ncap = *cap ? *cap : 64;
  void *np;
  while (ncap < need) ncap *= 2;
  np = f(ud, p, p ? (size_t)*cap * elem : 0, (size_t)ncap * elem);
  if (np == NULL) {
    ml__push_memory_error(L);
    lua_error(L);
  }
  *cap = ncap;
  return np;
}

/* Makes room for one more entry in the heap; raises MemoryError.  A base
 * past half the array moves back to 0 (the entries before it popped). */
static inline void heap_reserve(lua_State *L, Timers *T) {
  if (T->base + T->n < T->cap) return;
  if (T->base > 0 && T->base >= T->cap / 2) {
    memmove(T->heap, HEAP(T), (size_t)T->n * sizeof *T->heap);
    T->base = 0;
    return;
  }
  T->heap = grow(L, T->heap, &T->cap, T->base + T->n + 1, sizeof *T->heap);
}

/* Frees the slot of a handle that left the heap and the ready queue.  Its
 * anchor slot must be clear already (cancel() clears it). */
static void slot_free(Timers *T, int slot) {
  Pending *p = &T->pend[slot];
  p->seq = 0;
  p->where = H_DONE;
  p->next = T->free;
  T->free = slot;
}

/* Puts the handle of a slot on the ready queue; 0 or -ENOMEM.  The entry's
 * p is the Timers (p == NULL stands for every timer due). */
static int handle_queue(Timers *T, int slot) {
  ml_Entry e = { ML_RUN_HANDLE, T, slot };
  int rc = ml__readyq_push(&T->S->ready, e);
  if (rc == 0) T->pend[slot].where = H_READY;
  return rc;
}

double ml__sched_next_timer(ml_State *S) {
  Timers *T = S->timers;
  ml_Task *t;
  double best = 0;
  int found = 0;
  if (T && ev_is_active(&T->timer)) {
    best = ev_timer_remaining(S->loop, &T->timer);
    found = 1;
  }
  /* Sleeping tasks have a timer each: walk the tasks only if some do. */
  for (t = S->nsleeping > 0 ? S->tasks : NULL; t; t = t->next) {
    ev_timer *w = ml__task_sleep_timer(t);
    if (w) {
      double r = ev_timer_remaining(S->loop, w);
      if (!found || r < best) best = r;
      found = 1;
    }
  }
  if (!found) return -1;
  return best > 0 ? best : 0;
}

/* Arms the ev_timer for the top of the heap, or stops it. */
static void timers_arm(Timers *T) {
  struct ev_loop *loop = T->S->loop;
  double now, d;
  if (T->n == 0) {
    if (ev_is_active(&T->timer)) ev_timer_stop(loop, &T->timer);
    return;
  }
  if (ev_is_active(&T->timer)) {
    if (T->armed == KEY_HI(HEAP(T)[0].key)) return;
    ev_timer_stop(loop, &T->timer);
  }
  T->armed = KEY_HI(HEAP(T)[0].key);
  now = now_mono();
  /* libev counts from its time of the last poll: bring it up to date, and
   * after our now, so the timer never fires before the deadline. */
  ev_now_update(loop);
  d = bits_when(T->armed) - now;
  ev_timer_set(&T->timer, d > 0 ? d : 0., 0.);
  ev_timer_start(loop, &T->timer);
}

/* Releases the cancelled handles at the top of the heap. */
static void timers_settle(Timers *T) {
  while (T->n > 0 && T->pend[HEAP(T)[0].slot].cancelled) {
    slot_free(T, HEAP(T)[0].slot);
    T->ncancelled--;
    heap_pop(T);
  }
}

/* Rebuilds the heap without its cancelled handles, releasing them.  A
 * heap in order stays in order. */
static void timers_compact(Timers *T) {
  HeapEnt *hp = HEAP(T);
  int i, j = 0;
  for (i = 0; i < T->n; i++) {
    int slot = hp[i].slot;
    if (T->pend[slot].cancelled) {
      slot_free(T, slot);
      T->ncancelled--;
      continue;
    }
    hp[j++] = hp[i];
  }
  T->n = j;
  if (j == 0) {
    T->base = 0;
    T->sorted = 1;
  }
  if (!T->sorted)
    for (i = j > 1 ? PARENT(j - 1) : -1; i >= 0; i--) sift_down(hp, j, i);
}

/* The ev_timer fired: libev callbacks only queue work, here one entry that
 * stands for every handle due now, queued once (timers_run runs them). */
static void timers_cb(struct ev_loop *loop, ev_timer *w, int revents) {
  Timers *T = (Timers *)((char *)w - offsetof(Timers, timer));
  ml_Entry e = { ML_RUN_HANDLE, NULL, 0 };
  (void)loop; (void)revents;
  T->due_bits = when_bits(now_mono());
  T->due_seq = T->seq;
  if (!T->queued) {
    if (ml__readyq_push(&T->S->ready, e) == 0) T->queued = 1;
    else timers_arm(T);  /* out of memory: fires again at the next poll */
  }
}

static int timers_gc(lua_State *L) {
  Timers *T = lua_touserdata(L, 1);
  if (T == NULL || T != ml__state(L)->timers) return 0;  /* only the state's own */
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (ev_is_active(&T->timer)) ev_timer_stop(T->S->loop, &T->timer);
  f(ud, T->heap, (size_t)T->cap * sizeof *T->heap, 0);
  f(ud, T->pend, (size_t)T->capslots * sizeof *T->pend, 0);
  T->heap = NULL;
  T->pend = NULL;
  T->base = T->n = T->cap = T->nslots = T->capslots = T->free = T->ncancelled = 0;
  if (T->S->timers == T) T->S->timers = NULL;
  return 0;
}

/* [-0, +1] makes the Handle for fn at index fidx and the values above it;
 * it is not pending yet (handle_anchor).  Upvalue 1: the Handle metatable.
 * May run finalizers (a collector step). */
static inline Handle *handle_make(lua_State *L, int fidx, double when) {
  int i, n = lua_gettop(L) - fidx;
  Handle *h;
  if (lua_type(L, fidx) != LUA_TFUNCTION) luaL_checktype(L, fidx, LUA_TFUNCTION);
  if (n > USHRT_MAX - 2) luaL_error(L, "too many arguments");
  h = lua_newuserdatauv(L, sizeof *h, n ? n + 1 : 0);
  h->when = when;  /* seq and slot: handle_anchor */
  h->nargs = (unsigned short)n;
  h->cancelled = 0;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setmetatable(L, -2);
  for (i = n ? n : -1; i >= 0; i--) {
    lua_pushvalue(L, fidx + i);
    lua_setiuservalue(L, -2, i + 1);
  }
  return h;
}

/* [-0, +0] makes h (on top of the stack, made for fidx) pending: anchors
 * its function, or itself when it has arguments, in a free slot, which it
 * returns.  Upvalue 3: the anchor table.  Raises before taking anything;
 * the caller must not raise after it. */
static inline int handle_anchor(lua_State *L, Timers *T, Handle *h, int fidx) {
  int slot = T->free;
  Pending *p;
  if (slot == 0) {
    if (T->nslots + 1 >= T->capslots)
      T->pend = grow(L, T->pend, &T->capslots, T->nslots + 2, sizeof *T->pend);
    slot = T->nslots + 1;
  }
  lua_pushvalue(L, h->nargs ? -1 : fidx);
  lua_rawseti(L, lua_upvalueindex(3), slot);  /* may raise MemoryError */
  p = &T->pend[slot];
  if (slot == T->free) T->free = p->next;
  else T->nslots = slot;
  p->seq = h->seq = ++T->seq;
  p->where = H_DONE;
  p->cancelled = 0;
  h->slot = slot;
  return slot;
}

/* The Handle's slot, or 0 once it ran or was released. */
static int handle_slot(Timers *T, const Handle *h) {
  int slot = h->slot;
  return slot > 0 && slot <= T->nslots && T->pend[slot].seq == h->seq ? slot : 0;
}

static void warn_slow(ml_State *S, ml_Entry *e, double took);

/* Runs a queued handle; anchor: the anchor table's stack index.  [-0, +0] */
static void handle_run(lua_State *L, Timers *T, int anchor, ml_Entry *e) {
  int i, n = 0, slot = e->ref, base, cancelled = T->pend[slot].cancelled;
  slot_free(T, slot);
  if (cancelled) return;  /* its anchor slot is clear already */
  /* The message handler goes first, below the function: no rotation. */
  lua_pushcfunction(L, callback_msgh);
  base = lua_gettop(L);
  if (lua_rawgeti(L, anchor, slot) != LUA_TFUNCTION)  /* the Handle */
    n = ((Handle *)lua_touserdata(L, -1))->nargs;
  lua_pushnil(L);
  lua_rawseti(L, anchor, slot);  /* the stack anchors it from now on */
  if (!lua_checkstack(L, n + 2)) {
    lua_settop(L, base - 1);
    return;
  }
  for (i = 1; n && i <= n + 1; i++) lua_getiuservalue(L, base + 1, i);
  if (lua_pcall(L, n, 0, base) != LUA_OK) {
    lua_getfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
    ml__report_tb(L, "Exception in callback");
  }
  lua_settop(L, base - 1);
}

/* The body of timers_run, in protected mode: (Timers, anchor table).
 * Each handle is called with lua_call: one protected call for the batch,
 * not one per callback.  An error leaves the rest for the next call.
 * Nothing here holds a pointer into the heap or the Pendings across a
 * callback, which may grow them. */
static int timers_batch(lua_State *L) {
  Timers *T = lua_touserdata(L, 1);
  ml_State *S = T->S;
  while (T->n > 0) {
    Key k = HEAP(T)[0].key;
    int i, n = 0, slot = HEAP(T)[0].slot;
    double t0 = 0;
    if (KEY_HI(k) > T->due_bits || KEY_LO(k) > T->due_seq) break;
    heap_pop(T);
    if (T->pend[slot].cancelled) {  /* its anchor slot is clear already */
      T->ncancelled--;
      slot_free(T, slot);
      continue;
    }
    slot_free(T, slot);  /* the stack anchors fn from here on */
    if (lua_rawgeti(L, 2, slot) != LUA_TFUNCTION)  /* the Handle */
      n = ((Handle *)lua_touserdata(L, 3))->nargs;
    lua_pushnil(L);
    lua_rawseti(L, 2, slot);
    if (n) {
      if (n > 15) luaL_checkstack(L, n + 1, "too many arguments");  /* else */
      for (i = 1; i <= n + 1; i++) lua_getiuservalue(L, 3, i);
    }
    if (S->debug) t0 = now_mono();
    lua_call(L, n, 0);
    if (S->debug && now_mono() - t0 > SLOW_CALLBACK) {
      ml_Entry e = { ML_RUN_HANDLE, T, 0 };
      lua_pushnil(L);
      warn_slow(S, &e, now_mono() - t0);
    }
    if (n) lua_settop(L, 2);
  }
  return 0;
}

/* Runs the handles that were due when the ev_timer last fired, in time
 * order; a handle scheduled meanwhile waits for the next firing, so a
 * callback that keeps rescheduling itself in the past cannot starve I/O.
 * An error in a callback is reported, and the batch goes on.  Queued by
 * timers_cb; anchor: the anchor table's stack index.  [-0, +0] */
static void timers_run(ml_State *S, Timers *T, int anchor) {
  lua_State *L = S->L;
  int st, quarter = T->n / 4;
  T->queued = 0;
  if (!T->sorted && T->n >= SORT_MIN && KEY_HI(HEAP(T)[0].key) <= T->due_bits
      && count_due(HEAP(T), T->n, 0, T->due_bits, quarter) >= quarter)
    heap_sort(T);
  do {
    lua_pushcfunction(L, callback_msgh);
    lua_pushcfunction(L, timers_batch);
    lua_pushlightuserdata(L, T);
    lua_pushvalue(L, anchor);
    st = lua_pcall(L, 2, 0, -4);
    if (st != LUA_OK) {
      lua_getfield(L, LUA_REGISTRYINDEX, CBTB_KEY);
      ml__report_tb(L, "Exception in callback");
    }
    lua_pop(L, 1);
  } while (st != LUA_OK);
  timers_settle(T);
  timers_arm(T);
}

/* The state's Timers (NULL once it closed): no API call, unlike the
 * upvalue the loop's methods also have. */
static Timers *check_timers(lua_State *L) {
  Timers *T = ml__state(L)->timers;
  if (T == NULL) luaL_error(L, "the event loop is closed");
  return T;
}

static int loop_call_soon(lua_State *L) {
  Timers *T = check_timers(L);
  Handle *h = handle_make(L, 2, NAN);  /* NaN: a call_soon's (call_at refuses NaN) */
  int slot = handle_anchor(L, T, h, 2);
  if (handle_queue(T, slot) < 0) {
    h->cancelled = 1;  /* out of memory: it never runs */
    lua_pushnil(L);
    lua_rawseti(L, lua_upvalueindex(3), slot);
    slot_free(T, slot);
  }
  return 1;
}

/* call_later(delay, fn, ...) if relative, else call_at(when, fn, ...):
 * one function for both, which their methods call last, so that the
 * hot path is one C frame. */
static int call_timer(lua_State *L, int relative) {
  Timers *T = check_timers(L);
  Handle *h;
  HeapEnt e;
  int isnum, slot;
  lua_Number when = lua_tonumberx(L, 2, &isnum);
  if (!isnum) when = luaL_checknumber(L, 2);
  if (when != when) return luaL_argerror(L, 2, relative ? "delay is NaN" : "time is NaN");
  if (relative) when = now_mono() + when;  /* a negative delay is a deadline in the past, as asyncio */
  h = handle_make(L, 3, when);
  heap_reserve(L, T);
  slot = handle_anchor(L, T, h, 3);
  T->pend[slot].where = H_HEAP;
  e.key = KEY(when_bits(when), h->seq);
  e.slot = slot;
  heap_push(T, e);
  if (HEAP(T)[0].slot == slot) timers_arm(T);
  return 1;
}

static int loop_call_later(lua_State *L) {
  return call_timer(L, 1);
}

static int loop_call_at(lua_State *L) {
  return call_timer(L, 0);
}

/* The Handle at index 1 (upvalues of its methods: the Timers, the anchor
 * table). */
static Handle *check_handle(lua_State *L) {
  return luaL_checkudata(L, 1, ML_HANDLE_MT);
}

static int handle_cancel(lua_State *L) {
  Handle *h = check_handle(L);
  Timers *T = lua_touserdata(L, lua_upvalueindex(1));
  int slot;
  if (h->cancelled) return 0;
  h->cancelled = 1;
  if ((slot = handle_slot(T, h)) == 0) return 0;  /* it ran */
  T->pend[slot].cancelled = 1;
  lua_pushnil(L);  /* let go of fn and its arguments */
  lua_rawseti(L, lua_upvalueindex(2), slot);
  if (T->pend[slot].where != H_HEAP) return 0;  /* queued: the queue frees it */
  T->ncancelled++;
  if (HEAP(T)[0].slot == slot) {
    timers_settle(T);
    timers_arm(T);
  } else if (T->ncancelled > MIN_COMPACT && 2 * T->ncancelled > T->n) {
    timers_compact(T);
  }
  return 0;
}

static int handle_cancelled(lua_State *L) {
  lua_pushboolean(L, check_handle(L)->cancelled);
  return 1;
}

static int handle_when(lua_State *L) {
  Handle *h = check_handle(L);
  if (h->when != h->when) lua_pushnil(L);  /* call_soon's */
  else lua_pushnumber(L, h->when);
  return 1;
}

static int handle_tostring(lua_State *L) {
  Handle *h = check_handle(L);
  lua_pushfstring(L, "<%sHandle%s>", h->when != h->when ? "" : "Timer",
                  h->cancelled ? " cancelled" : "");
  return 1;
}

/* [-0, +1] pushes the anchor table; returns the Timers. */
static Timers *push_anchor(lua_State *L) {
  Timers *T;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &timers_key);
  T = lua_touserdata(L, -1);
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  return T;
}

/* ---- the scheduler ---- */

/* [-1, +0] pops the task that ran (or nil). */
static void warn_slow(ml_State *S, ml_Entry *e, double took) {
  lua_State *L = S->L;
  char msg[512];
  if (!lua_isnil(L, -1)) {
    snprintf(msg, sizeof msg, "Executing %s took %.3f seconds", ml__tostring(L, -1), took);
    lua_pop(L, 2);
  } else {
    lua_pop(L, 1);
    snprintf(msg, sizeof msg, "Executing a %s took %.3f seconds",
             e->kind == ML_RUN_TASK ? "task step" : e->kind == ML_RUN_HANDLE ? "callback" : "done callback",
             took);
  }
  ml__emit_error(S, msg);
}

/* Runs one entry.  *anchor: the anchor table's stack index, pushed (with
 * *T) on the first handle of an iteration; the caller pops it. */
static void run_entry(ml_State *S, ml_Entry *e, Timers **T, int *anchor) {
  lua_State *L = S->L;
  double t0 = 0;
  ml_Entry copy = *e;
  /* The due timers' entry times each of its callbacks itself. */
  int timed = S->debug && (e->kind != ML_RUN_HANDLE || e->p != NULL);
  if (e->kind == ML_RUN_HANDLE && !*anchor) {
    *T = push_anchor(L);
    *anchor = lua_gettop(L);
  }
  if (timed) {
    t0 = now_mono();
    if (e->kind == ML_RUN_TASK && ((ml_Task *)e->p)->ref != LUA_NOREF) ml__task_push(L, e->p);
    else lua_pushnil(L);
  }
  switch (e->kind) {
  case ML_RUN_TASK:
    ml__task_step(S, e->p);
    break;
  case ML_RUN_HANDLE:
    if (e->p) handle_run(L, *T, *anchor, e);
    else timers_run(S, *T, *anchor);
    break;
  case ML_RUN_FUTURE_CALLBACKS:
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->ref);
    luaL_unref(L, LUA_REGISTRYINDEX, e->ref);
    ml__future_run_callbacks(L);
    break;
  }
  if (timed) {
    if (now_mono() - t0 > SLOW_CALLBACK) warn_slow(S, &copy, now_mono() - t0);
    else lua_pop(L, 1);
  }
}

static void poll_io(ml_State *S, int flags) {
  S->alive = ev_run(S->loop, flags);  /* nonzero: active watchers remain */
  S->last_poll = now_mono();
  S->last_poll_step = S->clock_step = S->nstep;
}

/* The time rule of the poll, with the clock read at most every
 * POLL_CLOCK_STEPS steps. */
static int poll_time_due(ml_State *S) {
  if (S->nstep - S->clock_step < POLL_CLOCK_STEPS) return 0;
  S->clock_step = S->nstep;
  return now_mono() - S->last_poll >= POLL_SECONDS;
}

/* Runs the entries ready now; then polls I/O by the rule at the top.  With
 * defer_idle_poll, an emptied queue is left for the caller to block on. */
static void iterate(ml_State *S, int defer_idle_poll) {
  size_t n = S->ready.len;
  ml_Entry e;
  Timers *T = NULL;
  int anchor = 0;
  while (n-- > 0 && ml__readyq_pop(&S->ready, &e) == 0) run_entry(S, &e, &T, &anchor);
  if (anchor) lua_remove(S->L, anchor);
  if (S->ready.len == 0) {
    if (!defer_idle_poll) poll_io(S, EVRUN_NOWAIT);
  } else if (S->nstep - S->last_poll_step >= POLL_STEPS || poll_time_due(S)) {
    poll_io(S, EVRUN_NOWAIT);
  }
}

int ml__sched_run(ml_State *S, ml_Future *until_done) {
  int rc = 0;
  S->running++;
  for (;;) {
    if (until_done && until_done->state != ML_PENDING) break;
    if (S->stopping) {
      S->stopping = 0;
      break;
    }
    if (S->ready.len == 0) {
      /* Block for I/O or a timer; libev returns at once if no watcher is
       * active, and then nothing can wake anything: idle, or a deadlock
       * if a result is still awaited. */
      poll_io(S, EVRUN_ONCE);
      if (S->ready.len == 0 && !S->alive) {
        if (until_done) rc = -EDEADLK;
        break;
      }
      continue;
    }
    iterate(S, 1);
  }
  S->running--;
  return rc;
}

int ml__sched_step(ml_State *S) {
  S->running++;
  iterate(S, 0);
  S->running--;
  return S->ready.len > 0;
}

/* ---- the loop object ---- */

void ml__push_loop(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, ML_LOOP_MT ".instance");
}

static int loop_time(lua_State *L) {
  lua_pushnumber(L, now_mono());
  return 1;
}

static int loop_create_future(lua_State *L) {
  ml__future_new(L);
  return 1;
}

static int loop_create_task(lua_State *L) {
  lua_remove(L, 1);
  return ml__core_create_task(L);
}

static int loop_stop(lua_State *L) {
  ml__state(L)->stopping = 1;
  return 0;
}

static int loop_is_running(lua_State *L) {
  ml_State *S = ml__state(L);
  lua_pushboolean(L, S->running > 0 || S->current != NULL);
  return 1;
}

static int loop_is_closed(lua_State *L) {
  lua_pushboolean(L, 0);
  return 1;
}

static int loop_get_debug(lua_State *L) {
  lua_pushboolean(L, ml__state(L)->debug);
  return 1;
}

static int loop_set_debug(lua_State *L) {
  ml__state(L)->debug = lua_toboolean(L, 2);
  return 0;
}

static int loop_set_exception_handler(lua_State *L) {
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  lua_setfield(L, LUA_REGISTRYINDEX, HANDLER_KEY);
  return 0;
}

static int loop_get_exception_handler(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, HANDLER_KEY);
  return 1;
}

/* [-0, +1] formats a context table as the default handler prints it. */
static void format_context(lua_State *L, int ctx) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (lua_getfield(L, ctx, "message") != LUA_TNIL) {
    luaL_tolstring(L, -1, NULL);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, ctx, "exception") != LUA_TNIL) {
    luaL_addstring(&b, ": ");
    luaL_tolstring(L, -1, NULL);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  if (lua_getfield(L, ctx, "traceback") == LUA_TSTRING) {
    luaL_addchar(&b, '\n');
    lua_pushvalue(L, -1);
    luaL_addvalue(&b);
  }
  lua_pop(L, 1);
  luaL_pushresult(&b);
}

static int loop_default_exception_handler(lua_State *L) {
  ml_State *S = ml__state(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  format_context(L, 2);
  ml__emit_error(S, lua_tostring(L, -1));
  return 0;
}

static int loop_call_exception_handler(lua_State *L) {
  luaL_checktype(L, 2, LUA_TTABLE);
  if (lua_getfield(L, LUA_REGISTRYINDEX, HANDLER_KEY) == LUA_TFUNCTION) {
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) return 0;
    /* A failing handler: report both, as asyncio does. */
    fprintf(stderr, "moonloop: exception handler failed: %s\n", luaL_tolstring(L, -1, NULL));
  }
  lua_settop(L, 2);
  return loop_default_exception_handler(L);
}

void ml__report_tb(lua_State *L, const char *context) {
  int top = lua_gettop(L);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, context);
  lua_setfield(L, -2, "message");
  lua_pushvalue(L, top - 1);
  lua_setfield(L, -2, "exception");
  lua_pushvalue(L, top);
  lua_setfield(L, -2, "traceback");
  lua_pushcfunction(L, loop_call_exception_handler);
  ml__push_loop(L);
  lua_pushvalue(L, -3);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK)
    ml__emit_error(ml__state(L), lua_tostring(L, -1) ? lua_tostring(L, -1) : "error in error report");
  lua_settop(L, top - 2);
}

void ml__report(lua_State *L, const char *context) {
  lua_pushnil(L);
  ml__report_tb(L, context);
}

static const luaL_Reg loop_methods[] = {
  { "time", loop_time },
  { "create_future", loop_create_future },
  { "create_task", loop_create_task },
  { "stop", loop_stop },
  { "is_running", loop_is_running },
  { "is_closed", loop_is_closed },
  { "get_debug", loop_get_debug },
  { "set_debug", loop_set_debug },
  { "set_exception_handler", loop_set_exception_handler },
  { "get_exception_handler", loop_get_exception_handler },
  { "call_exception_handler", loop_call_exception_handler },
  { "default_exception_handler", loop_default_exception_handler },
  { NULL, NULL }
};

/* Upvalues: the Handle metatable, the Timers, the anchor table. */
static const luaL_Reg timer_methods[] = {
  { "call_soon", loop_call_soon },
  { "call_later", loop_call_later },
  { "call_at", loop_call_at },
  { NULL, NULL }
};

/* Upvalues: the Timers, the anchor table. */
static const luaL_Reg handle_methods[] = {
  { "cancel", handle_cancel },
  { "cancelled", handle_cancelled },
  { "when", handle_when },
  { NULL, NULL }
};

/* Makes the loop object and the Handle type.  [-0, +1] pushes the loop's
 * methods table (asyncio.core.Loop: modules add methods to it). */
void ml__sched_open(lua_State *L) {
  ml_State *S = ml__state(L);
  Timers *T;
  S->last_poll = now_mono();
  T = lua_newuserdatauv(L, sizeof *T, 1);  /* the Timers, kept in the registry */
  memset(T, 0, sizeof *T);
  T->S = S;
  ev_init(&T->timer, timers_cb);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, timers_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_newtable(L);  /* the anchor table */
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &timers_key);
  S->timers = T;
  luaL_newmetatable(L, ML_HANDLE_MT);
  lua_newtable(L);
  lua_pushvalue(L, -3);                        /* the Timers, */
  lua_getiuservalue(L, -1, 1);                 /* the anchor table */
  luaL_setfuncs(L, handle_methods, 2);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, handle_tostring);
  lua_setfield(L, -2, "__tostring");
  luaL_newmetatable(L, ML_LOOP_MT);
  luaL_newlib(L, loop_methods);
  lua_pushvalue(L, -3);                        /* the Handle metatable, */
  lua_pushvalue(L, -5);                        /* the Timers, */
  lua_getiuservalue(L, -1, 1);                 /* the anchor table */
  luaL_setfuncs(L, timer_methods, 3);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "__index");
  /* The loop object itself: a table holding the timer methods (the hot
   * ones: no __index hop per call_later, -120 instructions a timer), whose
   * metatable's __index has the rest, including those modules add. */
  lua_newtable(L);
  lua_pushvalue(L, -4);                        /* the Handle metatable, */
  lua_pushvalue(L, -6);                        /* the Timers, */
  lua_getiuservalue(L, -1, 1);                 /* the anchor table */
  luaL_setfuncs(L, timer_methods, 3);
  lua_pushvalue(L, -3);
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, ML_LOOP_MT ".instance");
  lua_replace(L, -4);                          /* leaves the methods table */
  lua_pop(L, 2);
}
