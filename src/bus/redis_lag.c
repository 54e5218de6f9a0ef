/* eventwire — the Redis backend's consumer lag (ew_bus_ops.lag): for each stream of the catalog
 * (PREFIX:TYPE), XINFO GROUPS says, per consumer group, how many entries it has not been given
 * (lag) and how many it was given and has not acknowledged (pending). XINFO's lag is nil when
 * Redis cannot tell (entries deleted or trimmed from the middle of the stream, a group whose
 * entries-read is unknown): then the entries after its last-delivered id are counted with XRANGE.
 * Redis before 7.0 has no lag field at all, and is counted the same way. */
#ifdef EW_HAVE_REDIS

#include <stdlib.h>
#include <string.h>
#include "bus/redis.h"

#define COUNT_PAGE "10000" /* entries per XRANGE when counting */

typedef struct glag {
    char *name;
    uint64_t lag;
} glag;

typedef struct glags {
    glag *v;
    size_t n, cap;
} glags;

static glag *glags_find(glags *gs, const char *name, size_t len)
{
    for (size_t i = 0; i < gs->n; i++)
        if (strlen(gs->v[i].name) == len && memcmp(gs->v[i].name, name, len) == 0) return &gs->v[i];
    if (gs->n == gs->cap) {
        size_t cap = gs->cap ? gs->cap * 2 : 8;
        glag *v = realloc(gs->v, cap * sizeof *v);
        if (!v) return NULL;
        gs->v = v;
        gs->cap = cap;
    }
    char *copy = strndup(name, len);
    if (!copy) return NULL;
    gs->v[gs->n] = (glag){copy, 0};
    return &gs->v[gs->n++];
}

static void glags_release(glags *gs)
{
    for (size_t i = 0; i < gs->n; i++)
        free(gs->v[i].name);
    free(gs->v);
}

/* The value of field `name` in an XINFO answer, a flat array of names and values (RESP2).
 * NULL when it is not there. */
static const redisReply *field(const redisReply *r, const char *name)
{
    if (r->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i];
        if ((k->type == REDIS_REPLY_STRING || k->type == REDIS_REPLY_STATUS) &&
            strcmp(k->str, name) == 0)
            return r->element[i + 1];
    }
    return NULL;
}

/* Entries of key after id (exclusive), counted a page at a time. */
static int count_after(redisContext *c, const char *key, const char *id, uint64_t *n, ew_error *err)
{
    char from[ID_MAX + 2];
    snprintf(from, sizeof from, "(%s", id);
    *n = 0;
    for (;;) {
        const char *argv[] = {"XRANGE", key, from, "+", "COUNT", COUNT_PAGE};
        redisReply *r = ew__rd_rcmd(c, 6, argv);
        if (!r) return ew_error_set(err, EW_ECONNECT, "redis bus: XRANGE %s: %s", key, c->errstr);
        if (r->type != REDIS_REPLY_ARRAY) {
            int rc = ew_error_set(err, EW_EIO, "redis bus: XRANGE %s: %.150s", key,
                                  r->type == REDIS_REPLY_ERROR ? r->str : "unexpected answer");
            freeReplyObject(r);
            return rc;
        }
        size_t got = r->elements;
        *n += got;
        if (got) {
            const redisReply *last = r->element[got - 1];
            if (last->type != REDIS_REPLY_ARRAY || last->elements < 1 ||
                last->element[0]->type != REDIS_REPLY_STRING || last->element[0]->len > ID_MAX) {
                freeReplyObject(r);
                return ew_error_set(err, EW_EIO, "redis bus: XRANGE %s: unexpected answer", key);
            }
            snprintf(from, sizeof from, "(%s", last->element[0]->str);
        }
        freeReplyObject(r);
        if (got < (size_t)atoi(COUNT_PAGE)) return 0;
    }
}

