/* eventwire — the interface between the bus and its backends.
 *
 * A backend moves events between publishers and the shared dispatcher (dispatch.c), which runs
 * the handlers: routing, worker threads, retries, the inbox and dead letters are written once,
 * there, for every backend. Each backend is src/bus/<name>.c (with <name>_*.c and <name>.h where
 * it is split by concern), which fills a struct ew_bus_ops, and one line in EW_BUS_BACKENDS
 * below; nothing else in the bus names a backend.
 *
 * How a backend works with the dispatcher:
 *
 *   publish   ew_bus_publish() calls ops->publish. A durable backend returns once the broker or
 *             the store has the events. The memory backend hands each event straight to the
 *             dispatcher with ew__dispatch_deliver() and an ew_delivery without done().
 *
 *   consume   A durable backend runs its own consumer threads, one or more per subscriber group
 *             (a Kafka consumer group, a Redis consumer group, a RabbitMQ queue). For every
 *             message it receives it fills an ew_delivery that it owns, naming the group, and
 *             calls ew__dispatch_deliver(). The dispatcher gives the event to every handler of
 *             that group whose pattern matches its type and calls dl->done() exactly once, when
 *             all of them are finished with it: handled, skipped by the inbox, or dead-lettered
 *             (EW_DELIVERY_ACK: acknowledge it now — XACK, commit the offset, basic.ack), or when
 *             the bus closed before they were (EW_DELIVERY_ABANDONED: do not acknowledge it; the
 *             broker delivers it again). done() is never called before the handlers finished.
 *
 *   receive   Every message a durable backend receives goes through ew__receive() (receive.h)
 *             before the dispatcher: bytes, content type and headers as received, and the
 *             transport's metadata (where it came from) in. EW__RECV_EVENT: deliver the event.
 *             EW__RECV_DEAD: it is in the dead letter sink — settle it now as done(ACK) would,
 *             in its place in the order. EW__RECV_STOPPED: the sink refused it until the bus
 *             stopped — leave it unsettled, for redelivery. A backend never dead-letters, drops
 *             or retries a message it cannot decode on its own. Publishing encodes with
 *             ew__binding_encode() (binding.h) and sends what it returns.
 *
 * A backend is a transport adapter: what it owns is the broker's protocol — connect (and
 * reconnect with back-off, wire.h), send a batch and return once the broker has it durably
 * (publish), fetch messages with their ack tokens (its consumer threads), acknowledge or commit
 * in order and never past the oldest delivery not yet done, bind a group to its patterns
 * (subscribed), close. Everything about events is above it: decoding and the dead letter policy
 * (receive.c), the encoding (binding.c), handlers, retries and the inbox (dispatch.c).
 *
 * The consumer core (consumer.h) owns what consuming is on every broker: the consumer thread of
 * each group and its lifecycle, reconnection with capped, jittered back-off, the bounded in-flight
 * window and settlement in delivery order. A backend on it states only its transport operations
 * in an ew__consumer_ops:
 *
 *   connect        connect (again), declare or join what the group consumes, start fetching
 *   fetch          take up to N raw messages, each with its ack token (ew__ack_token), and hand
 *                  them to ew__consumer_receive() in the broker's order
 *   settle         acknowledge up to a token (a run in delivery order) or one token alone
 *   release        give a message back unhandled (requeue); stop_fetching: cancel at stop
 *   disconnect     drop the connection after an error, or close it at the end
 *   keepalive      keep the session (a lease) while the thread waits away from fetch
 *
 * RabbitMQ, Kafka and the SQLite bus are on the core. Redis (redis_consumer.c, redis_streams.c)
 * still runs its own consumer threads, window and in-order acknowledgements behind these ops,
 * under the same rules.
 *
 * Threads. ops->publish may be called from any thread, handlers' worker threads included (the
 * follow-up events of a handler are published from its worker), also after ops->stop. done() runs
 * on a dispatcher worker thread, or on the thread calling ew__dispatch_deliver() when no handler
 * wants the event; deliveries finish out of order across subjects, so a backend that commits
 * offsets commits only up to the oldest delivery not yet done. The dispatcher queues what it is
 * given without limit: a durable backend bounds its own in-flight deliveries (prefetch,
 * max.poll.records) by counting the done() calls it has not yet received.
 *
 * Lifecycle, driven by bus.c: open → subscribed (any number, before or after start) → start →
 * publish / deliveries → stop (no more deliveries after it returns) → the dispatcher drains and
 * joins its workers (every done() has been called) → close. */
#ifndef EW_BUS_BACKEND_H
#define EW_BUS_BACKEND_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include "eventwire/bus.h"
#include "store/batch.h"

