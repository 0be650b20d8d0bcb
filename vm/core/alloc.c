/* alloc.c: the state's lua_Alloc: size-class pools, a byte cap, exact counts. */
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "alloc.h"

/* Under AddressSanitizer, blocks on a free list and the uncarved part of a
 * slab are poisoned, and a live block is addressable only up to the size
 * Lua asked for, so use-after-free and overruns inside the pools are
 * still caught even though the pools hide them from malloc. */
#if defined(__SANITIZE_ADDRESS__)
#define ML_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ML_ASAN 1
#endif
#endif
#ifdef ML_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define SLAB_SIZE (64 * 1024)
/* Past HUGE_AFTER slabs (2 MiB), a slab is 2 MiB mapped with its pages
 * populated at once, where the kernel can (MAP_POPULATE): a heap that
 * grows that far takes one mmap per 2 MiB instead of 512 page faults.
 * No transparent huge pages (MADV_HUGEPAGE): direct compaction stalls
 * runs, a latency a server must not have.  The measurements are in
 * docs/performance.md ("Allocator"). */
#define HUGE_SLAB (2 * 1024 * 1024)
#define HUGE_AFTER 32
#define SMALL_MAX 2048 /* larger blocks come from malloc */
#define NCLASS 25
#define HDR 16 /* slab and large-block headers; keeps 16-alignment */

/* Class sizes are multiples of 16, so every block is as aligned as the
 * slab (malloc's alignment).  Steps of 16 up to 128 fit the Lua objects
 * that dominate (tables 56, closures 32 + 8 per upvalue, upvalues 40,
 * short strings 24 + length); coarser steps above waste under a quarter.
 * Classes go up to 2 KiB because network code makes a Lua string of each
 * message read (a 1 KiB message is a ~1,065-byte block, past glibc's fast
 * path too; docs/performance.md, "Allocator"). */
static const uint16_t class_size[NCLASS] = {16,  32,   48,   64,   80,   96,   112, 128, 160,
                                            192, 224,  256,  320,  384,  448,  512, 640, 768,
                                            896, 1024, 1152, 1280, 1536, 1792, 2048};

/* class_of[(n + 15) / 16] is the smallest class holding n bytes (n >= 1). */
static const uint8_t class_of[SMALL_MAX / 16 + 1] = {
  0,  0,  1,  2,  3,  4,  5,  6,  7,  8,  8,  9,  9,  10, 10, 11, 11, 12, 12, 12, 12, 13,
  13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15, 16, 16, 16, 16, 16, 16, 16, 16, 17, 17, 17,
  17, 17, 17, 17, 17, 18, 18, 18, 18, 18, 18, 18, 18, 19, 19, 19, 19, 19, 19, 19, 19, 20,
  20, 20, 20, 20, 20, 20, 20, 21, 21, 21, 21, 21, 21, 21, 21, 22, 22, 22, 22, 22, 22, 22,
  22, 22, 22, 22, 22, 22, 22, 22, 22, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23,
  23, 23, 23, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24};

#define CLASS(n) (class_of[((n) + 15) >> 4])

typedef struct Slab {
  struct Slab *next;
  size_t size;
} Slab;

/* Every malloc'd block carries links to its neighbours, so that the
 * allocator can release all of them at once, and can keep a block whose
 * shrink into a pool found no memory (see shrink_to_pool). */
typedef struct Large {
  struct Large *prev, *next;
} Large;

struct ml_Alloc {
  void *free[NCLASS];    /* per-class free lists, linked through block[0] */
  char *bump, *bump_end; /* the uncarved tail of the newest slab */
  Slab *slabs;
  int nslabs;
  Large large; /* sentinel of the ring of malloc'd blocks */
  size_t used, peak, cap;
  int checked; /* cap != 0 or a fault test is set: growth is checked */
  /* The fault test (ml__alloc_set_faults): growths counted, and those
   * numbered fail_from .. fail_from + fail_len - 1 are refused. */
  size_t growths, fail_from, fail_len;
  int counting;
  /* The free gate (ml__alloc_gate_close): while it is closed, a free
   * waits.  Written by other threads, atomically. */
  int gate;
};