/* Adds one stream's groups (the answer to XINFO GROUPS key) to gs: only `group` when not NULL. */
static int add_stream(redisContext *c, const char *key, const redisReply *r, const char *group,
                      glags *gs, ew_error *err)
{
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *g = r->element[i];
        const redisReply *name = field(g, "name"), *pending = field(g, "pending"),
                         *last = field(g, "last-delivered-id"), *lag = field(g, "lag");
        if (!name || name->type != REDIS_REPLY_STRING || !pending ||
            pending->type != REDIS_REPLY_INTEGER || !last || last->type != REDIS_REPLY_STRING ||
            last->len > ID_MAX)
            return ew_error_set(err, EW_EIO, "redis bus: XINFO GROUPS %s: unexpected answer", key);
        if (group && strcmp(name->str, group) != 0) continue;
        uint64_t behind;
        if (lag && lag->type == REDIS_REPLY_INTEGER && lag->integer >= 0) {
            behind = (uint64_t)lag->integer;
        } else {
            int rc = count_after(c, key, last->str, &behind, err);
            if (rc) return rc;
        }
        glag *gl = glags_find(gs, name->str, name->len);
        if (!gl) return ew_error_set(err, EW_ENOMEM, "out of memory");
        gl->lag += behind + (pending->integer > 0 ? (uint64_t)pending->integer : 0);
    }
    return 0;
}

int ew__rd_lag(void *self, const char *group, ew_lag_fn fn, void *ud, ew_error *err)
{
    redis_bus *rb = self;
    if (rb->pubsub)
        return ew_error_set(err, EW_ENOTSUP,
                            "redis bus: REDIS_MODE=pubsub keeps no consumer groups, so no lag");
    redisContext *c = ew__rd_rconnect(rb, rb->io_ms, false, err);
    if (!c) return err && err->code ? err->code : EW_ECONNECT;
    int rc = 0;
    size_t n = EW_T__COUNT - 1, nk = 0; /* catalog types; distinct streams */
    char **keys = calloc(n, sizeof *keys);
    redisReply **replies = calloc(n, sizeof *replies);
    glags gs = {0};
    ew_buf b;
    ew_buf_init(&b);
    if (!keys || !replies) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto out;
    }
    /* one pipeline: XINFO GROUPS on every stream the catalog may have */
    for (size_t i = 0; i < n; i++) {
        const char *type = ew_catalog_get((ew_type_id)(i + 1))->type;
        size_t len = strlen(rb->prefix) + 1 + strlen(type) + 1;
        if (!(keys[i] = malloc(len))) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
            goto out;
        }
        snprintf(keys[i], len, "%s:%s", rb->prefix, type);
        /* a type of several versions has one stream: ask once */
        bool seen = false;
        for (size_t j = 0; j < nk && !seen; j++)
            seen = strcmp(keys[j], keys[i]) == 0;
        if (seen) {
            free(keys[i]);
            keys[i] = NULL;
            continue;
        }
        const char *argv[] = {"XINFO", "GROUPS", keys[i]};
        ew__rd_put_cmd(&b, 3, argv);
        keys[nk++] = keys[i];
        if (nk - 1 != i) keys[i] = NULL;
    }
    if (b.oom) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto out;
    }
    if (!ew__rd_rexchange(c, &b, replies, nk)) {
        rc = ew_error_set(err, EW_ECONNECT, "redis bus: XINFO GROUPS on %s: %s", rb->addr,
                          c->errstr);
        goto out;
    }
    for (size_t i = 0; i < nk && !rc; i++) {
        const redisReply *r = replies[i];
        if (r->type == REDIS_REPLY_ERROR) {
            if (strstr(r->str, "no such key")) continue; /* nobody published that type */
            rc = ew_error_set(err, EW_EIO, "redis bus: XINFO GROUPS %s: %.150s", keys[i], r->str);
        } else if (r->type != REDIS_REPLY_ARRAY) {
            rc =
                ew_error_set(err, EW_EIO, "redis bus: XINFO GROUPS %s: unexpected answer", keys[i]);
        } else {
            rc = add_stream(c, keys[i], r, group, &gs, err);
        }
    }
    if (rc) goto out;
    if (group && !gs.n) {
        rc = ew_error_set(err, EW_ENOTFOUND, "redis bus: no consumer group %s on %s:*", group,
                          rb->prefix);
        goto out;
    }
    for (size_t i = 0; i < gs.n; i++)
        if (fn(ud, gs.v[i].name, gs.v[i].lag)) break;
out:
    if (replies) ew__rd_free_replies(replies, n);
    free(replies);
    if (keys)
        for (size_t i = 0; i < n; i++)
            free(keys[i]);
    free(keys);
    glags_release(&gs);
    ew_buf_release(&b);
    redisFree(c);
    return rc;
}

#else
typedef int ew__redis_lag_unused;
#endif
