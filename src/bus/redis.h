/* eventwire — the Redis backend's internal header: its state, shared by its files
 * (redis.c: publish and the lifecycle; redis_conn.c: connections and RESP; redis_consumer.c:
 * what both consumer transports share, the acknowledgements; redis_streams.c and redis_pubsub.c:
 * the transports of the consumer core, consumer.h). Nothing here is
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
#include "bus/consumer.h"
#include "core/buf.h"
#include "eventwire/catalog.h"

#define URL_VAR "REDIS_EVENT_URL"
#define URL_FORM "redis://[user:password@]host:port[/db] or rediss://... for TLS"
#define BLOCK_MS 500          /* one XREADGROUP BLOCK; stopping cuts it short with CLIENT UNBLOCK */
#define BACKOFF_MIN_MS 50     /* reconnection back-off, doubling ... */
#define BACKOFF_MAX_MS 2000   /* ... up to this */
#define ID_MAX 48             /* a stream entry id: two 64-bit numbers and a dash */
#define ACKS_PER_CMD 1024     /* ids in one XACK */
#define PENDING_PAGE 512      /* entries per page when re-reading our own pending list */
#define CLAIM_PAGE 256        /* entries per XAUTOCLAIM */
#define READ_BYTES (16 << 20) /* what one XREADGROUP should bring at most, roughly */
#define MAX_STREAMS EW_T__COUNT

/* ---- redis_resp.c ---------------------------------------------------------------- */

#define EW__RESP_DEPTH 8 /* arrays in arrays: an XREADGROUP answer has 5 */

/* How far the scan of a reply being received got; zeroed for each new reply. */
typedef struct ew__resp_scan {
    size_t pos;                     /* buf[0, pos) is checked */
    bool started;                   /* the first item is */
    int depth;                      /* arrays open at pos ... */
    long long left[EW__RESP_DEPTH]; /* ... and the items each still has to come */
} ew__resp_scan;

/* Is the RESP2 reply that starts at buf[0] complete in buf[0, len)? 1: yes, it is buf[0, *end);
 * 0: more bytes are needed (call again with them appended: what was checked is not looked at
 * again); -1: this is no RESP2, or arrays nest deeper than EW__RESP_DEPTH. */
int ew__resp_complete(ew__resp_scan *s, const char *buf, size_t len, size_t *end);

/* One item of a complete reply in buf[0, end): type is '*' (n elements follow, -1: nil), '$'
 * (str[0, len) are its bytes; n = -1: nil), ':' (n), '+' or '-' (str[0, len) is the line). */
typedef struct ew__resp_item {
    char type;
    long long n;
    const char *str;
    size_t len;
} ew__resp_item;

/* Reads the item at *pos and moves *pos past it (past an array's header only). False when buf
 * holds no item there. */
bool ew__resp_next(const char *buf, size_t end, size_t *pos, ew__resp_item *it);

/* Moves *pos past the whole item there (an array with everything in it). False as above. */
bool ew__resp_skip(const char *buf, size_t end, size_t *pos);

/* ---- settings ---------------------------------------------------------------------------- */

typedef ew__redis_url rurl; /* bus/url.h */

typedef struct redis_bus redis_bus;

/* One stream a group reads: PREFIX:TYPE. Its index in the group is the lane of its entries'
 * tokens (consumer.h): lane = stream, (a, b) = the entry id's two numbers. */
typedef struct rstream {
    char *key;
    size_t key_len;
    const char *type;    /* in key, after the prefix */
    char cursor[ID_MAX]; /* where the next XAUTOCLAIM starts */
} rstream;

typedef struct rtoks {
    ew__ack_token *v;
    size_t n, cap;
} rtoks;

/* The consumer of one subscriber group: the transport of a consumer core (consumer.h), which runs
 * its thread, reconnection, window and settlement. The transport's own state (below "the
 * consumer thread's") is used on that thread only. */
