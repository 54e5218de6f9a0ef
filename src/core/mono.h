/* eventwire — timed waits that wall-clock jumps do not move: condition variables on
 * CLOCK_MONOTONIC and deadlines on the same clock. Every thread of the library, the services and
 * ewctl that waits with a time-out uses these. Internal. */
#ifndef EW_CORE_MONO_H
#define EW_CORE_MONO_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC now + ms, for pthread_cond_timedwait on a condvar from ew__cond_init_mono. */
static inline struct timespec ew__mono_deadline(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    return ts;
}

/* A condition variable whose timed waits run on CLOCK_MONOTONIC. 0 or the pthread error. */
static inline int ew__cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    int rc = pthread_condattr_init(&a);
    if (rc) return rc;
    rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (!rc) rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

#endif