_Static_assert(sizeof(Slab) <= HDR && sizeof(Large) <= HDR, "header size");
_Static_assert(HDR % 16 == 0 && SLAB_SIZE % 16 == 0, "alignment");

/* --- pools --------------------------------------------------------- */

static void pool_put(ml_Alloc *a, int c, void *b) {
  UNPOISON(b, sizeof(void *));
  *(void **)b = a->free[c];
  a->free[c] = b;
  POISON(b, class_size[c]);
}

/* Gives the tail of the newest slab to the free list of the largest class
 * that fits in it, so a slab change wastes nothing reusable. */
static void retire_tail(ml_Alloc *a) {
  size_t left = (size_t)(a->bump_end - a->bump);
  if (left >= 16) {
    int c = CLASS(left);
    if (class_size[c] > left) c--;
    pool_put(a, c, a->bump);
  }
  a->bump = a->bump_end = NULL;
}

static int new_slab(ml_Alloc *a) {
  Slab *s = NULL;
  size_t size = SLAB_SIZE;
  /* Not under AddressSanitizer: LeakSanitizer does not scan mapped
   * memory, so a C block whose only pointer sits in a Lua object of a
   * mapped slab (a resolver request under its handle) would be reported
   * as leaked by libFuzzer's per-input check (make fuzz-http found it). */
#if defined(MAP_ANONYMOUS) && defined(MAP_POPULATE) && !defined(ML_ASAN)
  if (a->nslabs >= HUGE_AFTER) {
    void *p = mmap(NULL, HUGE_SLAB, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p != MAP_FAILED) {
      s = p;
      size = HUGE_SLAB;
    }
  }
#endif
  if (s == NULL) {
    s = malloc(SLAB_SIZE);
    size = SLAB_SIZE;
  }
  if (s == NULL) return -1;
  retire_tail(a);
  s->next = a->slabs;
  s->size = size;
  a->slabs = s;
  a->nslabs++;
  a->bump = (char *)s + HDR;
  a->bump_end = (char *)s + size;
  POISON(a->bump, size - HDR);
  return 0;
}

static void *pop(ml_Alloc *a, int c) {
  void *b = a->free[c];
  UNPOISON(b, sizeof(void *));
  a->free[c] = *(void **)b;
  return b;
}

/* A block of class c, addressable for n bytes; NULL if no slab can be
 * had.  Free lists first (most recently freed, so warm in cache), then the
 * slab, then a new slab; when malloc fails, a free block of a larger
 * class (it serves class c until it is freed, then stays in class c). */
static void *pool_get(ml_Alloc *a, int c, size_t n) {
  void *b;
  size_t sz = class_size[c];
  if (a->free[c] != NULL) {
    b = pop(a, c);
  } else if ((size_t)(a->bump_end - a->bump) >= sz || new_slab(a) == 0) {
    b = a->bump;
    a->bump += sz;
  } else {
    int d = c + 1;
    while (d < NCLASS && a->free[d] == NULL) d++;
    if (d == NCLASS) return NULL;
    b = pop(a, d);
  }
  UNPOISON(b, n);
  return b;
}

/* --- large blocks -------------------------------------------------- */

static void *large_alloc(ml_Alloc *a, size_t n) {
  if (n > SIZE_MAX - HDR) return NULL;
  Large *h = malloc(HDR + n);
  if (h == NULL) return NULL;
  h->next = a->large.next;
  h->prev = &a->large;
  h->next->prev = h;
  a->large.next = h;
  return (char *)h + HDR;
}

static void large_free(void *p) {
  Large *h = (Large *)((char *)p - HDR);
  h->prev->next = h->next;
  h->next->prev = h->prev;
  free(h);
}

/* Faults in the pages of [p, p + n) that lie wholly inside it, in one
 * system call, when the range is at least POPULATE_MIN: on this project's
 * VM a page faulted on first touch costs ~9.5 us, one populated by
 * MADV_POPULATE_WRITE ~1 us, and a page already there a table walk
 * (docs/performance.md, "Allocator").  Contents are unchanged; a kernel
 * without it (before Linux 5.14) answers EINVAL, and the pages fault in
 * as before. */
#define POPULATE_MIN (64 * 1024)

