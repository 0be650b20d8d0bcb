/* timerheap.h: the timer heap (timerheap.c): deadlines ordered by (when,
 * push order), the ids that name them, lazy cancellation; no lua_State.
 *
 * The heap holds (when, tie, id) entries; the tie counts pushes and
 * breaks ties, so timers of one deadline fire in the order they were
 * pushed (FIFO).  Ids are small integers 1..nids (handle.c uses them as
 * slots of its anchor table) allocated from a free list; an id's seq is
 * unique for the life of the heap, so a holder of (id, seq) can tell
 * whether the id still names its timer or was reused.  An id may name
 * something that is not in the heap (a call_soon's handle in the ready
 * queue): ids and heap entries are separate.
 *
 * Cancelling is O(1): the entry stays in the heap until it reaches the
 * top (where it is released: the top is never a cancelled entry), or
 * until cancelled entries are more than half of the heap and more than
 * ML_THEAP_MIN_COMPACT, when the heap is rebuilt without them (asyncio's
 * rule).
 *
 * The heap is often in order: a sorted array is a heap too, and popping
 * its top is then base++, where a sift costs a comparison or three per
 * level.  Timers of one delay come in order and keep it so.  When a batch
 * is due (ml__theap_mark_due) with a quarter or more of a large heap in
 * it, ml__theap_prepare_due sorts the heap first (a radix sort: a few
 * linear passes), so that the due ones, and the rest after them, pop in
 * O(1).  docs/performance.md has the profile that chose this.
 *
 * Memory comes from an allocator with lua_Alloc's contract (the state's,
 * so that its memory cap applies); nothing here raises: growth returns
 * -ENOMEM. */
#ifndef ML_TIMERHEAP_H
#define ML_TIMERHEAP_H

#include <stddef.h>
#include <stdint.h>

/* lua_Alloc's signature, without lua.h. */
typedef void *(*ml_Allocf)(void *ud, void *ptr, size_t osize, size_t nsize);

/* A heap entry is its key, which orders by (when, tie) in one unsigned
 * comparison that compiles without branches: the high half is when's bits
 * mapped so that doubles order as integers; the low half is the tie (a
 * 32-bit push counter, above) and the id (below), which the comparison
 * never reaches, ties being unique.  16 bytes an entry: a cold 200k-timer
 * burst writes every entry to fresh memory and the radix sort reads and
 * writes them again, so the entry's size is most of the heap's cost
 * (docs/performance.md, "Timers").  When the counter would wrap, the
 * entries are numbered afresh in their order (ml__theap_push). */
#ifdef __SIZEOF_INT128__
typedef unsigned __int128 ml_TimerKey;
#else
typedef struct ml_TimerKey {
  uint64_t hi, lo;
} ml_TimerKey;
#endif

typedef struct ml_TimerEnt {
  ml_TimerKey key;
} ml_TimerEnt;

/* The id of an entry. */
#ifdef __SIZEOF_INT128__
#define ML_THEAP_ENT_ID(e) ((int)(uint32_t)(e).key)
#else
#define ML_THEAP_ENT_ID(e) ((int)(uint32_t)(e).key.lo)
#endif

/* What an id names, by id: one word, 8 bytes a timer (the heap's arrays
 * are written to fresh memory in a burst; docs/performance.md, "Timers").
 * Taken: its timer's seq above ML_TID_SHIFT, and the flags below; free:
 * the next free id (or 0) above, and ML_TID_FREE.  A seq has 61 bits. */
typedef uint64_t ml_TimerId;
#define ML_TID_CANCELLED 1u /* cancelled */
#define ML_TID_IN_HEAP 2u   /* its timer is an entry of the heap */
#define ML_TID_FREE 4u      /* the id is free */
#define ML_TID_SHIFT 3

typedef struct ml_TimerHeap {
  ml_TimerEnt *heap; /* the heap is heap[base .. base + n) */
  int base, n, cap;
  int sorted;      /* and it is in order: the top pops with base++ */
  int ncancelled;  /* cancelled entries still in the heap */
  ml_TimerId *ids; /* by id, 1..nids; capids > nids */
  int nids, capids;
  int free;          /* the first free id, or 0 */
  uint64_t seq;      /* the last id's */
  uint32_t tie;      /* the last entry's tie */
  uint64_t due_bits; /* ml__theap_pop_due pops what was due at the */
  uint64_t due_lo;   /* last mark_due, and nothing pushed after it */
  ml_Allocf alloc;
  void *ud;
} ml_TimerHeap;

