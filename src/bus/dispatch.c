/* eventwire — the dispatcher: subscriptions, routing, worker threads, retries, the inbox, dead
 * letters, follow-up events and handler metrics, written once for every backend.
 *
 * The hot path, for one event and one handler: an atomic load of the routing table, an array
 * lookup by type id, one reference, one lock of the chosen worker's queue to append, and a
 * condvar signal only when that worker sleeps. A worker swaps its whole queue out under one lock
 * and runs the batch without it; its counters are written by it alone (relaxed loads and stores),
 * and it settles the shared count of outstanding events only when it goes idle (or every
 * FLUSH_EVERY items). An idle worker polls its queue for a few microseconds before it sleeps, so
 * a steady stream costs no system calls on either side.
 *
 * Routing tables are immutable: subscribing builds a new one (which subscriptions match each
 * type id, and a snapshot of their workers) and publishes it with one atomic store; old tables
 * stay allocated until the dispatcher is freed, so a publisher never takes a lock to route. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#include "core/log.h"
#include "eventwire/trace.h"
#include "bus/dispatch.h"
#include "bus/redeliver.h"
#include "bus/wire.h"
#include "core/rand.h"
#include "store/batch.h"
#include "catalog/event_internal.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"

#define HIST_BUCKETS EW_HANDLER_HIST_BUCKETS /* bucket b: handler times of bit length b, in ns */
#define LOST_LOG_LIMIT 100 /* lost events named one by one at close; the rest are counted */
#define QUEUE_MIN 256      /* first allocation of a worker queue, in items */
#define BATCH_KEEP 65536   /* a drained batch buffer larger than this is given back */
#define MAX_SHIFT 40       /* back-off doublings beyond this saturate at the maximum */
#define SPIN_PAUSES 256    /* an idle worker's busy polls of its queue before it yields */
#define SPIN_NS 10000      /* how long an idle worker keeps polling before it sleeps */
/* A busy worker takes its finished items off the shared count of outstanding deliveries once
 * per this many, or when it goes idle or backs off: publishers increment that counter for every
 * event, and a worker decrementing it per batch would pull its cache line back and forth. */
#define FLUSH_EVERY 1024
/* A worker with several deliveries queued holds the inbox's store (or the subscription's
 * batch_store) while it runs them, so that their transactions commit together; it acknowledges
 * them after the commit (store/batch.h). At most this many, for at most this long, per commit. */
#define HOLD_MAX 64
#define MAX_PATTERNS 128 /* patterns of one subscription (ew_subscribe_opts.add_pattern) */
#define HOLD_MAX_NS 5000000

typedef struct item {
    const ew_event *ev; /* one reference, the dispatcher's */
    ew_delivery *dl;    /* NULL: nothing to acknowledge */
} item;

typedef struct sub sub;

/* A reading of a worker's handler clock (handler_clock): the time-stamp counter's ticks (0
 * where it is not used) and the monotonic time, in ns, at that reading. */
typedef struct stamp {
    int64_t ns;
    uint64_t tick;
} stamp;

/* Written by one worker only, read by stats: relaxed load + store, no read-modify-write. */
typedef atomic_uint_fast64_t counter;

static inline void bump(counter *c, uint64_t n)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline uint64_t get(const counter *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

typedef struct worker {
    /* Shared with publishers and ew__dispatch_stop(), under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC: also times the back-off */
    item *q;           /* FIFO: publishers append, the worker swaps it out whole */
    atomic_size_t qn;  /* written under mu; read without it only by the spinning worker */
    size_t qcap;
    bool sleeping;    /* waiting on cv for work, so a publisher must signal */
    atomic_bool stop; /* set under mu; read without it between items */

    /* The worker's own (and, after join, ew__dispatch_stop()'s). */
    _Alignas(64) item *batch; /* the swapped-out queue: [bi, bn) are still to run */
    size_t bi, bn, bcap;
    atomic_size_t batch_left; /* items of the batch waiting behind the running one */
    sub *s;
    ew_handler_fn fn;
    void *ud;
    ew_dispatcher *d;
    pthread_t thread;
    bool running;        /* the thread was created and not yet joined */
    bool has_thread;     /* thread was created (set once, under d->mu) */
    uint64_t unflushed;  /* finished items not yet taken off d->outstanding */
    const ew_event **fu; /* follow-ups of the running handler (references) */
    size_t fun, fucap;
    /* A hold (HOLD_MAX): the batch items handled since it began, acknowledged at its end. What
     * it holds, and the running delivery's inbox transaction, are in store_batch (store/batch.h),
     * which goes with every publish of the worker. */
    bool holding, held_inbox, held_store;
    ew__batch store_batch;
    int64_t hold_t0;
    int64_t wall_off_us, wall_at_ns; /* spans: wall-clock minus monotonic time, and when read */
    char *span_name[EW_T__COUNT];    /* "TYPE GROUP/HANDLER" by type id: made at its first span */
    /* The running handler's span (make_span), handed to the span callback: kind, group and
     * handler are set once, in worker_new. */
    ew_span span;
    unsigned span_type; /* the type id whose name span holds (span_set_type); EW_T__COUNT: none */
    uint64_t rng;       /* span ids (span_rand) */
    /* handler_clock: a time-stamp counter reading and the monotonic time at it; nanoseconds per
     * tick in 32.32 fixed point, measured since the one before (0: not yet measured), and how
     * many ticks from tsc_ref on the conversion is used before the rate is measured again. */
    uint64_t tsc_ref, tsc_mult, tsc_recal_ticks;
    int64_t tsc_mono_ref;
    /* The end of the last timed handler call (call_end), and whether the worker went straight
     * on from it (no wait, no hold begun or ended since): the next call then starts there, one
     * clock reading per call instead of two (see call_start). */
    stamp last;
    bool chained;
    bool metrics; /* !d->host.no_metrics: handler times and counts by type are kept */
    size_t pend[HOLD_MAX];
    size_t pendn;

    counter received, handled, retried, dead_lettered, duplicates, time_total_ns, time_max_ns;
    counter hist[HIST_BUCKETS];
    counter by_type[EW_T__COUNT][3]; /* handled, retried, dead-lettered, by the event's type */
} worker;

struct sub {
    char *group, *name, *pattern, *inbox_key; /* inbox_key: "group/name"; pattern: the first */
    /* Every pattern: appended under d->mu (the pointer, then the count), read without it. */
    char *patterns[MAX_PATTERNS];
    atomic_size_t npatterns;
    int max_attempts, backoff_initial_ms, backoff_max_ms;
    bool no_jitter, no_inbox;
    ew_store *batch_store;
    worker **workers; /* every worker, in order of creation; under d->mu */
    size_t nworkers, wcap;
    atomic_uint rr; /* round robin for events without a subject */
};

/* A subscription as a table sees it: its workers at the time the table was built. */
typedef struct route {
    sub *s;
    worker *const *w;
    size_t nw;
} route;

typedef struct table {
    struct table *older; /* retired tables, freed with the dispatcher */
    size_t nsubs;
    route *subs;      /* every subscription, in subscription order */
    route *routes;    /* by type: routes[first[t] .. first[t+1]) match type t */
    worker **workers; /* storage of the snapshots */
    uint32_t first[EW_T__COUNT + 1];
} table;

struct ew_dispatcher {
    ew_dispatch_host host;
    _Atomic(table *) table;

    pthread_mutex_t mu; /* subs, tables, started, stopped */
    sub **subs;
    size_t nsubs, subcap;
    table *retired;
    bool started, stopped;
    int64_t spin_ns; /* 0 on a single CPU, where spinning only delays the publisher */
    bool tsc;        /* handler times from the time-stamp counter (see handler_clock) */

    /* Handler deliveries queued and not yet at their final disposition. */
    _Alignas(64) atomic_uint_fast64_t outstanding;
    atomic_uint waiters;
    pthread_mutex_t wmu;
    pthread_cond_t wcv; /* CLOCK_MONOTONIC */
};

struct ew_handler_ctx {
    worker *w;
    const ew_event *ev;
    unsigned type; /* ew_event_type_id(ev), asked once (when metrics or spans are on) */
    int attempt;
    void *txn;
    bool has_error;
    char error[512];
    /* The handler's span, a child of the event's (made when first asked for, or when spans are
     * reported): follow-up events carry it. It is the worker's span (w->span), as one worker
     * runs one handler call at a time. */
    bool has_span;
    char traceparent[EW_TRACEPARENT_LEN + 1]; /* "" until asked for */
};

/* ---- small helpers ---------------------------------------------------------------------- */

void ew__dispatch_log(const ew_dispatcher *d, ew_log_level level, const ew_event *ev,
                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ew__logv(&(ew__log_sink){d->host.log, d->host.log_ud}, level, "dispatch", ev, fmt, ap);
    va_end(ap);
}

static struct timespec mono_after_us(int64_t us)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + (us % 1000000) * 1000;
    ts.tv_sec += (time_t)(us / 1000000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    return ts;
}

/* FNV-1a, then a 64-bit finaliser so that the low bits (hash % workers) are well mixed. */
static uint64_t subject_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static char *join3(const char *a, char sep, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 2);
    if (!s) return NULL;
    memcpy(s, a, la);
    s[la] = sep;
    memcpy(s + la + 1, b, lb + 1);
    return s;
}

