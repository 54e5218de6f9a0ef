/* eventwire — small helpers the broker backends share: time-outs as the socket APIs want them,
 * reconnection back-off with jitter (and, from core/mono.h, monotonic condition variables and
 * deadlines). One copy, here. */
#ifndef EW_BUS_WIRE_H
#define EW_BUS_WIRE_H

#include <pthread.h>
#include <stdint.h>
#include <sys/time.h>
#include <time.h>
#include "core/json.h"
#include "core/mono.h"
#include "core/rand.h"

/* How deep a backend looks into a message that did not decode (for its id and type). */
#define EW__WIRE_JSON_DEPTH EW_JSON_DEPTH

/* ms as a struct timeval (socket and client-library time-outs); at least 1 ms, since 0 means
 * "no time-out" to most of them. */
static inline struct timeval ew__ms_tv(int64_t ms)
{
    if (ms < 1) ms = 1;
    return (struct timeval){.tv_sec = (time_t)(ms / 1000),
                            .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

/* The next reconnection back-off: min_ms first (ms <= 0), then doubling up to max_ms. */
static inline int ew__backoff_next(int ms, int min_ms, int max_ms)
{
    return ms <= 0 ? min_ms : ms >= max_ms / 2 ? max_ms : ms * 2;
}

/* ms spread by +-25 % at random, so that clients that lost a broker together do not all come
 * back in the same millisecond. */
static inline int ew__jitter_ms(int ms)
{
    int span = ms / 2 + 1;
    return ms - ms / 4 + (int)(ew__rand_unit() * (double)span);
}

#endif
