/* eventwire — the consumer core: what consuming is on every broker, written once.
 *
 * A broker backend hands the core a transport (ew__consumer_ops: connect, fetch, settle, stop
 * fetching, disconnect) and the core runs the rest for one subscriber group:
 *
 *   the thread     one consumer thread per group (ew__consumer_start), which owns the
 *                  transport's connection: only it calls the ops. Its lifecycle is the bus's:
 *                  start → stop (no delivery after it returns; the connection stays up to settle
 *                  what the handlers finish while the dispatcher drains) → close (the last
 *                  settlements are sent, the thread leaves, the connection is closed).
 *
 *   reconnecting   a fetch or settle that fails drops the connection (ops->disconnect); the
 *                  thread connects again after a back-off that doubles from backoff_min_ms up to
 *                  backoff_max_ms, each wait spread by jitter (wire.h), logging the first failure
 *                  and the recovery. What the lost connection held unsettled the broker delivers
 *                  again: the core forgets its tokens (they belonged to that connection), unless
 *                  they outlive it (keep_on_reconnect: a Redis stream entry id), when it keeps
 *                  them and settles them on the next connection.
 *
 *   the window     at most max_inflight deliveries are held: handed to the dispatcher (or
 *                  dead-lettered) and not yet settled. Fetching asks for no more than the room
 *                  left, and a full window makes the thread wait for done() calls: a slow handler
 *                  blocks fetching, and memory never grows with the backlog. Meanwhile (and
 *                  while a refusing dead letter sink is tried again) ops->keepalive keeps the
 *                  transport's session: the SQLite bus's lease.
 *
 *   the receive    every message fetched goes through ew__consumer_receive(): the shared receive
 *                  path (receive.h: decode, verify, decrypt, count, or the dead letter under the
 *                  one policy), then the dispatcher, then the window.
 *
 *   settlement     in delivery order, per lane (the transport's unit of order: a Kafka partition;
 *                  one lane elsewhere). The run of finished deliveries at the oldest end of a
 *                  lane is settled with one call naming its newest token (upto: basic.ack
 *                  multiple=true, an offset commit, the group's position), never past the oldest
 *                  delivery still being handled. A delivery abandoned (the bus closed before its
 *                  handlers finished, or the dispatcher could not take it) stays unsettled and
 *                  nothing past it is settled as a run; a transport that can settle single tokens
 *                  out of order (settle_one: basic.ack of one tag, XACK of one id) settles the
 *                  finished deliveries behind it, and behind a delivery still being handled, one
 *                  by one at once, so that a slow handler does not hold the broker's window. A
 *                  transport with no "up to" at all (settle_each: XACK names each entry id) gets
 *                  every finished delivery of every lane in one call per settlement.
 *
 * Threads. ew__consumer_receive() and ew__consumer_wake_fd() are for the transport's ops, on the
 * consumer thread. The dispatcher's done() calls arrive on its workers; the core queues them and
 * wakes the consumer thread, which settles (not at every one: see on_done in consumer.c; at the
 * latest the thread settles at its next turn, within idle_ms). start, stop and close are the
 * backend's ops->start,
 * ->stop and ->close (serialised by the bus). */
#ifndef EW_BUS_CONSUMER_H
#define EW_BUS_CONSUMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bus/backend.h"
#include "bus/receive.h"

typedef struct ew__consumer ew__consumer;

/* What names a delivery on its broker: lane is the transport's unit of order (a partition index
 * it chooses, 0 where there is one order); a and b are its own (a delivery tag, an offset, a
 * position; a stream entry id's two numbers). */
typedef struct ew__ack_token {
    uint32_t lane;
    uint64_t a, b;
} ew__ack_token;

