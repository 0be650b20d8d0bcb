/* check_timerheap.c: the timer heap alone (no Lua): order, ties,
 * cancellation, the sorted fast path, the radix sort, compaction. */
#include <errno.h>
#include <stdlib.h>
#include <check.h>
#include "core/timerheap.h"

static ml_TimerHeap H;
static int fail_after; /* allocations left before they fail; -1: never */

static void *test_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  (void)osize;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (fail_after == 0) return NULL;
  if (fail_after > 0) fail_after--;
  return realloc(ptr, nsize);
}

static void setup(void) {
  fail_after = -1;
  ml__theap_init(&H, test_alloc, NULL);
}

static void teardown(void) { ml__theap_free(&H); }

/* Pushes a timer at when; returns its id. */
static int push(double when) {
  int id = ml__theap_prepare(&H);
  ck_assert_int_gt(id, 0);
  ml__theap_push(&H, when, id);
  return id;
}

/* MINSTD, as the timers benchmark: reproducible pseudo-random whens. */
static unsigned long rnd_state;
static double rnd_when(void) {
  rnd_state = rnd_state * 48271 % 2147483647;
  return (double)(rnd_state % 10000) / 1e6;
}

/* Pops the whole due batch; checks (when, id order for ties) never goes
 * back, and that every popped id was freed.  Returns how many popped. */
static int pop_all_in_order(const double *when_of, const int *rank_of) {
  int id, n = 0;
  double last = -1;
  int last_rank = -1;
  while ((id = ml__theap_pop_due(&H)) != 0) {
    ck_assert_msg(when_of[id] >= last, "timer %d at %g popped after one at %g", id, when_of[id],
                  last);
    if (when_of[id] == last)
      ck_assert_msg(rank_of[id] > last_rank, "equal deadlines popped out of push order");
    ck_assert_uint_eq(ml__theap_id_seq(&H, id), 0); /* freed */
    last = when_of[id];
    last_rank = rank_of[id];
    n++;
  }
  return n;
}

START_TEST(test_timerheap_order) {
  static double when_of[2000];
  static int rank_of[2000];
  int i, id;
  double top;
  rnd_state = 42;
  ck_assert_int_eq(ml__theap_top(&H, &top), 0);
  for (i = 0; i < 1000; i++) {
    double w = rnd_when();
    id = push(w);
    when_of[id] = w;
    rank_of[id] = i;
  }
  ck_assert_int_eq(H.sorted, 0); /* random deadlines: a real heap */
  ck_assert_int_eq(ml__theap_top(&H, &top), 1);
  for (i = 1; i <= 1000; i++) ck_assert(top <= when_of[i]);
  ml__theap_mark_due(&H, 1.0);
  ck_assert_int_eq(pop_all_in_order(when_of, rank_of), 1000);
  ck_assert_int_eq(H.n, 0);
}
END_TEST

/* Only what is due pops; the rest waits for a later mark. */
START_TEST(test_timerheap_only_due_pops) {
  int a = push(3.0), b = push(1.0), c = push(2.0);
  double top;
  ml__theap_mark_due(&H, 2.0);
  ck_assert_int_eq(ml__theap_pop_due(&H), b);
  ck_assert_int_eq(ml__theap_pop_due(&H), c);
  ck_assert_int_eq(ml__theap_pop_due(&H), 0);
  ck_assert_int_eq(ml__theap_top(&H, &top), 1);
  ck_assert(top == 3.0);
  ml__theap_mark_due(&H, 5.0);
  ck_assert_int_eq(ml__theap_pop_due(&H), a);
  ck_assert_int_eq(ml__theap_pop_due(&H), 0);
}
END_TEST

/* The 32-bit tie counter wraps: the entries are numbered afresh in their
 * order, so ties pushed on both sides of the wrap still pop FIFO, in a
 * heap in order and in one not; a batch marked before the wrap ends at it,
 * and what was due pops at the next mark. */
START_TEST(test_timerheap_tie_wraps) {
  static double when_of[400];
  static int rank_of[400];
  int i, id, sorted, first, popped;
  for (sorted = 1; sorted >= 0; sorted--) {
    ml__theap_free(&H);
    rnd_state = 11;
    H.tie = UINT32_MAX - 150;
    for (i = 0; i < 300; i++) {
      double w = sorted ? (double)(i / 7) : i % 3 ? 0.004 : rnd_when(); /* ties across it */
      if (i == 100) {
        ml__theap_mark_due(&H, 1.0);
        first = ml__theap_pop_due(&H); /* the batch is under way */
        ck_assert_int_gt(first, 0);
      }
      id = push(w);
      when_of[id] = w;
      rank_of[id] = i;
    }
    ck_assert_uint_eq(H.tie, 149 + 150); /* 149 entries renumbered, then 150 pushes */
    ck_assert_int_eq(H.sorted, sorted);
    ck_assert_int_eq(ml__theap_pop_due(&H), 0); /* the wrap ended the batch */
    ml__theap_mark_due(&H, 100.0);
    popped = pop_all_in_order(when_of, rank_of);
    ck_assert_int_eq(popped, 299);
    ck_assert_int_eq(H.n, 0);
  }
}
END_TEST

