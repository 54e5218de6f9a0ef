/* eventwire — the Kafka backend, consuming: the transport of each group's consumer core
 * (consumer.h: its thread, window and in-order settlement), with one lane per assigned
 * partition: fetch records from librdkafka, commit the offset after each finished run, and
 * hand partitions over in rebalances. */
#ifdef EW_HAVE_KAFKA

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "bus/backend.h"
#include "bus/binding.h"
#include "bus/consumer.h"
#include "bus/kafka.h"
#include "bus/receive.h"
#include "eventwire/clock.h"

/* ---- partitions: the lanes ------------------------------------------------------------------ */

void ew__kf_part_free(kpart *p)
{
    if (!p) return;
    free(p->topic);
    free(p);
}

static kpart *find_assigned(kgroup *g, const char *topic, int32_t partition, size_t *index)
{
    for (size_t i = 0; i < g->nparts; i++) {
        kpart *p = g->parts[i];
        if (p->partition == partition && strcmp(p->topic, topic) == 0) {
            if (index) *index = i;
            return p;
        }
    }
    return NULL;
}

/* The lowest lane id no assigned partition uses (ids are reused: the core's lane table stays as
 * small as the assignment). Under mu. */
static uint32_t free_lane(const kgroup *g)
{
    for (uint32_t id = 0;; id++) {
        bool used = false;
        for (size_t i = 0; i < g->nparts && !used; i++)
            used = g->parts[i]->lane == id;
        if (!used) return id;
    }
}

/* Adds a partition to the assigned ones (consumer thread). NULL when out of memory. */
static kpart *assign_one(kgroup *g, const char *topic, int32_t partition)
{
    kpart *p = find_assigned(g, topic, partition, NULL);
    if (p) return p;
    if (g->nparts == g->capparts) {
        size_t cap = g->capparts ? 2 * g->capparts : 16;
        kpart **np = realloc(g->parts, cap * sizeof *np);
        if (!np) return NULL;
        g->parts = np;
        g->capparts = cap;
    }
    if (!(p = calloc(1, sizeof *p))) return NULL;
    if (!(p->topic = strdup(topic))) {
        free(p);
        return NULL;
    }
    p->partition = partition;
    p->next_commit = p->committed = -1;
    p->lane = free_lane(g);
    g->parts[g->nparts++] = p;
    return p;
}

static kpart *part_of_lane(kgroup *g, uint32_t lane)
{
    for (size_t i = 0; i < g->nparts; i++)
        if (g->parts[i]->lane == lane) return g->parts[i];
    return NULL;
}

/* ---- commits --------------------------------------------------------------------------------- */

/* Commits the offsets that moved (consumer thread). Asynchronous unless sync, one at a time and
 * at most every COMMIT_INTERVAL_MS: how many records a crash makes deliver again against how
 * many commits the cluster writes. The result comes back through commit_cb on this thread. */
static void commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *offs,
                      void *opaque);

