/* timerheap.c: the timer heap: a 4-ary heap of (when, tie, id), its radix
 * sort, ids and lazy cancellation (timerheap.h says how); no lua_State. */
#include <errno.h>
#include <string.h>
#include "alloc.h"
#include "timerheap.h"

typedef ml_TimerKey Key;
#ifdef __SIZEOF_INT128__
#define KEY(hi, lo) (((Key)(hi) << 64) | (lo))
#define KEY_HI(k) ((uint64_t)((k) >> 64))
#define KEY_LO(k) ((uint64_t)(k))
#define KEY_LT(a, b) ((a) < (b))
#else
static Key key_make(uint64_t hi, uint64_t lo) {
  Key k = {hi, lo};
  return k;
}
#define KEY(hi, lo) key_make(hi, lo)
#define KEY_HI(k) ((k).hi)
#define KEY_LO(k) ((k).lo)
#define KEY_LT(a, b) ((a).hi < (b).hi || ((a).hi == (b).hi && (a).lo < (b).lo))
#endif
/* The low half: the tie above, the id below. */
#define LO(tie, id) ((uint64_t)(tie) << 32 | (uint32_t)(id))
#define KEY_TIE(k) (KEY_LO(k) >> 32)
#define ENT_ID(e) ML_THEAP_ENT_ID(e)

typedef ml_TimerEnt HeapEnt;

/* The high half of a key: when's bits mapped so that doubles order as
 * unsigned integers.  Sifting reads no ml_TimerId, and a mispredicted
 * branch per level costs more than the level: so a key is compared in
 * one unsigned comparison, and a radix sort sorts by the bits of its two
 * halves. */
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

#define HEAP(H) ((H)->heap + (H)->base)

static int ent_lt(const HeapEnt *a, const HeapEnt *b) { return KEY_LT(a->key, b->key); }

/* The heap is 4-ary (libev's choice too): half the levels of a binary
 * heap, and a node's children are adjacent in memory. */