typedef struct rconsumer {
    redis_bus *rb;
    char *group;
    char name[128]; /* the Redis consumer name: unique per bus */
    bool ephemeral; /* the group goes with the bus (XGROUP DESTROY at close) */
    char what[200]; /* "redis: consumer of group G", for log lines */
    char thread[16];
    ew__consumer *core;
    bool running; /* the core started (under the bus's subscribe/start serialisation) */
    int efd;      /* pubsub: wakes the fetch when a pattern is added */

    pthread_mutex_t mu;    /* what subscribed() changes while the thread runs: */
    pthread_cond_t sub_cv; /* pubsub: subscribe() waits for confirmations */
    rstream streams[MAX_STREAMS];
    size_t nstreams;
    char **globs; /* pubsub patterns */
    size_t nglobs, globs_cap, nglobs_sent, nglobs_confirmed;

    /* the consumer thread's */
    redisContext *rd;    /* reads: XREADGROUP, XAUTOCLAIM, XTRIM, XGROUP; PSUBSCRIBE */
    redisContext *ack;   /* streams: XACK, XCLAIM refreshes, CLIENT UNBLOCK */
    long long client_id; /* rd's, for CLIENT UNBLOCK */
    int reading;         /* a blocking read out on rd (READ_*), answered in a later fetch */
    ew_buf answer;       /* ... its answer as it arrives, read in place (redis_resp.c) */
    ew__resp_scan scan;  /* ... and how far it was checked */
    uint32_t rsel[MAX_STREAMS];
    size_t nrsel;           /* ... and the streams it names */
    int64_t read_deadline;  /* ... and when its answer is overdue */
    size_t read_max;        /* ... and the room it was sent for */
    bool refill;            /* a read filled the window: the next waits for a quarter of it */
    bool cancelled;         /* stop_fetching: no new read */
    bool need_pending;      /* our own pending entries are to be read again (after connecting) */
    uint32_t pend_stream;   /* ... the stream being read */
    char pend_last[ID_MAX]; /* ... after this id */
    size_t pend_count;      /* ... entries delivered so far */
    int64_t next_claim, next_trim, next_refresh, pause_until;
    size_t rot;          /* the next stream read when fewer fit than there are */
    size_t entry_bytes;  /* a running estimate of an entry's size */
    rtoks unsent;        /* to XACK, not sent yet (after a lost connection: on the next) */
    rtoks sent;          /* XACKed, the answers not read yet */
    size_t owed;         /* answers owed on ack */
    ew__ack_token *held; /* room for ew__consumer_held() */
    size_t held_cap;
    uint64_t seq; /* pubsub: the tokens */
} rconsumer;

struct redis_bus {
    ew_bus *bus;
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
    size_t max_inflight;
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
int ew__rd_conn_recv(redisContext *c, ew_buf *into);
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

rconsumer *ew__rd_consumer_new(redis_bus *rb, const char *group, size_t index);
void ew__rd_consumer_free(rconsumer *c);
void ew__rd_consumer_leftovers(rconsumer *c);
bool ew__rd_receive(rconsumer *c, const char *type, const char *where, const char *payload,
                    size_t len, int code, const char *why, ew__ack_token tok);
bool ew__rd_token_parse(const char *id, size_t len, uint32_t stream, ew__ack_token *tok);
size_t ew__rd_token_id(const ew__ack_token *tok, char *out);
void ew__rd_acks_queue(rconsumer *c, const ew__ack_token *toks, size_t n);
void ew__rd_acks_lost(rconsumer *c);
bool ew__rd_acks_has(const rconsumer *c, const ew__ack_token *tok);
int ew__rd_acks_flush(rconsumer *c, bool block, ew_error *err);
int ew__rd_acks_take(rconsumer *c, bool block, ew_error *err);
int ew__rd_refresh(rconsumer *c, int64_t older_than_ns, ew_error *err);
int ew__rd_take_reply(redisContext *conn, redisReply **r, ew_error *err);
int ew__rd_conn_error(redisContext *conn, ew_error *err);

/* ---- redis_streams.c ------------------------------------------------------------- */

/* Trims the stream key by age (REDIS_STREAM_MAX_AGE_SECONDS: XTRIM key MINID now-age) through
 * conn, when its last trim is trim_every_ms old or more; nothing without an age limit. -1 when
 * the connection failed (a refusal by Redis is logged and is not one). Thread-safe. */
int ew__rd_trim_by_age(redis_bus *rb, redisContext *conn, const char *key);

int ew__rd_create_groups(redis_bus *rb, redisContext *conn, rconsumer *c, rstream *const *ss,
                         size_t n, const char *start_id, ew_error *err);
extern const ew__consumer_ops ew__rd_streams_transport;

/* ---- redis_lag.c ----------------------------------------------------------------- */

int ew__rd_lag(void *self, const char *group, ew_lag_fn fn, void *ud, ew_error *err);

/* ---- redis_pubsub.c -------------------------------------------------------------- */

char *ew__rd_pattern_glob(const redis_bus *rb, const char *pattern);
int ew__rd_pubsub_wait_confirmed(rconsumer *c, ew_error *err);
void ew__rd_pubsub_wake(rconsumer *c);
extern const ew__consumer_ops ew__rd_pubsub_transport;

#endif