static void commit(kgroup *g, bool sync)
{
    if (g->ephemeral) return;
    if (!sync) {
        rd_kafka_queue_poll_callback(g->commitq, 0); /* results of earlier commits */
        if (g->commit_inflight || ew_mono_ns() < g->next_commit_ns) return;
    }
    rd_kafka_topic_partition_list_t *l = NULL;
    pthread_mutex_lock(&g->mu);
    if (g->dirty || sync) {
        g->dirty = false;
        for (size_t i = 0; i < g->nparts; i++) {
            kpart *p = g->parts[i];
            if (p->next_commit < 0 || p->next_commit == p->committed) continue;
            if (!l) l = rd_kafka_topic_partition_list_new((int)g->nparts);
            if (!l) break;
            rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = p->next_commit;
            p->committed = p->next_commit;
        }
    }
    pthread_mutex_unlock(&g->mu);
    if (!l) return;
    if (sync) {
        rd_kafka_resp_err_t e = rd_kafka_commit_queue(g->rk, l, NULL, commit_cb, NULL);
        if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
            ew__bus_log(g->k->bus, EW_LOG_WARN, "kafka group %s: commit failed: %s", g->group_id,
                        rd_kafka_err2str(e));
    } else {
        g->commit_inflight = true;
        g->next_commit_ns = ew_mono_ns() + (int64_t)COMMIT_INTERVAL_MS * 1000000;
        rd_kafka_resp_err_t e = rd_kafka_commit_queue(g->rk, l, g->commitq, commit_cb, g);
        if (e) commit_cb(g->rk, e, l, g);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* The result of a commit. opaque is the group for asynchronous commits, NULL for synchronous
 * ones (which report their error to their caller). Consumer thread. */
static void commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *offs,
                      void *opaque)
{
    (void)rk;
    kgroup *g = opaque;
    if (!g) return;
    g->commit_inflight = false;
    if (!e || e == RD_KAFKA_RESP_ERR__NO_OFFSET) {
        bool some = false;
        for (int i = 0; offs && i < offs->cnt; i++)
            if (offs->elems[i].err) some = true;
        if (!some) return;
    }
    /* Send them again later: forget what was sent for the partitions that failed. */
    ew__bus_log(g->k->bus, EW_LOG_DEBUG, "kafka group %s: commit failed, retrying: %s", g->group_id,
                rd_kafka_err2str(e));
    pthread_mutex_lock(&g->mu);
    for (int i = 0; offs && i < offs->cnt; i++) {
        if (!e && !offs->elems[i].err) continue;
        for (size_t j = 0; j < g->nparts; j++) {
            kpart *p = g->parts[j];
            if (p->partition == offs->elems[i].partition &&
                strcmp(p->topic, offs->elems[i].topic) == 0 &&
                p->committed == offs->elems[i].offset)
                p->committed = -1;
        }
    }
    g->dirty = true;
    pthread_mutex_unlock(&g->mu);
    g->next_commit_ns = ew_mono_ns() + (int64_t)COMMIT_RETRY_MS * 1000000;
}

/* ---- rebalances ------------------------------------------------------------------------------ */

/* Revoked partitions: wait (up to EVENT_BUS_DRAIN_TIMEOUT_MS) for their records in flight,
 * commit what is done, and let go. Records still in flight then finish without committing: the
 * partition's next owner delivers them again (at least once, never lost). Lost partitions are
 * let go at once, committing nothing. */
static void revoke(kgroup *g, rd_kafka_topic_partition_list_t *parts, bool lost)
{
    kafka *k = g->k;
    uint32_t local[64], *lanes = local;
    if (parts->cnt > 64 && !(lanes = malloc((size_t)parts->cnt * sizeof *lanes))) lanes = local;
    size_t n = 0;
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < parts->cnt && (lanes != local || n < 64); i++) {
        kpart *p = find_assigned(g, parts->elems[i].topic, parts->elems[i].partition, NULL);
        if (p) lanes[n++] = p->lane;
    }
    pthread_mutex_unlock(&g->mu);
    if (!lost && n) {
        ew_error e = {0};
        size_t busy = ew__consumer_drain_lanes(g->core, lanes, n,
                                               ew_mono_ns() + (int64_t)k->drain_ms * 1000000, &e);
        if (busy)
            ew__bus_log(k->bus, EW_LOG_WARN,
                        "kafka group %s: %zu partitions revoked with %zu messages in flight: they "
                        "will be delivered again",
                        g->group_id, n, busy);
        commit(g, true);
    }
    ew__consumer_forget_lanes(g->core, lanes, n);
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < parts->cnt; i++) {
        size_t idx;
        kpart *p = find_assigned(g, parts->elems[i].topic, parts->elems[i].partition, &idx);
        if (!p) continue;
        g->parts[idx] = g->parts[--g->nparts];
        ew__kf_part_free(p);
    }
    g->last = NULL;
    pthread_mutex_unlock(&g->mu);
    if (lanes != local) free(lanes);
}

void ew__kf_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    kgroup *g = opaque;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        ew__kf_set_start_offsets(g, parts);
        pthread_mutex_lock(&g->mu);
        for (int i = 0; i < parts->cnt; i++)
            if (!assign_one(g, parts->elems[i].topic, parts->elems[i].partition))
                ew__bus_log(g->k->bus, EW_LOG_ERROR, "kafka group %s: out of memory", g->group_id);
        pthread_mutex_unlock(&g->mu);
        ew__bus_log(g->k->bus, EW_LOG_DEBUG, "kafka group %s: %d partitions assigned", g->group_id,
                    parts->cnt);
        rd_kafka_assign(rk, parts);
    } else {
        bool lost = e != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS || rd_kafka_assignment_lost(rk);
        ew__bus_log(g->k->bus, EW_LOG_DEBUG, "kafka group %s: %d partitions %s", g->group_id,
                    parts->cnt, lost ? "lost" : "revoked");
        revoke(g, parts, lost);
        rd_kafka_assign(rk, NULL);
    }
}