/* ---- the count of outstanding deliveries ------------------------------------------------ */

/* Waiters register before reading the count and finishers read the waiters after changing it
 * (both sequentially consistent), so one of the two always sees the other: no lost wake-up, and
 * no lock taken when nobody waits. */
static void outstanding_done(ew_dispatcher *d, uint64_t n)
{
    if (atomic_fetch_sub(&d->outstanding, n) == n && atomic_load(&d->waiters) > 0) {
        pthread_mutex_lock(&d->wmu);
        pthread_cond_broadcast(&d->wcv);
        pthread_mutex_unlock(&d->wmu);
    }
}

static void flush_done(worker *w)
{
    if (w->unflushed) {
        outstanding_done(w->d, w->unflushed);
        w->unflushed = 0;
    }
}

uint64_t ew__dispatch_pending(const ew_dispatcher *d)
{
    return atomic_load(&((ew_dispatcher *)d)->outstanding);
}

int ew__dispatch_wait(ew_dispatcher *d, int timeout_ms, ew_error *err)
{
    if (ew__dispatch_in_handler(d))
        return ew_error_set(err, EW_ESTATE,
                            "a handler cannot wait for the bus's events: it would wait for itself");
    struct timespec deadline = mono_after_us((int64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000);
    int rc = 0;
    pthread_mutex_lock(&d->wmu);
    atomic_fetch_add(&d->waiters, 1);
    while (atomic_load(&d->outstanding) != 0) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&d->wcv, &d->wmu);
        } else if (pthread_cond_timedwait(&d->wcv, &d->wmu, &deadline) == ETIMEDOUT) {
            if (atomic_load(&d->outstanding) != 0) rc = EW_ETIMEDOUT;
            break;
        }
    }
    atomic_fetch_sub(&d->waiters, 1);
    pthread_mutex_unlock(&d->wmu);
    if (rc)
        return ew_error_set(err, rc, "%llu events still pending after %d ms",
                            (unsigned long long)ew__dispatch_pending(d), timeout_ms);
    return 0;
}

ew__batch *ew__dispatch_batch_here(ew_dispatcher *d)
{
    pthread_t self = pthread_self();
    ew__batch *b = NULL;
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->nsubs && !b; i++)
        for (size_t j = 0; j < d->subs[i]->nworkers && !b; j++) {
            worker *w = d->subs[i]->workers[j];
            if (w->has_thread && pthread_equal(w->thread, self)) b = &w->store_batch;
        }
    pthread_mutex_unlock(&d->mu);
    return b;
}

bool ew__dispatch_in_handler(ew_dispatcher *d)
{
    return ew__dispatch_batch_here(d) != NULL;
}

/* ---- deliveries that a backend acknowledges --------------------------------------------- */

static void delivery_release(ew_delivery *dl, unsigned n, bool abandoned)
{
    /* The flag is stored before the release, so the last one out sees every flag. */
    if (abandoned) atomic_store(&dl->ew__abandoned, 1);
    if (atomic_fetch_sub_explicit(&dl->ew__refs, n, memory_order_acq_rel) == n)
        dl->done(dl, atomic_load(&dl->ew__abandoned) ? EW_DELIVERY_ABANDONED : EW_DELIVERY_ACK);
}

/* The final disposition of an item: drop our reference, acknowledge, count it done. */
static void item_finish(worker *w, const item *it, bool abandoned)
{
    ew_event_unref(it->ev);
    if (it->dl) delivery_release(it->dl, 1, abandoned);
    w->unflushed++;
}

/* ---- workers ----------------------------------------------------------------------------- */

static void drop_follow_ups(worker *w)
{
    for (size_t i = 0; i < w->fun; i++)
        ew_event_unref(w->fu[i]);
    w->fun = 0;
}

static bool run_item(worker *w, const item *it);

/* ---- holds: a batch's transactions committed together -------------------------------------- */

static bool inbox_holds(const ew_dispatcher *d, const sub *s)
{
    const ew_inbox_ops *ops = d->host.inbox.ops;
    return ops && !s->no_inbox && ops->version >= 2 && ops->hold && ops->release;
}

/* One store held per worker: two handles on one SQLite file, both held, would each wait for the
 * other's write lock. */
static void hold_begin(worker *w)
{
    ew_dispatcher *d = w->d;
    ew_error e = {0};
    ew_store *inbox_store = ew__inbox_store(d->host.inbox);
    if (inbox_holds(d, w->s)) w->held_inbox = d->host.inbox.ops->hold(d->host.inbox.self, &e) == 0;
    if (w->s->batch_store && !(w->held_inbox && inbox_store))
        w->held_store = ew__store_hold(w->s->batch_store, &e) == 0;
    w->store_batch.held = w->held_store ? w->s->batch_store : w->held_inbox ? inbox_store : NULL;
    w->holding = w->held_inbox || w->held_store;
    w->hold_t0 = w->holding ? ew_mono_ns() : 0;
    w->chained = false; /* the store's work is no call's time */
}

/* A delivery is done with: at once, or at the end of the hold. */
static void settle_done(worker *w, const item *it)
{
    if (w->holding)
        w->pend[w->pendn++] = (size_t)(it - w->batch);
    else
        item_finish(w, it, false);
}

/* Ends a hold: commits, then acknowledges what it covered. When the commit failed, nothing of
 * it is on the database: those deliveries run again, one by one. */
static void hold_end(worker *w)
{
    if (!w->holding) return;
    w->chained = false; /* the commit is no call's time */
    ew_dispatcher *d = w->d;
    ew_error e = {0}, e2 = {0};
    int rc = 0;
    if (w->held_inbox) rc = d->host.inbox.ops->release(d->host.inbox.self, &e);
    if (w->held_store) {
        int rc2 = ew__store_release(w->s->batch_store, &e2);
        if (!rc && rc2) {
            rc = rc2;
            e = e2;
        }
    }
    w->holding = w->held_inbox = w->held_store = false;
    w->store_batch.held = NULL;
    size_t n = w->pendn;
    w->pendn = 0;
    if (!rc) {
        for (size_t i = 0; i < n; i++)
            item_finish(w, &w->batch[w->pend[i]], false);
        return;
    }
    ew__dispatch_log(d, EW_LOG_WARN, NULL,
                     "%s: the commit of %zu handled events failed, they run again: %s",
                     w->s->inbox_key, n, e.code ? e.msg : ew_strerror(rc));
    /* Not holding now, so these runs settle at once and leave w->pend as it is. */
    for (size_t i = 0; i < n; i++)
        if (!run_item(w, &w->batch[w->pend[i]])) { /* stopping: left to their redelivery */
            for (; i < n; i++)
                item_finish(w, &w->batch[w->pend[i]], true);
            return;
        }
}

/* Waits delay_us unless the dispatcher stops first: false then. */
static bool backoff_wait(worker *w, int64_t delay_us)
{
    hold_end(w); /* what it holds must not wait for the back-off */
    flush_done(w);
    w->chained = false;
    struct timespec ts = mono_after_us(delay_us);
    pthread_mutex_lock(&w->mu);
    while (!atomic_load_explicit(&w->stop, memory_order_relaxed))
        if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) == ETIMEDOUT) break;
    bool stopped = atomic_load_explicit(&w->stop, memory_order_relaxed);
    pthread_mutex_unlock(&w->mu);
    return !stopped;
}

