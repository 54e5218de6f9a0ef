/* Attempt limits (svc_limit.h): an open-addressed table of keyed BLAKE2b digests, each with the
 * start of its window and its count. */
#include "svc_limit.h"
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define PROBES 8

typedef struct slot {
    uint64_t digest; /* 0: empty */
    int64_t start, count;
} slot;

struct svc_limiter {
    pthread_mutex_t mu;
    size_t n;
    unsigned char key[crypto_shorthash_KEYBYTES]; /* per process: slots cannot be aimed at */
    slot *slots;
};

svc_limiter *svc_limiter_new(size_t slots)
{
    svc_limiter *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->n = slots ? slots : 1;
    l->slots = calloc(l->n, sizeof *l->slots);
    if (!l->slots) {
        free(l);
        return NULL;
    }
    randombytes_buf(l->key, sizeof l->key);
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void svc_limiter_free(svc_limiter *l)
{
    if (!l) return;
    pthread_mutex_destroy(&l->mu);
    free(l->slots);
    free(l);
}

static uint64_t digest_of(const svc_limiter *l, const char *key)
{
    unsigned char h[crypto_shorthash_BYTES];
    crypto_shorthash(h, (const unsigned char *)key, strlen(key), l->key);
    uint64_t d;
    memcpy(&d, h, sizeof d);
    return d ? d : 1;
}

/* The slot of key (under mu): its own, or with create a free, expired or the oldest one. */
static slot *find(svc_limiter *l, uint64_t d, int64_t window_s, int64_t now, int create)
{
    size_t at = (size_t)(d % l->n);
    slot *victim = NULL;
    int victim_free = 0;
    for (size_t i = 0; i < PROBES && i < l->n; i++) {
        slot *s = &l->slots[(at + i) % l->n];
        if (s->digest == d) return s;
        if (!create) continue;
        int is_free = s->digest == 0 || s->start + window_s <= now;
        if (is_free) {
            if (!victim_free) victim = s, victim_free = 1;
        } else if (!victim_free && (!victim || s->start < victim->start)) {
            victim = s;
        }
    }
    if (!create || !victim) return NULL;
    *victim = (slot){d, now, 0};
    return victim;
}

int64_t svc_limiter_check(svc_limiter *l, const char *key, int64_t max, int64_t window_s,
                          int64_t now)
{
    uint64_t d = digest_of(l, key);
    pthread_mutex_lock(&l->mu);
    slot *s = find(l, d, window_s, now, 0);
    int64_t wait = 0;
    if (s && s->start + window_s > now && s->count >= max) wait = s->start + window_s - now;
    pthread_mutex_unlock(&l->mu);
    return wait;
}

void svc_limiter_hit(svc_limiter *l, const char *key, int64_t window_s, int64_t now)
{
    uint64_t d = digest_of(l, key);
    pthread_mutex_lock(&l->mu);
    slot *s = find(l, d, window_s, now, 1);
    if (s) {
        if (s->start + window_s <= now) *s = (slot){d, now, 0}; /* a new window */
        s->count++;
    }
    pthread_mutex_unlock(&l->mu);
}

int64_t svc_limiter_take(svc_limiter *l, const char *key, int64_t max, int64_t window_s,
                         int64_t now)
{
    uint64_t d = digest_of(l, key);
    pthread_mutex_lock(&l->mu);
    slot *s = find(l, d, window_s, now, 1);
    int64_t wait = 0;
    if (s) {
        if (s->start + window_s <= now) *s = (slot){d, now, 0};
        if (s->count >= max)
            wait = s->start + window_s - now;
        else
            s->count++;
    }
    pthread_mutex_unlock(&l->mu);
    return wait;
}

void svc_limiter_clear(svc_limiter *l, const char *key)
{
    uint64_t d = digest_of(l, key);
    pthread_mutex_lock(&l->mu);
    slot *s = find(l, d, 0, 0, 0);
    if (s) memset(s, 0, sizeof *s);
    pthread_mutex_unlock(&l->mu);
}
