/* alloc.h: the state's allocator (alloc.c), usable without lua.h. */
#ifndef ML_ALLOC_H
#define ML_ALLOC_H

#include <stddef.h>

/* An allocator for one Lua state.  Blocks of up to 2 KiB come from 25
 * size classes (multiples of 16: every 16 bytes up to 128, coarser steps
 * up to 2048), each a free list, carved from slabs: 64 KiB malloc'd
 * slabs, and past the first 32 (2 MiB) 2 MiB slabs mapped with their pages
 * populated at once.  The tail of a slab too small for the next block
 * goes to the free list of the largest class it holds.  Larger blocks come
 * from malloc, with a 16-byte header linking them in a ring, so that
 * ml__alloc_free releases everything still live.  A block is resized in
 * place while it stays in its class; a shrink never fails (when no
 * smaller block can be had, the old one is kept).  It is not thread-safe:
 * only the thread that runs the state may use it.  Under AddressSanitizer,
 * free blocks and the uncarved slab tail are poisoned.
 *
 * Accounting: "used" is the sum of the sizes Lua asked for (osize/nsize),
 * the same number Lua reports with collectgarbage("count"), and the cap
 * is compared with that number.  The memory actually taken from the
 * system is used plus class rounding (at most 15 bytes a block up to 128
 * bytes, less than a quarter above that), 16 bytes of header on each
 * large block, the free lists, and the unused tail of the newest slab. */

typedef struct ml_Alloc ml_Alloc;
/* Makes an allocator; cap == 0 means no cap.  NULL on ENOMEM. */
ml_Alloc *ml__alloc_new(size_t cap);
void ml__alloc_free(ml_Alloc *a); /* releases every pool */
void ml__alloc_set_cap(ml_Alloc *a, size_t cap);
size_t ml__alloc_used(const ml_Alloc *a); /* bytes handed out now */
size_t ml__alloc_peak(const ml_Alloc *a);
/* The allocation-failure test (docs/reliability.md): from now on every
 * growth (a new block, or a block made bigger) is counted, and those
 * numbered from .. from + len - 1 are refused, as if memory had run out
 * (from == 0: only count).  ml__alloc_growths says how many so far. */
void ml__alloc_set_faults(ml_Alloc *a, size_t from, size_t len);
size_t ml__alloc_growths(const ml_Alloc *a);
/* The same knob scoped to one operation: the nth growth from now and the
 * len - 1 after it are refused (n == 0: none any more).  Only while
 * counting (-1 otherwise: the state was not made in that mode). */
int ml__alloc_fail_next(ml_Alloc *a, size_t n, size_t len);
int ml__alloc_counting(const ml_Alloc *a); /* 1 while growths are counted */
/* A lua_Alloc: ud is the ml_Alloc.  Fails (returns NULL) when growing
 * would pass the cap; shrinking and freeing never fail. */
void *ml__alloc_lua(void *ud, void *ptr, size_t osize, size_t nsize);

/* Faults in the whole pages of [p, p + n) at once when n is 64 KiB or
 * more (nothing else changes): for a large array about to be written. */
void ml__alloc_populate(void *p, size_t n);

/* The free gate, for code that reads the state's Lua objects from
 * another thread (budget.c, "Arming from another thread"): while it is
 * closed, ml__alloc_lua does not free (a free waits until it opens), so
 * nothing the other thread reads goes away under it.  Any thread may
 * close and open it; ml__alloc_gate_close returns 0 if it was closed
 * already (by another thread), 1 if this call closed it.  The closer
 * must then fence (membarrier, or a full fence if ml__alloc_full_fence)
 * before it reads. */
int ml__alloc_gate_close(ml_Alloc *a);
void ml__alloc_gate_open(ml_Alloc *a);
/* Set at load time (budget.c's constructor) when there is no membarrier: the
 * free path then fences fully. */
extern int ml__alloc_full_fence;

#endif