/* ---- records --------------------------------------------------------------------------------- */

static kpart *part_of(kgroup *g, const rd_kafka_message_t *m)
{
    kpart *p = g->last;
    if (p && p->rkt == m->rkt && p->partition == m->partition) return p;
    const char *topic = rd_kafka_topic_name(m->rkt);
    pthread_mutex_lock(&g->mu);
    p = find_assigned(g, topic, m->partition, NULL);
    /* not in our assignment (not expected): track it all the same */
    if (!p) p = assign_one(g, topic, m->partition);
    pthread_mutex_unlock(&g->mu);
    if (!p) return NULL;
    p->rkt = m->rkt;
    g->last = p;
    return p;
}

/* Writes v in decimal at d; returns the end. */
static char *put_dec(char *d, int64_t v)
{
    char tmp[24];
    size_t n = 0;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do
        tmp[n++] = (char)('0' + u % 10);
    while ((u /= 10) > 0);
    if (v < 0) *d++ = '-';
    while (n)
        *d++ = tmp[--n];
    return d;
}

#define WHERE_CAP 400 /* "kafka topic=" + 300 + " partition=" + 11 + " offset=" + 20 + 1 */

/* Where a record came from, for its dead letter (ew__recv_msg.transport): "kafka topic=T
 * partition=P offset=O", the topic cut at 300 bytes. Written by hand: snprintf was ~1,600
 * instructions a record, on every record, for a string only a dead letter reads. */
static void describe(char where[WHERE_CAP], const char *topic, int32_t partition, int64_t offset)
{
    size_t nt = strnlen(topic, 300);
    char *d = where;
    memcpy(d, "kafka topic=", 12);
    d += 12;
    memcpy(d, topic, nt);
    d += nt;
    memcpy(d, " partition=", 11);
    d = put_dec(d + 11, partition);
    memcpy(d, " offset=", 8);
    d = put_dec(d + 8, offset);
    *d = '\0';
}

/* A record through the consumer core, by the CloudEvents Kafka binding: every header as
 * received, the binding decides the mode; its offset in its partition's lane settles it. */
static void receive(kgroup *g, kpart *p, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR) h = NULL;
    size_t count = h ? rd_kafka_header_cnt(h) : 0;
    ew__header local[32], *hs = local;
    if (count > 32 && !(hs = malloc(count * sizeof *hs))) {
        hs = local;
        count = 32; /* out of memory: the first 32 (the binding may then refuse it) */
    }
    size_t nh = 0;
    const char *name;
    const void *val;
    size_t n;
    while (nh < count && rd_kafka_header_get_all(h, nh, &name, &val, &n) == 0)
        hs[nh++] = (ew__header){
            .name = name, .name_len = strlen(name), .value = val, .value_len = val ? n : 0};
    const char *topic = rd_kafka_topic_name(m->rkt);
    size_t np = strlen(g->k->prefix);
    char where[WHERE_CAP];
    describe(where, topic, m->partition, m->offset);
    ew__recv_msg rm = {
        .wire = {.binding = EW__BINDING_KAFKA,
                 .body = m->payload,
                 .body_len = m->len,
                 .headers = hs,
                 .nheaders = nh},
        .group = g->name,
        .type_hint =
            strncmp(topic, g->k->prefix, np) == 0 && topic[np] == '.' ? topic + np + 1 : NULL,
        .transport = where,
    };
    ew__consumer_receive(g->core, &rm, (ew__ack_token){.lane = p->lane, .a = (uint64_t)m->offset});
    if (hs != local) free(hs);
}

#define RECV_BATCH 64 /* records taken from librdkafka at once */

/* ---- the transport (consumer.h) -------------------------------------------------------------- */

/* ops->connect: the consumer was made and subscribed when the group started (kafka.c), and
 * librdkafka reconnects to the brokers by itself. */
