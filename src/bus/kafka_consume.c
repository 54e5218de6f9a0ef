/* eventwire — the Kafka backend, consuming: each partition's window of records in flight,
 * commits never past the oldest record not yet done, rebalances, and records through the receive
 * path to the dispatcher. */
#ifdef EW_HAVE_KAFKA

#include <ctype.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "bus/backend.h"
#include "bus/binding.h"
#include "bus/kafka.h"
#include "bus/receive.h"
#include "core/buf.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"

/* ---- consuming: the windows ---------------------------------------------------------------- */

static kpart *part_new(const char *topic, int32_t partition)
{
    kpart *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    if (!(p->topic = strdup(topic))) {
        free(p);
        return NULL;
    }
    p->partition = partition;
    p->next_commit = p->committed = -1;
    p->assigned = true;
    return p;
}

void ew__kf_part_free(kpart *p)
{
    while (p->head) {
        kmsg *m = p->head;
        p->head = m->next;
        free(m);
    }
    free(p->topic);
    free(p);
}

/* done(): the dispatcher is finished with the message. Any worker thread. */
static void on_done(ew_delivery *dl, ew_delivery_outcome outcome)
{
    kmsg *m = (kmsg *)dl;
    kgroup *g = m->g;
    kpart *p = m->part;
    bool wake = false;
    pthread_mutex_lock(&g->mu);
    m->state = outcome == EW_DELIVERY_ACK ? KM_ACKED : KM_ABANDONED;
    p->pending--;
    int left = atomic_fetch_sub(&g->inflight, 1) - 1;
    bool moved = false;
    /* Pop what is done from the front of the window: the offset after it is committable, unless
     * an abandoned message came first (it must be delivered again, so nothing past it may be
     * committed). */
    while (p->head && p->head->state != KM_PENDING) {
        kmsg *h = p->head;
        if (h->state == KM_ABANDONED) p->blocked = true;
        if (!p->blocked) {
            p->next_commit = h->offset + 1;
            moved = true;
        }
        p->head = h->next;
        if (!p->head) p->tail = NULL;
        free(h);
    }
    if (moved && p->assigned && !g->dirty) {
        g->dirty = true;
        wake = true;
    }
    if (p->pending == 0 || (g->draining && left == 0) || (g->full && wake) ||
        (g->full && left <= g->k->max_inflight / 2)) {
        pthread_cond_broadcast(&g->cv);
        if (g->draining) wake = true;
    }
    if (!p->assigned && !p->head) ew__kf_part_free(p);
    if (g->closed) wake = false;
    pthread_mutex_unlock(&g->mu);
    if (wake) rd_kafka_queue_yield(g->cq);
}

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

/* Stops fetching from the assigned partitions (closing). */
static void pause_all(kgroup *g)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    if (rd_kafka_assignment(g->rk, &l) == 0 && l) {
        if (l->cnt) rd_kafka_pause_partitions(g->rk, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
}

/* The in-flight bound: with EVENT_BUS_MAX_IN_FLIGHT messages delivered and not done, the
 * consumer thread stops taking messages from librdkafka (which keeps prefetching up to its own
 * queue limit) until half of them are done. Not pausing the partitions: librdkafka 2.0 resumes
 * a paused partition's fetching only at its broker thread's next second. Not polling for longer
 * than max.poll.interval.ms (5 minutes: handlers stuck that long) makes the consumer leave the
 * group, as any Kafka consumer that stops polling. Waits once: until there is room, offsets to
 * commit, or COMMIT_INTERVAL_MS. */
static void wait_for_room(kgroup *g)
{
    int resume_at = g->k->max_inflight / 2;
    pthread_mutex_lock(&g->mu);
    if (atomic_load(&g->inflight) > resume_at && !atomic_load(&g->stopping) && !g->dirty) {
        g->full = true;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += COMMIT_INTERVAL_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        g->full = false;
    }
    pthread_mutex_unlock(&g->mu);
}

/* ---- consuming: rebalances ----------------------------------------------------------------- */

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
    if (!(p = part_new(topic, partition))) return NULL;
    g->parts[g->nparts++] = p;
    return p;
}

/* Revoked partitions: wait (up to EVENT_BUS_DRAIN_TIMEOUT_MS) for their messages in flight,
 * commit what is done, and let go. Messages still in flight then finish without committing:
 * the partition's next owner delivers them again (at least once, never lost). */
