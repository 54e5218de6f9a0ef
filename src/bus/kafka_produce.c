/* eventwire — the Kafka backend, the producer: one idempotent producer per bus, publish waiting
 * for the delivery reports of its events, replaced after a fatal error. */
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

/* ---- the producer -------------------------------------------------------------------------- */

typedef struct pbatch {
    atomic_size_t remaining; /* delivery reports still to come */
} pbatch;

typedef struct pslot {
    pbatch *b;
    rd_kafka_resp_err_t err;
} pslot;

/* A delivery report: served by whichever publisher polls (see await_reports). */
static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    kafka *k = opaque;
    pslot *s = m->_private;
    if (!s) return;
    s->err = m->err;
    if (atomic_fetch_sub_explicit(&s->b->remaining, 1, memory_order_acq_rel) == 1) {
        /* s->b may be gone from here on: its publisher can return now. */
        pthread_mutex_lock(&k->pmu);
        pthread_cond_broadcast(&k->pcv);
        pthread_mutex_unlock(&k->pmu);
    }
}

void ew__kf_prod_free(kprod *p)
{
    if (!p) return;
    for (int i = 0; i < EW_T__COUNT; i++) {
        rd_kafka_topic_t *t = atomic_load(&p->rkts[i]);
        if (t) rd_kafka_topic_destroy(t);
    }
    if (p->rk) rd_kafka_destroy(p->rk);
    pthread_mutex_destroy(&p->tmu);
    free(p);
}

int ew__kf_prod_new(kafka *k, kprod **out, ew_error *err)
{
    kprod *p = calloc(1, sizeof *p);
    if (!p) return ew__kf_oom(err);
    pthread_mutex_init(&p->tmu, NULL);
    rd_kafka_conf_t *conf = ew__kf_conf_common(k, err);
    if (!conf) {
        ew__kf_prod_free(p);
        return err ? err->code : EW_ECONFIG;
    }
    char timeout[32], maxb[32];
    snprintf(timeout, sizeof timeout, "%d", k->publish_timeout_ms);
    size_t mb = k->max_bytes + 65536; /* room for the key, headers and the batch's framing */
    snprintf(maxb, sizeof maxb, "%zu", mb < 1000000 ? (size_t)1000000 : mb);
    int rc;
    if ((rc = ew__kf_conf_set(conf, "enable.idempotence", "true", err)) ||
        (rc = ew__kf_conf_set(conf, "acks", "all", err)) ||
        (rc = ew__kf_conf_set(conf, "message.timeout.ms", timeout, err)) ||
        (rc = ew__kf_conf_set(conf, "message.max.bytes", maxb, err)) ||
        (rc = ew__kf_conf_set(conf, "linger.ms", "0", err)) ||
        /* the Java client's partitioner: a subject lands where a Java producer would put it */
        (rc = ew__kf_conf_set(conf, "partitioner", "murmur2_random", err)) ||
        (rc = ew__kf_conf_client(k, conf, err))) {
        rd_kafka_conf_destroy(conf);
        ew__kf_prod_free(p);
        return rc;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    char errstr[512];
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!p->rk) {
        rd_kafka_conf_destroy(conf);
        ew__kf_prod_free(p);
        return ew_error_set(err, EW_ECONFIG, "kafka: cannot create a producer: %s", errstr);
    }
    *out = p;
    return 0;
}

/* The topic handle of a catalog type: {prefix}.{type}. NULL when out of memory. */
static rd_kafka_topic_t *topic_for(kafka *k, kprod *p, ew_type_id id)
{
    rd_kafka_topic_t *t = atomic_load_explicit(&p->rkts[id], memory_order_acquire);
    if (t) return t;
    pthread_mutex_lock(&p->tmu);
    t = atomic_load(&p->rkts[id]);
    if (!t) {
        char *name = ew__kf_join(k->prefix, ew_catalog_get(id)->type);
        if (name) t = rd_kafka_topic_new(p->rk, name, NULL);
        free(name);
        if (t) atomic_store_explicit(&p->rkts[id], t, memory_order_release);
    }
    pthread_mutex_unlock(&p->tmu);
    return t;
}

/* Waits until every report of b has arrived. One waiting publisher at a time polls the producer
 * (serving everybody's reports); the others sleep until theirs are in, and one of them takes
 * over the polling when the poller leaves. A lone publisher thus polls itself, as a plain
 * librdkafka loop would. */
