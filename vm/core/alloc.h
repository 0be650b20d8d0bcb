/* alloc.h: the state's allocator (alloc.c), usable without lua.h. */
#ifndef ML_ALLOC_H
#define ML_ALLOC_H

#include <stddef.h>

/* An allocator for one Lua state: blocks of up to 512 bytes come from
 * size-class pools carved out of 64 KiB slabs, larger ones from malloc.
 * It is not thread-safe: only the thread that runs the state may use it.
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
void ml__alloc_free(ml_Alloc *a);         /* releases every pool */
void ml__alloc_set_cap(ml_Alloc *a, size_t cap);
size_t ml__alloc_used(const ml_Alloc *a);  /* bytes handed out now */
size_t ml__alloc_peak(const ml_Alloc *a);
/* A lua_Alloc: ud is the ml_Alloc.  Fails (returns NULL) when growing
 * would pass the cap; shrinking and freeing never fail. */
void *ml__alloc_lua(void *ud, void *ptr, size_t osize, size_t nsize);

#endif
