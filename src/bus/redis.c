/* eventwire — the Redis backend (EVENT_BUS_TYPE=redis), on hiredis' blocking API.
 *
 * Streams (REDIS_MODE=streams, the default): every event type is a stream PREFIX:TYPE; publish
 * pipelines one XADD per event and returns when Redis has answered them all. Every subscriber
 * group is a Redis consumer group on each stream its patterns match (resolved against the
 * catalog), consumed by the shared consumer core (consumer.h: its thread, reconnection, window
 * and settlement) through this backend's transport (redis_streams.c): XREADGROUP on one
 * connection, and XACK of each entry once the dispatcher is done with it, in batches, on another.
 * Entries a dead consumer left pending are taken over with XAUTOCLAIM after REDIS_CLAIM_IDLE_MS;
 * entries still in our hands are kept fresh with XCLAIM JUSTID so that nobody takes them from a
 * live consumer.
 *
 * Pub/Sub (REDIS_MODE=pubsub): PUBLISH to channel PREFIX:TYPE and PSUBSCRIBE per group, on the
 * core too (redis_pubsub.c); fire and forget, as the seed had it. docs/bus-redis.md says what
 * each mode promises.
 *
 * This file: publish and the lifecycle; redis.h lists the others. */
#ifdef EW_HAVE_REDIS

#include <errno.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "bus/backend.h"
#include "bus/binding.h"
#include "bus/receive.h"
#include "bus/redis.h"
#include "bus/wire.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

/* ---- publish ----------------------------------------------------------------------------- */

static void put_key(ew_buf *b, const redis_bus *rb, const char *type)
{
    size_t pl = strlen(rb->prefix), tl = strlen(type);
    ew__rd_put_num(b, '$', pl + 1 + tl);
    ew_buf_append(b, rb->prefix, pl);
    ew_buf_putc(b, ':');
    ew_buf_append(b, type, tl);
    ew_buf_append(b, "\r\n", 2);
}

static int rd_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                      const ew__batch *batch, ew_error *err)
{
    redis_bus *rb = self;
    *npublished = 0;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_reserve(&b, n * 640);
    for (size_t i = 0; i < n; i++) {
        /* Redis has no CloudEvents binding: structured, the JSON in the entry's event field */
        ew__wire_out w;
        ew_error e = {0};
        int rc = ew__binding_encode(evs[i], EW__BINDING_STRUCTURED, EW__MODE_STRUCTURED,
                                    rb->max_bytes, &w, &e);
        if (rc) {
            ew_buf_release(&b);
            return ew_error_set(err, rc, "event %zu of %zu: %s: nothing published", i, n, e.msg);
        }
        if (rb->pubsub) {
            ew_buf_append(&b, "*3\r\n$7\r\nPUBLISH\r\n", 17);
        } else {
            ew__rd_put_num(&b, '*', (size_t)rb->xadd_argc);
            ew_buf_append(&b, "$4\r\nXADD\r\n", 10);
        }
        put_key(&b, rb, ew_event_type(evs[i]));
        if (!rb->pubsub) ew_buf_append(&b, rb->xadd_mid, rb->xadd_mid_len);
        ew__rd_put_arg(&b, w.body, w.body_len);
        ew__wire_out_release(&w);
    }
    if (b.oom) {
        ew_buf_release(&b);
        return ew_error_set(err, EW_ENOMEM, "out of memory: nothing published");
    }
    redisReply *stack[64];
    redisReply **replies = n <= 64 ? stack : malloc(n * sizeof *replies);
    if (!replies) {
        ew_buf_release(&b);
        return ew_error_set(err, EW_ENOMEM, "out of memory: nothing published");
    }
    size_t nread = 0;
    pthread_mutex_lock(&rb->pub_mu);
    int rc = ew__rd_pub_exchange(rb, &b, replies, n, &nread, err);
    /* each stream written to is trimmed by age now and then (REDIS_STREAM_MAX_AGE_SECONDS) */
    for (size_t i = 0; !rc && !rb->pubsub && rb->max_age_ms > 0 && i < n; i++) {
        /* once a stream a batch: the events of a batch are mostly of one type */
        if (i && ew_event_type(evs[i]) == ew_event_type(evs[i - 1])) continue;
        char key[300];
        snprintf(key, sizeof key, "%s:%s", rb->prefix, ew_event_type(evs[i]));
        if (rb->pub && ew__rd_trim_by_age(rb, rb->pub, key)) ew__rd_pub_drop(rb);
    }
    pthread_mutex_unlock(&rb->pub_mu);
    size_t ok = 0;
    while (ok < nread && replies[ok]->type != REDIS_REPLY_ERROR)
        ok++;
    if (ok < nread) {
        rc = ew_error_set(err, EW_EIO, "Redis at %s refused event %zu of %zu (%s): %.120s",
                          rb->addr, ok, n, ew_event_id(evs[ok]), replies[ok]->str);
    } else if (rc && n > 1 && err) {
        ew_error inner = *err;
        ew_error_set(err, rc, "event %zu of %zu not published: %s", ok, n, inner.msg);
    }
    *npublished = ok;
    ew__rd_free_replies(replies, nread);
    if (replies != stack) free(replies);
    ew_buf_release(&b);
    return rc;
}