/* A timer pushed after the mark waits for the next one, even if due:
 * a callback rescheduling itself in the past cannot starve I/O. */
START_TEST(test_timerheap_pushed_after_mark_waits) {
  int a = push(1.0), b;
  ml__theap_mark_due(&H, 10.0);
  b = push(0.5);
  ck_assert_int_eq(ml__theap_pop_due(&H), 0); /* b is first, and later than the mark */
  ml__theap_mark_due(&H, 10.0);
  ck_assert_int_eq(ml__theap_pop_due(&H), b);
  ck_assert_int_eq(ml__theap_pop_due(&H), a);
}
END_TEST

/* Timers of one deadline fire in the order they were pushed. */
START_TEST(test_timerheap_ties_fifo) {
  int ids[300], i;
  for (i = 0; i < 300; i++) ids[i] = push(5.0);
  ml__theap_mark_due(&H, 5.0);
  for (i = 0; i < 300; i++) ck_assert_int_eq(ml__theap_pop_due(&H), ids[i]);
  ck_assert_int_eq(ml__theap_pop_due(&H), 0);
}
END_TEST

/* Equal deadlines mixed with others in an unsorted heap still pop in
 * push order among themselves. */
START_TEST(test_timerheap_ties_fifo_in_heap) {
  static double when_of[700];
  static int rank_of[700];
  int i, id;
  rnd_state = 7;
  for (i = 0; i < 600; i++) {
    double w = i % 2 ? 0.004 : rnd_when();
    id = push(w);
    when_of[id] = w;
    rank_of[id] = i;
  }
  ck_assert_int_eq(H.sorted, 0);
  ml__theap_mark_due(&H, 1.0);
  ck_assert_int_eq(pop_all_in_order(when_of, rank_of), 600);
}
END_TEST

START_TEST(test_timerheap_cancellation) {
  int a = push(1.0), b = push(2.0), c = push(3.0), d;
  uint64_t seq_b = ml__theap_id_seq(&H, b);
  double top;
  ck_assert_int_eq(ml__theap_id_live(&H, b, seq_b), b);
  /* Cancelling one below the top leaves the top alone. */
  ck_assert_int_eq(ml__theap_cancel(&H, b), 0);
  ck_assert_int_eq(H.ncancelled, 1);
  /* Cancelling the top moves it to the next live one, freeing b too. */
  ck_assert_int_eq(ml__theap_cancel(&H, a), 1);
  ck_assert_int_eq(ml__theap_top(&H, &top), 1);
  ck_assert(top == 3.0);
  ck_assert_int_eq(H.ncancelled, 0);
  ck_assert_int_eq(ml__theap_id_live(&H, b, seq_b), 0);
  /* A freed id is reused, with a new seq: the old holder tells. */
  d = push(4.0);
  ck_assert(d == a || d == b);
  ck_assert_uint_ne(ml__theap_id_seq(&H, d), seq_b);
  ml__theap_mark_due(&H, 10.0);
  ck_assert_int_eq(ml__theap_pop_due(&H), c);
  ck_assert_int_eq(ml__theap_pop_due(&H), d);
  ck_assert_int_eq(ml__theap_pop_due(&H), 0);
}
END_TEST

/* A cancelled timer in the middle of a due batch is skipped and freed. */
START_TEST(test_timerheap_cancelled_skipped_in_batch) {
  int ids[10], i;
  for (i = 0; i < 10; i++) ids[i] = push((double)((i * 7) % 10));
  for (i = 0; i < 10; i += 3) ml__theap_cancel(&H, ids[i]);
  ml__theap_mark_due(&H, 100.0);
  for (i = 0; i < 10; i++) {
    int id = ml__theap_pop_due(&H);
    if (id == 0) break;
    ck_assert_msg(id != ids[0] && id != ids[3] && id != ids[6] && id != ids[9],
                  "cancelled timer %d popped", id);
  }
  ck_assert_int_eq(i, 6);
  ck_assert_int_eq(H.n, 0);
  ck_assert_int_eq(H.ncancelled, 0);
}
END_TEST

/* An id taken for something that is not in the heap (a call_soon's
 * handle) is only marked: its holder frees it. */