static void revoke(kgroup *g, rd_kafka_topic_partition_list_t *parts, bool lost)
{
    kafka *k = g->k;
    int64_t end = ew_mono_ns() + (int64_t)k->drain_ms * 1000000;
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < parts->cnt && !lost; i++) {
        kpart *p = find_assigned(g, parts->elems[i].topic, parts->elems[i].partition, NULL);
        while (p && p->pending > 0) {
            int64_t now = ew_mono_ns();
            if (now >= end) {
                ew__bus_log(k->bus, EW_LOG_WARN,
                            "kafka group %s: %s [%d] revoked with %d messages in flight: they will "
                            "be delivered again",
                            g->group_id, p->topic, (int)p->partition, p->pending);
                break;
            }
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            int64_t wait = end - now < 100000000 ? end - now : 100000000;
            ts.tv_nsec += wait;
            ts.tv_sec += ts.tv_nsec / 1000000000;
            ts.tv_nsec %= 1000000000;
            pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        }
    }
    pthread_mutex_unlock(&g->mu);
    if (!lost) commit(g, true);
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < parts->cnt; i++) {
        size_t idx;
        kpart *p = find_assigned(g, parts->elems[i].topic, parts->elems[i].partition, &idx);
        if (!p) continue;
        g->parts[idx] = g->parts[--g->nparts];
        p->assigned = false;
        if (!p->head) ew__kf_part_free(p);
    }
    g->last = NULL;
    pthread_mutex_unlock(&g->mu);
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

/* ---- consuming: messages ------------------------------------------------------------------- */

static kpart *part_of(kgroup *g, const rd_kafka_message_t *m)
{
    kpart *p = g->last;
    if (p && p->rkt == m->rkt && p->partition == m->partition) return p;
    const char *topic = rd_kafka_topic_name(m->rkt);
    p = find_assigned(g, topic, m->partition, NULL);
    if (!p) {
        /* not in our assignment (not expected): track it all the same */
        pthread_mutex_lock(&g->mu);
        p = assign_one(g, topic, m->partition);
        pthread_mutex_unlock(&g->mu);
        if (!p) return NULL;
    }
    p->rkt = m->rkt;
    g->last = p;
    return p;
}

/* ew__receive's question while the dead letter sink refuses a record. */
static bool recv_stopping(void *ud)
{
    kgroup *g = ud;
    return atomic_load(&g->stopping);
}

/* A record through the receive path (receive.h), by the CloudEvents Kafka binding: every header
 * as received, the binding decides the mode. EW__RECV_DEAD: it is in the dead letter sink. */
static ew__recv_result receive(kgroup *g, const rd_kafka_message_t *m, ew_event **ev)
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
    char where[400];
    snprintf(where, sizeof where, "kafka topic=%.300s partition=%d offset=%lld", topic,
             (int)m->partition, (long long)m->offset);
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
    ew__recv_result r = ew__receive(g->k->bus, &rm, g->k->max_bytes, recv_stopping, g, ev);
    if (hs != local) free(hs);
    return r;
}

/* Puts records in their partitions' windows, in the order given (their offset order), and
 * counts them in flight: before they are delivered, since done() may come at once. */
static void track(kgroup *g, kmsg *const *kms, size_t n)
{
    pthread_mutex_lock(&g->mu);
    for (size_t i = 0; i < n; i++) {
        kmsg *km = kms[i];
        kpart *p = km->part;
        if (p->tail)
            p->tail->next = km;
        else
            p->head = km;
        p->tail = km;
        p->pending++;
    }
    atomic_fetch_add(&g->inflight, (int)n);
    pthread_mutex_unlock(&g->mu);
}

#define RECV_BATCH 64 /* records taken from librdkafka at once */

typedef struct decoded {
    kmsg *km;
    ew_event *ev;
} decoded;

/* Hands decoded records to the dispatcher. */
static void deliver(kgroup *g, decoded *d, size_t n)
{
    kmsg *kms[RECV_BATCH];
    for (size_t i = 0; i < n; i++)
        kms[i] = d[i].km;
    track(g, kms, n);
    for (size_t i = 0; i < n; i++) {
        d[i].km->dl.event = d[i].ev;
        ew_error de = {0};
        if (ew__dispatch_deliver(g->k->disp, &d[i].km->dl, &de)) {
            ew__bus_log(g->k->bus, EW_LOG_ERROR,
                        "kafka group %s: event %s not delivered (%s): left for redelivery",
                        g->group_id, ew_event_id(d[i].ev), de.msg);
            on_done(&d[i].km->dl, EW_DELIVERY_ABANDONED);
        }
        ew_event_unref(d[i].ev);
    }
}