/* ---- lifecycle --------------------------------------------------------------------------- */

static rconsumer *consumer_get(redis_bus *rb, const char *group, ew_error *err)
{
    for (size_t i = 0; i < rb->ncons; i++)
        if (strcmp(rb->cons[i]->group, group) == 0) return rb->cons[i];
    if (rb->ncons == rb->cons_cap) {
        size_t cap = rb->cons_cap ? rb->cons_cap * 2 : 4;
        rconsumer **v = realloc(rb->cons, cap * sizeof *v);
        if (!v) goto oom;
        rb->cons = v;
        rb->cons_cap = cap;
    }
    rconsumer *c = ew__rd_consumer_new(rb, group, rb->ncons);
    if (!c) goto oom;
    rb->cons[rb->ncons++] = c;
    return c;
oom:
    ew_error_set(err, EW_ENOMEM, "out of memory adding group %s", group);
    return NULL;
}

static int consumer_start(rconsumer *c, ew_error *err)
{
    redis_bus *rb = c->rb;
    if (!c->running) {
        int rc = ew__consumer_start(c->core, err);
        if (rc) return rc;
        c->running = true;
    }
    return rb->pubsub ? ew__rd_pubsub_wait_confirmed(c, err) : 0;
}

static int rd_subscribed(void *self, const ew_backend_sub *bsub, ew_error *err)
{
    const char *group = bsub->group, *pattern = bsub->pattern;
    redis_bus *rb = self;
    rconsumer *c = consumer_get(rb, group, err);
    if (!c) return EW_ENOMEM;
    if (bsub->ephemeral) c->ephemeral = true;
    if (rb->pubsub) {
        /* Pub/Sub keeps nothing: bsub->from_beginning has nothing to replay and is ignored. */
        char *g = ew__rd_pattern_glob(rb, pattern);
        if (!g) return ew_error_set(err, EW_ENOMEM, "out of memory");
        pthread_mutex_lock(&c->mu);
        bool have = false;
        for (size_t i = 0; i < c->nglobs && !have; i++)
            have = strcmp(c->globs[i], g) == 0;
        if (!have && c->nglobs == c->globs_cap) {
            size_t cap = c->globs_cap ? c->globs_cap * 2 : 8;
            char **v = realloc(c->globs, cap * sizeof *v);
            if (!v) {
                pthread_mutex_unlock(&c->mu);
                free(g);
                return ew_error_set(err, EW_ENOMEM, "out of memory");
            }
            c->globs = v;
            c->globs_cap = cap;
        }
        if (!have)
            c->globs[c->nglobs++] = g;
        else
            free(g);
        pthread_mutex_unlock(&c->mu);
        if (have || !rb->started) return 0;
        ew__rd_pubsub_wake(c);
        return consumer_start(c, err);
    }

    /* Streams: every catalog type the pattern matches, each a stream of its own. */
    rstream *added[MAX_STREAMS];
    size_t nadded = 0;
    pthread_mutex_lock(&c->mu);
    size_t have = c->nstreams;
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < ew_catalog_count(); i++) {
        const ew_type_info *t = ew_catalog_at(i);
        if (!t->latest || !ew_pattern_match(pattern, t->type)) continue;
        size_t kl = strlen(rb->prefix) + 1 + strlen(t->type);
        bool dup = false;
        for (size_t j = 0; j < have + nadded && !dup; j++) {
            const rstream *s = &c->streams[j];
            dup = s->key_len == kl && strcmp(s->key + strlen(rb->prefix) + 1, t->type) == 0;
        }
        if (dup || have + nadded >= MAX_STREAMS) continue;
        rstream *s = &c->streams[have + nadded];
        if (!(s->key = malloc(kl + 1))) {
            for (size_t j = 0; j < nadded; j++) {
                free(added[j]->key);
                added[j]->key = NULL;
            }
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
        snprintf(s->key, kl + 1, "%s:%s", rb->prefix, t->type);
        s->key_len = kl;
        s->type = s->key + kl - strlen(t->type);
        strcpy(s->cursor, "0-0");
        added[nadded++] = s;
    }
    if (have + nadded == 0)
        ew__bus_log(rb->bus, EW_LOG_WARN,
                    "redis: pattern %s of group %s matches no event type of the catalog: it will "
                    "receive nothing",
                    pattern, group);
    int rc = 0;
    if (nadded) {
        pthread_mutex_lock(&rb->pub_mu);
        bool fresh;
        for (int attempt = 0; attempt < 2; attempt++) {
            if ((rc = ew__rd_pub_conn(rb, &fresh, err))) break;
            /* A group new on a stream starts at its end ($), or at its first entry (0) with
             * from_beginning; on a stream where it exists (BUSYGROUP) it stays where it is. */
            rc = ew__rd_create_groups(rb, rb->pub, c, added, nadded,
                                      bsub->from_beginning ? "0" : "$", err);
            if (!rc || rb->pub->err == 0) break;
            ew__rd_pub_drop(rb); /* a dead idle connection: one more try on a new one */
            if (fresh) break;
        }
        pthread_mutex_unlock(&rb->pub_mu);
        if (rc) {
            for (size_t j = 0; j < nadded; j++) {
                free(added[j]->key);
                added[j]->key = NULL;
            }
            return rc;
        }
        pthread_mutex_lock(&c->mu);
        c->nstreams = have + nadded; /* read from the consumer's next read on */
        pthread_mutex_unlock(&c->mu);
    }
    if (rb->started) return consumer_start(c, err);
    return 0;
}

