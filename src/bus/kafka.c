/* eventwire — the Kafka backend (librdkafka): topic {KAFKA_TOPIC_PREFIX}.{type}, key = subject,
 * one idempotent producer (acks=all) per bus whose publish waits for the delivery reports of its
 * events, and one consumer group {KAFKA_CONSUMER_GROUP}.{group} per subscriber group, each polled
 * by a thread of its own, whose offsets are committed only once the dispatcher is done with the
 * messages below them. docs/bus-kafka.md says how it maps the bus for a Kafka user. */
#ifdef EW_HAVE_KAFKA

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <librdkafka/rdkafka.h>
#include "bus/backend.h"
#include "bus/binding.h"
#include "bus/receive.h"
#include "core/buf.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"

/* Structured mode (the value is the whole CloudEvent); the header says so, as the CloudEvents
 * Kafka binding asks. */
#define POLL_MS 100             /* longest a consumer thread sleeps in poll */
#define SESSION_TIMEOUT "10000" /* a killed consumer's partitions move on after this */
#define FETCH_WAIT_MAX "100"    /* how long a broker may hold an empty fetch */
#define METADATA_REFRESH "5000" /* new topics matching a pattern are seen within this */
#define RECONNECT_MAX "2000"    /* longest back-off between reconnection attempts */
#define COMMIT_INTERVAL_MS 20   /* commits of a group at most this often, one at a time */
#define COMMIT_RETRY_MS 500     /* after a failed commit */
#define MIN_PUBLISH_TIMEOUT_MS 5000

typedef struct kafka kafka;
typedef struct kgroup kgroup;
typedef struct kpart kpart;

/* ---- state --------------------------------------------------------------------------------- */

/* A producer handle and its topics. Replaced as a whole after a fatal error of the idempotent
 * producer (kafka.plock taken for writing). */
typedef struct kprod {
    rd_kafka_t *rk;
    pthread_mutex_t tmu; /* creating topics */
    _Atomic(rd_kafka_topic_t *) rkts[EW_T__COUNT];
} kprod;

/* One message handed to the dispatcher: lives until done() and until every message before it in
 * its partition is done too (the partition's window). */
typedef struct kmsg {
    ew_delivery dl; /* first: done() gets &dl */
    kgroup *g;
    kpart *part;
    int64_t offset;
    int state; /* KM_PENDING, KM_ACKED, KM_ABANDONED */
    struct kmsg *next;
} kmsg;

enum { KM_PENDING, KM_ACKED, KM_ABANDONED };

/* Where a partition starts for a group that has committed nothing there (a group new to Kafka):
 * recorded when a subscription of the group was made. */
typedef struct kstart {
    char *topic;
    int32_t partition;
    int64_t offset; /* the partition's end then (from now on), or RD_KAFKA_OFFSET_BEGINNING */
} kstart;

/* An assigned partition and its window of messages not yet committable, in offset order. */
struct kpart {
    char *topic;
    int32_t partition;
    const rd_kafka_topic_t *rkt; /* the handle its messages come with, for a quick match */
    kmsg *head, *tail;
    int pending;         /* messages not yet done */
    int64_t next_commit; /* offset to commit (the one after the last done message); -1: none */
    int64_t committed;   /* last offset sent in a commit (consumer thread); -1: none */
    bool assigned;       /* false once revoked: its messages no longer commit */
    bool blocked;        /* a message was abandoned: never commit past it */
};

struct kgroup {
    kafka *k;   /* first, as in struct kafka: what the librdkafka callbacks read from the opaque */
    char *name; /* the subscriber group */
    char *group_id; /* KAFKA_CONSUMER_GROUP.name */
    bool ephemeral; /* commits nothing: the broker keeps no position for it */
    char **subs;    /* topics and ^regexes */
    size_t nsubs, capsubs;
    kstart *starts; /* under mu: written by subscribed(), read on assignment */
    size_t nstarts, capstarts;
    rd_kafka_t *rk;
    rd_kafka_queue_t *cq;      /* the consumer queue, to wake the thread */
    rd_kafka_queue_t *commitq; /* results of asynchronous commits, served by the thread */
    pthread_t th;
    bool running;
    atomic_bool stopping;

    pthread_mutex_t mu; /* the windows, the parts array, the counters below */
    pthread_cond_t cv;  /* a revoked partition or the whole group drained */
    kpart **parts;      /* assigned; changed only by the consumer thread, under mu */
    size_t nparts, capparts;
    atomic_int inflight; /* delivered, done() not yet called */
    bool full;           /* the consumer thread waits for room under the in-flight bound */
    atomic_bool dirty;   /* a next_commit moved (written under mu) */
    bool draining;       /* stop: waiting for the in-flight messages */
    bool closed;         /* the consumer is closed: no more commits or wake-ups */

    /* the consumer thread's own */
    bool commit_inflight;
    int64_t next_commit_ns; /* no commit before */
    kpart *last;
    kgroup *next;
};