static int t_connect(void *t, ew_error *err)
{
    (void)t, (void)err;
    return 0;
}

/* ops->fetch: commits what is due, then what librdkafka has ready, within max; else waits for one
 * record (not longer than the next commit may be due). Rebalances run in here. */
static int t_fetch(void *t, size_t max, int wait_ms, ew_error *err)
{
    (void)err;
    kgroup *g = t;
    kafka *k = g->k;
    rd_kafka_message_t *ms[RECV_BATCH];
    commit(g, false);
    ssize_t n =
        rd_kafka_consume_batch_queue(g->cq, 0, ms, max < RECV_BATCH ? max : (size_t)RECV_BATCH);
    if (n <= 0) {
        int wait = g->commit_inflight || g->dirty ? COMMIT_INTERVAL_MS : POLL_MS;
        if (wait > wait_ms) wait = wait_ms;
        n = (ms[0] = rd_kafka_consumer_poll(g->rk, wait)) != NULL;
    }
    for (ssize_t i = 0; i < n; i++) {
        const rd_kafka_message_t *m = ms[i];
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                ew__bus_log(k->bus,
                            m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ? EW_LOG_DEBUG
                                                                              : EW_LOG_WARN,
                            "kafka group %s: %s", g->group_id, rd_kafka_message_errstr(m));
            continue;
        }
        kpart *p = part_of(g, m);
        if (!p) {
            /* Not delivered, and with no lane nothing can stop a commit past it: the partition
             * is forgotten, so that its next owner (or this consumer after a restart) gets it. */
            ew__bus_log(k->bus, EW_LOG_ERROR,
                        "kafka group %s: out of memory: %s [%d] offset %lld left for redelivery",
                        g->group_id, rd_kafka_topic_name(m->rkt), (int)m->partition,
                        (long long)m->offset);
            continue;
        }
        receive(g, p, m);
    }
    for (ssize_t i = 0; i < n; i++)
        rd_kafka_message_destroy(ms[i]);
    return 0;
}

/* ops->settle: a finished run of a partition makes the offset after its newest committable
 * (sent by commit() at its next turn). */
static int t_settle(void *t, const ew__ack_token *tok, size_t count, bool upto, ew_error *err)
{
    (void)count, (void)err;
    kgroup *g = t;
    if (!upto) return 0;
    pthread_mutex_lock(&g->mu);
    kpart *p = part_of_lane(g, tok->lane);
    if (p && (int64_t)tok->a + 1 > p->next_commit) {
        p->next_commit = (int64_t)tok->a + 1;
        g->dirty = true;
    }
    pthread_mutex_unlock(&g->mu);
    return 0;
}

/* ops->stop_fetching: stop fetching from the assigned partitions. */
static int t_stop_fetching(void *t, ew_error *err)
{
    (void)err;
    kgroup *g = t;
    rd_kafka_topic_partition_list_t *l = NULL;
    if (rd_kafka_assignment(g->rk, &l) == 0 && l) {
        if (l->cnt) rd_kafka_pause_partitions(g->rk, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
    return 0;
}

/* ops->disconnect: at close, commit what finished and leave the group. */
static void t_disconnect(void *t, bool closing)
{
    kgroup *g = t;
    if (!closing) return;
    commit(g, true);
    rd_kafka_consumer_close(g->rk);
    pthread_mutex_lock(&g->mu);
    g->closed = true;
    pthread_mutex_unlock(&g->mu);
}

/* ops->wake: cuts the thread's poll short. */
static void t_wake(void *t)
{
    kgroup *g = t;
    rd_kafka_queue_yield(g->cq);
}

const ew__consumer_ops ew__kf_transport = {
    .connect = t_connect,
    .fetch = t_fetch,
    .settle = t_settle,
    .stop_fetching = t_stop_fetching,
    .disconnect = t_disconnect,
    .wake = t_wake,
    .settle_one = false, /* an offset commit covers everything before it */
    .backoff_min_ms = 100,
    .backoff_max_ms = 2000,
    .idle_ms = POLL_MS,
    .settle_delay_ms = COMMIT_INTERVAL_MS, /* a commit goes out at most this often */
};

#else
typedef int ew__kafka_consume_unused;
#endif