static int rd_start(void *self, ew_error *err)
{
    redis_bus *rb = self;
    rb->started = true;
    for (size_t i = 0; i < rb->ncons; i++) {
        int rc = consumer_start(rb->cons[i], err);
        if (rc) return rc;
    }
    return 0;
}

/* Stops delivering: each group's core stops (its thread cuts its blocked read short with
 * CLIENT UNBLOCK and keeps its connections to acknowledge what the handlers finish). */
static void rd_stop(void *self)
{
    redis_bus *rb = self;
    for (size_t i = 0; i < rb->ncons; i++)
        ew__consumer_stop(rb->cons[i]->core);
}

/* An ephemeral group goes from every stream (XGROUP DESTROY), pending entries and all. */
static void destroy_group(redis_bus *rb, rconsumer *c)
{
    size_t n = c->nstreams;
    ew_buf b;
    ew_buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        const char *argv[] = {"XGROUP", "DESTROY", c->streams[i].key, c->group};
        ew__rd_put_cmd(&b, 4, argv);
    }
    redisReply **r = calloc(n, sizeof *r);
    size_t got = 0;
    pthread_mutex_lock(&rb->pub_mu);
    if (r && ew__rd_pub_exchange(rb, &b, r, n, &got, NULL))
        ew__bus_log(rb->bus, EW_LOG_WARN, "redis: group %s was not removed from its streams",
                    c->group);
    if (r) ew__rd_free_replies(r, got);
    pthread_mutex_unlock(&rb->pub_mu);
    free(r);
    ew_buf_release(&b);
}