/* The transport. Every op runs on the consumer thread; t is the transport's own state. */
typedef struct ew__consumer_ops {
    /* Connects, or connects again after a failure: declares what the group consumes and starts
     * fetching. 0, or an error (logged; the core backs off and calls it again until stop). */
    int (*connect)(void *t, ew_error *err);

    /* Takes what the broker sent: at most max messages, each handed to ew__consumer_receive() in
     * the broker's order. When nothing is ready it waits up to wait_ms for the broker or for the
     * core's wake-up (ew__consumer_wake_fd() readable) and returns. 0, or an error when the
     * connection is unusable. While the consumer is stopping, max is still > 0: what arrives
     * then is released by ew__consumer_receive(). */
    int (*fetch)(void *t, size_t max, int wait_ms, ew_error *err);

    /* Settles on the broker. upto: tok is the newest of count finished deliveries in its lane
     * that directly follow the last one settled there (settle everything up to and including
     * tok); otherwise tok alone (count 1). 0, or an error when the connection is unusable. */
    int (*settle)(void *t, const ew__ack_token *tok, size_t count, bool upto, ew_error *err);

    /* The consumer is stopping: ask the broker for no more deliveries (basic.cancel). The
     * connection stays open for settlements. NULL: nothing to do. */
    int (*stop_fetching)(void *t, ew_error *err);

    /* Lets the connection go: after an error (closing false: the core reconnects) or at close
     * (closing true: a clean goodbye). Nothing it held unsettled is settled any more. */
    void (*disconnect)(void *t, bool closing);

    /* Gives back a message that ew__consumer_receive() released (the consumer is stopping, the
     * dead letter sink refused it until then, the dispatcher had no memory): basic.reject with
     * requeue. NULL: leaving it unsettled is enough (the broker delivers it again). */
    int (*release)(void *t, const ew__ack_token *tok, ew_error *err);

    /* Keeps the transport's session alive while the thread is away from ops->fetch: while the
     * window is full (at least every idle_ms), and while the receive path waits for a dead
     * letter sink that refuses (every 50 ms). The SQLite bus renews its lease here. 0, or an
     * error that ends the session as a failed fetch does (the message being dead-lettered is
     * then released). NULL: nothing to keep. */
    int (*keepalive)(void *t, ew_error *err);

    /* Cuts a wait in ops->fetch short when the transport waits on something other than
     * ew__consumer_wake_fd() (rd_kafka_queue_yield). Any thread. NULL: the fd is enough. */
    void (*wake)(void *t);

    /* Settles each of toks[0..n) on its own, for a broker without "up to" (XACK names every
     * entry id). When set, the core calls it instead of settle, once per settlement, with every
     * finished delivery of every lane (oldest first per lane), each as soon as it finished, as
     * settle_one would. 0, or an error when the connection is unusable: the tokens are the
     * transport's from the call on (keep_on_reconnect: it settles them on the next connection).
     * NULL: settle. */
    int (*settle_each)(void *t, const ew__ack_token *toks, size_t n, ew_error *err);

    bool settle_one;        /* single tokens may be settled out of order (see the top) */
    bool keep_on_reconnect; /* a token outlives its connection (a stream entry id: XACK from any
                               connection of the group): after a lost connection the core keeps
                               what it holds and settles it on the next one */
    int backoff_min_ms;     /* reconnection back-off: doubles from this ... */
    int backoff_max_ms;     /* ... up to this */
    int idle_ms;            /* the longest wait in fetch while idle (the wake-up ends it earlier) */
    /* 0: done() wakes the thread to settle soon (see on_done in consumer.c). Otherwise settling
     * sooner than this is of no use to the transport (Kafka commits at most this often): done()
     * wakes the thread only for room in the window (every eighth of it), and while the thread
     * holds deliveries its waits (in fetch, or for room) last at most this long. */
    int settle_delay_ms;
} ew__consumer_ops;

/* What the core needs to know of its group. Copied; strings borrowed until ew__consumer_free. */
typedef struct ew__consumer_conf {
    ew_bus *bus;
    const char *group;   /* the subscriber group: deliveries carry it */
    const char *what;    /* how log lines name this consumer: "rabbitmq: consumer of queue Q" */
    const char *thread;  /* the thread's name (top -H, debuggers): 15 bytes are kept */
    size_t max_inflight; /* EVENT_BUS_MAX_IN_FLIGHT, >= 1 */
    size_t max_bytes;    /* EVENT_MAX_BYTES, for ew__receive */
    const ew__consumer_ops *ops; /* borrowed, static */
    void *t;                     /* the transport, borrowed until ew__consumer_free */
} ew__consumer_conf;

/* Creates a consumer, not yet started. EW_ENOMEM. */
int ew__consumer_new(ew__consumer **out, const ew__consumer_conf *conf, ew_error *err);

/* Starts the consumer thread. Idempotent. */
int ew__consumer_start(ew__consumer *c, ew_error *err);

/* Stops delivering: when it returns, no ew__dispatch_deliver() is made any more. The thread
 * keeps the connection to settle what finishes. Idempotent. */
void ew__consumer_stop(ew__consumer *c);

/* After the dispatcher drained (every done() called): the thread settles what is left, lets the
 * connection go and is joined. */
void ew__consumer_close(ew__consumer *c);

/* Frees a closed (or never started) consumer. NULL is ignored. */
void ew__consumer_free(ew__consumer *c);

/* For ops->fetch: a message fetched from the broker, with the token that settles it. m is
 * borrowed for the call (m->group may be NULL: the consumer's group is used). Runs the receive
 * path and hands the event to the dispatcher, or dead-letters it; either way the core now holds
 * it and settles it in its place in the order: true. False when it is released instead (the
 * consumer is stopping, or the dispatcher had no memory): ops->release has been called for it
 * when there is one. */
bool ew__consumer_receive(ew__consumer *c, const ew__recv_msg *m, ew__ack_token tok);

/* For the transport, on the consumer thread, when lanes go away (Kafka partitions revoked in a
 * rebalance): waits until no delivery of lanes[0..n) is still being handled, or until
 * deadline_ns (ew_mono_ns), and settles what finished. Returns how many were still being handled
 * at the deadline. ew__consumer_forget_lanes() then lets the lanes go. */
size_t ew__consumer_drain_lanes(ew__consumer *c, const uint32_t *lanes, size_t n,
                                int64_t deadline_ns, ew_error *err);

/* Forgets every token of lanes[0..n): nothing of them is settled any more (what is still being
 * handled finishes without it). The lane ids may then be used again. Consumer thread. */
void ew__consumer_forget_lanes(ew__consumer *c, const uint32_t *lanes, size_t n);

/* The tokens of the deliveries the core holds (handed over, not yet settled, not abandoned) that
 * it took before before_ns (ew_mono_ns; INT64_MAX: all), into out[0..max), oldest first per lane.
 * Returns how many there are; those past max are left out. Any thread. (Redis refreshes the
 * entries held long, and skips those held when it reads its own pending entries again.) */
size_t ew__consumer_held(ew__consumer *c, int64_t before_ns, ew__ack_token *out, size_t max);

/* For ops->fetch: readable when the consumer thread has work (done() calls to settle, stop). */
int ew__consumer_wake_fd(const ew__consumer *c);

/* Is the consumer stopping? Any thread. */
bool ew__consumer_stopping(ew__consumer *c);

#endif