#define PARENT(i) (((i)-1) / 4)
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
static inline void heap_pop(ml_TimerHeap *H) {
  int n = --H->n;
  if (n == 0) {
    H->base = 0;
    H->sorted = 1;
  } else if (H->sorted) {
    H->base++;
  } else {
    heap_pop_sift(HEAP(H), n);
  }
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

/* An LSD radix sort of a[0..n) by a word of the keys, WORD (KEY_HI:
 * when, KEY_TIE: the tie), on the bits in which they differ; tmp holds n
 * entries, cnt 1 << RADIX_BITS counts.  Stable.  Returns a or tmp,
 * whichever holds the result.  A pass sorts by up to RADIX_BITS bits,
 * fewer for fewer entries (counts for at most half as many, at least
 * 256).  Past MAXPASSES passes, it sorts by the highest bits that differ
 * only, and *below tells from which bit on (else 0).  A macro, for a
 * function of each half: one taking the half as an argument tests it
 * per entry and pass, which measured slower (docs/performance.md, "Timers"). */
#define RADIX_BITS 16
#define RADIX_SORT(name, WORD, MAXPASSES)                                               \
  static HeapEnt *name(HeapEnt *a, HeapEnt *tmp, uint32_t *cnt, size_t n, int *below) { \
    uint64_t first = WORD(a[0].key), diff = 0, mask;                                    \
    HeapEnt *src = a, *dst = tmp, *t;                                                   \
    uint32_t sum, x;                                                                    \
    size_t i, size;                                                                     \
    int sh, top, bits = 8, passes;                                                      \
    *below = 0;                                                                         \
    for (i = 1; i < n; i++) diff |= WORD(a[i].key) ^ first;                             \
    if (diff == 0) return a;                                                            \
    sh = __builtin_ctzll(diff);                                                         \
    top = 64 - __builtin_clzll(diff);                                                   \
    while (bits < RADIX_BITS && (size_t)2 << (bits + 1) <= n) bits++;                   \
    passes = (top - sh + bits - 1) / bits;                                              \
    if (passes > MAXPASSES) *below = sh = top - MAXPASSES * bits;                       \
    else bits = (top - sh + passes - 1) / passes;                                       \
    size = (size_t)1 << bits;                                                           \
    mask = size - 1;                                                                    \
    for (; sh < top; sh += bits) {                                                      \
      memset(cnt, 0, size * sizeof *cnt);                                               \
      for (i = 0; i < n; i++) cnt[(WORD(src[i].key) >> sh) & mask]++;                   \
      for (sum = 0, i = 0; i < size; i++) {                                             \
        x = cnt[i];                                                                     \
        cnt[i] = sum;                                                                   \
        sum += x;                                                                       \
      }                                                                                 \
      for (i = 0; i < n; i++) dst[cnt[(WORD(src[i].key) >> sh) & mask]++] = src[i];     \
      t = src;                                                                          \
      src = dst;                                                                        \
      dst = t;                                                                          \
    }                                                                                   \
    return src;                                                                         \
  }
RADIX_SORT(radix_when, KEY_HI, 2)
RADIX_SORT(radix_tie, KEY_TIE, 64)

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
    if (j - --i <= 16) { /* the run r[i..j) */
      for (k = i + 1; k < j; k++) {
        for (e = r[k], m = k; m > i && ent_lt(&e, &r[m - 1]); m--) r[m] = r[m - 1];
        r[m] = e;
      }
    } else {
      q =
        below ? sort_keys(r + i, s + i, cnt, j - i) : radix_tie(r + i, s + i, cnt, j - i, &ignored);
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
 * then becomes the heap's.  Out of memory, it leaves the heap as it was. */
static void heap_sort(ml_TimerHeap *H) {
  size_t size = (size_t)H->cap * sizeof(HeapEnt), csize = sizeof(uint32_t) << RADIX_BITS;
  HeapEnt *a, *tmp = H->alloc(H->ud, NULL, 0, size);
  uint32_t *cnt = tmp ? H->alloc(H->ud, NULL, 0, csize) : NULL;
  if (cnt == NULL) {
    if (tmp) H->alloc(H->ud, tmp, size, 0);
    return;
  }
  /* The passes write every entry's place: fault the pages in at once. */
  ml__alloc_populate(tmp, (size_t)H->n * sizeof(HeapEnt));
  a = sort_keys(HEAP(H), tmp, cnt, (size_t)H->n);
  if (a == tmp) {
    tmp = H->heap;
    H->heap = a;
    H->base = 0;
  }
  H->alloc(H->ud, tmp, size, 0);
  H->alloc(H->ud, cnt, csize, 0);
  H->sorted = 1;
}

/* Grows an array to hold at least need elements; 0 or -ENOMEM. */
static int grow(ml_TimerHeap *H, void **p, int *cap, int need, size_t elem) {
  int ncap = *cap ? *cap : 64;
  void *np;
  while (ncap < need) ncap *= 2;
  np = H->alloc(H->ud, *p, *p ? (size_t)*cap * elem : 0, (size_t)ncap * elem);
  if (np == NULL) return -ENOMEM;
  *p = np;
  *cap = ncap;
  return 0;
}

void ml__theap_init(ml_TimerHeap *H, ml_Allocf alloc, void *ud) {
  memset(H, 0, sizeof *H);
  H->sorted = 1;
  H->alloc = alloc;
  H->ud = ud;
}

void ml__theap_free(ml_TimerHeap *H) {
  if (H->heap) H->alloc(H->ud, H->heap, (size_t)H->cap * sizeof *H->heap, 0);
  if (H->ids) H->alloc(H->ud, H->ids, (size_t)H->capids * sizeof *H->ids, 0);
  H->heap = NULL;
  H->ids = NULL;
  H->base = H->n = H->cap = H->nids = H->capids = H->free = H->ncancelled = 0;
  H->sorted = 1;
}

/* ---- ids ---- */

/* Out of line, so that the common case is a leaf: no registers to save. */
static __attribute__((noinline)) int ids_grow(ml_TimerHeap *H) {
  if (grow(H, (void **)&H->ids, &H->capids, H->nids + 2, sizeof *H->ids) < 0) return -ENOMEM;
  return H->nids + 1;
}

int ml__theap_id_peek(ml_TimerHeap *H) {
  if (H->free) return H->free;
  if (H->nids + 1 >= H->capids) return ids_grow(H);
  return H->nids + 1;
}

/* Takes the id ml__theap_id_peek returned. */
static inline uint64_t id_take(ml_TimerHeap *H, int id) {
  ml_TimerId *p = &H->ids[id];
  if (id == H->free) H->free = (int)(*p >> ML_TID_SHIFT);
  else H->nids = id;
  *p = ++H->seq << ML_TID_SHIFT; /* not in the heap, not cancelled */
  return H->seq;
}

uint64_t ml__theap_id_take(ml_TimerHeap *H, int id) { return id_take(H, id); }

static inline void id_free(ml_TimerHeap *H, int id) {
  H->ids[id] = (uint64_t)H->free << ML_TID_SHIFT | ML_TID_FREE;
  H->free = id;
}

void ml__theap_id_free(ml_TimerHeap *H, int id) { id_free(H, id); }

int ml__theap_id_live(const ml_TimerHeap *H, int id, uint64_t seq) {
  return id > 0 && id <= H->nids && ml__theap_id_seq(H, id) == seq ? id : 0;
}

/* ---- the heap ---- */

/* Makes room for one more entry; 0 or -ENOMEM.  A base past half the
 * array moves back to 0 (the entries before it popped). */
static __attribute__((noinline)) int heap_grow(ml_TimerHeap *H) {
  if (H->base > 0 && H->base >= H->cap / 2) {
    memmove(H->heap, HEAP(H), (size_t)H->n * sizeof *H->heap);
    H->base = 0;
    return 0;
  }
  return grow(H, (void **)&H->heap, &H->cap, H->base + H->n + 1, sizeof *H->heap);
}

int ml__theap_prepare(ml_TimerHeap *H) {
  if (H->base + H->n >= H->cap && heap_grow(H) < 0) return -ENOMEM;
  return ml__theap_id_peek(H);
}

/* Numbers the ties afresh, 1..n in the entries' order, when the counter
 * would wrap (once in 2^32 pushes): in place, by a heapsort that pops each
 * top to the end of the array, which then holds them in descending order,
 * reversed after (a heap in order is in order already).  The marked batch
 * ends here (its bound no longer applies); what was due in it pops at the
 * next mark. */
static __attribute__((noinline)) void renumber(ml_TimerHeap *H) {
  HeapEnt *hp = HEAP(H), top;
  int i, n = H->n;
  if (!H->sorted) {
    for (i = n - 1; i > 0; i--) {
      top = hp[0];
      heap_pop_sift(hp, i);
      hp[i] = top;
    }
    for (i = 0; i < n / 2; i++) {
      top = hp[i];
      hp[i] = hp[n - 1 - i];
      hp[n - 1 - i] = top;
    }
  }
  for (i = 0; i < n; i++) hp[i].key = KEY(KEY_HI(hp[i].key), LO(i + 1, ENT_ID(hp[i])));
  H->sorted = 1;
  H->tie = (uint32_t)n;
  H->due_lo = 0;
}

/* A heap in order stays so when the entry is not before the last one, as
 * timers of one delay come: then the push is a store. */
int ml__theap_push(ml_TimerHeap *H, double when, int id) {
  HeapEnt *hp = HEAP(H), e;
  int i;
  if (H->tie == UINT32_MAX) renumber(H);
  i = H->n++;
  id_take(H, id);
  e.key = KEY(when_bits(when), LO(++H->tie, id));
  H->ids[id] |= ML_TID_IN_HEAP;
  hp[i] = e;
  if (i == 0) H->sorted = 1;
  else if (H->sorted && ent_lt(&e, &hp[i - 1])) H->sorted = 0;
  if (!H->sorted) sift_up(hp, i);
  return ENT_ID(hp[0]) == id;
}

int ml__theap_top(const ml_TimerHeap *H, double *when) {
  if (H->n == 0) return 0;
  *when = bits_when(KEY_HI(HEAP(H)[0].key));
  return 1;
}

void ml__theap_settle(ml_TimerHeap *H) {
  while (H->n > 0 && H->ids[ENT_ID(HEAP(H)[0])] & ML_TID_CANCELLED) {
    id_free(H, ENT_ID(HEAP(H)[0]));
    H->ncancelled--;
    heap_pop(H);
  }
}

/* Rebuilds the heap without its cancelled entries, freeing them.  A heap
 * in order stays in order. */
static void compact(ml_TimerHeap *H) {
  HeapEnt *hp = HEAP(H);
  int i, j = 0;
  for (i = 0; i < H->n; i++) {
    int id = ENT_ID(hp[i]);
    if (H->ids[id] & ML_TID_CANCELLED) {
      id_free(H, id);
      H->ncancelled--;
      continue;
    }
    hp[j++] = hp[i];
  }
  H->n = j;
  if (j == 0) {
    H->base = 0;
    H->sorted = 1;
  }
  if (!H->sorted)
    for (i = j > 1 ? PARENT(j - 1) : -1; i >= 0; i--) sift_down(hp, j, i);
}

/* The top is never cancelled, so compacting leaves it. */
int ml__theap_cancel(ml_TimerHeap *H, int id) {
  H->ids[id] |= ML_TID_CANCELLED;
  if (!(H->ids[id] & ML_TID_IN_HEAP)) return 0;
  H->ncancelled++;
  if (ENT_ID(HEAP(H)[0]) == id) {
    ml__theap_settle(H);
    return 1;
  }
  if (H->ncancelled > ML_THEAP_MIN_COMPACT && 2 * H->ncancelled > H->n) compact(H);
  return 0;
}

/* ---- the due batch ---- */

void ml__theap_mark_due(ml_TimerHeap *H, double now) {
  H->due_bits = when_bits(now);
  H->due_lo = LO(H->tie, UINT32_MAX);
}

void ml__theap_prepare_due(ml_TimerHeap *H) {
  int quarter = H->n / 4;
  if (!H->sorted && H->n >= ML_THEAP_SORT_MIN && KEY_HI(HEAP(H)[0].key) <= H->due_bits &&
      count_due(HEAP(H), H->n, 0, H->due_bits, quarter) >= quarter)
    heap_sort(H);
}

/* Pops the top of a heap not in order, or a cancelled one, for
 * ml__theap_pop_due: out of line, so that its common case (a heap in
 * order, a live timer) is a leaf, with no registers to save. */
static __attribute__((noinline)) int pop_due_slow(ml_TimerHeap *H) {
  while (H->n > 0) {
    Key k = HEAP(H)[0].key;
    int id = ENT_ID(HEAP(H)[0]), cancelled = (int)(H->ids[id] & ML_TID_CANCELLED);
    if (KEY_HI(k) > H->due_bits || KEY_LO(k) > H->due_lo) return 0;
    heap_pop(H);
    id_free(H, id);
    if (!cancelled) return id;
    H->ncancelled--;
  }
  return 0;
}

int ml__theap_pop_due(ml_TimerHeap *H) {
  const HeapEnt *top = HEAP(H);
  int id;
  if (H->n == 0 || KEY_HI(top->key) > H->due_bits || KEY_LO(top->key) > H->due_lo) return 0;
  id = ENT_ID(*top);
  if (!H->sorted || H->n == 1 || H->ids[id] & ML_TID_CANCELLED) return pop_due_slow(H);
  /* The ids of a sorted batch come in no order (they follow the pushes):
   * fetch the one 16 pops ahead, which its pop writes. */
  if (H->n > 16) __builtin_prefetch(&H->ids[ENT_ID(top[16])], 1);
  H->n--;
  H->base++;
  id_free(H, id);
  return id;
}
