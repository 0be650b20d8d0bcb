/* signals.c: the host's switch for signal handling in its states
 * (stdlib/signal/_signal.c does the catching). */
#include "embed.h"

int ml_state_enable_signals(ml_State *S, int on) {
  S->signals = on != 0;
  return ML_OK;
}