/* Removes this bus's consumer from its group on every stream where it holds nothing pending
 * (where it does, it stays, so that its entries can be taken over), so that closed buses do not
 * pile up in XINFO CONSUMERS; an ephemeral group goes altogether. Best effort. */
static void forget_consumer(redis_bus *rb, rconsumer *c)
{
    size_t n = c->nstreams;
    if (!n || !rb->pub) return; /* nothing, or Redis is away: no new connection to close */
    if (c->ephemeral) {
        destroy_group(rb, c);
        return;
    }
    ew_buf b;
    ew_buf_init(&b);
    for (size_t i = 0; i < n; i++) {
        const char *argv[] = {"XPENDING", c->streams[i].key, c->group, "-", "+", "1", c->name};
        ew__rd_put_cmd(&b, 7, argv);
    }
    redisReply **r = calloc(n, sizeof *r);
    size_t got = 0;
    pthread_mutex_lock(&rb->pub_mu);
    if (r && !ew__rd_pub_exchange(rb, &b, r, n, &got, NULL)) {
        ew_buf_reset(&b);
        size_t ndel = 0;
        for (size_t i = 0; i < n; i++)
            if (ew__rd_reply_is(r[i], REDIS_REPLY_ARRAY) && r[i]->elements == 0) {
                const char *argv[] = {"XGROUP", "DELCONSUMER", c->streams[i].key, c->group,
                                      c->name};
                ew__rd_put_cmd(&b, 5, argv);
                ndel++;
            }
        ew__rd_free_replies(r, got);
        got = 0;
        if (ndel && !ew__rd_pub_exchange(rb, &b, r, ndel, &got, NULL)) { /* done */
        }
    }
    if (r) ew__rd_free_replies(r, got);
    pthread_mutex_unlock(&rb->pub_mu);
    free(r);
    ew_buf_release(&b);
}

static void rd_close(void *self)
{
    redis_bus *rb = self;
    for (size_t i = 0; i < rb->ncons; i++) {
        rconsumer *c = rb->cons[i];
        if (c->running) {
            ew__consumer_close(c->core); /* the last acknowledgements, the connections closed */
            c->running = false;
            if (!rb->pubsub) {
                ew__rd_consumer_leftovers(c);
                forget_consumer(rb, c);
            }
        }
        ew__rd_consumer_free(c);
    }
    free(rb->cons);
    if (rb->pub) ew__rd_conn_free(rb->pub);
    ew__rd_tls_close(rb);
    pthread_mutex_destroy(&rb->pub_mu);
    for (size_t i = 0; i < rb->ntrims; i++)
        free(rb->trims[i].key);
    free(rb->trims);
    pthread_mutex_destroy(&rb->trim_mu);
    free(rb->prefix);
    free(rb);
}