struct kafka {
    kafka *k; /* itself: the producer's opaque reads like a group's (see log_cb) */
    ew_bus *bus;
    ew_dispatcher *disp;
    char *bootstrap, *prefix, *group_prefix, *service;
    char **client_conf; /* KAFKA_CLIENT_CONFIG: name, value, name, value, ... */
    size_t nclient_conf;
    size_t max_bytes;
    ew__content_mode content_mode; /* how it publishes: structured (binding.h) */
    int connect_ms, drain_ms, publish_timeout_ms, max_inflight;

    pthread_rwlock_t plock; /* prod: read to publish, write to replace it */
    kprod *prod;
    pthread_mutex_t pmu; /* delivery reports: who polls, who waits */
    pthread_cond_t pcv;
    bool polling;

    pthread_mutex_t mu; /* groups, started */
    kgroup *groups;
    bool started;
};

/* ---- small helpers ------------------------------------------------------------------------- */

static int oom(ew_error *err)
{
    return ew_error_set(err, EW_ENOMEM, "out of memory");
}

static char *join(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *s = malloc(na + nb + 2);
    if (!s) return NULL;
    memcpy(s, a, na);
    s[na] = '.';
    memcpy(s + na + 1, b, nb + 1);
    return s;
}

/* The EW_E… code for a librdkafka error: what a caller can do about it. */
static int map_err(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return EW_ETIMEDOUT;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
        return EW_ECONNECT;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return EW_EAGAIN;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        return EW_ETOOBIG;
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
        return EW_ECONFIG;
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return EW_EINVAL;
    default:
        return EW_EIO;
    }
}

/* librdkafka's log, into the bus's (the library never prints). Any librdkafka thread. */
static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    kafka *const *opaque = rd_kafka_opaque(rk);
    if (!opaque) return;
    kafka *k = *opaque;
    /* librdkafka's errors are mostly a broker it will reconnect to: warnings for the bus. What
     * cannot be recovered from comes through error_cb as a fatal error. */
    ew_log_level l = level <= 4 ? EW_LOG_WARN : level <= 6 ? EW_LOG_INFO : EW_LOG_DEBUG;
    ew__bus_log(k->bus, l, "kafka %s: %s: %s", rd_kafka_name(rk), fac, buf);
}

static void error_cb(rd_kafka_t *rk, int e, const char *reason, void *opaque)
{
    kafka *k = *(kafka *const *)opaque;
    /* Brokers going away is ordinary (librdkafka reconnects); a fatal error is not. */
    ew_log_level l = e == RD_KAFKA_RESP_ERR__FATAL ? EW_LOG_ERROR : EW_LOG_WARN;
    ew__bus_log(k->bus, l, "kafka %s: %s: %s", rd_kafka_name(rk),
                rd_kafka_err2name((rd_kafka_resp_err_t)e), reason);
}