/* More than this many cancelled entries, and more than half of the heap:
 * rebuild it (asyncio's _MIN_SCHEDULED_TIMER_HANDLES, 50%). */
#define ML_THEAP_MIN_COMPACT 100
/* A heap of at least this many entries, a quarter of them or more due,
 * is sorted before they pop (ml__theap_prepare_due). */
#define ML_THEAP_SORT_MIN 512

/* An empty heap whose memory comes from alloc(ud, ...). */
void ml__theap_init(ml_TimerHeap *H, ml_Allocf alloc, void *ud);
/* Frees the heap's arrays; H is empty (and usable) after. */
void ml__theap_free(ml_TimerHeap *H);

/* The id that ml__theap_id_take will return next, after making room for
 * it; or -ENOMEM.  Taking nothing, it leaves the heap as it was. */
int ml__theap_id_peek(ml_TimerHeap *H);
/* Takes id (what ml__theap_id_peek returned just before) and gives it a
 * new seq, which it returns; the id is not in the heap nor cancelled. */
uint64_t ml__theap_id_take(ml_TimerHeap *H, int id);
/* Frees an id that is not in the heap (popped, or never pushed). */
void ml__theap_id_free(ml_TimerHeap *H, int id);
/* The seq of a taken id (1..nids), 0 if it is free. */
static inline uint64_t ml__theap_id_seq(const ml_TimerHeap *H, int id) {
  return H->ids[id] & ML_TID_FREE ? 0 : H->ids[id] >> ML_TID_SHIFT;
}
/* 1 if the taken id (1..nids) was cancelled. */
static inline int ml__theap_id_cancelled(const ml_TimerHeap *H, int id) {
  return (int)(H->ids[id] & ML_TID_CANCELLED);
}
/* id if it still names the timer of seq (taken, not freed since), else 0. */
int ml__theap_id_live(const ml_TimerHeap *H, int id, uint64_t seq);

/* Makes room for one more entry and one more id: returns the id that
 * ml__theap_push takes next, or -ENOMEM.  Taking nothing, it leaves the
 * heap as it was. */
int ml__theap_prepare(ml_TimerHeap *H);
/* Takes id (what ml__theap_prepare returned just before), giving it a
 * new seq (ml__theap_id_seq), and pushes it to fire at when (not NaN).
 * Returns 1 if it is the new top (the deadline to arm for). */
int ml__theap_push(ml_TimerHeap *H, double when, int id);
/* Cancels the taken id.  An id in the heap stays there until it reaches
 * the top or the heap is compacted; then it is freed.  An id not in the
 * heap stays taken: its holder frees it.  Returns 1 if the top changed
 * (the deadline to arm for). */
int ml__theap_cancel(ml_TimerHeap *H, int id);
/* The deadline of the top (the earliest live timer); 0 if the heap is
 * empty, else 1 with *when set. */
int ml__theap_top(const ml_TimerHeap *H, double *when);

/* Marks the batch that ml__theap_pop_due pops: the timers due at now, and
 * pushed so far (one pushed later waits for the next mark, even if it is
 * due: a callback rescheduling itself in the past cannot starve I/O). */
void ml__theap_mark_due(ml_TimerHeap *H, double now);
/* Sorts the heap if the marked batch is a quarter or more of a heap of
 * ML_THEAP_SORT_MIN or more entries (and it is not in order already), so
 * that they pop in O(1).  Out of memory, it leaves the heap as it was. */
void ml__theap_prepare_due(ml_TimerHeap *H);
/* Pops the next timer of the marked batch, in (when, push) order, and
 * returns its id, freed already (the caller has what it needs from it);
 * 0 when the batch is over.  Cancelled timers on the way are freed. */
int ml__theap_pop_due(ml_TimerHeap *H);
/* Frees the cancelled timers at the top, so that the top is live. */
void ml__theap_settle(ml_TimerHeap *H);

#endif
