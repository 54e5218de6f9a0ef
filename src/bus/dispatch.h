/* eventwire — the dispatcher: the part of the bus that every backend shares.
 *
 * It holds the subscriptions and their worker threads, routes each event to the subscriptions
 * whose pattern matches its type, and runs the handlers: retries with back-off, the inbox, dead
 * letters, follow-up events, metrics, and the count of events not yet done that
 * ew_bus_wait_for_events() and ew_bus_close() wait on. Backends reach it through backend.h; this
 * header is what bus.c uses. */
#ifndef EW_BUS_DISPATCH_H
#define EW_BUS_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bus/backend.h"

/* What the dispatcher needs from its bus. Copied by ew__dispatch_new(); the pointers are
 * borrowed until ew__dispatch_free(). */
typedef struct ew_dispatch_host {
    ew_log_fn log; /* NULL: silent */
    void *log_ud;
    ew_span_fn span; /* NULL: handler spans are not reported */
    void *span_ud;
    ew_dlq_sink dlq;     /* required */
    ew_inbox inbox;      /* .ops NULL: none */
    const char *service; /* SERVICE_NAME: the source of follow-up events */
    /* Publishes the follow-up events of a handler that returned ok (the bus's internal publish,
     * which works during close), with the worker's batch (store/batch.h). Same contract as
     * ew_bus_ops.publish. */
    int (*publish)(void *bus, const ew_event *const *evs, size_t n, size_t *npublished,
                   const ew__batch *batch, ew_error *err);
    void *bus;
    /* ENABLE_METRICS=false: handler calls are not timed (no clock read around them) and not
     * counted by type; the other counters, which the bus works with, still are. */
    bool no_metrics;
    /* Checks an event that arrives inside a redelivery as the receive path checks what arrives
     * from the wire (receive.h): 0, or the reason it is refused. NULL: nothing to check. */
    int (*verify)(void *bus, const ew_event *ev, ew_error *err);
} ew_dispatch_host;

/* A subscription with every option resolved (no zeros meaning "default"). */
typedef struct ew_dispatch_sub {
    const char *group, *name, *pattern; /* copied */
    ew_handler_fn fn;
    void *ud;
    int concurrency;
    int max_attempts;
    int backoff_initial_ms, backoff_max_ms;
    bool no_jitter, no_inbox;
    ew_store *batch_store; /* borrowed; NULL: none */
    bool add_pattern;      /* (group, name) exists: pattern is added to it (no new workers) */
} ew_dispatch_sub;

int ew__dispatch_new(ew_dispatcher **out, const ew_dispatch_host *host, ew_error *err);

/* Adds a subscription, or workers to the existing subscription of the same group and name
 * (competing consumers, each worker with its own fn and ud; *created tells which). The options of
 * the first subscription stay in force. EW_EEXIST when that name is taken in the group by another
 * pattern, unless add_pattern: the subscription then takes that pattern too. Starts the new workers
 * when the dispatcher runs. Serialised by the caller. Adding workers changes which worker a subject
 * maps to: events of a subject already queued may then run beside its newer ones, so add consumers
 * before publishing where order matters. */
int ew__dispatch_subscribe(ew_dispatcher *d, const ew_dispatch_sub *s, bool *created,
                           ew_error *err);

/* Is there a subscription (group, name), or with name NULL any in group? Its first pattern is
 * stored in *pattern when not NULL. */
bool ew__dispatch_has(ew_dispatcher *d, const char *group, const char *name, const char **pattern);

/* Does subscription (group, name) take pattern (one of its patterns, exactly)? */
bool ew__dispatch_has_pattern(ew_dispatcher *d, const char *group, const char *name,
                              const char *pattern);

/* The dead letter sink the dispatcher writes to. Borrowed. */
const ew_dlq_sink *ew__dispatch_sink(const ew_dispatcher *d);

/* The bus the dispatcher serves (ew_dispatch_host.bus). */
void *ew__dispatch_bus(const ew_dispatcher *d);

/* The host's verify() for an event inside a redelivery: 0 when there is none. */
int ew__dispatch_verify(const ew_dispatcher *d, const ew_event *ev, ew_error *err);

/* Starts every worker thread. Idempotent. */
int ew__dispatch_start(ew_dispatcher *d, ew_error *err);

/* Waits until nothing is outstanding: 0, or EW_ETIMEDOUT after timeout_ms (< 0: forever).
 * EW_ESTATE when called from one of this dispatcher's handlers (it would wait for itself). */
int ew__dispatch_wait(ew_dispatcher *d, int timeout_ms, ew_error *err);

/* Is the calling thread one of d's workers? */
bool ew__dispatch_in_handler(ew_dispatcher *d);

/* Stops the workers (those running a handler finish that call first), joins them, and drops
 * whatever is still queued: each event is logged as lost, deliveries are done(ABANDONED).
 * Returns how many handler deliveries were lost. Call after waiting for what should finish. */
uint64_t ew__dispatch_stop(ew_dispatcher *d);

/* Frees a stopped dispatcher. NULL is ignored. */
void ew__dispatch_free(ew_dispatcher *d);

/* Events handed to the dispatcher and not yet done with (one per handler). */
uint64_t ew__dispatch_pending(const ew_dispatcher *d);

size_t ew__dispatch_count(const ew_dispatcher *d);

/* Stats of subscription i in subscription order; EW_ENOTFOUND past the end. */
int ew__dispatch_stats(ew_dispatcher *d, size_t i, ew_handler_stats *out);

/* The same, for the events of one type; EW_EINVAL for a type outside the catalog. */
int ew__dispatch_type_stats(ew_dispatcher *d, size_t i, ew_type_id type,
                            ew_handler_type_stats *out);

/* Logs through the host's callback, about ev when not NULL. */
void ew__dispatch_log(const ew_dispatcher *d, ew_log_level level, const ew_event *ev,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif
