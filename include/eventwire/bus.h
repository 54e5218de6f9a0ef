/* eventwire — the event bus.
 *
 * One API over every backend (EVENT_BUS_TYPE: memory, sqlite, redis, kafka, rabbitmq). Services
 * publish events and subscribe handlers to exact types or patterns ("user.*"); a shared
 * dispatcher runs the handlers on worker threads with retries, idempotency and dead letters.
 *
 * Delivery (docs/bus.md):
 *  - Every subscriber group receives every event it subscribed to. Within a group each handler
 *    (named by opts.name) gets the event once; subscriptions with the same group and the same
 *    name are consumers of one subscription and compete: each event goes to one of them, as
 *    instances of one service do.
 *  - Events of one type with the same subject are handled in publish order by one subscription,
 *    also with concurrency > 1 (workers are chosen by subject).
 *  - A handler returns ok, retry or fail. Retry backs off exponentially with jitter up to
 *    max_attempts; then, and at once for fail, the event goes to the dead letter sink with the
 *    error, attempts and times, and the subscription moves on.
 *  - The memory backend delivers only to subscriptions that exist when an event is published,
 *    keeps nothing across restarts, and publish returns once the event is queued. Durable
 *    backends return from publish once the backend has the event.
 *
 * Threads: every function is thread-safe except ew_bus_close(), which must not race with other
 * calls on the same bus and must not be called from a handler. Handlers run on the bus's worker
 * threads. Two buses in one process share nothing. */
#ifndef EVENTWIRE_BUS_H
#define EVENTWIRE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "eventwire/config.h"
#include "eventwire/dlq.h"
#include "eventwire/error.h"
#include "eventwire/evauth.h"
#include "eventwire/event.h"
#include "eventwire/inbox.h"
#include "eventwire/log.h"
#include "eventwire/trace.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_bus ew_bus;
typedef struct ew_handler_ctx ew_handler_ctx;
/* An event store (eventwire/store.h), named here only by ew_subscribe_opts.batch_store. */
typedef struct ew_store ew_store;

typedef enum ew_handler_result {
    EW_HANDLER_OK = 0,    /* done: the event counts as handled */
    EW_HANDLER_RETRY = 1, /* a passing failure: deliver again after a back-off */
    EW_HANDLER_FAIL = 2   /* will never succeed: dead-letter it now */
} ew_handler_result;

/* A handler. ev is borrowed for the call (take ew_event_ref() to keep it). Runs on a worker
 * thread of the subscription; one call at a time per worker. */
typedef ew_handler_result (*ew_handler_fn)(const ew_event *ev, ew_handler_ctx *ctx, void *ud);

typedef struct ew_bus_options {
    const ew_config *config; /* NULL: defaults; otherwise copied at open */
    ew_log_fn log;           /* NULL: silent */
    void *log_ud;
    ew_span_fn span; /* NULL: handler spans are not reported (eventwire/trace.h) */
    void *span_ud;
    ew_dlq_sink dlq; /* .ops NULL: the bus keeps dead letters in memory (ew_bus_dead_letters) */
    ew_inbox inbox;  /* .ops NULL: no idempotency check */
    /* Authenticated events (eventwire/evauth.h), borrowed: it must outlive the bus. Every
     * publish is checked against the policy (EW_EPERM, nothing published) and signed, every
     * subscription checked (EW_EPERM), every event received from a broker verified and checked
     * in the receive path (dead-lettered with the reason when it fails), redeliveries' events
     * too. NULL: nothing is signed or checked (EVENT_AUTH=off). */
    ew_evauth *auth;
} ew_bus_options;

/* Opens the bus that opts->config names (EVENT_BUS_TYPE). Subscriptions may be added before or
 * after ew_bus_start(). Caller closes it with ew_bus_close(). EW_ENOTSUP when this build has no
 * such backend; EW_ECONFIG for a bad setting; EW_ECONNECT when a broker cannot be reached. */
