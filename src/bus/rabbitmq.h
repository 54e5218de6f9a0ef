/* eventwire — the RabbitMQ backend's internal header: its state, shared by its files
 * (rabbitmq.c: the ops; rabbitmq_conn.c: connections, declarations and small helpers;
 * rabbitmq_publish.c: publishing with confirms; rabbitmq_consume.c: the transport of each
 * group's consumer core; rabbitmq_lag.c: consumer lag; rabbitmq_mgmt.c: the management plugin's
 * HTTP API). Nothing here is used outside src/bus/rabbitmq*.c. Each
 * function's contract is stated where it is defined. */
#ifndef EW_BUS_RABBITMQ_H
#define EW_BUS_RABBITMQ_H

#include <amqp.h>
#include <amqp_framing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bus/backend.h"
#include "bus/binding.h"

#define CHANNEL 1
#define FRAME_MAX 131072
#define AMQP_NAME_MAX 255       /* exchange, queue and routing key names are short strings */
#define PREFETCH_PER_WORKER 64  /* prefetch = workers of the group x this, up to the max */
#define OP_TIMEOUT_MS 30000     /* a declaration, or the confirms of one batch */
#define BACKOFF_MIN_MS 100      /* reconnection back-off: doubles up to the maximum */
#define PUB_BACKOFF_MAX_MS 2000 /* a publisher fails fast while the broker is away */
#define CONS_BACKOFF_MAX_MS 5000
#define FRAMES_PER_STEP 256 /* frames a consumer reads before it sends acks again */
#define IDLE_POLL_MS 1000
#define EPHEMERAL_EXPIRES_MS 60000 /* an ephemeral group's queue, unused this long, is deleted */

typedef struct rmq rmq;

typedef struct ew__consumer ew__consumer;

/* The consumer of one subscriber group: the transport of a consumer core (consumer.h), which
 * runs its thread, reconnects, bounds the deliveries in flight and acknowledges them in order.
 * The connection is the core thread's alone: dispatcher workers never touch it. */
typedef struct consumer {
    rmq *r;
    char *group, *queue;
    char *what;      /* "rabbitmq: consumer of queue Q", for log lines */
    char thread[16]; /* its consumer thread's name, "ewq:GROUP" */
    bool ephemeral;  /* its queue is not durable and goes with its last consumer */
    char **patterns; /* AMQP binding keys, under r->mu */
    size_t npatterns, cappatterns;
    ew__consumer *core;

    /* the core thread's own */
    amqp_connection_state_t st; /* NULL while disconnected */
    char *ctag;                 /* the consumer tag the broker gave */
} consumer;

struct rmq {
    ew_bus *bus;
    ew_dispatcher *disp;
    char *url_buf; /* amqp_parse_url points into it */
    struct amqp_connection_info ci;
    const char *vhost;
    char addr[300]; /* "host:port vhost /": for messages (never the password) */
    /* amqps:// (ci.ssl): RABBITMQ_TLS_CA_FILE, _CERT_FILE, _KEY_FILE; "" when unset */
    char tls_ca[1024], tls_cert[1024], tls_key[1024];
    char *exchange, *dlx;
    /* RABBITMQ_MANAGEMENT_URL (rabbitmq_mgmt.c): the API's base URL without user info (NULL:
     * unset), and the credentials apart, handed to libcurl alone, never into a message. */
    char *mgmt_base, *mgmt_user, *mgmt_pass;
    char mgmt_shown[200]; /* the URL as messages show it */
    int connect_ms, max_in_flight;
    size_t max_bytes;
    ew__content_mode content_mode; /* how it publishes: EVENT_CONTENT_MODE (binding.h) */

    /* The publisher's connection, also used for declarations. */
    pthread_mutex_t pmu;
    amqp_connection_state_t pst; /* NULL while down */
    uint64_t pseq;               /* the last publish sequence number on pst (confirms) */
    int64_t pnext_try_ns;
    int pbackoff_ms;
    char pwhy[sizeof(((ew_error *)0)->msg)]; /* why the last connection attempt failed */

    pthread_mutex_t mu; /* the groups and their patterns; started */
    consumer **groups;
    size_t ngroups, capgroups;
    bool started;
};

/* ---- rabbitmq_conn.c --------------------------------------------------------------------- */

const char *ew__mq_binding_key(const char *pattern);
void ew__mq_conn_close(amqp_connection_state_t st);
int ew__mq_conn_open(rmq *r, amqp_connection_state_t *out, ew_error *err);
int ew__mq_declare_queue(rmq *r, amqp_connection_state_t st, const char *queue, char *const *keys,
                         size_t n, bool ephemeral, ew_error *err);
int ew__mq_declare_topology(rmq *r, amqp_connection_state_t st, ew_error *err);
void ew__mq_reply_text(amqp_rpc_reply_t rr, char *buf, size_t n);
int ew__mq_rpc_check(amqp_connection_state_t st, int code, ew_error *err, const char *what);
int ew__mq_tls_settings(rmq *r, const ew_config *cfg, ew_error *err);

/* ---- rabbitmq_lag.c ---------------------------------------------------------------------- */

int ew__mq_lag(void *self, const char *group, ew_lag_fn fn, void *ud, ew_error *err);

/* ---- rabbitmq_mgmt.c --------------------------------------------------------------------- */

void ew__mq_mgmt_free(rmq *r);
int ew__mq_mgmt_queue(rmq *r, const char *queue, uint64_t *ready, uint64_t *unacked, ew_error *err);
int ew__mq_mgmt_settings(rmq *r, const char *url, ew_error *err);

/* ---- rabbitmq_publish.c ------------------------------------------------------------------ */

void ew__mq_pub_check_idle(rmq *r);
void ew__mq_pub_down(rmq *r);
int ew__mq_pub_ensure(rmq *r, ew_error *err);
int ew__mq_rmq_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                       const ew__batch *batch, ew_error *err);

/* ---- rabbitmq_consume.c ------------------------------------------------------------------ */

void ew__mq_consumer_free(consumer *c);
consumer *ew__mq_consumer_new(rmq *r, const char *group, const char *queue);

#endif
