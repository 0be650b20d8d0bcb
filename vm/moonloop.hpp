/* moonloop.hpp: C++ helpers for moonloop hosts, header only (it includes
 * moonloop.h, which C++ hosts may also use alone).
 *
 * Lua raises its errors with longjmp, which knows nothing of C++, so the
 * two must not cross:
 *
 * - A C++ exception must never leave a host C function (one registered
 *   with ml_state_register, a luaL_Reg table, a lua_CFunction of a
 *   module, an ml_WorkDoneFn): it would unwind through Lua's and
 *   moonloop's C frames, which is undefined behaviour (in practice the
 *   state is left marked as running, and every later ml_state_run says
 *   -EBUSY).  ml::guard<f> and ml::protect(L, fn) catch every exception
 *   and raise it as a Lua error whose message is what() (a std::bad_alloc
 *   says "not enough memory"): the script sees an ordinary error, which
 *   pcall catches, and the state carries on.  The exception object is
 *   destroyed before the Lua error is raised.
 *
 * - A Lua error (luaL_check*, luaL_error, lua_error, lua_call, and any
 *   API call that allocates) longjmps over the C++ frames between the
 *   host function and Lua without running their destructors.  Make such
 *   calls where no object with a destructor is alive: read the arguments
 *   first, do the C++ work in an inner scope (or a function) that ends
 *   before the results are pushed, or throw instead of calling
 *   luaL_error, and let the guard raise it.
 *
 * libmoonloop is built against the C Lua library; a Lua built as C++
 * (Debian's liblua5.4-c++), whose errors are C++ exceptions, is not
 * supported. */
#ifndef MOONLOOP_HPP
#define MOONLOOP_HPP

#include <cstdio>
#include <exception>
#include <new>
#include <utility>

#include "moonloop.h"

namespace ml {

/* Calls fn() (which returns the number of results it pushed on L, as a
 * lua_CFunction does) and returns what it returns; if it throws, raises a
 * Lua error on L instead, with the exception's what() as the message.
 * For a host function written as a lambda:
 *
 *   static int host_parse(lua_State *L) {
 *     size_t n;
 *     const char *s = luaL_checklstring(L, 1, &n);
 *     return ml::protect(L, [&] {
 *       Config c = Config::parse(std::string(s, n));  // may throw
 *       lua_pushinteger(L, c.size());
 *       return 1;
 *     });
 *   }
 */
template <class F> int protect(lua_State *L, F &&fn) noexcept {
  char msg[512];
  try {
    return std::forward<F>(fn)();
  } catch (const std::bad_alloc &) {
    std::snprintf(msg, sizeof msg, "not enough memory (std::bad_alloc in a host function)");
  } catch (const std::exception &e) {
    std::snprintf(msg, sizeof msg, "%s", e.what());
  } catch (...) {
    std::snprintf(msg, sizeof msg,
                  "a host function threw a C++ exception that is not a std::exception");
  }
  /* Out of the catch: the exception is gone before the longjmp. */
  return luaL_error(L, "%s", msg);
}

/* A lua_CFunction that calls F under protect:
 *   ml_state_register(S, "parse", ml::guard<parse>);
 *   static const luaL_Reg funcs[] = { {"parse", ml::guard<parse>}, {NULL, NULL} }; */
template <int (*F)(lua_State *)> int guard(lua_State *L) noexcept {
  return protect(L, [L] { return F(L); });
}

}  // namespace ml

#endif
