/* eventwire — the memory inbox: which (handler, event id) pairs this process has processed, in
 * a hash set under one mutex (open addressing, linear probing, grown at 70% load). The key is
 * "handler\0event_id", so no handler name can make two pairs collide. It has no transactions:
 * begin() only looks, commit() records, rollback() has nothing to undo. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/inbox.h"

typedef struct slot {
    uint64_t hash;
    char *key; /* NULL: empty */
    size_t len;
} slot;

struct ew_meminbox {
    pthread_mutex_t mu;
    slot *slots;
    size_t cap, n; /* cap: a power of two, or 0 */
};

int ew_meminbox_new(ew_meminbox **out, ew_error *err)
{
    ew_meminbox *ib = calloc(1, sizeof *ib);
    if (!ib) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (pthread_mutex_init(&ib->mu, NULL)) {
        free(ib);
        return ew_error_set(err, EW_ENOMEM, "cannot create a mutex");
    }
    *out = ib;
    return 0;
}

void ew_meminbox_free(ew_meminbox *ib)
{
    if (!ib) return;
    for (size_t i = 0; i < ib->cap; i++)
        free(ib->slots[i].key);
    free(ib->slots);
    pthread_mutex_destroy(&ib->mu);
    free(ib);
}

/* The key "handler\0event_id" in buf (malloc'ed when it does not fit). */
static char *make_key(const char *handler, const char *event_id, char *buf, size_t bufsize,
                      size_t *len)
{
    size_t hl = strlen(handler), il = strlen(event_id);
    *len = hl + 1 + il;
    char *k = *len <= bufsize ? buf : malloc(*len);
    if (!k) return NULL;
    memcpy(k, handler, hl + 1);
    memcpy(k + hl + 1, event_id, il);
    return k;
}

static uint64_t hash_key(const char *k, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* The slot holding the key, or the empty slot where it would go. ib->cap > 0. */
static slot *probe(slot *slots, size_t cap, uint64_t h, const char *k, size_t len)
{
    for (size_t i = (size_t)h & (cap - 1);; i = (i + 1) & (cap - 1)) {
        slot *s = &slots[i];
        if (!s->key) return s;
        if (s->hash == h && s->len == len && memcmp(s->key, k, len) == 0) return s;
    }
}

static int grow(ew_meminbox *ib)
{
    size_t cap = ib->cap ? ib->cap * 2 : 64;
    slot *ns = calloc(cap, sizeof *ns);
    if (!ns) return EW_ENOMEM;
    for (size_t i = 0; i < ib->cap; i++)
        if (ib->slots[i].key)
            *probe(ns, cap, ib->slots[i].hash, ib->slots[i].key, ib->slots[i].len) = ib->slots[i];
    free(ib->slots);
    ib->slots = ns;
    ib->cap = cap;
    return 0;
}

static int begin(void *self, const char *handler, const char *event_id, void **txn, ew_error *err)
{
    ew_meminbox *ib = self;
    char buf[256];
    size_t len;
    char *k = make_key(handler, event_id, buf, sizeof buf, &len);
    if (!k) return ew_error_set(err, EW_ENOMEM, "out of memory");
    uint64_t h = hash_key(k, len);
    pthread_mutex_lock(&ib->mu);
    int found = ib->cap && probe(ib->slots, ib->cap, h, k, len)->key != NULL;
    pthread_mutex_unlock(&ib->mu);
    if (k != buf) free(k);
    *txn = NULL;
    return found;
}

static int commit(void *self, const char *handler, const char *event_id, void *txn, ew_error *err)
{
    ew_meminbox *ib = self;
    size_t len;
    char *k = make_key(handler, event_id, NULL, 0, &len);
    if (!k) return ew_error_set(err, EW_ENOMEM, "out of memory");
    uint64_t h = hash_key(k, len);
    int rc = 0;
    pthread_mutex_lock(&ib->mu);
    if ((ib->n + 1) * 10 > ib->cap * 7 && grow(ib)) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    } else {
        slot *s = probe(ib->slots, ib->cap, h, k, len);
        if (!s->key) {
            *s = (slot){h, k, len};
            ib->n++;
            k = NULL;
        }
    }
    pthread_mutex_unlock(&ib->mu);
    free(k);
    return rc;
}

static void rollback(void *self, void *txn) {}

ew_inbox ew_meminbox_inbox(ew_meminbox *ib)
{
    static const ew_inbox_ops ops = {
        .version = 1, .begin = begin, .commit = commit, .rollback = rollback};
    return (ew_inbox){.ops = &ops, .self = ib};
}

size_t ew_meminbox_count(ew_meminbox *ib)
{
    pthread_mutex_lock(&ib->mu);
    size_t n = ib->n;
    pthread_mutex_unlock(&ib->mu);
    return n;
}