static int conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, ew_error *err)
{
    char errstr[256];
    if (rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        return ew_error_set(err, EW_ECONFIG, "kafka: %s=%s: %s", name, value, errstr);
    return 0;
}

/* KAFKA_CLIENT_CONFIG, applied last to the producer's and every consumer's configuration, so
 * that TLS, SASL and tuning reach librdkafka as they are. Errors name the property, never its
 * value (a value may be a password). */
static int conf_client(kafka *k, rd_kafka_conf_t *conf, ew_error *err)
{
    for (size_t i = 0; i + 1 < k->nclient_conf; i += 2) {
        const char *name = k->client_conf[i], *value = k->client_conf[i + 1];
        char errstr[256];
        rd_kafka_conf_res_t r = rd_kafka_conf_set(conf, name, value, errstr, sizeof errstr);
        if (r == RD_KAFKA_CONF_UNKNOWN)
            return ew_error_set(err, EW_ECONFIG,
                                "KAFKA_CLIENT_CONFIG: '%.100s' is not a librdkafka property", name);
        if (r != RD_KAFKA_CONF_OK)
            return ew_error_set(err, EW_ECONFIG, "KAFKA_CLIENT_CONFIG: %.100s: %s", name, errstr);
    }
    return 0;
}

/* Properties the bus sets itself: what it relies on (its offsets, its groups, its producer's
 * guarantees) or what a setting of its own says. */
static const char *const owned_props[][2] = {
    {"bootstrap.servers", "KAFKA_BOOTSTRAP_SERVERS"},
    {"metadata.broker.list", "KAFKA_BOOTSTRAP_SERVERS"},
    {"group.id", "KAFKA_CONSUMER_GROUP"},
    {"enable.auto.commit", "the bus commits what its handlers finished"},
    {"enable.auto.offset.store", "the bus commits what its handlers finished"},
    {"auto.offset.reset", "ew_subscribe_opts.from_beginning"},
    {"enable.idempotence", "the bus's producer is idempotent"},
};

/* Splits KAFKA_CLIENT_CONFIG (key=value,key=value; spaces around items and around = ignored,
 * a backslash keeps the next character, a comma included) into k->client_conf. */
static int parse_client_conf(kafka *k, const char *s, ew_error *err)
{
    size_t cap = 2;
    for (const char *p = s; *p; p++)
        if (*p == ',') cap += 2;
    if (!(k->client_conf = calloc(cap, sizeof *k->client_conf))) return oom(err);
    const char *p = s;
    while (*p == ' ')
        p++;
    for (int item = 1; *p; item++) {
        char *buf = malloc(strlen(p) + 1);
        if (!buf) return oom(err);
        size_t n = 0, eq = 0;
        bool have_eq = false;
        for (; *p && *p != ','; p++) {
            if (*p == '=' && !have_eq) {
                have_eq = true;
                while (n && buf[n - 1] == ' ')
                    n--; /* spaces before = */
                buf[n++] = '\0';
                eq = n;
                while (p[1] == ' ')
                    p++; /* and after it */
                continue;
            }
            if (*p == '\\' && p[1]) p++;
            buf[n++] = *p;
        }
        while (n > eq && buf[n - 1] == ' ')
            n--;
        buf[n] = '\0';
        if (!have_eq || !buf[0]) {
            free(buf);
            return ew_error_set(err, EW_ECONFIG, "KAFKA_CLIENT_CONFIG: item %d is not key=value",
                                item);
        }
        for (size_t i = 0; i < sizeof owned_props / sizeof owned_props[0]; i++) {
            if (strcmp(buf, owned_props[i][0]) == 0) {
                int rc =
                    ew_error_set(err, EW_ECONFIG, "KAFKA_CLIENT_CONFIG: %s is set by the bus (%s)",
                                 buf, owned_props[i][1]);
                free(buf);
                return rc;
            }
        }
        char *value = strdup(buf + eq);
        if (!value) {
            free(buf);
            return oom(err);
        }
        k->client_conf[k->nclient_conf++] = buf; /* the name, first in buf */
        k->client_conf[k->nclient_conf++] = value;
        if (*p == ',') p++;
        while (*p == ' ')
            p++;
    }
    return 0;
}

/* Settings both kinds of handle share. The opaque is the backend for the producer and the group
 * for a consumer; both begin with the backend's pointer, which is what log_cb and error_cb read. */
static rd_kafka_conf_t *conf_common(kafka *k, ew_error *err)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!conf) {
        oom(err);
        return NULL;
    }
    char ms[32];
    snprintf(ms, sizeof ms, "%d", k->connect_ms < 1000 ? 1000 : k->connect_ms); /* its minimum */
    if (conf_set(conf, "bootstrap.servers", k->bootstrap, err) ||
        conf_set(conf, "client.id", k->service, err) ||
        conf_set(conf, "socket.connection.setup.timeout.ms", ms, err) ||
        conf_set(conf, "reconnect.backoff.max.ms", RECONNECT_MAX, err) ||
        conf_set(conf, "log.connection.close", "false", err) || /* idle connections closing */
        /* a publish waits for its answer: no Nagle delay on requests (Java's client does so) */
        conf_set(conf, "socket.nagle.disable", "true", err) ||
        conf_set(conf, "topic.metadata.refresh.interval.ms", METADATA_REFRESH, err)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_opaque(conf, k);
    return conf;
}

/* ---- settings ------------------------------------------------------------------------------ */

/* KAFKA_BOOTSTRAP_SERVERS: host:port[,host:port...], host a name, an IPv4 address or [IPv6]. */
static int check_bootstrap(const char *s, ew_error *err)
{
    const char *p = s;
    int n = 0;
    for (;;) {
        n++;
        while (*p == ' ')
            p++;
        const char *host = p;
        if (*p == '[') {
            while (*p && *p != ']')
                p++;
            if (*p != ']' || p == host + 1) goto bad;
            p++;
        } else {
            while (*p && (isalnum((unsigned char)*p) || *p == '.' || *p == '-' || *p == '_'))
                p++;
            if (p == host) goto bad;
        }
        if (*p != ':') goto bad;
        p++;
        long port = 0;
        const char *digits = p;
        while (*p >= '0' && *p <= '9' && port <= 65535)
            port = port * 10 + (*p++ - '0');
        if (p == digits || port < 1 || port > 65535) goto bad;
        while (*p == ' ')
            p++;
        if (*p == '\0') return 0;
        if (*p != ',') goto bad;
        p++;
    }
bad:
    return ew_error_set(err, EW_ECONFIG,
                        "KAFKA_BOOTSTRAP_SERVERS: '%.100s' is not host:port[,host:port...] "
                        "(entry %d is wrong at '%.20s')",
                        s, n, *p ? p : "(end)");
}

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

static void prod_free(kprod *p)
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

