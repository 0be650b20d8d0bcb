/* check_readyq.c: the ready queue ring buffer. */
#include <check.h>
#include <errno.h>
#include "core/readyq.h"

static ml_Entry entry(int i) {
  ml_Entry e = {ML_RUN_HANDLE, NULL, i};
  return e;
}

START_TEST(test_readyq_fifo_order) {
  ml_ReadyQ q = {0};
  ml_Entry e;
  int i;
  for (i = 0; i < 10; i++) ck_assert_int_eq(ml__readyq_push(&q, entry(i)), 0);
  for (i = 0; i < 10; i++) {
    ck_assert_int_eq(ml__readyq_pop(&q, &e), 0);
    ck_assert_int_eq(e.ref, i);
  }
  ck_assert_int_eq(ml__readyq_pop(&q, &e), -EAGAIN);
  ml__readyq_free(&q);
}
END_TEST

START_TEST(test_readyq_empty_pop_fails) {
  ml_ReadyQ q = {0};
  ml_Entry e;
  ck_assert_int_eq(ml__readyq_pop(&q, &e), -EAGAIN);
  ck_assert_uint_eq(q.len, 0);
  ml__readyq_free(&q);
}
END_TEST

/* Interleaved pushes and pops move head around the ring; growth while
 * wrapped must keep the order. */
START_TEST(test_readyq_grows_while_wrapped) {
  ml_ReadyQ q = {0};
  ml_Entry e;
  int next_in = 0, next_out = 0, round;
  for (round = 0; round < 2000; round++) {
    int k;
    for (k = 0; k < 3; k++) ck_assert_int_eq(ml__readyq_push(&q, entry(next_in++)), 0);
    for (k = 0; k < 2; k++) {
      ck_assert_int_eq(ml__readyq_pop(&q, &e), 0);
      ck_assert_int_eq(e.ref, next_out++);
    }
  }
  ck_assert_uint_eq(q.len, (size_t)(next_in - next_out));
  ck_assert((q.cap & (q.cap - 1)) == 0);
  while (ml__readyq_pop(&q, &e) == 0) ck_assert_int_eq(e.ref, next_out++);
  ck_assert_int_eq(next_out, next_in);
  ml__readyq_free(&q);
}
END_TEST

START_TEST(test_readyq_steady_state_does_not_grow) {
  ml_ReadyQ q = {0};
  ml_Entry e;
  size_t cap;
  int i;
  ml__readyq_push(&q, entry(0));
  cap = q.cap;
  for (i = 0; i < 100000; i++) {
    ml__readyq_push(&q, entry(i));
    ml__readyq_pop(&q, &e);
  }
  ck_assert_uint_eq(q.cap, cap);
  ml__readyq_free(&q);
}
END_TEST

Suite *readyq_suite(void) {
  Suite *s = suite_create("readyq");
  TCase *tc = tcase_create("order");
  tcase_add_test(tc, test_readyq_fifo_order);
  tcase_add_test(tc, test_readyq_empty_pop_fails);
  suite_add_tcase(s, tc);
  tc = tcase_create("growth");
  tcase_add_test(tc, test_readyq_grows_while_wrapped);
  tcase_add_test(tc, test_readyq_steady_state_does_not_grow);
  suite_add_tcase(s, tc);
  return s;
}
