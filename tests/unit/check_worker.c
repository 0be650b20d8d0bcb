/* check_worker.c: a state told it is a worker process (ml_state_set_worker)
 * as a host that forks its own workers tells it: the checks on the
 * ml_Worker, what scripts see, a server on an inherited listening socket,
 * the READY message, and the graceful stop (ml_state_shutdown). */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <check.h>
#include "moonloop.h"
#include "host_util.h"

static ml_State *S;
static lua_State *L;

static void setup(void) {
  S = ml_state_new(NULL);
  ck_assert_ptr_nonnull(S);
  L = ml_state_lua(S);
}

static void teardown(void) {
  if (S) ml_state_close(S);
  S = NULL;
  L = NULL;
}

/* A listening TCP socket on 127.0.0.1, its port in *port. */
static int listener(int *port) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ck_assert_int_ge(fd, 0);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  ck_assert_int_eq(listen(fd, 16), 0);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  *port = ntohs(a.sin_port);
  return fd;
}

START_TEST(test_worker_bad_descriptions_are_refused) {
  int p[2];
  ml_Worker w = {0, 2, -1, NULL, 0};
  ck_assert_int_eq(ml_state_set_worker(S, NULL), -EINVAL);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "no ml_Worker"));
  w.id = 2;
  ck_assert_int_eq(ml_state_set_worker(S, &w), -EINVAL);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "worker id 2 of 2 is out of range"));
  w.id = 0;
  w.nlisten = 1;
  ck_assert_int_eq(ml_state_set_worker(S, &w), -EINVAL);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "1 listening fds and no array"));
  ck_assert_int_eq(pipe(p), 0);
  w.listen_fds = &p[0];
  ck_assert_int_eq(ml_state_set_worker(S, &w), -EINVAL);
  ck_assert_ptr_nonnull(strstr(ml_state_error(S), "is not a listening socket"));
  close(p[0]);
  close(p[1]);
  /* Refused ones change nothing. */
  ck_assert_str_eq(
    hu_run(S, L, "return tostring(asyncio.worker_id()) .. ' of ' .. asyncio.worker_count()"),
    "nil of 1");
}
END_TEST

/* The script binds the port the host's socket listens on, with no
 * reuse option: only serving on the inherited socket makes that work. */
START_TEST(test_worker_serves_on_the_inherited_socket_and_says_ready) {
  int port, fd = listener(&port), rp[2];
  char src[1024], buf[16] = "";
  ck_assert_int_eq(pipe(rp), 0);
  ml_Worker w = {1, 3, rp[1], &fd, 1};
  ck_assert_int_eq(ml_state_set_worker(S, &w), ML_OK);
  snprintf(src, sizeof src,
           "local srv = await asyncio.start_server(function(r, w)\n"
           "  w:write('from ' .. asyncio.worker_id() .. ' of ' .. asyncio.worker_count())\n"
           "  w:close()\n"
           "end, '127.0.0.1', %d, { reuse_address = false })\n"
           "local r, w = await asyncio.open_connection('127.0.0.1', %d)\n"
           "local got = await r:read()\n"
           "w:close()\n"
           "srv:close()\n"
           "await srv:wait_closed()\n"
           "return got .. ' ' .. tostring(asyncio.worker_ready())",
           port, port);
  ck_assert_str_eq(hu_run(S, L, src), "from 1 of 3 false"); /* told already: nothing to tell */
  ck_assert_int_eq(read(rp[0], buf, sizeof buf - 1), 6);
  ck_assert_str_eq(buf, "READY\n");
  ck_assert_int_eq(read(rp[0], buf, sizeof buf), 0); /* S closed its end */
  close(rp[0]);
  /* The host's socket is still its own, and still listening. */
  int v = 0;
  socklen_t len = sizeof v;
  ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len), 0);
  ck_assert_int_eq(v, 1);
  close(fd);
}
END_TEST

/* The host steps the state until its server listens (READY), then asks
 * for the graceful stop: the server closes, the main task, which awaited
 * serve_forever(), ends cancelled, and so does the task it left. */
START_TEST(test_worker_shutdown_closes_servers_and_cancels_main) {
  int rp[2], fd, steps = 0, rc, ready = 0;
  double timeout;
  ck_assert_int_eq(pipe(rp), 0);
  ml_Worker w = {0, 1, rp[1], NULL, 0};
  ck_assert_int_eq(ml_state_set_worker(S, &w), ML_OK);
  ml_Future *t = hu_spawn(S, L,
                          "bg = asyncio.create_task(asyncio.sleep(3600))\n"
                          "local srv = await asyncio.start_server(function() end, '127.0.0.1', 0)\n"
                          "await srv:serve_forever()\n");
  while ((rc = ml_state_step(S, &fd, &timeout)) > 0) {
    struct pollfd p[2] = {{fd, POLLIN, 0}, {rp[0], POLLIN, 0}};
    ck_assert_int_lt(++steps, 10000);
    if (!ready) {
      poll(p, 2, 0);
      if (p[1].revents & POLLIN) {
        char buf[8];
        ck_assert_int_eq(read(rp[0], buf, sizeof buf), 6);
        ready = 1;
        ck_assert_int_eq(ml_state_shutdown(S, t), ML_OK);
        continue;
      }
    }
    if (timeout != 0)
      poll(p, fd >= 0 ? 1 : 0, timeout < 0 ? (ready ? -1 : 10) : (int)(timeout * 1000));
  }
  ck_assert_int_eq(rc, 0);
  ck_assert_int_eq(ready, 1);
  ck_assert_int_eq(ml_future_state(t), ML_FUTURE_CANCELLED);
  ml_future_release(L, t);
  /* The task left behind (a timer an hour ahead) was cancelled too. */
  ck_assert_str_eq(hu_run(S, L, "return tostring(bg:cancelled())"), "true");
  close(rp[0]);
}
END_TEST

Suite *worker_suite(void) {
  Suite *s = suite_create("worker");
  TCase *tc = tcase_create("worker");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 30);
  tcase_add_test(tc, test_worker_bad_descriptions_are_refused);
  tcase_add_test(tc, test_worker_serves_on_the_inherited_socket_and_says_ready);
  tcase_add_test(tc, test_worker_shutdown_closes_servers_and_cancels_main);
  suite_add_tcase(s, tc);
  return s;
}