START_TEST(test_timerheap_cancel_not_in_heap) {
  int id = ml__theap_id_peek(&H);
  uint64_t seq;
  ck_assert_int_gt(id, 0);
  seq = ml__theap_id_take(&H, id);
  ck_assert_int_eq(ml__theap_cancel(&H, id), 0);
  ck_assert_int_eq(ml__theap_id_cancelled(&H, id), 1);
  ck_assert_int_eq(H.ncancelled, 0);
  ck_assert_int_eq(ml__theap_id_live(&H, id, seq), id);
  ml__theap_id_free(&H, id);
  ck_assert_int_eq(ml__theap_id_live(&H, id, seq), 0);
}
END_TEST

/* Deadlines pushed in order keep the heap sorted: pops move its base. */
START_TEST(test_timerheap_sorted_fast_path) {
  int ids[1000], i;
  for (i = 0; i < 1000; i++) ids[i] = push(i * 0.001);
  ck_assert_int_eq(H.sorted, 1);
  ml__theap_mark_due(&H, 0.4995);
  for (i = 0; i < 500; i++) ck_assert_int_eq(ml__theap_pop_due(&H), ids[i]);
  ck_assert_int_eq(ml__theap_pop_due(&H), 0);
  ck_assert_int_eq(H.base, 500); /* popped by moving the base, no sift */
  ck_assert_int_eq(H.sorted, 1);
  /* One out of order makes it a heap again, still popping in order. */
  push(0.0001);
  ck_assert_int_eq(H.sorted, 0);
  ml__theap_mark_due(&H, 10.0);
  ck_assert_int_ne(ml__theap_pop_due(&H), ids[500]);
  for (i = 500; i < 1000; i++) ck_assert_int_eq(ml__theap_pop_due(&H), ids[i]);
  ck_assert_int_eq(H.n, 0);
  ck_assert_int_eq(H.base, 0);
}
END_TEST

/* A large heap with a quarter or more due is sorted before the batch
 * pops, by the radix sort, and pops in order after. */
START_TEST(test_timerheap_radix_large_batch) {
  static double when_of[4001];
  static int rank_of[4001];
  int i, id, n = 4000;
  rnd_state = 42;
  for (i = 0; i < n; i++) {
    double w = rnd_when();
    id = push(w);
    when_of[id] = w;
    rank_of[id] = i;
  }
  ck_assert_int_ge(n, ML_THEAP_SORT_MIN);
  ck_assert_int_eq(H.sorted, 0);
  ml__theap_mark_due(&H, 0.005); /* about half due */
  ml__theap_prepare_due(&H);
  ck_assert_int_eq(H.sorted, 1);
  for (i = 1; i < H.n; i++) {
    const ml_TimerEnt *hp = H.heap + H.base;
    int a = ML_THEAP_ENT_ID(hp[i - 1]), b = ML_THEAP_ENT_ID(hp[i]);
    ck_assert_msg(when_of[b] > when_of[a] || (when_of[b] == when_of[a] && rank_of[b] > rank_of[a]),
                  "entry %d out of order after the sort", i);
  }
  ml__theap_mark_due(&H, 1.0);
  ck_assert_int_eq(pop_all_in_order(when_of, rank_of), n);
}
END_TEST

/* The sort handles runs of one deadline longer than its insertion
 * threshold, and whens too close for two passes by when. */
START_TEST(test_timerheap_radix_runs_and_close_whens) {
  static double when_of[6001];
  static int rank_of[6001];
  int i, id, n = 3000;
  for (i = 0; i < n; i++) {
    double w = (i % 3 == 0) ? 1.0 : 1.0 + (double)((i * 7919) % 2000) * 1e-15;
    id = push(i % 5 == 0 ? 0.5 : w);
    when_of[id] = i % 5 == 0 ? 0.5 : w;
    rank_of[id] = i;
  }
  /* pushed out of order somewhere: a real heap */
  ck_assert_int_eq(H.sorted, 0);
  ml__theap_mark_due(&H, 2.0);
  ml__theap_prepare_due(&H);
  ck_assert_int_eq(H.sorted, 1);
  ck_assert_int_eq(pop_all_in_order(when_of, rank_of), n);
}
END_TEST

/* A small batch in a large heap is not worth a sort: it pops by sifts. */
START_TEST(test_timerheap_small_batch_not_sorted) {
  int i;
  rnd_state = 3;
  for (i = 0; i < 4000; i++) push(1.0 + rnd_when());
  push(0.5);
  ck_assert_int_eq(H.sorted, 0);
  ml__theap_mark_due(&H, 0.9);
  ml__theap_prepare_due(&H);
  ck_assert_int_eq(H.sorted, 0);
  ck_assert_int_ne(ml__theap_pop_due(&H), 0);
  ck_assert_int_eq(ml__theap_pop_due(&H), 0);
}
END_TEST

