/* eventwire — the Redis backend's internal header: its state, shared by its files
 * (redis.c: publish and the lifecycle; redis_conn.c: connections and RESP; redis_consumer.c:
 * what both consumers share and the acker; redis_streams.c; redis_pubsub.c). Nothing here is
 * used outside src/bus/redis*.c. Each function's contract is stated where it is defined. */
#ifndef EW_BUS_REDIS_H
#define EW_BUS_REDIS_H

#include <hiredis/hiredis.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bus/url.h"
#include "bus/backend.h"
#include "core/buf.h"
#include "eventwire/catalog.h"

#define URL_VAR "REDIS_EVENT_URL"
#define URL_FORM "redis://[user:password@]host:port[/db] or rediss://... for TLS"
#define BLOCK_MS 500          /* one XREADGROUP BLOCK; stop() cuts it short with CLIENT UNBLOCK */
#define BACKOFF_MIN_MS 50     /* reconnection back-off, doubling ... */
#define BACKOFF_MAX_MS 2000   /* ... up to this */
#define ID_MAX 48             /* a stream entry id: two 64-bit numbers and a dash */
#define ACKS_PER_CMD 1024     /* ids in one XACK */
#define PENDING_PAGE 512      /* entries per page when re-reading our own pending list */
#define CLAIM_PAGE 256        /* entries per XAUTOCLAIM */
#define READ_BYTES (16 << 20) /* what one XREADGROUP should bring at most, roughly */
#define MAX_STREAMS EW_T__COUNT

/* ---- settings ---------------------------------------------------------------------------- */

typedef ew__redis_url rurl; /* bus/url.h */

typedef struct redis_bus redis_bus;

/* One stream a group reads: PREFIX:TYPE. */
typedef struct rstream {
    char *key;
    size_t key_len;
    const char *type;    /* in key, after the prefix */
    char cursor[ID_MAX]; /* where the next XAUTOCLAIM starts */
} rstream;

/* An acknowledgement waiting to be sent. */
typedef struct rack {
    uint32_t stream;
    char id[ID_MAX];
} rack;

typedef struct rackv {
    rack *v;
    size_t n, cap;
} rackv;

typedef struct rmsg rmsg;

/* The consumer of one subscriber group: a thread reading (and, for streams, a thread
 * acknowledging), each with its own connection, since a blocked XREADGROUP holds its
 * connection. */
typedef struct rconsumer {
    redis_bus *rb;
    char *group;
    char name[128]; /* the Redis consumer name: unique per bus */
    bool ephemeral; /* the group goes with the bus (XGROUP DESTROY at close) */

    pthread_mutex_t mu;
    pthread_cond_t cv;     /* the reader waits here: room, back-off, streams */
    pthread_cond_t ack_cv; /* the acker waits here */
    pthread_cond_t sub_cv; /* pubsub: subscribe() waits for confirmations */

    /* under mu */
    rstream streams[MAX_STREAMS];
    size_t nstreams;
    char **globs; /* pubsub patterns */
    size_t nglobs, globs_cap, nglobs_sent, nglobs_confirmed;
    rmsg *head, *tail; /* in flight, oldest first (by the time last delivered or refreshed) */
    size_t inflight;
    bool room_wait, ack_wait;
    rackv acks;    /* done(ACK), not yet sent */
    rackv sending; /* taken by the acker, being sent */
    bool stop, ack_stop, exited;

    bool running; /* threads started (under the bus's subscribe/start serialisation) */
    pthread_t reader, acker;
    bool acker_started;
    atomic_llong client_id; /* of the reader's connection, for CLIENT UNBLOCK; 0: none */
    size_t entry_bytes;     /* the reader's running estimate of an entry's size */
    int efd;                /* pubsub: wakes the reader's poll() */
} rconsumer;

struct rmsg {
    ew_delivery dl;
    rconsumer *c;
    rmsg *prev, *next;
    int64_t since_ns; /* delivered or last refreshed */
    uint32_t stream;
    char id[ID_MAX];
};

struct redis_bus {
    ew_bus *bus;
    ew_dispatcher *disp;
    rurl url;
    char addr[300];      /* host:port, for messages */
    SSL_CTX *tls;        /* rediss://: the settings every connection's TLS starts from; else NULL */
    BIO_METHOD *tls_bio; /* ... and our socket BIO (send with MSG_NOSIGNAL) */
    char *prefix;
    bool pubsub;
    long long maxlen;
    /* REDIS_STREAM_MAX_AGE_SECONDS in ms (0: no age limit), and how often one stream is trimmed
     * by it; trims guards when each stream last was (publisher and readers share it) */
    int64_t max_age_ms, trim_every_ms;
    pthread_mutex_t trim_mu;
    struct rtrim {
        char *key;
        int64_t at_ms;
    } * trims;
    size_t ntrims, trims_cap;
    int64_t claim_idle_ms;
    int connect_ms, io_ms;
    size_t max_inflight, low_water;
    size_t max_bytes;
    char consumer_base[96];
    char xadd_mid[96]; /* the constant part of an XADD after the key */
    size_t xadd_mid_len;
    int xadd_argc;