void ml__alloc_populate(void *p, size_t n) {
#if defined(MADV_POPULATE_WRITE) && !defined(ML_ASAN)
  /* Set, by any thread, once the kernel refuses (too old, or a seccomp
   * filter): a benign race, each thread then asks once at most.  Other
   * errors (out of memory, a signal) are the moment's, not the kernel's. */
  static int refused;
  static uintptr_t page; /* the same for every thread: a benign race too */
  uintptr_t lo, hi;
  int saved = errno; /* a caller between a system call and its errno */
  if (n < POPULATE_MIN || __atomic_load_n(&refused, __ATOMIC_RELAXED)) return;
  if (page == 0) page = (uintptr_t)sysconf(_SC_PAGESIZE);
  lo = ((uintptr_t)p + page - 1) & ~(page - 1);
  hi = ((uintptr_t)p + n) & ~(page - 1);
  if (hi > lo && madvise((void *)lo, hi - lo, MADV_POPULATE_WRITE) != 0 &&
      (errno == EINVAL || errno == ENOSYS || errno == EPERM))
    __atomic_store_n(&refused, 1, __ATOMIC_RELAXED);
  errno = saved;
#else
  (void)p;
  (void)n;
#endif
}

/* A large block that grows is an array growing (a Lua table's parts, the
 * timer heap's arrays, a buffer), and whoever grew it writes its new tail
 * next, so the tail is populated at once (a fresh block is not: a big
 * string is often a transient that glibc serves from memory it reuses). */
static void *large_realloc(void *p, size_t osize, size_t n) {
  if (n > SIZE_MAX - HDR) return NULL;
  Large *h = realloc((char *)p - HDR, HDR + n);
  if (h == NULL) return NULL;
  h->prev->next = h; /* the links moved with the block */
  h->next->prev = h;
  if (n > osize) ml__alloc_populate((char *)h + HDR + osize, n - osize);
  return (char *)h + HDR;
}

/* --- the lua_Alloc ------------------------------------------------- */

/* Moves the live block p (osize bytes, malloc'd) into a pool block of
 * nsize <= SMALL_MAX bytes.  Never fails: if no pool block can be had,
 * p itself becomes the pool block.  It stays on the large ring, so it is
 * released by ml__alloc_free, and meanwhile it serves its new class. */
static void *shrink_to_pool(ml_Alloc *a, void *p, size_t nsize) {
  void *q = pool_get(a, CLASS(nsize), nsize);
  if (q == NULL) return p;
  memcpy(q, p, nsize);
  large_free(p);
  return q;
}

/* Resizes the live block p from osize to nsize bytes (both > 0). */
static void *resize(ml_Alloc *a, void *p, size_t osize, size_t nsize) {
  if (osize <= SMALL_MAX && nsize <= SMALL_MAX) {
    int co = CLASS(osize), cn = CLASS(nsize);
    if (co == cn) {
      POISON(p, class_size[co]);
      UNPOISON(p, nsize);
      return p;
    }
    void *q = pool_get(a, cn, nsize);
    if (q == NULL) {
      if (nsize > osize) return NULL;
      /* A shrink must not fail: keep the bigger block.  When Lua frees
       * it, it joins class cn, which it can serve. */
      POISON(p, class_size[co]);
      UNPOISON(p, nsize);
      return p;
    }
    memcpy(q, p, osize < nsize ? osize : nsize);
    pool_put(a, co, p);
    return q;
  }
  if (osize <= SMALL_MAX) { /* small to large */
    void *q = large_alloc(a, nsize);
    if (q == NULL) return NULL;
    memcpy(q, p, osize);
    pool_put(a, CLASS(osize), p);
    return q;
  }
  if (nsize <= SMALL_MAX) return shrink_to_pool(a, p, nsize);
  void *q = large_realloc(p, osize, nsize);
  if (q == NULL && nsize < osize) return p; /* the old block is big enough */
  return q;
}

int ml__alloc_full_fence;

static void gate_wait(ml_Alloc *a) {
  while (__atomic_load_n(&a->gate, __ATOMIC_ACQUIRE)) sched_yield();
}

