/* edit.h: libedit (its readline interface) for the REPL, loaded when the
 * REPL first starts on a terminal.  Linked in, libedit and the three
 * libraries it brings (libtinfo, libbsd, libmd) cost every run of the
 * moonloop command the dynamic loader's work, ~0.5M instructions and ~30
 * page faults, script or REPL (docs/performance.md, "Start-up").  So
 * the command does not link it: ml__edit_load() dlopen()s libedit.so.2
 * and fills ml__edit, and every function and variable repl.c and
 * complete.c use is a #define below naming it there (a variable through
 * its address).  Include this header after <editline/readline.h> and
 * before any use; a name missing from ML_EDIT_FUNCS/ML_EDIT_VARS and the
 * #defines fails the link (the command links no libedit). */
#ifndef ML_EDIT_H
#define ML_EDIT_H

#include <stdio.h>
#include <editline/readline.h>

#define ML_EDIT_FUNCS(X)         \
  X(add_history)                 \
  X(read_history)                \
  X(rl_callback_handler_install) \
  X(rl_callback_handler_remove)  \
  X(rl_callback_read_char)       \
  X(rl_completion_matches)       \
  X(rl_forced_update_display)    \
  X(rl_initialize)               \
  X(rl_resize_terminal)          \
  X(stifle_history)              \
  X(using_history)               \
  X(write_history)

#define ML_EDIT_VARS(X)                 \
  X(rl_attempted_completion_function)   \
  X(rl_attempted_completion_over)       \
  X(rl_basic_word_break_characters)     \
  X(rl_catch_signals)                   \
  X(rl_completer_word_break_characters) \
  X(rl_completion_append_character)     \
  X(rl_instream)                        \
  X(rl_outstream)                       \
  X(rl_point)                           \
  X(rl_readline_name)

/* The addresses of the functions and of the variables, in list order. */
typedef struct ml_Edit {
#define ML_EDIT_FIELD(f) __typeof__(f) *f;
  ML_EDIT_FUNCS(ML_EDIT_FIELD)
  ML_EDIT_VARS(ML_EDIT_FIELD)
#undef ML_EDIT_FIELD
} ml_Edit;

extern ml_Edit ml__edit;

/* Loads libedit once; NULL when loaded, else why not (the same message
 * at every later call). */
const char *ml__edit_load(void);

#define add_history (ml__edit.add_history)
#define read_history (ml__edit.read_history)
#define rl_callback_handler_install (ml__edit.rl_callback_handler_install)
#define rl_callback_handler_remove (ml__edit.rl_callback_handler_remove)
#define rl_callback_read_char (ml__edit.rl_callback_read_char)
#define rl_completion_matches (ml__edit.rl_completion_matches)
#define rl_forced_update_display (ml__edit.rl_forced_update_display)
#define rl_initialize (ml__edit.rl_initialize)
#define rl_resize_terminal (ml__edit.rl_resize_terminal)
#define stifle_history (ml__edit.stifle_history)
#define using_history (ml__edit.using_history)
#define write_history (ml__edit.write_history)

#define rl_attempted_completion_function (*ml__edit.rl_attempted_completion_function)
#define rl_attempted_completion_over (*ml__edit.rl_attempted_completion_over)
#define rl_basic_word_break_characters (*ml__edit.rl_basic_word_break_characters)
#define rl_catch_signals (*ml__edit.rl_catch_signals)
#define rl_completer_word_break_characters (*ml__edit.rl_completer_word_break_characters)
#define rl_completion_append_character (*ml__edit.rl_completion_append_character)
#define rl_instream (*ml__edit.rl_instream)
#define rl_outstream (*ml__edit.rl_outstream)
#define rl_point (*ml__edit.rl_point)
#define rl_readline_name (*ml__edit.rl_readline_name)

#endif