    pthread_mutex_t pub_mu; /* the publishing connection and everything below */
    redisContext *pub;
    int64_t pub_retry_ns; /* no new connection attempt before this */
    int pub_backoff_ms;
    char pub_last_err[256];

    /* consumers: changed by subscribed() and start() (serialised by the bus), read by stop and
     * close */
    rconsumer **cons;
    size_t ncons, cons_cap;
    bool started;
};

/* ---- redis_conn.c ---------------------------------------------------------------- */

void ew__rd_conn_free(redisContext *c);
int ew__rd_conn_read(redisContext *c, bool nowait);
void ew__rd_free_replies(redisReply **r, size_t n);
/* ew__redis_url_parse (bus/url.h), in redis_conn.c. */
int ew__rd_pub_conn(redis_bus *rb, bool *fresh, ew_error *err);
void ew__rd_pub_drop(redis_bus *rb);
int ew__rd_pub_exchange(redis_bus *rb, const ew_buf *b, redisReply **replies, size_t n,
                        size_t *nread, ew_error *err);
void ew__rd_put_arg(ew_buf *b, const char *s, size_t n);
void ew__rd_put_cmd(ew_buf *b, int argc, const char *const *argv);
void ew__rd_put_num(ew_buf *b, char kind, size_t n);
void ew__rd_put_str(ew_buf *b, const char *s);
redisReply *ew__rd_rcmd(redisContext *c, int argc, const char *const *argv);
redisContext *ew__rd_rconnect(redis_bus *rb, int io_ms, bool check_version, ew_error *err);
bool ew__rd_reply_err_starts(const redisReply *r, const char *prefix);
bool ew__rd_reply_is(const redisReply *r, int type);
void ew__rd_tls_close(redis_bus *rb);
int ew__rd_tls_open(redis_bus *rb, const ew_config *cfg, ew_error *err);
bool ew__rd_rexchange(redisContext *c, const ew_buf *b, redisReply **replies, size_t n);
int ew__rd_rsend(redisContext *c, const char *buf, size_t len);

/* ---- redis_consumer.c ------------------------------------------------------------ */

void ew__rd_ack_push_locked(rconsumer *c, uint32_t stream, const char *id);
void *ew__rd_acker_main(void *arg);
redisContext *ew__rd_consumer_connect(rconsumer *c, int io_ms, int *backoff, bool *was_down,
                                      const char *role);
void ew__rd_consumer_drop(rconsumer *c, redisContext **conn, bool *was_down, const char *role);
bool ew__rd_known_locked(rconsumer *c, uint32_t stream, const char *id);
void ew__rd_list_append(rconsumer *c, rmsg *m);
void ew__rd_list_unlink(rconsumer *c, rmsg *m);
void ew__rd_msg_done(ew_delivery *dl, ew_delivery_outcome outcome);
ew_event *ew__rd_receive(rconsumer *c, const char *type, const char *where, const char *payload,
                         size_t len, int code, const char *why, bool *kept);
void ew__rd_room_freed(rconsumer *c);
bool ew__rd_stopping(rconsumer *c);

/* Trims the stream key by age (REDIS_STREAM_MAX_AGE_SECONDS: XTRIM key MINID now-age) through
 * conn, when its last trim is trim_every_ms old or more; nothing without an age limit. -1 when
 * the connection failed (a refusal by Redis is logged and is not one). Thread-safe. */
int ew__rd_trim_by_age(redis_bus *rb, redisContext *conn, const char *key);
size_t ew__rd_wait_room(rconsumer *c);
bool ew__rd_wait_stop(rconsumer *c, int ms);

/* ---- redis_streams.c ------------------------------------------------------------- */

int ew__rd_create_groups(redis_bus *rb, redisContext *conn, rconsumer *c, rstream *const *ss,
                         size_t n, const char *start_id, ew_error *err);
void *ew__rd_stream_reader_main(void *arg);

/* ---- redis_pubsub.c -------------------------------------------------------------- */

char *ew__rd_pattern_glob(const redis_bus *rb, const char *pattern);
void *ew__rd_pubsub_reader_main(void *arg);
int ew__rd_pubsub_wait_confirmed(rconsumer *c, ew_error *err);
void ew__rd_pubsub_wake(rconsumer *c);

#endif
