/* Attempt limits (docs/security.md, "Abuse limits"): how many times a key -- an account, a client
 * address -- may do something in a fixed window, counted in memory, in a table of bounded size.
 * Thread-safe. */
#ifndef SVC_LIMIT_H
#define SVC_LIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct svc_limiter svc_limiter;

/* A limiter of slots keys at most (when full, the key whose window started first gives way). */
svc_limiter *svc_limiter_new(size_t slots);
void svc_limiter_free(svc_limiter *l);

/* 0 when key has been counted fewer than max times in its window (window_s from its first count
 * in it); else the seconds until the window ends (at least 1). now: Unix seconds. */
int64_t svc_limiter_check(svc_limiter *l, const char *key, int64_t max, int64_t window_s,
                          int64_t now);

/* Counts one for key. */
void svc_limiter_hit(svc_limiter *l, const char *key, int64_t window_s, int64_t now);

/* svc_limiter_check, and when it is 0 svc_limiter_hit: one attempt taken, or the wait. */
int64_t svc_limiter_take(svc_limiter *l, const char *key, int64_t max, int64_t window_s,
                         int64_t now);

/* Forgets key (a login that succeeded). */
void svc_limiter_clear(svc_limiter *l, const char *key);

#endif