/* min(max, initial * 2^(attempt-1)); with jitter, half of it fixed and half random. */
static int64_t backoff_us(const sub *s, int attempt)
{
    int shift = attempt - 1 < MAX_SHIFT ? attempt - 1 : MAX_SHIFT;
    int64_t d = (int64_t)s->backoff_initial_ms << shift, max = s->backoff_max_ms;
    if (d > max) d = max;
    d *= 1000;
    if (!s->no_jitter) d = d / 2 + (int64_t)(ew__rand_unit() * (double)(d - d / 2 + 1));
    return d;
}

/* Into the histogram: bucket b for a time of bit length b (0 for 0 ns), the highest set bit of
 * 2 ns + 1: a shift, an or and a bsr, no branch, and never past the 64 buckets (a time of 2^63
 * ns or more, which no call takes, would lose its top bit). */
static inline void record_time(worker *w, uint64_t ns)
{
    _Static_assert(HIST_BUCKETS == 64, "bit lengths 0 to 63");
    bump(&w->time_total_ns, ns);
    if (ns > get(&w->time_max_ns)) atomic_store_explicit(&w->time_max_ns, ns, memory_order_relaxed);
    bump(&w->hist[63 - __builtin_clzll(ns << 1 | 1)], 1);
}

/* Hands the dead letter to the sink, again and again with back-off while the sink refuses it:
 * a dead letter is never dropped. The hold ends first: the sink may write to the held store's
 * file through a handle of its own. False when the dispatcher stopped first. */
static bool dead_letter(worker *w, const ew_handler_ctx *ctx, int attempts, int64_t first_us,
                        int64_t last_us)
{
    hold_end(w);
    ew_dispatcher *d = w->d;
    const sub *s = w->s;
    const ew_event *ev = ctx->ev;
    ew_dead_letter dl = {
        .event = ev,
        .event_id = ew_event_id(ev),
        .event_type = ew_event_type(ev),
        .group = s->group,
        .handler = s->name,
        .error = ctx->error,
        .attempts = attempts,
        .first_failed_us = first_us,
        .last_failed_us = last_us,
    };
    for (int tries = 1;; tries++) {
        ew_error e = {0};
        int rc = d->host.dlq.ops->put(d->host.dlq.self, &dl, &e);
        if (rc == 0) {
            ew__dispatch_log(d, EW_LOG_WARN, ev,
                             "event %s (%s) dead-lettered by %s after %d attempts: %s", dl.event_id,
                             dl.event_type, s->inbox_key, attempts, ctx->error);
            return true;
        }
        int64_t delay = backoff_us(s, tries);
        ew__dispatch_log(
            d, EW_LOG_ERROR, ev,
            "dead letter sink refused event %s of %s (%s: %s); trying again in %lld ms",
            dl.event_id, s->inbox_key, ew_err_name(rc), e.code ? e.msg : ew_strerror(rc),
            (long long)(delay / 1000));
        if (!backoff_wait(w, delay)) return false;
    }
}

/* a * b as 128 bits: one instruction where the compiler has 128-bit integers. */
static inline void mul_64x64(uint64_t a, uint64_t b, uint64_t *hi, uint64_t *lo)
{
#if defined(__SIZEOF_INT128__)
    __extension__ unsigned __int128 p = (unsigned __int128)a * b;
    *hi = (uint64_t)(p >> 64);
    *lo = (uint64_t)p;
#else
    uint64_t al = a & 0xffffffffu, ah = a >> 32, bl = b & 0xffffffffu, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
    *lo = (mid << 32) | (ll & 0xffffffffu);
    *hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
#endif
}

/* (a * b) >> 32, for a count of time-stamp counter ticks times a 32.32 fixed-point rate. */
static inline uint64_t mul_shr32(uint64_t a, uint64_t b)
{
    uint64_t hi, lo;
    mul_64x64(a, b, &hi, &lo);
    return hi << 32 | lo >> 32;
}

/* One step of wyrand on the state *st: 64 random bits. Each worker has its own generator, seeded
 * from ew__rand64 when the worker is made: a span takes one draw, or three for a new trace, and
 * ew__rand64's thread-local lookup and fork check cost as much again as the draw. Span ids need to
 * be unique, not secret. The state is passed by value and stored back once per span, so that the
 * draws of a span stay in registers. */
static inline uint64_t rand_bits(uint64_t *st)
{
    uint64_t x = *st += 0xa0761d6478bd642fULL, hi, lo;
    mul_64x64(x, x ^ 0xe7037ed1a0b428dbULL, &hi, &lo);
    return hi ^ lo;
}

/* The same, never 0: an id of zeros means "none" (a trace id takes one such half). */
static inline uint64_t span_rand(uint64_t *st)
{
    uint64_t r = rand_bits(st);
    return r ? r : 1;
}

/* The handler's span: a child of the event's traceparent, or the root of a new trace. */
static inline void make_span(ew_handler_ctx *ctx)
{
    if (ctx->has_span) return;
    worker *w = ctx->w;
    ew_span *sp = &w->span;
    uint64_t st = w->rng;
    ew_trace_ctx parent;
    const char *tp = ctx->ev->traceparent; /* event_internal.h: a load, not a call */
    if (__builtin_expect(tp != NULL, 0) && ew_trace_parse(tp, &parent)) {
        memcpy(sp->ctx.trace_id, parent.trace_id, sizeof sp->ctx.trace_id);
        sp->ctx.flags = parent.flags;
        memcpy(sp->parent_span_id, parent.span_id, sizeof sp->parent_span_id);
    } else {
        uint64_t id[2] = {rand_bits(&st), span_rand(&st)};
        memcpy(sp->ctx.trace_id, id, sizeof sp->ctx.trace_id);
        sp->ctx.flags = 1; /* sampled, as ew_trace_new */
        memset(sp->parent_span_id, 0, sizeof sp->parent_span_id);
    }
    uint64_t id = span_rand(&st);
    memcpy(sp->ctx.span_id, &id, sizeof sp->ctx.span_id);
    w->rng = st;
    ctx->traceparent[0] = '\0'; /* formatted when a handler asks for it */
    ctx->has_span = true;
}

/* "TYPE GROUP/HANDLER" into name (256 bytes), cut at 255 bytes. */
static void span_name(char name[256], const char *type, const char *key)
{
    size_t nt = strlen(type), nk = strlen(key);
    if (nt > 254) nt = 254;
    if (nk > 254 - nt) nk = 254 - nt;
    memcpy(name, type, nt);
    name[nt] = ' ';
    memcpy(name + nt + 1, key, nk);
    name[nt + 1 + nk] = '\0';
}

/* The span's name and event type for events of type t: "TYPE GROUP/HANDLER" made once per
 * worker and type, and kept in the worker's span while the type stays the same from one call to
 * the next (a type outside the catalog, or no memory for its name, makes it in tmp each time). */
static void span_set_type(worker *w, ew_handler_ctx *ctx, char tmp[256])
{
    ew_span *sp = &w->span;
    unsigned t = ctx->type;
    sp->event_type = ew_event_type(ctx->ev);
    if (t < EW_T__COUNT && w->span_name[t]) {
        sp->name = w->span_name[t];
    } else {
        span_name(tmp, sp->event_type, w->s->inbox_key);
        sp->name = t < EW_T__COUNT && (w->span_name[t] = strdup(tmp)) ? w->span_name[t] : tmp;
    }
    /* the type whose name and type the span holds (EW_T__COUNT: none, or made in tmp) */
    w->span_type = sp->name == tmp ? EW_T__COUNT : t;
}

/* Reports the handler's call as a consumer span, a child of the event's: the worker's span,
 * which make_span began. */