static int prod_new(kafka *k, kprod **out, ew_error *err)
{
    kprod *p = calloc(1, sizeof *p);
    if (!p) return oom(err);
    pthread_mutex_init(&p->tmu, NULL);
    rd_kafka_conf_t *conf = conf_common(k, err);
    if (!conf) {
        prod_free(p);
        return err ? err->code : EW_ECONFIG;
    }
    char timeout[32], maxb[32];
    snprintf(timeout, sizeof timeout, "%d", k->publish_timeout_ms);
    size_t mb = k->max_bytes + 65536; /* room for the key, headers and the batch's framing */
    snprintf(maxb, sizeof maxb, "%zu", mb < 1000000 ? (size_t)1000000 : mb);
    int rc;
    if ((rc = conf_set(conf, "enable.idempotence", "true", err)) ||
        (rc = conf_set(conf, "acks", "all", err)) ||
        (rc = conf_set(conf, "message.timeout.ms", timeout, err)) ||
        (rc = conf_set(conf, "message.max.bytes", maxb, err)) ||
        (rc = conf_set(conf, "linger.ms", "0", err)) ||
        /* the Java client's partitioner: a subject lands where a Java producer would put it */
        (rc = conf_set(conf, "partitioner", "murmur2_random", err)) ||
        (rc = conf_client(k, conf, err))) {
        rd_kafka_conf_destroy(conf);
        prod_free(p);
        return rc;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    char errstr[512];
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!p->rk) {
        rd_kafka_conf_destroy(conf);
        prod_free(p);
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
        char *name = join(k->prefix, ew_catalog_get(id)->type);
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
        if (prod_new(k, &fresh, &e) == 0) {
            ew__bus_log(k->bus, EW_LOG_WARN,
                        "kafka: the producer failed for good (%s): replaced by a new one", why);
            k->prod = fresh;
            prod_free(old);
        } else {
            ew__bus_log(k->bus, EW_LOG_ERROR, "kafka: cannot replace the failed producer: %s",
                        e.msg);
        }
    }
    pthread_rwlock_unlock(&k->plock);
}

static int k_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                     ew_error *err)
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
            return oom(err);
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
        rc = failed_err == RD_KAFKA_RESP_ERR__FAIL ? EW_ENOMEM : map_err(failed_err);
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
static void ensure_topics(kafka *k, const char *pattern)
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

/* ---- where a new group starts --------------------------------------------------------------- */

/* What librdkafka offers for "a group new to Kafka" is auto.offset.reset, earliest or latest,
 * applied when the consumer first fetches: after the group's first join, which takes seconds
 * (about 3 s on the mock cluster). latest would lose what is published between subscribe and
 * that join; earliest replays everything for a group that asked for events from now on. So the
 * bus decides itself: when a group subscribes, it records the end offset of every partition of
 * the topics the pattern matches (from_beginning: their beginning), and when the group is first
 * assigned a partition on which it has committed nothing, it starts there (a partition that did
 * not exist at subscribe time: at its beginning, as everything in it came later) and commits
 * that position at once, so that from then on the group is known to Kafka and resumes where it
 * left off. End offsets rather than a timestamp (ListOffsets by time, rd_kafka_offsets_for_times):
 * they need no clock, and librdkafka's mock cluster, which the tests run on, answers -1 to every
 * query by time. docs/bus-kafka.md has the same in words. */

static kstart *start_find(kgroup *g, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < g->nstarts; i++)
        if (g->starts[i].partition == partition && strcmp(g->starts[i].topic, topic) == 0)
            return &g->starts[i];
    return NULL;
}

/* Adds (topic, partition) → offset unless the partition has a start already (the first
 * subscription that covers it decides). Under g->mu. */
static int start_add(kgroup *g, const char *topic, int32_t partition, int64_t offset)
{
    if (start_find(g, topic, partition)) return 0;
    if (g->nstarts == g->capstarts) {
        size_t cap = g->capstarts ? 2 * g->capstarts : 16;
        kstart *v = realloc(g->starts, cap * sizeof *v);
        if (!v) return -1;
        g->starts = v;
        g->capstarts = cap;
    }
    char *t = strdup(topic);
    if (!t) return -1;
    g->starts[g->nstarts++] = (kstart){t, partition, offset};
    return 0;
}

/* The topic of a type this pattern matches: {prefix}.{type} with type matching. */
static bool topic_matches(const kafka *k, const char *topic, const char *pattern)
{
    size_t np = strlen(k->prefix);
    return strncmp(topic, k->prefix, np) == 0 && topic[np] == '.' && topic[np + 1] &&
           ew_pattern_match(pattern, topic + np + 1);
}

/* Records where group g starts on each partition that exists now of the topics pattern matches:
 * at its end offset, or at its beginning with from_beginning. Asks the cluster for its topics
 * and (without from_beginning) for their end offsets: fails with EW_ECONNECT when it cannot
 * answer, since a group that asked for the events from now on would otherwise replay the past. */
