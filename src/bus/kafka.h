/* eventwire — the Kafka backend's internal header: its state, shared by its files (kafka.c:
 * groups and the ops; kafka_conf.c: librdkafka configuration and settings; kafka_produce.c: the
 * producer; kafka_start.c: where a new group starts; kafka_consume.c: the transport of each group's
 * consumer core: records, commits and rebalances). Nothing here is used outside src/bus/kafka*.c.
 * Each function's contract is stated where it is defined. */
#ifndef EW_BUS_KAFKA_H
#define EW_BUS_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bus/backend.h"
#include "bus/binding.h"
#include "bus/consumer.h"
#include "eventwire/catalog.h"

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

/* Where a partition starts for a group that has committed nothing there (a group new to Kafka):
 * recorded when a subscription of the group was made. */
typedef struct kstart {
    char *topic;
    int32_t partition;
    int64_t offset; /* the partition's end then (from now on), or RD_KAFKA_OFFSET_BEGINNING */
} kstart;

/* An assigned partition: a lane of the group's consumer core, and its commits. */
struct kpart {
    char *topic;
    int32_t partition;
    uint32_t lane;               /* its lane in the consumer core (ew__ack_token.lane) */
    const rd_kafka_topic_t *rkt; /* the handle its messages come with, for a quick match */
    int64_t next_commit; /* offset to commit (the one after the last settled message); -1: none */
    int64_t committed;   /* last offset sent in a commit (consumer thread); -1: none */
};

struct kgroup {
    kafka *k;   /* first, as in struct kafka: what the librdkafka callbacks read from the opaque */
    char *name; /* the subscriber group */
    char *group_id;  /* KAFKA_CONSUMER_GROUP.name */
    char *what;      /* "kafka group ID", for log lines */
    char thread[16]; /* its consumer thread's name, "ewk:GROUP" */
    bool ephemeral;  /* commits nothing: the broker keeps no position for it */
    char **subs;     /* topics and ^regexes */
    size_t nsubs, capsubs;
    kstart *starts; /* under mu: written by subscribed(), read on assignment */
    size_t nstarts, capstarts;
    rd_kafka_t *rk;
    rd_kafka_queue_t *cq;      /* the consumer queue, to wake the thread */
    rd_kafka_queue_t *commitq; /* results of asynchronous commits, served by the thread */
    ew__consumer *core;        /* the consumer core running the group (consumer.h) */
    bool running;              /* core started */

    pthread_mutex_t mu; /* the parts array, next_commit, dirty, closed */
    kpart **parts;      /* assigned; changed only by the consumer thread, under mu */
    size_t nparts, capparts;
    atomic_bool dirty; /* a next_commit moved (written under mu) */
    bool closed;       /* the consumer is closed: no more commits */

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
    ew__content_mode content_mode; /* how it publishes: EVENT_CONTENT_MODE (binding.h) */
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

/* ---- kafka_conf.c ------------------------------------------------------------------------ */

int ew__kf_check_bootstrap(const char *s, ew_error *err);
int ew__kf_conf_client(kafka *k, rd_kafka_conf_t *conf, ew_error *err);
rd_kafka_conf_t *ew__kf_conf_common(kafka *k, ew_error *err);
int ew__kf_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value, ew_error *err);
char *ew__kf_join(const char *a, const char *b);
int ew__kf_map_err(rd_kafka_resp_err_t e);
int ew__kf_oom(ew_error *err);
int ew__kf_parse_client_conf(kafka *k, const char *s, ew_error *err);

/* ---- kafka_lag.c ------------------------------------------------------------------------- */

int ew__kf_lag(void *self, const char *group, ew_lag_fn fn, void *ud, ew_error *err);

/* ---- kafka_produce.c --------------------------------------------------------------------- */

void ew__kf_ensure_topics(kafka *k, const char *pattern);
int ew__kf_k_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                     const ew__batch *batch, ew_error *err);
void ew__kf_prod_free(kprod *p);
int ew__kf_prod_new(kafka *k, kprod **out, ew_error *err);

/* ---- kafka_start.c ----------------------------------------------------------------------- */

int ew__kf_record_starts(kafka *k, kgroup *g, const char *pattern, bool from_beginning,
                         ew_error *err);
void ew__kf_set_start_offsets(kgroup *g, rd_kafka_topic_partition_list_t *parts);

/* ---- kafka_consume.c --------------------------------------------------------------------- */

extern const ew__consumer_ops ew__kf_transport;
void ew__kf_part_free(kpart *p);
void ew__kf_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e,
                         rd_kafka_topic_partition_list_t *parts, void *opaque);

#endif