int ew_bus_open(ew_bus **out, const ew_bus_options *opts, ew_error *err);

/* ew_bus_open() with the configuration read from the environment and no other options. */
int ew_bus_open_env(ew_bus **out, ew_error *err);

/* The backend's name: "memory", "sqlite", ... Static string. */
const char *ew_bus_backend(const ew_bus *bus);

/* The configuration in force. Borrowed: valid until the bus is closed. */
const ew_config *ew_bus_config(const ew_bus *bus);

typedef struct ew_subscribe_opts {
    const char *group;      /* subscriber group; NULL: SERVICE_NAME */
    const char *name;       /* handler name, unique in its group; NULL: the pattern */
    int concurrency;        /* worker threads; 0: 1 */
    int max_attempts;       /* 0: EVENT_HANDLER_MAX_ATTEMPTS; 1 means no retry */
    int backoff_initial_ms; /* 0: EVENT_HANDLER_BACKOFF_MS */
    int backoff_max_ms;     /* 0: EVENT_HANDLER_BACKOFF_MAX_MS */
    bool no_jitter;         /* exact back-off times (tests) */
    bool no_inbox;          /* do not consult the bus's inbox for this handler */
    /* Where a group that does not exist yet starts. false: with the events published from
     * now on. true: with the oldest event the backend still holds (a replay, `ewctl tail
     * --from-beginning`). A group that exists resumes where it left off either way. */
    bool from_beginning;
    /* A store the handler writes through transactions of its own (ew_store_begin), as the saga
     * engine does: a worker that has several deliveries queued runs them with the handle held,
     * so that their transactions commit together (store.h, "Group commit"), and acknowledges
     * them after. Borrowed: it must outlive the bus. NULL: none. The bus's inbox is held the
     * same way, without this, when it can (ew_inbox_ops.hold). */
    ew_store *batch_store;
    /* When the group has a handler of this name with other patterns: this pattern is added to
     * it (false: EW_EEXIST). One handler then takes several types in one queue, in the order
     * they come, with its workers (concurrency is not added to), as the saga engine does. */
    bool add_pattern;
    /* The group lives as long as this bus: what the backend keeps for it is removed when the bus
     * closes (SQLite: its row; Redis: its consumer group on each stream; Kafka: nothing is
     * committed; RabbitMQ: its queue is not durable and is deleted once no consumer is left, or
     * after a minute unused). For a look at the traffic, `ewctl tail`; only for a group nobody
     * else consumes. Every subscription of the group must say the same. */
    bool ephemeral;
} ew_subscribe_opts;

/* Subscribes fn to the events whose type matches pattern (ew_pattern_match). opts may be NULL.
 * ud is borrowed until the bus is closed. Fails with EW_EINVAL for a bad pattern, EW_ECLOSED
 * after close; when it fails, fn is never called. */
int ew_bus_subscribe(ew_bus *bus, const char *pattern, ew_handler_fn fn, void *ud,
                     const ew_subscribe_opts *opts, ew_error *err);

/* Starts delivery. Events published earlier are delivered now. */
int ew_bus_start(ew_bus *bus, ew_error *err);

/* Publishes one event; the bus takes its own reference (the caller keeps theirs). */
int ew_bus_publish(ew_bus *bus, const ew_event *ev, ew_error *err);

/* Publishes n events as one batch (one round trip, one commit where the backend allows). On
 * failure none or some were published: the error says which index failed. */
int ew_bus_publish_batch(ew_bus *bus, const ew_event *const *evs, size_t n, ew_error *err);

/* Builds an event with source SERVICE_NAME and publishes it. */
int ew_bus_publish_new(ew_bus *bus, ew_type_id type, const void *data, const char *subject,
                       ew_error *err);

/* Hands ev to one subscription only (group and handler name): how dead letters are retried and
 * stored events replayed. EW_ENOTFOUND when no such subscription exists in this process. */
int ew_bus_deliver_to(ew_bus *bus, const char *group, const char *name, const ew_event *ev,
                      ew_error *err);