typedef struct ew_dispatcher ew_dispatcher;

/* ---- what a backend implements ---------------------------------------------------------- */

/* A subscription as a backend sees it: which group consumes what, and where a new group starts. */
typedef struct ew_backend_sub {
    const char *group;   /* the subscriber group */
    const char *pattern; /* a valid ew_pattern_match pattern */
    /* The subscriber's ew_subscribe_opts.from_beginning: a group the backend does not know yet
     * starts with the oldest event it still holds (true) or with the events published from now
     * on (false). A group the backend knows resumes where it left off either way. */
    bool from_beginning;
    /* The group is the subscriber's alone and removed from the backend at close
     * (ew_subscribe_opts.ephemeral). The same for every subscription of the group. */
    bool ephemeral;
} ew_backend_sub;

/* Every backend is compiled into the library with it: the table has no version, and an
 * optional member a backend leaves NULL says it has no such thing. */
typedef struct ew_bus_ops {
    const char *name; /* the EVENT_BUS_TYPE value: "memory", "kafka", ... */

    /* Creates the backend's state for bus, reading its settings from cfg (borrowed until close;
     * the bus owns it). Connects where there is something to connect to: EW_ECONNECT when a
     * broker cannot be reached, EW_ECONFIG for a setting it cannot use. On failure nothing is
     * left to close. */
    int (*open)(void **self, ew_bus *bus, const ew_config *cfg, ew_error *err);

    /* Publishes evs[0..n) in order (borrowed: take references to keep them). Sets *npublished to
     * how many made it, also on failure, when err names the index that failed. Thread-safe.
     * batch: the publishing worker's (store/batch.h) for a handler's follow-ups, NULL otherwise;
     * a backend that writes to an event store consults it (the SQLite bus). */
    int (*publish)(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                   const ew__batch *batch, ew_error *err);

    /* Subscriber group sub->group gained a subscription to sub->pattern: create or widen what
     * the group consumes (topics, bindings, streams). Called before or after start, never
     * concurrently with itself; sub is borrowed for the call. When it fails the subscription is
     * not made. NULL when the backend needs nothing. (Version 2: the ew_backend_sub argument.) */
    int (*subscribed)(void *self, const ew_backend_sub *sub, ew_error *err);

    /* Starts consuming: from here on deliveries may arrive. The dispatcher's workers already run.
     * NULL when there is nothing to start. */
    int (*start)(void *self, ew_error *err);

    /* Stops consuming and joins the consumer threads: after it returns the backend makes no more
     * ew__dispatch_deliver() calls. ops->publish and done() keep working. NULL: nothing to do. */
    void (*stop)(void *self);

    /* Frees everything. Called after every delivery's done() has been called. */
    void (*close)(void *self);

    /* (Version 3.) The consumer lag of subscriber group `group` as the backend itself records it:
     * the events published to the group that it has not acknowledged yet (ew_bus_lag() says what
     * each backend counts). Calls fn(ud, group, lag) once; with group NULL, once for every group
     * the backend knows, or EW_ENOTSUP when it cannot list them. EW_ENOTFOUND when the backend has
     * no record of group. Asks the broker or the store (a round trip or a few); may be called from
     * any thread at any time between open and close. When fn returns nonzero the call stops and
     * returns 0. NULL: EW_ENOTSUP. */
    int (*lag)(void *self, const char *group, ew_lag_fn fn, void *ud, ew_error *err);
} ew_bus_ops;

/* The backends of this build: X(name) for a `const ew_bus_ops ew__bus_<name>_ops` defined in
 * src/bus/<name>.c. A backend whose client library may be missing is built only when CMake
 * found it (EW_HAVE_<NAME>); its file is empty otherwise, and asking for it says so. */
#ifdef EW_HAVE_REDIS
#define EW__BUS_REDIS(X) X(redis)
#else
#define EW__BUS_REDIS(X)
#endif
#ifdef EW_HAVE_KAFKA
#define EW__BUS_KAFKA(X) X(kafka)
#else
#define EW__BUS_KAFKA(X)
#endif
#ifdef EW_HAVE_RABBITMQ
#define EW__BUS_RABBITMQ(X) X(rabbitmq)
#else
#define EW__BUS_RABBITMQ(X)
#endif
#ifdef EW_HAVE_SQLITE_BUS
#define EW__BUS_SQLITE(X) X(sqlite)
#else
#define EW__BUS_SQLITE(X)
#endif
#define EW_BUS_BACKENDS(X)                                                                         \
    X(memory) EW__BUS_SQLITE(X) EW__BUS_REDIS(X) EW__BUS_KAFKA(X) EW__BUS_RABBITMQ(X)