static int record_starts(kafka *k, kgroup *g, const char *pattern, bool from_beginning,
                         ew_error *err)
{
    pthread_rwlock_rdlock(&k->plock);
    rd_kafka_t *rk = k->prod->rk;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, k->publish_timeout_ms);
    rd_kafka_topic_partition_list_t *l = NULL;
    int rc = 0;
    if (e) {
        if (from_beginning) {
            /* a partition without a recorded start starts at its beginning anyway */
            ew__bus_log(k->bus, EW_LOG_WARN, "kafka group %s: cannot list the topics of %s: %s",
                        g->group_id, pattern, rd_kafka_err2str(e));
        } else {
            rc = ew_error_set(err, map_err(e) == EW_ECONFIG ? EW_ECONFIG : EW_ECONNECT,
                              "kafka group %s: cannot list the topics of %s at %s to start from "
                              "their end: %s",
                              g->group_id, pattern, k->bootstrap, rd_kafka_err2str(e));
        }
        goto out;
    }
    if (!(l = rd_kafka_topic_partition_list_new(16))) {
        rc = oom(err);
        goto out;
    }
    pthread_mutex_lock(&g->mu);
    for (int t = 0; t < md->topic_cnt; t++) {
        const struct rd_kafka_metadata_topic *mt = &md->topics[t];
        if (mt->err || !topic_matches(k, mt->topic, pattern)) continue;
        for (int i = 0; i < mt->partition_cnt; i++)
            if (!start_find(g, mt->topic, mt->partitions[i].id))
                rd_kafka_topic_partition_list_add(l, mt->topic, mt->partitions[i].id)->offset =
                    from_beginning ? RD_KAFKA_OFFSET_BEGINNING : RD_KAFKA_OFFSET_END;
    }
    pthread_mutex_unlock(&g->mu);
    /* With the offset RD_KAFKA_OFFSET_END as the "timestamp", ListOffsets answers the end. */
    if (!from_beginning && l->cnt > 0 &&
        (e = rd_kafka_offsets_for_times(rk, l, k->publish_timeout_ms))) {
        rc = ew_error_set(err, map_err(e) == EW_ECONFIG ? EW_ECONFIG : EW_ECONNECT,
                          "kafka group %s: cannot read the end offsets of the topics of %s at %s: "
                          "%s",
                          g->group_id, pattern, k->bootstrap, rd_kafka_err2str(e));
        goto out;
    }
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < l->cnt && !rc; i++) {
        const rd_kafka_topic_partition_t *tp = &l->elems[i];
        if (tp->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) continue; /* gone meanwhile */
        if (tp->err || (!from_beginning && tp->offset < 0)) {
            rc = ew_error_set(err, map_err(tp->err) == EW_ECONFIG ? EW_ECONFIG : EW_ECONNECT,
                              "kafka group %s: cannot read the end offset of %s [%d]: %s",
                              g->group_id, tp->topic, (int)tp->partition,
                              tp->err ? rd_kafka_err2str(tp->err) : "no offset");
            break;
        }
        if (start_add(g, tp->topic, tp->partition, tp->offset)) rc = oom(err);
    }
    pthread_mutex_unlock(&g->mu);
    if (!rc)
        ew__bus_log(k->bus, EW_LOG_DEBUG,
                    "kafka group %s: %s: %d partitions start at their %s if the group is new",
                    g->group_id, pattern, l->cnt, from_beginning ? "beginning" : "end");
out:
    if (l) rd_kafka_topic_partition_list_destroy(l);
    if (md) rd_kafka_metadata_destroy(md);
    pthread_rwlock_unlock(&k->plock);
    return rc;
}

/* On assignment (consumer thread, in the rebalance callback): partitions where the group has a
 * committed offset resume there; the others start where record_starts said (at the beginning
 * when it said nothing: the partition came later), and that position is committed at once. When
 * the committed offsets cannot be read, the offsets are left to librdkafka (committed, else
 * auto.offset.reset=earliest): at worst a replay, never a loss. */