/* Hands ev again to subscriber group `group` only — to its handler `handler`, or (NULL) to every
 * handler of the group whose pattern matches — wherever that group consumes: in this process or
 * in another one on the same bus. It publishes an eventwire.redelivery event wrapping ev, which
 * every group's consumers receive and only that group unwraps (docs/bus.md, "Redelivery");
 * the inbox still applies. dead_letter_id > 0 names the dead letter being retried: the dead
 * letter sink of the process that handles it marks it resolved (ew_dlq_sink_ops.resolved). A
 * redelivery that cannot be carried out (no such handler there, a type it does not take) is
 * dead-lettered there with the reason. Returns once published, as ew_bus_publish does. */
int ew_bus_redeliver(ew_bus *bus, const char *group, const char *handler, const ew_event *ev,
                     int64_t dead_letter_id, ew_error *err);

/* Redelivers n events to group, every handler whose pattern matches each one, as one batch:
 * how stored events are replayed (`ewctl store replay --to-group`). */
int ew_bus_replay(ew_bus *bus, const char *group, const ew_event *const *evs, size_t n,
                  ew_error *err);

/* Waits until every published event has been handled, retried to the end or dead-lettered, and
 * every follow-up event too. 0 when idle, EW_ETIMEDOUT after timeout_ms (< 0: no limit). */
int ew_bus_wait_for_events(ew_bus *bus, int timeout_ms, ew_error *err);

/* Stops taking new events, lets the handlers finish what was published (up to
 * EVENT_BUS_DRAIN_TIMEOUT_MS), stops the workers and frees the bus. Returns EW_ETIMEDOUT when
 * events were still pending at the deadline (they are logged as lost on the memory backend).
 * NULL is ignored. */
int ew_bus_close(ew_bus *bus);

/* The dead letters kept in memory when no sink was given; NULL when a sink was given. Borrowed. */
ew_memdlq *ew_bus_dead_letters(ew_bus *bus);

/* ---- inside a handler ------------------------------------------------------------------ */

/* 1 on the first delivery, 2 on the first retry, ... */
int ew_ctx_attempt(const ew_handler_ctx *ctx);
const char *ew_ctx_group(const ew_handler_ctx *ctx);
const char *ew_ctx_handler(const ew_handler_ctx *ctx);

/* The inbox's transaction for this delivery (what ew_inbox_ops.begin returned), or NULL. */
void *ew_ctx_txn(const ew_handler_ctx *ctx);