static void await_reports(kafka *k, kprod *p, pbatch *b)
{
    if (atomic_load_explicit(&b->remaining, memory_order_acquire) == 0) return;
    pthread_mutex_lock(&k->pmu);
    while (atomic_load_explicit(&b->remaining, memory_order_acquire) > 0) {
        if (k->polling) {
            pthread_cond_wait(&k->pcv, &k->pmu);
            continue;
        }
        k->polling = true;
        pthread_mutex_unlock(&k->pmu);
        while (atomic_load_explicit(&b->remaining, memory_order_acquire) > 0)
            rd_kafka_poll(p->rk, POLL_MS);
        pthread_mutex_lock(&k->pmu);
        k->polling = false;
        pthread_cond_broadcast(&k->pcv); /* someone else's turn */
    }
    pthread_mutex_unlock(&k->pmu);
}

/* After a fatal error of the idempotent producer (it cannot go on with its sequence numbers), a
 * new producer replaces it; the publish that met the error reports EW_EIO, the next one works. */
static void prod_replace(kafka *k, kprod *old)
{
    pthread_rwlock_wrlock(&k->plock);
    if (k->prod == old) {
        char why[256] = "";
        rd_kafka_fatal_error(old->rk, why, sizeof why);
        kprod *fresh = NULL;
        ew_error e = {0};
        if (ew__kf_prod_new(k, &fresh, &e) == 0) {
            ew__bus_log(k->bus, EW_LOG_WARN,
                        "kafka: the producer failed for good (%s): replaced by a new one", why);
            k->prod = fresh;
            ew__kf_prod_free(old);
        } else {
            ew__bus_log(k->bus, EW_LOG_ERROR, "kafka: cannot replace the failed producer: %s",
                        e.msg);
        }
    }
    pthread_rwlock_unlock(&k->plock);
}

