/* check_main.c: runs every Check suite of tests/unit/check_*.c (the list is
 * generated into check_suites.h by the Makefile). */
#include <check.h>
#include <stdlib.h>

#define SUITE(name) Suite *name##_suite(void);
#include CHECK_SUITES
#undef SUITE

int main(void) {
  SRunner *sr = srunner_create(NULL);
  int failed;
#define SUITE(name) srunner_add_suite(sr, name##_suite());
#include CHECK_SUITES
#undef SUITE
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