static int rd_open(void **self, ew_bus *bus, const ew_config *cfg, ew_error *err)
{
    redis_bus *rb = calloc(1, sizeof *rb);
    if (!rb) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = ew__redis_url_parse(&rb->url, ew_config_get(cfg, URL_VAR), err);
    if (rc) {
        free(rb);
        return rc;
    }
    if ((rc = ew__rd_tls_open(rb, cfg, err))) {
        free(rb);
        return rc;
    }
    rb->bus = bus;
    if (strchr(rb->url.host, ':'))
        snprintf(rb->addr, sizeof rb->addr, "[%s]:%d", rb->url.host, rb->url.port);
    else
        snprintf(rb->addr, sizeof rb->addr, "%s:%d", rb->url.host, rb->url.port);
    rb->pubsub = strcmp(ew_config_get(cfg, "REDIS_MODE"), "pubsub") == 0;
    rb->maxlen = (long long)ew_config_get_int(cfg, "REDIS_STREAM_MAXLEN");
    rb->max_age_ms = ew_config_get_int(cfg, "REDIS_STREAM_MAX_AGE_SECONDS") * 1000;
    rb->trim_every_ms = rb->max_age_ms / 2 < 100     ? 100
                        : rb->max_age_ms / 2 > 60000 ? 60000
                                                     : rb->max_age_ms / 2;
    rb->claim_idle_ms = ew_config_get_int(cfg, "REDIS_CLAIM_IDLE_MS");
    rb->connect_ms = (int)ew_config_get_int(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS");
    rb->io_ms = rb->connect_ms < 5000 ? 5000 : rb->connect_ms;
    rb->max_inflight = (size_t)ew_config_get_int(cfg, "EVENT_BUS_MAX_IN_FLIGHT");
    rb->max_bytes = (size_t)ew_config_get_int(cfg, "EVENT_MAX_BYTES");
    rb->prefix = strdup(ew_config_get(cfg, "REDIS_CHANNEL_PREFIX"));
    pthread_mutex_init(&rb->pub_mu, NULL);
    pthread_mutex_init(&rb->trim_mu, NULL);
    if (!rb->prefix) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto fail;
    }
    /* XADD key [MAXLEN ~ N] * event JSON: what follows the key, formatted once */
    ew_buf mid;
    ew_buf_init(&mid);
    if (rb->maxlen > 0) {
        char n[24];
        snprintf(n, sizeof n, "%lld", rb->maxlen);
        ew__rd_put_str(&mid, "MAXLEN");
        ew__rd_put_str(&mid, "~");
        ew__rd_put_str(&mid, n);
    }
    ew__rd_put_str(&mid, "*");
    ew__rd_put_str(&mid, "event");
    snprintf(rb->xadd_mid, sizeof rb->xadd_mid, "%s", mid.data);
    rb->xadd_mid_len = strlen(rb->xadd_mid);
    rb->xadd_argc = rb->maxlen > 0 ? 8 : 5;
    ew_buf_release(&mid);
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    char uuid[EW_UUID_LEN + 1];
    ew_uuid7(uuid);
    snprintf(rb->consumer_base, sizeof rb->consumer_base, "%.40s-%ld-%.8s", host, (long)getpid(),
             uuid + 28);

    ew_error e = {0};
    if (!(rb->pub = ew__rd_rconnect(rb, rb->io_ms, !rb->pubsub, &e))) {
        rc = e.code;
        if (err) *err = e;
        goto fail;
    }
    ew__bus_log(bus, EW_LOG_DEBUG, "redis: connected to %s%s (%s, prefix %s, consumer %s)",
                rb->addr, rb->tls ? " over TLS" : "", rb->pubsub ? "pubsub" : "streams", rb->prefix,
                rb->consumer_base);
    *self = rb;
    return 0;
fail:
    if (rb->pub) ew__rd_conn_free(rb->pub);
    ew__rd_tls_close(rb);
    pthread_mutex_destroy(&rb->pub_mu);
    pthread_mutex_destroy(&rb->trim_mu);
    free(rb->prefix);
    free(rb);
    return rc;
}

const ew_bus_ops ew__bus_redis_ops = {
    .name = "redis",
    .open = rd_open,
    .publish = rd_publish,
    .subscribed = rd_subscribed,
    .start = rd_start,
    .stop = rd_stop,
    .close = rd_close,
    .lag = ew__rd_lag,
};

#else
typedef int ew__redis_unused;
#endif
