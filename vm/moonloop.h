/* moonloop.h: the embedding API of moonloop, the only public header. */
#ifndef MOONLOOP_H
#define MOONLOOP_H

#include <stddef.h>
#include <lua.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOONLOOP_VERSION "0.1.0"

struct ev_loop;
typedef struct ml_State ml_State;

/* Receives every error nobody caught (an uncaught task exception, an error
 * in a callback): msg is the message with its traceback.  The default
 * handler prints msg to stderr. */
typedef void (*ml_ErrorHandler)(ml_State *S, const char *msg, void *ud);

/* Makes a state on loop, or on a private loop if loop is NULL.  The state
 * owns its Lua VM (with its own allocator), the `asyncio` module and the
 * standard library.  Returns NULL if memory ran out. */
ml_State *ml_state_new(struct ev_loop *loop);

/* Cancels every pending task, releases every watcher, fd, task and byte
 * the state holds, and destroys the loop if the state made it. */
void ml_state_close(ml_State *S);

/* The Lua state of S, for the Lua C API. */
lua_State *ml_state_lua(ml_State *S);

#ifdef __cplusplus
}
#endif
#endif