static void set_start_offsets(kgroup *g, rd_kafka_topic_partition_list_t *parts)
{
    kafka *k = g->k;
    if (parts->cnt == 0) return;
    rd_kafka_topic_partition_list_t *c = rd_kafka_topic_partition_list_copy(parts);
    if (!c) return;
    rd_kafka_resp_err_t e = rd_kafka_committed(g->rk, c, k->publish_timeout_ms);
    if (e) {
        ew__bus_log(k->bus, EW_LOG_WARN,
                    "kafka group %s: cannot read its committed offsets (%s): partitions new to "
                    "it start at their beginning",
                    g->group_id, rd_kafka_err2str(e));
        rd_kafka_topic_partition_list_destroy(c);
        return;
    }
    rd_kafka_topic_partition_list_t *fresh = rd_kafka_topic_partition_list_new(c->cnt);
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < c->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &c->elems[i];
        if (tp->err) continue; /* librdkafka finds its position itself */
        rd_kafka_topic_partition_t *dst =
            rd_kafka_topic_partition_list_find(parts, tp->topic, tp->partition);
        if (!dst) continue;
        if (tp->offset >= 0) {
            dst->offset = tp->offset; /* the group's own position */
            continue;
        }
        const kstart *st = start_find(g, tp->topic, tp->partition);
        dst->offset = st ? st->offset : RD_KAFKA_OFFSET_BEGINNING;
        if (fresh)
            rd_kafka_topic_partition_list_add(fresh, tp->topic, tp->partition)->offset =
                dst->offset;
    }
    pthread_mutex_unlock(&g->mu);
    rd_kafka_topic_partition_list_destroy(c);
    if (!fresh || fresh->cnt == 0 || g->ephemeral) goto out;

    /* A commit needs real offsets: the beginnings become their partitions' first offsets. */
    rd_kafka_topic_partition_list_t *begin = rd_kafka_topic_partition_list_new(fresh->cnt);
    for (int i = 0; begin && i < fresh->cnt; i++)
        if (fresh->elems[i].offset == RD_KAFKA_OFFSET_BEGINNING)
            rd_kafka_topic_partition_list_add(begin, fresh->elems[i].topic,
                                              fresh->elems[i].partition)
                ->offset = RD_KAFKA_OFFSET_BEGINNING;
    if (begin && begin->cnt > 0 &&
        rd_kafka_offsets_for_times(g->rk, begin, k->publish_timeout_ms) == 0) {
        for (int i = 0; i < begin->cnt; i++) {
            const rd_kafka_topic_partition_t *b = &begin->elems[i];
            rd_kafka_topic_partition_t *f =
                rd_kafka_topic_partition_list_find(fresh, b->topic, b->partition);
            if (f && !b->err && b->offset >= 0) f->offset = b->offset;
        }
    }
    if (begin) rd_kafka_topic_partition_list_destroy(begin);
    /* commit only what is known exactly; a logical beginning left over is found again next time */
    rd_kafka_topic_partition_list_t *commit_l = rd_kafka_topic_partition_list_new(fresh->cnt);
    for (int i = 0; commit_l && i < fresh->cnt; i++) {
        const rd_kafka_topic_partition_t *f = &fresh->elems[i];
        ew__bus_log(k->bus, EW_LOG_DEBUG, "kafka group %s: %s [%d] is new to it: starts at %lld",
                    g->group_id, f->topic, (int)f->partition, (long long)f->offset);
        if (f->offset >= 0)
            rd_kafka_topic_partition_list_add(commit_l, f->topic, f->partition)->offset = f->offset;
    }
    if (commit_l && commit_l->cnt > 0 && (e = rd_kafka_commit(g->rk, commit_l, 0)))
        ew__bus_log(k->bus, EW_LOG_WARN,
                    "kafka group %s: cannot commit where it starts (%s): a restart before its "
                    "first commit looks for the start again",
                    g->group_id, rd_kafka_err2str(e));
    if (commit_l) rd_kafka_topic_partition_list_destroy(commit_l);
out:
    if (fresh) rd_kafka_topic_partition_list_destroy(fresh);
}

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

static void part_free(kpart *p)
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
    if (!p->assigned && !p->head) part_free(p);
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
        if (!p->head) part_free(p);
    }
    g->last = NULL;
    pthread_mutex_unlock(&g->mu);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    kgroup *g = opaque;
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        set_start_offsets(g, parts);
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

static void *consume_main(void *arg)
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

/* ---- groups -------------------------------------------------------------------------------- */

/* A pattern as what a Kafka consumer subscribes to: the topic of an exact type, or a regex
 * (librdkafka takes a subscription that starts with ^ as one) over the topics of the types it
 * matches: user.* → ^prefix\.user\.[^.]+$, user.# → ^prefix\.user(\.[^.]+)*$. */
static char *pattern_sub(const char *prefix, const char *pattern)
{
    if (!strchr(pattern, '*') && !strchr(pattern, '#')) return join(prefix, pattern);
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_putc(&b, '^');
    for (const char *c = prefix; *c; c++) {
        if (*c == '.') ew_buf_putc(&b, '\\');
        ew_buf_putc(&b, *c);
    }
    for (const char *s = pattern; *s;) {
        size_t len = strcspn(s, ".");
        if (len == 1 && *s == '#')
            ew_buf_puts(&b, "(\\.[^.]+)*");
        else if (len == 1 && *s == '*')
            ew_buf_puts(&b, "\\.[^.]+");
        else {
            ew_buf_puts(&b, "\\.");
            ew_buf_append(&b, s, len);
        }
        s += len;
        if (*s == '.') s++;
    }
    ew_buf_putc(&b, '$');
    return ew_buf_steal(&b, NULL);
}