/* Records why the handler is about to return retry or fail; the dead letter keeps the last one. */
void ew_ctx_set_error(ew_handler_ctx *ctx, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The handler's span as a traceparent: a child of the handled event's traceparent (the root of
 * a new trace when it has none), one per call of the handler. Borrowed until the handler
 * returns. */
const char *ew_ctx_traceparent(ew_handler_ctx *ctx);

/* Fills attrs for a follow-up event: source SERVICE_NAME, the handled event's correlation id,
 * its id as causation id, and the handler's span (ew_ctx_traceparent) as traceparent. The
 * strings are borrowed from the handled event and the handler's call. */
void ew_ctx_follow_up_attrs(ew_handler_ctx *ctx, ew_event_attrs *attrs);

/* Publishes a follow-up event built with ew_ctx_follow_up_attrs(). It is published when the
 * handler returns ok and dropped when it returns retry or fail, so a retried handler does not
 * publish twice. */
int ew_ctx_publish(ew_handler_ctx *ctx, ew_type_id type, const void *data, const char *subject,
                   ew_error *err);

/* The same for an event the handler built itself; takes a reference of its own. */
int ew_ctx_publish_event(ew_handler_ctx *ctx, const ew_event *ev, ew_error *err);

/* ---- metrics -------------------------------------------------------------------------- */

typedef struct ew_bus_stats {
    uint64_t published; /* events accepted by publish */
    uint64_t publish_errors;
    uint64_t pending; /* published or follow-up events not yet done with */
    size_t subscriptions;
} ew_bus_stats;

/* Handler times are counted in EW_HANDLER_HIST_BUCKETS buckets: bucket b holds the calls that
 * took less than 2^b nanoseconds and at least 2^(b-1) (bucket 0: none measurable). */
#define EW_HANDLER_HIST_BUCKETS 64

typedef struct ew_handler_stats {
    const char *group, *name, *pattern; /* borrowed until the bus is closed */
    int consumers;                      /* workers */
    uint64_t received;                  /* deliveries, retries included */
    uint64_t handled;                   /* returned ok */
    uint64_t retried;                   /* returned retry and were delivered again */
    uint64_t dead_lettered;             /* sent to the dead letter sink */
    uint64_t duplicates;                /* skipped because the inbox had them */
    uint64_t queue_depth;               /* waiting now */
    uint64_t time_total_ns;             /* on handler calls, all (docs/metrics.md says what) */
    uint64_t time_max_ns;
    double time_p50_ms, time_p99_ms;             /* from a log2 histogram: within a factor of 2 */
    uint64_t time_hist[EW_HANDLER_HIST_BUCKETS]; /* calls by duration, as above */
} ew_handler_stats;

/* What one subscription's handler did with the events of one type. */
typedef struct ew_handler_type_stats {
    uint64_t handled;       /* returned ok */
    uint64_t retried;       /* returned retry and were delivered again */
    uint64_t dead_lettered; /* sent to the dead letter sink */
} ew_handler_type_stats;

void ew_bus_stats_get(ew_bus *bus, ew_bus_stats *out);

/* Stats of subscription i (0 .. subscriptions-1). EW_ENOTFOUND past the end. */
int ew_bus_handler_stats(ew_bus *bus, size_t i, ew_handler_stats *out);

/* The same, for the events of one type only. EW_ENOTFOUND past the end, EW_EINVAL for a type
 * that is not in the catalog. */
int ew_bus_handler_type_stats(ew_bus *bus, size_t i, ew_type_id type, ew_handler_type_stats *out);

/* Events of one type this bus published (its own and its handlers' follow-ups); 0 for a type
 * that is not in the catalog. */
uint64_t ew_bus_published_count(ew_bus *bus, ew_type_id type);

/* ---- consumer lag --------------------------------------------------------------------- */

/* One group's lag, for ew_bus_lag(). group is borrowed for the call. Return 0 to go on,
 * anything else to stop. */
typedef int (*ew_lag_fn)(void *ud, const char *group, uint64_t lag);

/* The consumer lag of subscriber group `group` as the backend records it, whichever process
 * consumes for the group (docs/metrics.md):
 *   sqlite:   the log's head minus the group's position;
 *   redis:    entries after the group's last-delivered id plus its pending entries, summed over
 *             the group's streams (REDIS_MODE=pubsub keeps nothing: EW_ENOTSUP);
 *   kafka:    end offset minus the committed offset, summed over the partitions of the topics
 *             the group has committed offsets in;
 *   rabbitmq: the ready messages of the group's queue (messages delivered to a consumer and not
 *             yet acknowledged are not counted: AMQP does not tell them);
 *   memory:   the events queued for, or in, the group's handlers in this process (the most of
 *             any of its handlers).
 * Calls fn once with the figure. With group NULL: once for every group the backend knows
 * (sqlite, redis, memory), in no set order; EW_ENOTSUP where the backend cannot list its groups
 * (kafka, rabbitmq). EW_ENOTFOUND when the backend has no record of group; EW_ECONNECT when the
 * broker cannot be reached. Makes a round trip or a few to the broker or the store; thread-safe,
 * also from a handler. When it fails, fn may have been called for some groups already. */
int ew_bus_lag(ew_bus *bus, const char *group, ew_lag_fn fn, void *ud, ew_error *err);

#ifdef __cplusplus
}
#endif
#endif