static inline void report_span(worker *w, ew_handler_ctx *ctx, int64_t start_us, int64_t end_us,
                               ew_handler_result r)
{
    const ew_dispatch_host *h = &w->d->host;
    ew_span *sp = &w->span;
    char tmp[256];
    sp->start_us = start_us;
    sp->end_us = end_us;
    sp->error = r != EW_HANDLER_OK;
    sp->event_id = ctx->ev->id;
    if (__builtin_expect(ctx->type != w->span_type || ctx->type >= EW_T__COUNT, 0))
        span_set_type(w, ctx, tmp);
    h->span(h->span_ud, sp);
}

/* The monotonic clock costs ~30 ns a read here (clock_gettime through the vDSO, more in a
 * virtual machine), and timing a handler takes two: where the kernel keeps time with the CPU's
 * time-stamp counter itself (clocksource tsc: constant rate, synchronised across CPUs), a handler
 * is timed with that counter instead (~12 ns a read), converted to nanoseconds with the rate
 * each worker measures against CLOCK_MONOTONIC, again every second or so. */
static bool tsc_usable(void)
{
#if defined(__x86_64__)
    char cs[32] = "";
    FILE *f = fopen("/sys/devices/system/clocksource/clocksource0/current_clocksource", "re");
    if (!f) return false;
    bool ok = fgets(cs, sizeof cs, f) && strcmp(cs, "tsc\n") == 0;
    fclose(f);
    return ok;
#else
    return false;
#endif
}

static inline uint64_t tsc_read(void)
{
#if defined(__x86_64__)
    return __builtin_ia32_rdtsc();
#else
    return 0;
#endif
}

#define TSC_RECAL_NS 1000000000LL  /* the rate is measured again after about this long */
#define TSC_FIRST_NS 10000000LL    /* and first over at least this long */
#define WALL_RECAL_NS 1000000000LL /* spans: the wall clock's offset read again after this */

/* handler_clock's slow path: the monotonic clock itself, with which the counter's rate is
 * measured (tsc) and the wall clock's offset kept for spans, each about once a second. */
static int64_t handler_clock_slow(worker *w, uint64_t t)
{
    int64_t now = ew_mono_ns();
    if (w->d->tsc) {
        if (!w->tsc_mono_ref || t < w->tsc_ref) { /* first reading, or the counter went back */
            w->tsc_mult = w->tsc_recal_ticks = 0;
            w->tsc_ref = t;
            w->tsc_mono_ref = now;
        } else if (now - w->tsc_mono_ref >= TSC_FIRST_NS) {
            double per = (double)(now - w->tsc_mono_ref) / (double)(t - w->tsc_ref);
            w->tsc_mult = (uint64_t)(per * 4294967296.0 + 0.5);
            w->tsc_recal_ticks = (uint64_t)((double)TSC_RECAL_NS / per);
            w->tsc_ref = t;
            w->tsc_mono_ref = now;
        }
    }
    if (!w->wall_at_ns || now - w->wall_at_ns >= WALL_RECAL_NS) {
        w->wall_off_us = ew_now_us() - now / 1000;
        w->wall_at_ns = now;
    }
    return now;
}

/* Now, for timing a handler call: the counter's reading, and the monotonic time from it when
 * the worker has measured the counter's rate (a multiplication), else (and every TSC_RECAL_NS,
 * to measure it again) from clock_gettime. */
static inline stamp handler_clock(worker *w)
{
    uint64_t t = w->d->tsc ? tsc_read() : 0;
    if (t - w->tsc_ref < w->tsc_recal_ticks) /* never while not measured: tsc_recal_ticks 0 */
        return (stamp){w->tsc_mono_ref + (int64_t)mul_shr32(t - w->tsc_ref, w->tsc_mult), t};
    return (stamp){handler_clock_slow(w, t), t};
}

/* Nanoseconds from a to b (a before b): the counter's ticks at the measured rate (constant, so
 * a new measurement in between does not matter), else the monotonic times'. Never negative,
 * and below 2^63. */
static inline uint64_t handler_elapsed(const worker *w, stamp a, stamp b)
{
    if (w->tsc_mult) {
        uint64_t ticks = b.tick - a.tick;
        return (int64_t)ticks > 0 ? mul_shr32(ticks, w->tsc_mult) : 0;
    }
    return b.ns > a.ns ? (uint64_t)(b.ns - a.ns) : 0;
}

/* Are handler calls timed (metrics on, or spans reported)? */
static inline bool timed(const ew_dispatcher *d)
{
    return !d->host.no_metrics || d->host.span;
}

/* Where a handler call's time starts: a clock reading, or, when the worker went straight on
 * from the end of its previous call, that call's end reading. A reading (rdtsc, ~11 ns here)
 * costs as much as the rest of what metrics add to a call, and a worker running a batch goes
 * from one call to the next with nothing in between but settling the previous one: timed this
 * way, the calls of a batch share their boundaries, one reading each instead of two, and the
 * times of a worker's calls still add up to the time it spent on them. The waits (for work, a
 * back-off) and a hold's begin and commit break the chain (w->chained false). */
static inline stamp call_start(worker *w)
{
    stamp t0 = w->chained ? w->last : handler_clock(w);
    w->chained = false; /* until this call ends well and the worker goes on (call_end) */
    return t0;
}

/* The end of a handler call that started at t0: its time into the histogram (metrics on), its
 * span to the callback (spans on), the reading kept for the next call (call_start). */
static inline void call_end(worker *w, ew_handler_ctx *ctx, stamp t0, ew_handler_result r)
{
    const ew_dispatch_host *h = &w->d->host;
    stamp t1 = handler_clock(w);
    uint64_t dt = handler_elapsed(w, t0, t1);
    if (w->metrics) record_time(w, dt);
    /* A span's start in wall-clock time, from the monotonic clock and the worker's offset between
     * the two (handler_clock_slow): no wall-clock reading per call. The monotonic time is
     * positive: divided unsigned, by a multiplication and a shift. */
    if (h->span) {
        int64_t start_us = (int64_t)((uint64_t)t0.ns / 1000) + w->wall_off_us;
        report_span(w, ctx, start_us, start_us + (int64_t)(dt / 1000), r);
    }
    w->last = t1;
}

/* After the handler said ok: publish its follow-ups, then record the event in the inbox (a
 * failure of either turns the delivery into a retry; publishing first means a follow-up is never
 * lost, at worst published again when the retry runs the handler again). */
static ew_handler_result settle_ok(worker *w, ew_handler_ctx *ctx, bool use_inbox)
{
    ew_dispatcher *d = w->d;
    if (w->fun) {
        size_t done = 0;
        ew_error e = {0};
        int rc = d->host.publish(d->host.bus, w->fu, w->fun, &done, &w->store_batch, &e);
        size_t n = w->fun;
        drop_follow_ups(w);
        if (rc) {
            if (use_inbox) d->host.inbox.ops->rollback(d->host.inbox.self, ctx->txn);
            w->store_batch.txn = NULL;
            ew_ctx_set_error(ctx, "publishing follow-up event %zu of %zu failed: %s", done + 1, n,
                             e.code ? e.msg : ew_strerror(rc));
            return EW_HANDLER_RETRY;
        }
    }
    if (use_inbox) {
        ew_error e = {0};
        int rc = d->host.inbox.ops->commit(d->host.inbox.self, w->s->inbox_key,
                                           ew_event_id(ctx->ev), ctx->txn, &e);
        w->store_batch.txn = NULL;
        if (rc < 0) {
            ew_ctx_set_error(ctx, "inbox commit failed: %s", e.code ? e.msg : ew_strerror(rc));
            return EW_HANDLER_RETRY;
        }
    }
    return EW_HANDLER_OK;
}

/* Counts one outcome (0 handled, 1 retried, 2 dead-lettered) of the event's type. */
static inline void count_type(worker *w, const ew_handler_ctx *ctx, int outcome)
{
    if (w->metrics && ctx->type < EW_T__COUNT) bump(&w->by_type[ctx->type][outcome], 1);
}

/* Runs one event through the handler to its final disposition: handled, skipped by the inbox or
 * dead-lettered. False when the dispatcher stopped first; the item is then left in place. */