static void group_free(kgroup *g)
{
    if (!g) return;
    /* A consumer that never ran closes without rebalance callbacks. */
    if (g->rk) rd_kafka_destroy_flags(g->rk, g->closed ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    for (size_t i = 0; i < g->nparts; i++)
        part_free(g->parts[i]);
    free(g->parts);
    for (size_t i = 0; i < g->nsubs; i++)
        free(g->subs[i]);
    free(g->subs);
    for (size_t i = 0; i < g->nstarts; i++)
        free(g->starts[i].topic);
    free(g->starts);
    free(g->name);
    free(g->group_id);
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

static kgroup *group_new(kafka *k, const char *name)
{
    kgroup *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->k = k;
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->name = strdup(name);
    g->group_id = join(k->group_prefix, name);
    if (!g->name || !g->group_id) {
        group_free(g);
        return NULL;
    }
    return g;
}

static int group_subscribe(kgroup *g, ew_error *err)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)g->nsubs);
    if (!l) return oom(err);
    for (size_t i = 0; i < g->nsubs; i++)
        rd_kafka_topic_partition_list_add(l, g->subs[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(g->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e)
        return ew_error_set(err, EW_EINVAL, "kafka group %s: cannot subscribe: %s", g->group_id,
                            rd_kafka_err2str(e));
    return 0;
}

/* Creates the group's consumer, subscribes it and starts its thread. */
static int group_start(kgroup *g, ew_error *err)
{
    kafka *k = g->k;
    rd_kafka_conf_t *conf = conf_common(k, err);
    if (!conf) return err ? err->code : EW_ECONFIG;
    char fetch[32];
    size_t fb = k->max_bytes + 65536;
    snprintf(fetch, sizeof fetch, "%zu", fb < 52428800 ? (size_t)52428800 : fb);
    int rc;
    if ((rc = conf_set(conf, "group.id", g->group_id, err)) ||
        (rc = conf_set(conf, "enable.auto.commit", "false", err)) ||
        (rc = conf_set(conf, "enable.auto.offset.store", "false", err)) ||
        (rc = conf_set(conf, "auto.offset.reset", "earliest", err)) ||
        (rc = conf_set(conf, "session.timeout.ms", SESSION_TIMEOUT, err)) ||
        (rc = conf_set(conf, "heartbeat.interval.ms", "1000", err)) ||
        (rc = conf_set(conf, "fetch.wait.max.ms", FETCH_WAIT_MAX, err)) ||
        (rc = conf_set(conf, "fetch.max.bytes", fetch, err))) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    /* receive.message.max.bytes must exceed fetch.max.bytes */
    char recv[32];
    snprintf(recv, sizeof recv, "%zu", (fb < 52428800 ? (size_t)52428800 : fb) + 1048576);
    if ((rc = conf_set(conf, "receive.message.max.bytes", recv, err)) ||
        (rc = conf_client(k, conf, err))) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    rd_kafka_conf_set_opaque(conf, g);
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return ew_error_set(err, EW_ECONFIG, "kafka group %s: cannot create a consumer: %s",
                            g->group_id, errstr);
    }
    g->rk = rk;
    rd_kafka_poll_set_consumer(rk);
    g->cq = rd_kafka_queue_get_consumer(rk);
    if (!(g->commitq = rd_kafka_queue_new(rk)))
        return ew_error_set(err, EW_ENOMEM, "kafka group %s: out of memory", g->group_id);
    if ((rc = group_subscribe(g, err))) return rc;
    if (pthread_create(&g->th, NULL, consume_main, g))
        return ew_error_set(err, EW_ENOMEM, "kafka group %s: cannot start a thread", g->group_id);
    char name[16]; /* "ewk:GROUP", as ps and debuggers show it */
    snprintf(name, sizeof name, "ewk:%.11s", g->name);
    pthread_setname_np(g->th, name);
    g->running = true;
    return 0;
}

/* ---- the ops ------------------------------------------------------------------------------- */

static void k_free(kafka *k)
{
    while (k->groups) {
        kgroup *g = k->groups;
        k->groups = g->next;
        if (g->cq) rd_kafka_queue_destroy(g->cq);
        if (g->commitq) rd_kafka_queue_destroy(g->commitq);
        group_free(g);
    }
    prod_free(k->prod);
    for (size_t i = 0; i < k->nclient_conf; i++)
        free(k->client_conf[i]);
    free(k->client_conf);
    free(k->bootstrap);
    free(k->prefix);
    free(k->group_prefix);
    free(k->service);
    pthread_rwlock_destroy(&k->plock);
    pthread_mutex_destroy(&k->pmu);
    pthread_cond_destroy(&k->pcv);
    pthread_mutex_destroy(&k->mu);
    free(k);
}

static int k_open(void **self, ew_bus *bus, const ew_config *cfg, ew_error *err)
{
    const char *bootstrap = ew_config_get(cfg, "KAFKA_BOOTSTRAP_SERVERS");
    int rc = check_bootstrap(bootstrap, err);
    if (rc) return rc;
    kafka *k = calloc(1, sizeof *k);
    if (!k) return oom(err);
    /* Writers first: a producer that failed for good is replaced even under a stream of
     * publishes (which fail at once until it is). */
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&k->plock, &ra);
    pthread_rwlockattr_destroy(&ra);
    pthread_mutex_init(&k->pmu, NULL);
    pthread_cond_init(&k->pcv, NULL);
    pthread_mutex_init(&k->mu, NULL);
    k->k = k;
    k->bus = bus;
    k->disp = ew__bus_dispatcher(bus);
    k->bootstrap = strdup(bootstrap);
    k->prefix = strdup(ew_config_get(cfg, "KAFKA_TOPIC_PREFIX"));
    k->group_prefix = strdup(ew_config_get(cfg, "KAFKA_CONSUMER_GROUP"));
    k->service = strdup(ew__bus_service(bus));
    if (!k->bootstrap || !k->prefix || !k->group_prefix || !k->service) {
        k_free(k);
        return oom(err);
    }
    const char *client = ew_config_get(cfg, "KAFKA_CLIENT_CONFIG");
    if ((rc = parse_client_conf(k, client ? client : "", err))) {
        k_free(k);
        return rc;
    }
    k->max_bytes = (size_t)ew_config_get_int(cfg, "EVENT_MAX_BYTES");
    k->connect_ms = (int)ew_config_get_int(cfg, "EVENT_BUS_CONNECT_TIMEOUT_MS");
    k->drain_ms = (int)ew_config_get_int(cfg, "EVENT_BUS_DRAIN_TIMEOUT_MS");
    k->max_inflight = (int)ew_config_get_int(cfg, "EVENT_BUS_MAX_IN_FLIGHT");
    k->publish_timeout_ms =
        k->connect_ms > MIN_PUBLISH_TIMEOUT_MS ? k->connect_ms : MIN_PUBLISH_TIMEOUT_MS;
    if ((rc = prod_new(k, &k->prod, err))) {
        k_free(k);
        return rc;
    }
    /* Reach a broker now: a bus that cannot is refused at open, not at its first publish. */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(k->prod->rk, 0, NULL, &md, k->connect_ms);
    if (e) {
        rc = ew_error_set(err, EW_ECONNECT,
                          "cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS=%s within %d ms "
                          "(EVENT_BUS_CONNECT_TIMEOUT_MS): %s",
                          k->bootstrap, k->connect_ms, rd_kafka_err2str(e));
        k_free(k);
        return rc;
    }
    ew__bus_log(bus, EW_LOG_DEBUG, "kafka: connected to %s (%d brokers)", k->bootstrap,
                md->broker_cnt);
    rd_kafka_metadata_destroy(md);
    *self = k;
    return 0;
}