int ew__kf_k_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                     const ew__batch *batch, ew_error *err)
{
    kafka *k = self;
    *npublished = 0;
    enum { ONSTACK = 128 }; /* a batch of that many needs no allocation (7 KiB of stack) */
    ew__wire_out outs_s[ONSTACK];
    pslot slots_s[ONSTACK];
    ew__wire_out *outs = outs_s;
    pslot *slots = slots_s;
    if (n > ONSTACK) {
        outs = calloc(n, sizeof *outs);
        slots = calloc(n, sizeof *slots);
        if (!outs || !slots) {
            free(outs);
            free(slots);
            return ew__kf_oom(err);
        }
    }
    int rc = 0;
    size_t encoded = 0;
    /* Encode everything first, by the Kafka binding (binding.c: the value, the content-type and
     * any ce_ headers, the size checked): an event that cannot go fails the batch before any is
     * sent. */
    for (; encoded < n; encoded++) {
        size_t i = encoded;
        ew_error e = {0};
        if ((rc = ew__binding_encode(evs[i], EW__BINDING_KAFKA, k->content_mode, k->max_bytes,
                                     &outs[i], &e))) {
            ew_error_set(err, rc, "event %zu of %zu: %s: nothing published", i, n, e.msg);
            goto out;
        }
    }

    pthread_rwlock_rdlock(&k->plock);
    kprod *p = k->prod;
    pbatch b;
    atomic_init(&b.remaining, 0);
    size_t produced = 0, failed_at = n;
    rd_kafka_resp_err_t failed_err = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (; produced < n; produced++) {
        size_t i = produced;
        const ew_event *ev = evs[i];
        rd_kafka_topic_t *rkt = topic_for(k, p, ew_event_type_id(ev));
        if (!rkt) {
            failed_at = i;
            failed_err = RD_KAFKA_RESP_ERR__FAIL;
            break;
        }
        const char *subject = ew_event_subject(ev);
        slots[i] = (pslot){.b = &b};
        atomic_fetch_add_explicit(&b.remaining, 1, memory_order_relaxed);
        int64_t give_up = 0; /* read the clock only when the queue is full */
        rd_kafka_resp_err_t e;
        for (;;) {
            /* The message's headers: its content type, then what the binding added (binary
             * mode's ce_ attributes). librdkafka owns hs once producev succeeds. */
            rd_kafka_headers_t *hs = rd_kafka_headers_new(1 + outs[i].nheaders);
            if (!hs) {
                e = RD_KAFKA_RESP_ERR__FAIL;
                break;
            }
            rd_kafka_header_add(hs, "content-type", -1, outs[i].content_type, -1);
            for (size_t h = 0; h < outs[i].nheaders; h++)
                rd_kafka_header_add(hs, outs[i].headers[h].name,
                                    (ssize_t)outs[i].headers[h].name_len, outs[i].headers[h].value,
                                    (ssize_t)outs[i].headers[h].value_len);
            e = rd_kafka_producev(
                p->rk, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_PARTITION(RD_KAFKA_PARTITION_UA),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_FREE),
                RD_KAFKA_V_VALUE(outs[i].body, outs[i].body_len),
                RD_KAFKA_V_KEY(subject, subject ? strlen(subject) : 0), RD_KAFKA_V_HEADERS(hs),
                RD_KAFKA_V_OPAQUE(&slots[i]), RD_KAFKA_V_END);
            if (e) rd_kafka_headers_destroy(hs);
            /* The local queue is full: serve reports until there is room (bounded). */
            if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) break;
            if (!give_up)
                give_up = ew_mono_ns() + (int64_t)k->publish_timeout_ms * 1000000;
            else if (ew_mono_ns() > give_up)
                break;
            rd_kafka_poll(p->rk, 10);
        }
        if (e) {
            atomic_fetch_sub_explicit(&b.remaining, 1, memory_order_relaxed);
            failed_at = i;
            failed_err = e;
            break;
        }
        outs[i].body = NULL; /* librdkafka frees it */
    }
    /* Every produced message's report must arrive before slots (on this stack) go away. */
    await_reports(k, p, &b);
    bool fatal = failed_err == RD_KAFKA_RESP_ERR__FATAL;
    for (size_t i = 0; i < produced; i++) {
        if (slots[i].err == RD_KAFKA_RESP_ERR__FATAL) fatal = true;
        if (slots[i].err && i < failed_at) {
            failed_at = i;
            failed_err = slots[i].err;
        }
    }
    pthread_rwlock_unlock(&k->plock);
    if (fatal) prod_replace(k, p);

    if (failed_at < n) {
        rc = failed_err == RD_KAFKA_RESP_ERR__FAIL ? EW_ENOMEM : ew__kf_map_err(failed_err);
        if (fatal) rc = EW_EIO;
        ew_error_set(
            err, rc, "event %zu of %zu (%s %s) not published to Kafka at %s: %s", failed_at, n,
            ew_event_type(evs[failed_at]), ew_event_id(evs[failed_at]), k->bootstrap,
            failed_err == RD_KAFKA_RESP_ERR__FAIL ? "out of memory" : rd_kafka_err2str(failed_err));
        *npublished = failed_at;
    } else {
        *npublished = n;
    }
out:
    for (size_t i = 0; i < encoded; i++)
        ew__wire_out_release(&outs[i]);
    if (n > ONSTACK) {
        free(outs);
        free(slots);
    }
    return rc;
}

/* Asks the brokers about the topics of every catalog type the pattern matches, so that a broker
 * that creates topics on demand (auto.create.topics.enable) has them before the group's first
 * assignment. Best effort: the group's subscription picks up topics made later anyway. */
void ew__kf_ensure_topics(kafka *k, const char *pattern)
{
    pthread_rwlock_rdlock(&k->plock);
    kprod *p = k->prod;
    int n = 0;
    for (int id = 1; id < EW_T__COUNT; id++) {
        const ew_type_info *t = ew_catalog_get((ew_type_id)id);
        if (t && ew_pattern_match(pattern, t->type) && topic_for(k, p, (ew_type_id)id)) n++;
    }
    if (n) {
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t e = rd_kafka_metadata(p->rk, 0, NULL, &md, k->connect_ms);
        if (e)
            ew__bus_log(k->bus, EW_LOG_WARN, "kafka: cannot look up the topics of %s: %s", pattern,
                        rd_kafka_err2str(e));
        else
            rd_kafka_metadata_destroy(md);
    }
    pthread_rwlock_unlock(&k->plock);
}

#else
typedef int ew__kafka_produce_unused;
#endif