static bool run_item(worker *w, const item *it)
{
    ew_dispatcher *d = w->d;
    sub *s = w->s;
    const bool use_inbox = d->host.inbox.ops && !s->no_inbox, timing = timed(d);
    int64_t first_fail = 0, last_fail = 0;
    ew_handler_ctx ctx;
    ctx.w = w;
    ctx.ev = it->ev;
    /* for counting by type and naming spans only (EW_T__COUNT: not asked) */
    ctx.type = timing ? (unsigned)it->ev->info->id : EW_T__COUNT;
    for (int attempt = 1;; attempt++) {
        ew_handler_result r;
        bool called = false;
        ctx.attempt = attempt;
        ctx.txn = NULL;
        ctx.has_error = false;
        ctx.has_span = false;
        ctx.error[0] = '\0';
        /* A call's time covers the delivery attempt: the inbox's transaction, the handler, and
         * settling what it returned (follow-up events, the inbox's commit); when the worker goes
         * straight on to its next call, what it does in between (the acknowledgement, dropping
         * the event) counts in that next call (call_start). */
        stamp t0 = {0, 0};
        if (timing) t0 = call_start(w);
        bump(&w->received, 1);
        if (use_inbox) {
            ew_error e = {0};
            int rc = d->host.inbox.ops->begin(d->host.inbox.self, s->inbox_key, ew_event_id(it->ev),
                                              &ctx.txn, &e);
            if (rc == 1) {
                bump(&w->duplicates, 1);
                settle_done(w, it);
                return true;
            }
            if (rc < 0) {
                ew_ctx_set_error(&ctx, "inbox begin failed: %s", e.code ? e.msg : ew_strerror(rc));
                r = EW_HANDLER_RETRY;
                goto failed;
            }
            w->store_batch.txn = ew__inbox_txn(d->host.inbox, ctx.txn);
        }
        if (d->host.span) make_span(&ctx); /* before the call: follow-ups carry it */
        r = w->fn(ctx.ev, &ctx, w->ud);
        called = true;
        if (r == EW_HANDLER_OK) {
            r = settle_ok(w, &ctx, use_inbox);
            if (r == EW_HANDLER_OK) {
                bump(&w->handled, 1);
                count_type(w, &ctx, 0);
                if (timing) { /* while the event is ours: the span names it */
                    call_end(w, &ctx, t0, r);
                    w->chained = true; /* the worker goes on to its next item, if any */
                }
                settle_done(w, it);
                return true;
            }
        } else {
            drop_follow_ups(w);
            if (use_inbox) d->host.inbox.ops->rollback(d->host.inbox.self, ctx.txn);
            w->store_batch.txn = NULL;
            if (r != EW_HANDLER_RETRY && r != EW_HANDLER_FAIL) {
                ew_ctx_set_error(&ctx, "handler returned %d, which is not ok, retry or fail",
                                 (int)r);
                r = EW_HANDLER_FAIL;
            } else if (!ctx.has_error) {
                ew_ctx_set_error(&ctx, "handler returned %s",
                                 r == EW_HANDLER_RETRY ? "retry" : "fail");
            }
        }
    failed:
        if (called && timing) call_end(w, &ctx, t0, r); /* a back-off or dead letter follows */
        last_fail = ew_now_us();
        if (!first_fail) first_fail = last_fail;
        if (r == EW_HANDLER_RETRY && attempt < s->max_attempts) {
            bump(&w->retried, 1);
            count_type(w, &ctx, 1);
            if (!backoff_wait(w, backoff_us(s, attempt))) return false;
            continue;
        }
        if (!dead_letter(w, &ctx, attempt, first_fail, last_fail)) return false;
        bump(&w->dead_lettered, 1);
        count_type(w, &ctx, 2);
        if (it->dl) atomic_store(&it->dl->ew__failed, 1);
        item_finish(w, it, false);
        return true;
    }
}