static int k_subscribed(void *self, const ew_backend_sub *bsub, ew_error *err)
{
    const char *group = bsub->group, *pattern = bsub->pattern;
    kafka *k = self;
    char *sub = pattern_sub(k->prefix, pattern);
    if (!sub) return oom(err);
    pthread_mutex_lock(&k->mu);
    kgroup *g = k->groups;
    while (g && strcmp(g->name, group) != 0)
        g = g->next;
    int rc = 0;
    if (!g) {
        if (!(g = group_new(k, group))) {
            pthread_mutex_unlock(&k->mu);
            free(sub);
            return oom(err);
        }
        g->next = k->groups;
        k->groups = g;
    }
    if (bsub->ephemeral) g->ephemeral = true;
    bool have = false;
    for (size_t i = 0; i < g->nsubs; i++)
        if (strcmp(g->subs[i], sub) == 0) have = true;
    if (have) {
        free(sub);
    } else {
        if (g->nsubs == g->capsubs) {
            size_t cap = g->capsubs ? 2 * g->capsubs : 4;
            char **ns = realloc(g->subs, cap * sizeof *ns);
            if (!ns) {
                pthread_mutex_unlock(&k->mu);
                free(sub);
                return oom(err);
            }
            g->subs = ns;
            g->capsubs = cap;
        }
        g->subs[g->nsubs++] = sub;
    }
    bool started = k->started;
    pthread_mutex_unlock(&k->mu);
    ensure_topics(k, pattern);
    /* Where the group starts on these topics if it is new, before anything is published after
     * this call returns. (Subscriptions are never made concurrently: g stays.) */
    if (!have && (rc = record_starts(k, g, pattern, bsub->from_beginning, err))) {
        pthread_mutex_lock(&k->mu);
        for (size_t i = 0; i < g->nsubs; i++) {
            if (strcmp(g->subs[i], sub) == 0) {
                free(g->subs[i]);
                g->subs[i] = g->subs[--g->nsubs];
                break;
            }
        }
        pthread_mutex_unlock(&k->mu);
        return rc;
    }
    if (started && !have) {
        if (!g->rk)
            rc = group_start(g, err);
        else
            rc = group_subscribe(g, err);
    }
    return rc;
}

static int k_start(void *self, ew_error *err)
{
    kafka *k = self;
    pthread_mutex_lock(&k->mu);
    k->started = true;
    int rc = 0;
    for (kgroup *g = k->groups; g && !rc; g = g->next)
        if (!g->rk && g->nsubs > 0) rc = group_start(g, err); /* none: its subscribe failed */
    pthread_mutex_unlock(&k->mu);
    return rc;
}

static void k_stop(void *self)
{
    kafka *k = self;
    pthread_mutex_lock(&k->mu);
    for (kgroup *g = k->groups; g; g = g->next) {
        atomic_store(&g->stopping, true);
        if (g->cq) rd_kafka_queue_yield(g->cq);
    }
    /* The groups drain and leave side by side. */
    for (kgroup *g = k->groups; g; g = g->next) {
        if (g->running) pthread_join(g->th, NULL);
        g->running = false;
    }
    pthread_mutex_unlock(&k->mu);
}

static void k_close(void *self)
{
    k_free(self);
}

const ew_bus_ops ew__bus_kafka_ops = {
    .version = EW_BUS_OPS_VERSION,
    .name = "kafka",
    .open = k_open,
    .publish = k_publish,
    .subscribed = k_subscribed,
    .start = k_start,
    .stop = k_stop,
    .close = k_close,
};

#else
typedef int ew__kafka_unused;
#endif