/* Out of memory, the sort leaves the heap as it was: still a heap. */
START_TEST(test_timerheap_radix_out_of_memory) {
  static double when_of[2001];
  static int rank_of[2001];
  int i, id;
  rnd_state = 11;
  for (i = 0; i < 2000; i++) {
    double w = rnd_when();
    id = push(w);
    when_of[id] = w;
    rank_of[id] = i;
  }
  ml__theap_mark_due(&H, 1.0);
  fail_after = 0;
  ml__theap_prepare_due(&H);
  ck_assert_int_eq(H.sorted, 0);
  fail_after = -1;
  ck_assert_int_eq(pop_all_in_order(when_of, rank_of), 2000);
}
END_TEST

/* More than ML_THEAP_MIN_COMPACT cancelled timers, over half of the
 * heap: it is rebuilt without them, and what is left pops in order. */
START_TEST(test_timerheap_compaction) {
  static double when_of[1001];
  static int rank_of[1001];
  int ids[1000], i, id;
  rnd_state = 5;
  for (i = 0; i < 1000; i++) {
    double w = 1.0 + rnd_when();
    ids[i] = id = push(w);
    when_of[id] = w;
    rank_of[id] = i;
  }
  /* Cancel all but every fourth, never the top's: counted, not removed,
   * until more than half are cancelled. */
  for (i = 0; i < 1000; i++) {
    const ml_TimerEnt *top = H.heap + H.base;
    if (i % 4 == 0 || ids[i] == ML_THEAP_ENT_ID(*top)) continue;
    ml__theap_cancel(&H, ids[i]);
    if (H.n < 1000) break; /* compacted */
    ck_assert_int_le(H.ncancelled, 500);
  }
  ck_assert_int_lt(H.n, 1000);
  ck_assert_int_eq(H.ncancelled, 0);
  ck_assert_int_eq(H.n, 499); /* 1000 - 501 cancelled */
  ml__theap_mark_due(&H, 10.0);
  ck_assert_int_eq(pop_all_in_order(when_of, rank_of), 499);
}
END_TEST

/* Growth failures leave the heap usable and report -ENOMEM. */
START_TEST(test_timerheap_out_of_memory) {
  int i, id = 0;
  for (i = 0; i < 64 * 2; i++) push(1.0);
  fail_after = 0;
  for (i = 0; i < 200 && (id = ml__theap_prepare(&H)) > 0; i++) ml__theap_push(&H, 1.0, id);
  ck_assert_int_eq(id, -ENOMEM);
  fail_after = -1;
  ml__theap_mark_due(&H, 1.0);
  for (i = 0; ml__theap_pop_due(&H); i++) continue;
  ck_assert_int_eq(i, H.seq);
}
END_TEST

Suite *timerheap_suite(void) {
  Suite *s = suite_create("timerheap");
  TCase *order = tcase_create("order");
  TCase *cancel = tcase_create("cancellation");
  TCase *sort = tcase_create("sorting");
  TCase *mem = tcase_create("memory");
  tcase_add_checked_fixture(order, setup, teardown);
  tcase_add_checked_fixture(cancel, setup, teardown);
  tcase_add_checked_fixture(sort, setup, teardown);
  tcase_add_checked_fixture(mem, setup, teardown);
  tcase_add_test(order, test_timerheap_order);
  tcase_add_test(order, test_timerheap_only_due_pops);
  tcase_add_test(order, test_timerheap_pushed_after_mark_waits);
  tcase_add_test(order, test_timerheap_ties_fifo);
  tcase_add_test(order, test_timerheap_ties_fifo_in_heap);
  tcase_add_test(cancel, test_timerheap_cancellation);
  tcase_add_test(cancel, test_timerheap_cancelled_skipped_in_batch);
  tcase_add_test(cancel, test_timerheap_cancel_not_in_heap);
  tcase_add_test(cancel, test_timerheap_compaction);
  tcase_add_test(sort, test_timerheap_sorted_fast_path);
  tcase_add_test(sort, test_timerheap_radix_large_batch);
  tcase_add_test(sort, test_timerheap_radix_runs_and_close_whens);
  tcase_add_test(sort, test_timerheap_small_batch_not_sorted);
  tcase_add_test(sort, test_timerheap_tie_wraps);
  tcase_add_test(sort, test_timerheap_radix_out_of_memory);
  tcase_add_test(mem, test_timerheap_out_of_memory);
  suite_add_tcase(s, order);
  suite_add_tcase(s, cancel);
  suite_add_tcase(s, sort);
  suite_add_tcase(s, mem);
  return s;
}
