/* threadpool.h: the process's worker threads (threadpool.c); module.h
 * declares the calls (ml__pool_submit), this header only their home. */
#ifndef ML_THREADPOOL_H
#define ML_THREADPOOL_H

#include "module.h"

#endif