int ml__alloc_gate_close(ml_Alloc *a) {
  int open = 0;
  return __atomic_compare_exchange_n(&a->gate, &open, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}

void ml__alloc_gate_open(ml_Alloc *a) { __atomic_store_n(&a->gate, 0, __ATOMIC_RELEASE); }

/* The lua_Alloc contract: ptr == NULL means a new block and osize is then
 * a type tag (LUA_TTABLE...), not a size; nsize == 0 means free ptr and
 * return NULL; otherwise behave like realloc, returning NULL only when
 * the request cannot be met, with ptr left intact. */
void *ml__alloc_lua(void *ud, void *ptr, size_t osize, size_t nsize) {
  ml_Alloc *a = ud;
  if (ptr == NULL) osize = 0;
  if (nsize == 0) {
    if (ptr != NULL) {
      /* Freeing is what the gate holds back (budget.c, "Arming from
       * another thread"): the gate's closer fences (membarrier) after
       * closing it, so a compiler barrier is enough here, unless there
       * is no membarrier. */
      if (ml__alloc_full_fence) __atomic_thread_fence(__ATOMIC_SEQ_CST);
      else __atomic_signal_fence(__ATOMIC_SEQ_CST);
      if (__builtin_expect(__atomic_load_n(&a->gate, __ATOMIC_RELAXED), 0)) gate_wait(a);
      if (osize <= SMALL_MAX) pool_put(a, CLASS(osize), ptr);
      else large_free(ptr);
      a->used -= osize;
    }
    return NULL;
  }
  if (nsize > osize && a->checked) {
    size_t grow = nsize - osize;
    if (a->cap != 0 && (grow > a->cap || a->used > a->cap - grow)) return NULL;
    if (a->counting) {
      size_t n = ++a->growths;
      if (n >= a->fail_from && n - a->fail_from < a->fail_len) return NULL;
    }
  }
  void *p;
  if (ptr != NULL) p = resize(a, ptr, osize, nsize);
  else if (nsize <= SMALL_MAX) p = pool_get(a, CLASS(nsize), nsize);
  else p = large_alloc(a, nsize);
  if (p == NULL) return NULL;
  a->used = a->used - osize + nsize;
  if (a->used > a->peak) a->peak = a->used;
  return p;
}

/* --- the allocator ------------------------------------------------- */

ml_Alloc *ml__alloc_new(size_t cap) {
  ml_Alloc *a = calloc(1, sizeof *a);
  if (a == NULL) return NULL;
  a->large.prev = a->large.next = &a->large;
  a->cap = cap;
  return a;
}

/* Releases every slab and every malloc'd block still live, whether or not
 * Lua freed what it had (lua_close frees everything first; a host that
 * abandons a state after a failed lua_close does not leak). */
void ml__alloc_free(ml_Alloc *a) {
  if (a == NULL) return;
  Slab *s = a->slabs;
  while (s != NULL) {
    Slab *next = s->next;
    UNPOISON(s, s->size);
    if (s->size == HUGE_SLAB) munmap(s, HUGE_SLAB); /* mapped */
    else free(s);
    s = next;
  }
  Large *h = a->large.next;
  while (h != &a->large) {
    Large *next = h->next;
    free(h);
    h = next;
  }
  free(a);
}

/* A cap below what is used now refuses every growth until enough is
 * freed; nothing already handed out is taken back. */
void ml__alloc_set_cap(ml_Alloc *a, size_t cap) {
  a->cap = cap;
  a->checked = cap != 0 || a->counting;
}

void ml__alloc_set_faults(ml_Alloc *a, size_t from, size_t len) {
  a->counting = 1;
  a->checked = 1;
  a->growths = 0;
  a->fail_from = from;
  a->fail_len = from == 0 ? 0 : len;
}

int ml__alloc_fail_next(ml_Alloc *a, size_t n, size_t len) {
  if (!a->counting) return -1;
  a->fail_from = n == 0 ? 0 : a->growths + n;
  a->fail_len = n == 0 ? 0 : len;
  return 0;
}

size_t ml__alloc_growths(const ml_Alloc *a) { return a->growths; }

int ml__alloc_counting(const ml_Alloc *a) { return a->counting; }

size_t ml__alloc_used(const ml_Alloc *a) { return a->used; }

size_t ml__alloc_peak(const ml_Alloc *a) { return a->peak; }