#define EW__BUS_DECLARE_OPS(name) extern const ew_bus_ops ew__bus_##name##_ops;
EW_BUS_BACKENDS(EW__BUS_DECLARE_OPS)
#undef EW__BUS_DECLARE_OPS

/* ---- what the dispatcher offers a backend ------------------------------------------------ */

typedef enum ew_delivery_outcome {
    EW_DELIVERY_ACK = 0,      /* every handler is done with it: acknowledge it */
    EW_DELIVERY_ABANDONED = 1 /* the bus closed first: leave it unacknowledged, for redelivery */
} ew_delivery_outcome;

typedef struct ew_delivery ew_delivery;

/* One event handed to the dispatcher. The backend owns the struct (typically embedded in its own
 * message record) and fills the first five members; the rest is the dispatcher's. */
struct ew_delivery {
    const ew_event *event; /* borrowed for the call: the dispatcher takes its own references */
    const char *group;     /* only this group's handlers; NULL: every group (the memory bus) */
    const char *name;      /* only the handler of that name in group (the group is required);
                              NULL: every handler whose pattern matches */
    /* Called once when every handler that got the event is finished with it. NULL: nothing to
     * acknowledge, and the dispatcher does not keep dl after ew__dispatch_deliver() returns.
     * Otherwise dl must stay valid until done() is called; done() may free it. */
    void (*done)(ew_delivery *dl, ew_delivery_outcome outcome);
    void *token; /* the backend's own: stream entry id, offset, delivery tag, ... */

    /* dispatcher-private: handlers not yet finished (+1 while delivering); any abandoned? any
     * dead-lettered? */
    atomic_uint ew__refs;
    atomic_int ew__abandoned;
    atomic_int ew__failed;
};

/* Hands dl->event to the handlers dl selects, each on the worker its subject chooses (so one
 * subject's events keep their order), and returns once it is queued. When no handler wants it,
 * done(ACK) is called before this returns. With dl->name set, EW_ENOTFOUND when no such
 * subscription exists and EW_EINVAL when its pattern does not match the event's type.
 * On failure (EW_ENOMEM when nothing could be queued, EW_EINVAL for an event without a catalog
 * type) done() is never called. When only some of several handlers could be given the event, the
 * others are logged as lost, the call succeeds and done() reports EW_DELIVERY_ABANDONED.
 * Thread-safe; called from backends' consumer threads (and the memory backend's publishers). */
int ew__dispatch_deliver(ew_dispatcher *d, ew_delivery *dl, ew_error *err);

/* The batch (store/batch.h) of d's worker that runs on the calling thread; NULL when it is none
 * of d's workers. Only that thread may use it, until its handler returns. Takes d's mutex: for
 * the calls a handler makes without its worker at hand (ew_bus_publish), not for a hot path. */
ew__batch *ew__dispatch_batch_here(ew_dispatcher *d);

/* The bus's dispatcher, for deliveries. Valid from open until close. */
ew_dispatcher *ew__bus_dispatcher(ew_bus *bus);

/* Logs one sentence through the bus's log callback (the library never prints). Any thread. */
void ew__bus_log(ew_bus *bus, ew_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Passes a record made elsewhere (a store the backend opened) to the bus's log callback. */
void ew__bus_log_record(ew_bus *bus, const ew_log_record *rec);

/* The bus's keyring (src/security/keyring.h): NULL when EVENT_ENCRYPTION=off. */
struct ew__keyring *ew__bus_keyring(const ew_bus *bus);

/* Received events keep their encrypted fields as ciphertext (`ewctl tail` without the key file)
 * instead of being decrypted. Call before ew_bus_start(). */
void ew__bus_keep_encrypted(ew_bus *bus);
bool ew__bus_keeps_encrypted(const ew_bus *bus);

/* The bus's ew_bus_options.auth when its backend carries events between processes; NULL for
 * the memory bus and a bus without one. Borrowed until close. */
ew_evauth *ew__bus_auth(const ew_bus *bus);

/* SERVICE_NAME, the bus's default group. Borrowed until close. */
const char *ew__bus_service(const ew_bus *bus);

/* Puts dl into the bus's dead letter sink (the options' sink, or the bus's memory one): how a
 * backend keeps a message it could not decode before acknowledging it. dl is borrowed for the
 * call. 0, or the sink's error (then the message must not be acknowledged). Any thread. */
int ew__bus_dead_letter(ew_bus *bus, const ew_dead_letter *dl, ew_error *err);

#endif