static inline size_t queued(worker *w)
{
    return atomic_load_explicit(&w->qn, memory_order_relaxed);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Before it sleeps, an idle worker watches its queue for a few microseconds: while events keep
 * coming, neither the publisher (futex wake) nor the worker (futex wait) makes a system call.
 * It spins with pause first, then yields, so that on a machine with more runnable threads than
 * cores the publisher it waits for gets the core. */
static void spin_for_work(worker *w)
{
    int64_t start = 0, spin_ns = w->d->spin_ns;
    for (unsigned i = 1;; i++) {
        if (queued(w) || atomic_load_explicit(&w->stop, memory_order_relaxed)) return;
        if (i < SPIN_PAUSES) {
            cpu_relax();
            continue;
        }
        int64_t now = ew_mono_ns();
        if (!start) start = now;
        if (now - start >= spin_ns) return;
        sched_yield();
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        if (queued(w) == 0 && w->d->spin_ns) {
            pthread_mutex_unlock(&w->mu);
            spin_for_work(w);
            pthread_mutex_lock(&w->mu);
        }
        if (queued(w) == 0 && w->unflushed) {
            /* Idle: settle the count now (see FLUSH_EVERY). */
            pthread_mutex_unlock(&w->mu);
            flush_done(w);
            pthread_mutex_lock(&w->mu);
        }
        while (queued(w) == 0 && !atomic_load_explicit(&w->stop, memory_order_relaxed)) {
            w->sleeping = true;
            pthread_cond_wait(&w->cv, &w->mu);
        }
        w->sleeping = false;
        if (atomic_load_explicit(&w->stop, memory_order_relaxed)) break;
        /* Take the whole queue; publishers go on into the (empty) old batch buffer. */
        item *b = w->batch;
        size_t bcap = w->bcap;
        w->batch = w->q;
        w->bcap = w->qcap;
        w->bn = queued(w);
        w->bi = 0;
        w->q = b;
        w->qcap = bcap;
        atomic_store_explicit(&w->qn, 0, memory_order_relaxed);
        pthread_mutex_unlock(&w->mu);
        w->chained = false; /* the worker may have waited for this batch */
        /* Is there a store to hold? Asked once a batch: a hold_begin per item that finds none
         * costs ~80 instructions (most of them zeroing its ew_error). */
        const bool can_hold = inbox_holds(w->d, w->s) || w->s->batch_store;

        while (w->bi < w->bn && !atomic_load_explicit(&w->stop, memory_order_relaxed)) {
            atomic_store_explicit(&w->batch_left, w->bn - w->bi - 1, memory_order_relaxed);
            if (!w->holding && w->bn - w->bi > 1 && can_hold) hold_begin(w);
            if (!run_item(w, &w->batch[w->bi])) break;
            w->bi++;
            /* now: the end of the call just made when it was timed (call_end), else the clock */
            if (w->holding &&
                (w->pendn == HOLD_MAX ||
                 (w->chained ? w->last.ns : ew_mono_ns()) - w->hold_t0 >= HOLD_MAX_NS))
                hold_end(w);
        }
        hold_end(w);
        atomic_store_explicit(&w->batch_left, w->bn - w->bi, memory_order_relaxed);
        if (w->unflushed >= FLUSH_EVERY) flush_done(w);
        if (w->bi == w->bn && w->bcap > BATCH_KEEP) {
            free(w->batch);
            w->batch = NULL;
            w->bcap = w->bn = w->bi = 0;
        }
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    flush_done(w);
    return NULL;
}

static int worker_push(worker *w, const ew_event *ev, ew_delivery *dl)
{
    pthread_mutex_lock(&w->mu);
    size_t n = queued(w);
    if (n == w->qcap) {
        size_t cap = w->qcap ? w->qcap * 2 : QUEUE_MIN;
        item *q = realloc(w->q, cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&w->mu);
            return EW_ENOMEM;
        }
        w->q = q;
        w->qcap = cap;
    }
    w->q[n] = (item){ev, dl};
    atomic_store_explicit(&w->qn, n + 1, memory_order_relaxed);
    bool wake = w->sleeping;
    w->sleeping = false; /* one signal is enough until it sleeps again */
    pthread_mutex_unlock(&w->mu);
    if (wake) pthread_cond_signal(&w->cv);
    return 0;
}

static worker *worker_new(ew_dispatcher *d, sub *s, ew_handler_fn fn, void *ud)
{
    worker *w = aligned_alloc(_Alignof(worker), sizeof(worker));
    if (!w) return NULL;
    memset(w, 0, sizeof *w);
    if (pthread_mutex_init(&w->mu, NULL)) goto fail_free;
    if (ew__cond_init_mono(&w->cv)) goto fail_mutex;
    w->s = s;
    w->fn = fn;
    w->ud = ud;
    w->d = d;
    w->span.kind = EW_SPAN_CONSUMER;
    w->span.group = s->group;
    w->span.handler = s->name;
    w->span_type = EW_T__COUNT;
    w->metrics = !d->host.no_metrics;
    w->rng = ew__rand64();
    return w;
fail_mutex:
    pthread_mutex_destroy(&w->mu);
fail_free:
    free(w);
    return NULL;
}

static void worker_free(worker *w)
{
    if (!w) return;
    drop_follow_ups(w);
    for (size_t t = 0; t < EW_T__COUNT; t++)
        free(w->span_name[t]);
    free(w->fu);
    free(w->q);
    free(w->batch);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

static int worker_start(worker *w, ew_error *err)
{
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc)
        return ew_error_set(err, EW_EAGAIN, "cannot start a worker thread for %s: %s",
                            w->s->inbox_key, strerror(rc));
    w->running = true;
    w->has_thread = true;
    char name[16];
    snprintf(name, sizeof name, "ew:%s", w->s->group);
    pthread_setname_np(w->thread, name);
    return 0;
}

static void worker_stop(worker *w)
{
    pthread_mutex_lock(&w->mu);
    atomic_store_explicit(&w->stop, true, memory_order_relaxed);
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void worker_join(worker *w)
{
    if (!w->running) return;
    pthread_join(w->thread, NULL);
    w->running = false;
}

/* Does one of the subscription's patterns match type? */
static bool sub_match(const sub *s, const char *type)
{
    size_t n = atomic_load_explicit(&((sub *)s)->npatterns, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (ew_pattern_match(s->patterns[i], type)) return true;
    return false;
}

static bool sub_has_pattern(const sub *s, const char *pattern)
{
    size_t n = atomic_load_explicit(&((sub *)s)->npatterns, memory_order_acquire);
    for (size_t i = 0; i < n; i++)
        if (strcmp(s->patterns[i], pattern) == 0) return true;
    return false;
}

/* ---- routing tables ---------------------------------------------------------------------- */

static void table_free(table *t)
{
    if (!t) return;
    free(t->subs);
    free(t->routes);
    free(t->workers);
    free(t);
}

/* Builds the table for d's subscriptions (under d->mu). */
static table *table_build(ew_dispatcher *d)
{
    table *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    size_t nw = 0, nroutes = 0;
    for (size_t i = 0; i < d->nsubs; i++)
        nw += d->subs[i]->nworkers;
    t->nsubs = d->nsubs;
    t->subs = calloc(d->nsubs ? d->nsubs : 1, sizeof *t->subs);
    t->workers = calloc(nw ? nw : 1, sizeof *t->workers);
    if (!t->subs || !t->workers) goto fail;
    worker **wp = t->workers;
    for (size_t i = 0; i < d->nsubs; i++) {
        sub *s = d->subs[i];
        memcpy(wp, s->workers, s->nworkers * sizeof *wp);
        t->subs[i] = (route){s, wp, s->nworkers};
        wp += s->nworkers;
    }
    /* Which subscriptions match each type: counted, then filled. */
    for (int pass = 0; pass < 2; pass++) {
        nroutes = 0;
        for (int ty = 0; ty < EW_T__COUNT; ty++) {
            t->first[ty] = (uint32_t)nroutes;
            const ew_type_info *info = ty ? ew_catalog_get((ew_type_id)ty) : NULL;
            if (!info) continue;
            for (size_t i = 0; i < t->nsubs; i++) {
                if (!sub_match(t->subs[i].s, info->type)) continue;
                if (pass) t->routes[nroutes] = t->subs[i];
                nroutes++;
            }
        }
        t->first[EW_T__COUNT] = (uint32_t)nroutes;
        if (!pass && !(t->routes = calloc(nroutes ? nroutes : 1, sizeof *t->routes))) goto fail;
    }
    return t;
fail:
    table_free(t);
    return NULL;
}

/* ---- routing ----------------------------------------------------------------------------- */

static worker *pick(const route *r, const char *subject, uint64_t h)
{
    if (r->nw == 1) return r->w[0];
    if (subject) return r->w[h % r->nw];
    return r->w[atomic_fetch_add_explicit(&r->s->rr, 1, memory_order_relaxed) % r->nw];
}

/* Queues dl->event on the n routes of [r, end) that belong to group (all when NULL). */
static int enqueue(ew_dispatcher *d, ew_delivery *dl, const route *r, const route *end,
                   const char *group, unsigned n, ew_error *err)
{
    const ew_event *ev = dl->event;
    ew_delivery *keep = dl->done ? dl : NULL;
    if (keep) {
        atomic_store(&dl->ew__refs, n + 1); /* +1 until every handler has it */
        atomic_store(&dl->ew__abandoned, 0);
        atomic_store(&dl->ew__failed, 0);
    }
    atomic_fetch_add(&d->outstanding, n);
    const char *subject = ew_event_subject(ev);
    uint64_t h = subject && (end - r > 1 || r->nw > 1) ? subject_hash(subject) : 0;
    unsigned failed = 0;
    for (const route *p = r; p < end; p++) {
        if (group && strcmp(p->s->group, group) != 0) continue;
        ew_event_ref(ev);
        if (worker_push(pick(p, subject, h), ev, keep) == 0) continue;
        ew_event_unref(ev);
        failed++;
        ew__dispatch_log(d, EW_LOG_ERROR, ev, "out of memory: event %s (%s) lost for %s",
                         ew_event_id(ev), ew_event_type(ev), p->s->inbox_key);
    }
    if (failed) outstanding_done(d, failed);
    if (failed == n)
        return ew_error_set(err, EW_ENOMEM, "out of memory queueing event %s", ew_event_id(ev));
    if (keep) delivery_release(keep, 1 + failed, failed > 0);
    return 0;
}

static int deliver_named(ew_dispatcher *d, const table *t, ew_delivery *dl, ew_error *err)
{
    if (!dl->group) return ew_error_set(err, EW_EINVAL, "a delivery to a handler needs its group");
    for (size_t i = 0; i < t->nsubs; i++) {
        const route *r = &t->subs[i];
        if (strcmp(r->s->group, dl->group) != 0 || strcmp(r->s->name, dl->name) != 0) continue;
        if (!sub_match(r->s, ew_event_type(dl->event)))
            return ew_error_set(err, EW_EINVAL, "handler %s (%s) does not take %s events",
                                r->s->inbox_key, r->s->pattern, ew_event_type(dl->event));
        return enqueue(d, dl, r, r + 1, NULL, 1, err);
    }
    return ew_error_set(err, EW_ENOTFOUND, "no handler %.100s in group %.100s", dl->name,
                        dl->group);
}

int ew__dispatch_deliver(ew_dispatcher *d, ew_delivery *dl, ew_error *err)
{
    const ew_event *ev = dl->event;
    if (!ev) return ew_error_set(err, EW_EINVAL, "delivery without an event");
    ew_type_id ty = ew_event_type_id(ev);
    if (ty <= EW_T_NONE || ty >= EW_T__COUNT)
        return ew_error_set(err, EW_EINVAL, "event %s has no catalog type", ew_event_id(ev));
    if (ty == EW_T_BUS_REDELIVERY) return ew__redelivery_deliver(d, dl, err);
    const table *t = atomic_load_explicit(&d->table, memory_order_acquire);
    if (dl->name) return deliver_named(d, t, dl, err);
    const route *r = t->routes + t->first[ty], *end = t->routes + t->first[ty + 1];
    unsigned n = (unsigned)(end - r);
    if (dl->group) {
        n = 0;
        for (const route *p = r; p < end; p++)
            n += strcmp(p->s->group, dl->group) == 0;
    }
    if (n == 0) {
        if (dl->done) dl->done(dl, EW_DELIVERY_ACK);
        return 0;
    }
    return enqueue(d, dl, r, end, dl->group, n, err);
}

/* ---- subscriptions ----------------------------------------------------------------------- */

static void sub_free(sub *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->nworkers; i++)
        worker_free(s->workers[i]);
    free(s->workers);
    free(s->group);
    free(s->name);
    size_t np = atomic_load(&s->npatterns);
    for (size_t i = 1; i < np; i++)
        free(s->patterns[i]);
    free(s->pattern);
    free(s->inbox_key);
    free(s);
}

static sub *sub_new(const ew_dispatch_sub *o)
{
    sub *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->group = strdup(o->group);
    s->name = strdup(o->name);
    s->pattern = strdup(o->pattern);
    s->inbox_key = join3(o->group, '/', o->name);
    if (!s->group || !s->name || !s->pattern || !s->inbox_key) {
        sub_free(s);
        return NULL;
    }
    s->patterns[0] = s->pattern;
    atomic_store(&s->npatterns, 1);
    s->max_attempts = o->max_attempts;
    s->backoff_initial_ms = o->backoff_initial_ms;
    s->backoff_max_ms = o->backoff_max_ms;
    s->no_jitter = o->no_jitter;
    s->no_inbox = o->no_inbox;
    s->batch_store = o->batch_store;
    return s;
}

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 4;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, n * size);
    if (!q) return EW_ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

/* Another pattern for subscription s, in the same workers. d->mu held. */
static int add_pattern(ew_dispatcher *d, sub *s, const char *pattern, ew_error *err)
{
    size_t n = atomic_load(&s->npatterns);
    if (n == MAX_PATTERNS)
        return ew_error_set(err, EW_EINVAL, "handler %s has %d patterns, the most there can be",
                            s->inbox_key, MAX_PATTERNS);
    if (!(s->patterns[n] = strdup(pattern))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    atomic_store_explicit(&s->npatterns, n + 1, memory_order_release);
    table *t = table_build(d);
    if (!t) {
        atomic_store(&s->npatterns, n);
        free(s->patterns[n]);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    table *old = atomic_exchange_explicit(&d->table, t, memory_order_acq_rel);
    old->older = d->retired;
    d->retired = old;
    return 0;
}

int ew__dispatch_subscribe(ew_dispatcher *d, const ew_dispatch_sub *o, bool *created, ew_error *err)
{
    int rc = 0;
    sub *s = NULL, *fresh = NULL;
    size_t nnew = (size_t)(o->concurrency > 0 ? o->concurrency : 1), added = 0;
    table *t = NULL;
    pthread_mutex_lock(&d->mu);
    if (d->stopped) {
        rc = ew_error_set(err, EW_ECLOSED, "the bus is closed");
        goto out;
    }
    for (size_t i = 0; i < d->nsubs && !s; i++)
        if (strcmp(d->subs[i]->group, o->group) == 0 && strcmp(d->subs[i]->name, o->name) == 0)
            s = d->subs[i];
    if (s && !sub_has_pattern(s, o->pattern)) {
        if (!o->add_pattern) {
            rc = ew_error_set(err, EW_EEXIST, "handler %s already subscribes to %s, not %.100s",
                              s->inbox_key, s->pattern, o->pattern);
            goto out;
        }
        rc = add_pattern(d, s, o->pattern, err);
        if (!rc && created) *created = false;
        goto out;
    }
    if (!s) {
        if (!(s = fresh = sub_new(o)) ||
            grow((void **)&d->subs, &d->subcap, d->nsubs + 1, sizeof *d->subs))
            goto oom;
    }
    if (grow((void **)&s->workers, &s->wcap, s->nworkers + nnew, sizeof *s->workers)) goto oom;
    for (; added < nnew; added++) {
        worker *w = worker_new(d, s, o->fn, o->ud);
        if (!w) goto oom;
        s->workers[s->nworkers + added] = w;
    }
    /* Tentatively in place, so that the new table sees them. */
    s->nworkers += nnew;
    if (fresh) d->subs[d->nsubs++] = fresh;
    if (!(t = table_build(d))) goto undo_oom;
    if (d->started) {
        for (size_t i = s->nworkers - nnew; i < s->nworkers; i++)
            if ((rc = worker_start(s->workers[i], err))) goto undo;
    }
    table *old = atomic_exchange_explicit(&d->table, t, memory_order_acq_rel);
    old->older = d->retired;
    d->retired = old;
    if (created) *created = fresh != NULL;
    goto out;

undo_oom:
    rc = ew_error_set(err, EW_ENOMEM, "out of memory");
undo:
    table_free(t);
    s->nworkers -= nnew;
    if (fresh) d->nsubs--;
    for (size_t i = 0; i < nnew; i++) {
        worker *w = s->workers[s->nworkers + i];
        worker_stop(w);
        worker_join(w);
        worker_free(w);
    }
    added = 0;
    goto out_free;
oom:
    rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; i < added; i++)
        worker_free(s->workers[s->nworkers + i]);
out_free:
    sub_free(fresh);
out:
    pthread_mutex_unlock(&d->mu);
    return rc;
}

const ew_dlq_sink *ew__dispatch_sink(const ew_dispatcher *d)
{
    return &d->host.dlq;
}

void *ew__dispatch_bus(const ew_dispatcher *d)
{
    return d->host.bus;
}

int ew__dispatch_verify(const ew_dispatcher *d, const ew_event *ev, ew_error *err)
{
    return d->host.verify ? d->host.verify(d->host.bus, ev, err) : 0;
}

bool ew__dispatch_has_pattern(ew_dispatcher *d, const char *group, const char *name,
                              const char *pattern)
{
    const table *t = atomic_load_explicit(&d->table, memory_order_acquire);
    for (size_t i = 0; i < t->nsubs; i++) {
        const sub *s = t->subs[i].s;
        if (strcmp(s->group, group) == 0 && strcmp(s->name, name) == 0)
            return sub_has_pattern(s, pattern);
    }
    return false;
}

bool ew__dispatch_has(ew_dispatcher *d, const char *group, const char *name, const char **pattern)
{
    const table *t = atomic_load_explicit(&d->table, memory_order_acquire);
    for (size_t i = 0; i < t->nsubs; i++) {
        const sub *s = t->subs[i].s;
        if (strcmp(s->group, group) == 0 && (!name || strcmp(s->name, name) == 0)) {
            if (pattern) *pattern = s->pattern;
            return true;
        }
    }
    return false;
}

/* ---- lifecycle --------------------------------------------------------------------------- */

int ew__dispatch_new(ew_dispatcher **out, const ew_dispatch_host *host, ew_error *err)
{
    ew_dispatcher *d = aligned_alloc(_Alignof(ew_dispatcher), sizeof(ew_dispatcher));
    if (!d) return ew_error_set(err, EW_ENOMEM, "out of memory");
    memset(d, 0, sizeof *d);
    d->host = *host;
    d->spin_ns = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? SPIN_NS : 0;
    d->tsc = tsc_usable();
    if (pthread_mutex_init(&d->mu, NULL)) goto fail_free;
    if (pthread_mutex_init(&d->wmu, NULL)) goto fail_mu;
    if (ew__cond_init_mono(&d->wcv)) goto fail_wmu;
    table *t = table_build(d);
    if (!t) goto fail_wcv;
    atomic_init(&d->table, t);
    *out = d;
    return 0;
fail_wcv:
    pthread_cond_destroy(&d->wcv);
fail_wmu:
    pthread_mutex_destroy(&d->wmu);
fail_mu:
    pthread_mutex_destroy(&d->mu);
fail_free:
    free(d);
    return ew_error_set(err, EW_ENOMEM, "cannot create the dispatcher");
}

int ew__dispatch_start(ew_dispatcher *d, ew_error *err)
{
    int rc = 0;
    pthread_mutex_lock(&d->mu);
    if (d->stopped) {
        rc = ew_error_set(err, EW_ECLOSED, "the bus is closed");
    } else if (!d->started) {
        for (size_t i = 0; i < d->nsubs && !rc; i++)
            for (size_t j = 0; j < d->subs[i]->nworkers && !rc; j++)
                if (!d->subs[i]->workers[j]->running)
                    rc = worker_start(d->subs[i]->workers[j], err);
        d->started = rc == 0;
    }
    pthread_mutex_unlock(&d->mu);
    return rc;
}

/* Drops one item that will not run: named in the log (up to a limit), acknowledged as
 * abandoned, taken off the count. */
static void item_lose(worker *w, const item *it, uint64_t *lost)
{
    if (*lost < LOST_LOG_LIMIT)
        ew__dispatch_log(w->d, EW_LOG_WARN, it->ev, "bus closed: event %s (%s) lost for %s",
                         ew_event_id(it->ev), ew_event_type(it->ev), w->s->inbox_key);
    (*lost)++;
    item_finish(w, it, true);
}

uint64_t ew__dispatch_stop(ew_dispatcher *d)
{
    pthread_mutex_lock(&d->mu);
    bool already = d->stopped;
    d->stopped = true;
    pthread_mutex_unlock(&d->mu);
    if (already) return 0;
    /* No subscription can be added now: d->subs is stable without the lock. */
    for (size_t i = 0; i < d->nsubs; i++)
        for (size_t j = 0; j < d->subs[i]->nworkers; j++)
            worker_stop(d->subs[i]->workers[j]);
    for (size_t i = 0; i < d->nsubs; i++)
        for (size_t j = 0; j < d->subs[i]->nworkers; j++)
            worker_join(d->subs[i]->workers[j]);
    /* Every worker has exited, and a handler finishing late may have queued follow-ups to any
     * of them: only now is every queue final. */
    uint64_t lost = 0;
    for (size_t i = 0; i < d->nsubs; i++) {
        for (size_t j = 0; j < d->subs[i]->nworkers; j++) {
            worker *w = d->subs[i]->workers[j];
            for (; w->bi < w->bn; w->bi++)
                item_lose(w, &w->batch[w->bi], &lost);
            for (size_t k = 0; k < queued(w); k++)
                item_lose(w, &w->q[k], &lost);
            atomic_store(&w->qn, 0);
            atomic_store(&w->batch_left, 0);
            flush_done(w);
        }
    }
    if (lost)
        ew__dispatch_log(d, EW_LOG_ERROR, NULL,
                         "bus closed with %llu handler deliveries not done: lost",
                         (unsigned long long)lost);
    return lost;
}

void ew__dispatch_free(ew_dispatcher *d)
{
    if (!d) return;
    ew__dispatch_stop(d);
    for (size_t i = 0; i < d->nsubs; i++)
        sub_free(d->subs[i]);
    free(d->subs);
    table_free(atomic_load(&d->table));
    for (table *t = d->retired, *next; t; t = next) {
        next = t->older;
        table_free(t);
    }
    pthread_cond_destroy(&d->wcv);
    pthread_mutex_destroy(&d->wmu);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

/* ---- stats ------------------------------------------------------------------------------- */

size_t ew__dispatch_count(const ew_dispatcher *d)
{
    const table *t = atomic_load_explicit(&((ew_dispatcher *)d)->table, memory_order_acquire);
    return t->nsubs;
}

/* The upper bound of the bucket where the q-quantile falls, capped by the maximum seen. */
static double hist_quantile_ms(const uint64_t *h, uint64_t total, double q, uint64_t max_ns)
{
    if (!total) return 0;
    uint64_t rank = (uint64_t)(q * (double)total + 0.999999), seen = 0;
    if (rank < 1) rank = 1;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        seen += h[b];
        if (seen >= rank) {
            uint64_t upper = b ? (b >= 63 ? UINT64_MAX : (uint64_t)1 << b) : 0;
            return (double)(upper < max_ns ? upper : max_ns) / 1e6;
        }
    }
    return (double)max_ns / 1e6;
}

int ew__dispatch_stats(ew_dispatcher *d, size_t i, ew_handler_stats *out)
{
    const table *t = atomic_load_explicit(&d->table, memory_order_acquire);
    if (i >= t->nsubs) return EW_ENOTFOUND;
    const route *r = &t->subs[i];
    const sub *s = r->s;
    memset(out, 0, sizeof *out);
    out->group = s->group;
    out->name = s->name;
    out->pattern = s->pattern;
    out->consumers = (int)r->nw;
    uint64_t calls = 0;
    for (size_t k = 0; k < r->nw; k++) {
        worker *w = r->w[k];
        out->received += get(&w->received);
        out->handled += get(&w->handled);
        out->retried += get(&w->retried);
        out->dead_lettered += get(&w->dead_lettered);
        out->duplicates += get(&w->duplicates);
        out->time_total_ns += get(&w->time_total_ns);
        uint64_t mx = get(&w->time_max_ns);
        if (mx > out->time_max_ns) out->time_max_ns = mx;
        for (int b = 0; b < HIST_BUCKETS; b++) {
            uint64_t c = get(&w->hist[b]);
            out->time_hist[b] += c;
            calls += c;
        }
        pthread_mutex_lock(&w->mu);
        out->queue_depth += queued(w);
        pthread_mutex_unlock(&w->mu);
        out->queue_depth += atomic_load_explicit(&w->batch_left, memory_order_relaxed);
    }
    out->time_p50_ms = hist_quantile_ms(out->time_hist, calls, 0.50, out->time_max_ns);
    out->time_p99_ms = hist_quantile_ms(out->time_hist, calls, 0.99, out->time_max_ns);
    return 0;
}

int ew__dispatch_type_stats(ew_dispatcher *d, size_t i, ew_type_id type, ew_handler_type_stats *out)
{
    const table *t = atomic_load_explicit(&d->table, memory_order_acquire);
    if (i >= t->nsubs) return EW_ENOTFOUND;
    if ((unsigned)type >= EW_T__COUNT) return EW_EINVAL;
    const route *r = &t->subs[i];
    memset(out, 0, sizeof *out);
    for (size_t k = 0; k < r->nw; k++) {
        out->handled += get(&r->w[k]->by_type[type][0]);
        out->retried += get(&r->w[k]->by_type[type][1]);
        out->dead_lettered += get(&r->w[k]->by_type[type][2]);
    }
    return 0;
}

/* ---- inside a handler -------------------------------------------------------------------- */

int ew_ctx_attempt(const ew_handler_ctx *ctx)
{
    return ctx->attempt;
}

const char *ew_ctx_group(const ew_handler_ctx *ctx)
{
    return ctx->w->s->group;
}

const char *ew_ctx_handler(const ew_handler_ctx *ctx)
{
    return ctx->w->s->name;
}

void *ew_ctx_txn(const ew_handler_ctx *ctx)
{
    return ctx->txn;
}

void ew_ctx_set_error(ew_handler_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->error, sizeof ctx->error, fmt, ap);
    va_end(ap);
    ctx->has_error = true;
}

const char *ew_ctx_traceparent(ew_handler_ctx *ctx)
{
    make_span(ctx);
    if (!ctx->traceparent[0]) ew_trace_format(&ctx->w->span.ctx, ctx->traceparent);
    return ctx->traceparent;
}

void ew_ctx_follow_up_attrs(ew_handler_ctx *ctx, ew_event_attrs *attrs)
{
    *attrs = (ew_event_attrs){
        .source = ctx->w->d->host.service,
        .correlation_id = ew_event_correlation_id(ctx->ev),
        .causation_id = ew_event_id(ctx->ev),
        .traceparent = ew_ctx_traceparent(ctx),
    };
}

/* Keeps ev (one reference, handed over) until the handler's outcome is known. */
static int keep_follow_up(ew_handler_ctx *ctx, const ew_event *ev, ew_error *err)
{
    worker *w = ctx->w;
    if (grow((void **)&w->fu, &w->fucap, w->fun + 1, sizeof *w->fu))
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    w->fu[w->fun++] = ev;
    return 0;
}

int ew_ctx_publish(ew_handler_ctx *ctx, ew_type_id type, const void *data, const char *subject,
                   ew_error *err)
{
    ew_event_attrs a;
    ew_ctx_follow_up_attrs(ctx, &a);
    a.subject = subject;
    ew_event *ev;
    int rc = ew_event_new(&ev, type, data, &a, err);
    if (rc) return rc;
    if ((rc = keep_follow_up(ctx, ev, err))) ew_event_unref(ev);
    return rc;
}

int ew_ctx_publish_event(ew_handler_ctx *ctx, const ew_event *ev, ew_error *err)
{
    if (!ev) return ew_error_set(err, EW_EINVAL, "no event to publish");
    ew_event_ref(ev);
    int rc = keep_follow_up(ctx, ev, err);
    if (rc) ew_event_unref(ev);
    return rc;
}