/* Records from the consumer (at most RECV_BATCH): decoded, then delivered together; a record
 * that does not decode is dead-lettered in its place in the order. */
static void handle_batch(kgroup *g, rd_kafka_message_t *const *ms, size_t n)
{
    kafka *k = g->k;
    decoded d[RECV_BATCH];
    size_t nd = 0;
    for (size_t i = 0; i < n; i++) {
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
        kmsg *km = calloc(1, sizeof *km);
        if (!p || !km) {
            /* Not delivered: nothing past it in its partition may be committed, so that its
             * partition's next owner (or this consumer after a restart) gets it again. */
            ew__bus_log(k->bus, EW_LOG_ERROR,
                        "kafka group %s: out of memory: %s [%d] offset %lld left for redelivery",
                        g->group_id, rd_kafka_topic_name(m->rkt), (int)m->partition,
                        (long long)m->offset);
            if (p) {
                pthread_mutex_lock(&g->mu);
                p->blocked = true;
                pthread_mutex_unlock(&g->mu);
            }
            free(km);
            continue;
        }
        km->g = g;
        km->part = p;
        km->offset = m->offset;
        km->dl.group = g->name;
        km->dl.done = on_done;
        ew_event *ev = NULL;
        ew__recv_result r = receive(g, m, &ev);
        if (r == EW__RECV_EVENT) {
            d[nd++] = (decoded){km, ev};
        } else {
            /* Dead-lettered: committed like a handled record, in its place in the order (the
             * records before it go first). The bus stopped while the sink refused it: not
             * committed (nothing past it is), delivered again. */
            deliver(g, d, nd);
            nd = 0;
            track(g, &km, 1);
            on_done(&km->dl, r == EW__RECV_DEAD ? EW_DELIVERY_ACK : EW_DELIVERY_ABANDONED);
        }
    }
    deliver(g, d, nd);
}

/* Stop: no more deliveries; wait (up to EVENT_BUS_DRAIN_TIMEOUT_MS) for those in flight,
 * committing as they finish, then leave the group. */
static void drain(kgroup *g)
{
    pause_all(g);
    pthread_mutex_lock(&g->mu);
    g->draining = true;
    pthread_mutex_unlock(&g->mu);
    int64_t end = ew_mono_ns() + (int64_t)g->k->drain_ms * 1000000;
    while (atomic_load(&g->inflight) > 0 && ew_mono_ns() < end) {
        commit(g, false);
        rd_kafka_message_t *m = rd_kafka_consumer_poll(g->rk, COMMIT_INTERVAL_MS);
        if (m) rd_kafka_message_destroy(m); /* not delivered, so not committed */
    }
    if (atomic_load(&g->inflight) > 0)
        ew__bus_log(g->k->bus, EW_LOG_WARN,
                    "kafka group %s: closing with %d messages in flight: they will be delivered "
                    "again",
                    g->group_id, atomic_load(&g->inflight));
    commit(g, true);
    rd_kafka_consumer_close(g->rk);
    pthread_mutex_lock(&g->mu);
    g->closed = true;
    pthread_mutex_unlock(&g->mu);
}

void *ew__kf_consume_main(void *arg)
{
    kgroup *g = arg;
    kafka *k = g->k;
    rd_kafka_message_t *ms[RECV_BATCH];
    while (!atomic_load(&g->stopping)) {
        int room = k->max_inflight - atomic_load(&g->inflight);
        commit(g, false);
        if (room <= 0) {
            wait_for_room(g);
            continue;
        }
        /* What librdkafka has ready, within the room left; else wait for one record (not
         * longer than the next commit may be due). */
        ssize_t n = rd_kafka_consume_batch_queue(g->cq, 0, ms,
                                                 room < RECV_BATCH ? (size_t)room : RECV_BATCH);
        if (n <= 0) {
            int wait = g->commit_inflight || g->dirty ? COMMIT_INTERVAL_MS : POLL_MS;
            n = (ms[0] = rd_kafka_consumer_poll(g->rk, wait)) != NULL;
        }
        /* Records not handled when stopping are not committed: the next consumer gets them. */
        if (!atomic_load(&g->stopping)) handle_batch(g, ms, (size_t)n);
        for (ssize_t i = 0; i < n; i++)
            rd_kafka_message_destroy(ms[i]);
    }
    drain(g);
    return NULL;
}

#else
typedef int ew__kafka_consume_unused;
#endif
