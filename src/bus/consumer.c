/* eventwire — the consumer core (consumer.h): the thread, reconnection with back-off, the
 * in-flight window, the receive and in-order settlement of one subscriber group, for every
 * broker backend. */
#include "bus/consumer.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "bus/wire.h"
#include "eventwire/clock.h"

enum { E_PENDING, E_DONE, E_ABANDONED };

/* One delivery the core holds: handed to the dispatcher (or dead-lettered) and not yet settled.
 * In its lane's list, oldest first, until it is settled or its connection goes; stale (out of
 * every list) when its connection went while its handlers still ran: freed at done(). */
typedef struct centry {
    ew_delivery dl; /* first: done() gets &dl */
    ew__consumer *c;
    ew__ack_token tok;
    int64_t at_ns; /* when the core took it (ew__consumer_held) */
    int state;
    bool stale;
    struct centry *next;
} centry;

typedef struct lane {
    centry *head, *tail;
    bool blocked; /* an abandoned delivery was dropped: no run may pass it on this connection */
} lane;

struct ew__consumer {
    ew__consumer_conf conf;
    const ew__consumer_ops *ops;
    int efd; /* wakes the thread: done() calls, stop, close */

    pthread_mutex_t mu; /* everything down to in_deliver */
    pthread_cond_t cv;  /* in_deliver went false */
    lane *lanes;
    size_t nlanes;
    size_t held;       /* entries alive: in lanes, or stale and waiting for done() */
    size_t unfinished; /* entries handed over whose done() has not come */
    size_t quiet;      /* done() calls since the thread last took its wake-up */
    size_t wake_every; /* ... that wake it (see on_done) */
    int64_t woken_ns;  /* when done() last woke it */
    bool dirty;        /* a done() came since the thread last settled */
    bool wake_pending; /* efd was written since the thread last read it */
    bool stopping, quit, in_deliver;
    bool lane_wait; /* the thread waits in ew__consumer_drain_lanes */

    /* the thread's own */
    pthread_t th;
    bool started, connected, cancelled;
    ew__ack_token *ones; /* settle_one tokens taken from the lanes */
    size_t nones, capones;
    int release_rc; /* a release that failed during the last fetch */
    ew_error release_err;
    int keep_rc; /* a keepalive that failed during the last fetch */
    ew_error keep_err;
};

static void wake(ew__consumer *c)
{
    uint64_t one = 1;
    ssize_t w = write(c->efd, &one, sizeof one);
    (void)w; /* EAGAIN: the counter is non-zero already, the thread wakes anyway */
}

/* Under mu: wakes the thread once per batch of done() calls. */
static void wake_locked(ew__consumer *c)
{
    if (c->wake_pending) return;
    c->wake_pending = true;
    wake(c);
    if (c->ops->wake) c->ops->wake(c->conf.t);
}

/* ---- the window ------------------------------------------------------------------------------ */

/* Under mu: the lane of tok, created when new. NULL when out of memory. */
static lane *lane_of(ew__consumer *c, uint32_t id)
{
    if (id >= c->nlanes) {
        size_t n = (size_t)id + 1 < 2 * c->nlanes ? 2 * c->nlanes : (size_t)id + 1;
        lane *l = realloc(c->lanes, n * sizeof *l);
        if (!l) return NULL;
        memset(l + c->nlanes, 0, (n - c->nlanes) * sizeof *l);
        c->lanes = l;
        c->nlanes = n;
    }
    return &c->lanes[id];
}

/* A done() this long after the thread last woke wakes it (see on_done). */
#define WAKE_AFTER_NS 1000000

/* done(): every handler is finished with the delivery, or the bus closed first. Any thread.
 * It wakes the consumer thread to settle when nothing the thread handed over is still being
 * handled, when wake_every done() calls (an eighth of the window) came since the thread last
 * woke, or when that was 1 ms ago or more; a done() that wakes nothing is settled at the thread's
 * next turn (within idle_ms). Not at every done(): under load that cost a wake-up, a poll and a
 * settlement (an XACK of a few entries) every few events, twice the context switches of the
 * threads the Redis bus had before the core (bench/README.md). With ops->settle_delay_ms (Kafka,
 * whose commits go out at most that often anyway) only wake_every done() calls wake it (room in
 * the window), and the thread comes back within the delay by itself while it holds deliveries
 * (consumer_main): a handler that finishes before the thread needs it costs no wake-up, where
 * "nothing still being handled" woke it after every few records. */
static void on_done(ew_delivery *dl, ew_delivery_outcome outcome)
{
    centry *e = (centry *)dl;
    ew__consumer *c = e->c;
    pthread_mutex_lock(&c->mu);
    c->unfinished--;
    if (e->stale) {
        c->held--;
        free(e);
    } else {
        e->state = outcome == EW_DELIVERY_ACK ? E_DONE : E_ABANDONED;
        c->dirty = true;
        if (c->lane_wait) pthread_cond_broadcast(&c->cv);
    }
    if (!c->wake_pending) {
        int64_t now = ew_mono_ns();
        bool wake_now;
        if (c->ops->settle_delay_ms)
            wake_now = ++c->quiet >= c->wake_every;
        else
            wake_now = c->unfinished == 0 || ++c->quiet >= c->wake_every ||
                       now - c->woken_ns >= WAKE_AFTER_NS;
        if (wake_now) {
            c->woken_ns = now;
            wake_locked(c);
        }
    }
    pthread_mutex_unlock(&c->mu);
}

/* Under mu: forgets every token of the connection that went. Entries still being handled become
 * stale; the broker delivers them again on the next connection. */
static void forget_lane_locked(ew__consumer *c, lane *l)
{
    for (centry *e = l->head, *next; e; e = next) {
        next = e->next;
        e->next = NULL;
        if (e->state == E_PENDING) {
            e->stale = true;
        } else {
            c->held--;
            free(e);
        }
    }
    l->head = l->tail = NULL;
    l->blocked = false;
}

static void forget_locked(ew__consumer *c)
{
    for (size_t i = 0; i < c->nlanes; i++)
        forget_lane_locked(c, &c->lanes[i]);
}

void ew__consumer_forget_lanes(ew__consumer *c, const uint32_t *lanes, size_t n)
{
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < n; i++)
        if (lanes[i] < c->nlanes) forget_lane_locked(c, &c->lanes[lanes[i]]);
    pthread_mutex_unlock(&c->mu);
}

static int push_one(ew__consumer *c, ew__ack_token tok)
{
    if (c->nones == c->capones) {
        size_t cap = c->capones ? 2 * c->capones : 64;
        ew__ack_token *v = realloc(c->ones, cap * sizeof *v);
        if (!v) return -1;
        c->ones = v;
        c->capones = cap;
    }
    c->ones[c->nones++] = tok;
    return 0;
}

/* Settles what finished: per lane the run at the oldest end in one call, then (settle_one) each
 * finished delivery behind the first unfinished one; with settle_each, all of them in one call
 * at the end. Entries leave the window under mu; the ops run without it. */
static int settle(ew__consumer *c, ew_error *err)
{
    const ew__consumer_ops *ops = c->ops;
    bool each = ops->settle_each != NULL, one = each || ops->settle_one;
    pthread_mutex_lock(&c->mu);
    if (!c->dirty) {
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    c->dirty = false;
    size_t nl = c->nlanes;
    pthread_mutex_unlock(&c->mu);
    c->nones = 0;
    for (size_t i = 0; i < nl; i++) {
        ew__ack_token upto = {0};
        size_t run = 0;
        if (!each) c->nones = 0;
        pthread_mutex_lock(&c->mu);
        lane *l = &c->lanes[i];
        while (l->head && l->head->state != E_PENDING) {
            centry *e = l->head;
            if (e->state == E_ABANDONED) {
                l->blocked = true;
            } else if (!l->blocked && !each) {
                upto = e->tok;
                run++;
            } else if (one && push_one(c, e->tok)) {
                break; /* out of memory: try again at the next settlement */
            }
            l->head = e->next;
            if (!l->head) l->tail = NULL;
            c->held--;
            free(e);
        }
        if (one && l->head) {
            /* behind one still being handled: one by one */
            centry *prev = l->head;
            for (centry *e = prev->next; e; e = prev->next) {
                if (e->state == E_PENDING || (e->state == E_DONE && push_one(c, e->tok))) {
                    prev = e;
                    continue;
                }
                prev->next = e->next;
                if (l->tail == e) l->tail = prev;
                c->held--;
                free(e);
            }
        }
        pthread_mutex_unlock(&c->mu);
        if (each) continue;
        int rc = run ? ops->settle(c->conf.t, &upto, run, true, err) : 0;
        for (size_t k = 0; k < c->nones && !rc; k++)
            rc = ops->settle(c->conf.t, &c->ones[k], 1, false, err);
        if (rc) return rc;
    }
    return each && c->nones ? ops->settle_each(c->conf.t, c->ones, c->nones, err) : 0;
}

size_t ew__consumer_held(ew__consumer *c, int64_t before_ns, ew__ack_token *out, size_t max)
{
    size_t n = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->nlanes; i++)
        for (centry *e = c->lanes[i].head; e; e = e->next)
            if (e->state != E_ABANDONED && e->at_ns < before_ns) {
                if (n < max) out[n] = e->tok;
                n++;
            }
    pthread_mutex_unlock(&c->mu);
    return n;
}

static bool lanes_busy_locked(ew__consumer *c, const uint32_t *lanes, size_t n, size_t *busy)
{
    *busy = 0;
    for (size_t i = 0; i < n; i++) {
        if (lanes[i] >= c->nlanes) continue;
        for (centry *e = c->lanes[lanes[i]].head; e; e = e->next)
            *busy += e->state == E_PENDING;
    }
    return *busy > 0;
}

size_t ew__consumer_drain_lanes(ew__consumer *c, const uint32_t *lanes, size_t n,
                                int64_t deadline_ns, ew_error *err)
{
    size_t busy;
    pthread_mutex_lock(&c->mu);
    while (lanes_busy_locked(c, lanes, n, &busy)) {
        int64_t left = deadline_ns - ew_mono_ns();
        if (left <= 0) break;
        struct timespec ts = ew__mono_deadline(left / 1000000 + 1);
        c->lane_wait = true;
        pthread_cond_timedwait(&c->cv, &c->mu, &ts);
        c->lane_wait = false;
    }
    c->dirty = true;
    pthread_mutex_unlock(&c->mu);
    if (c->connected) settle(c, err);
    return busy;
}

/* ---- receiving ------------------------------------------------------------------------------- */

/* Asked while the dead letter sink refuses: the transport keeps its session meanwhile. */
static bool recv_stopping(void *ud)
{
    ew__consumer *c = ud;
    if (c->ops->keepalive && !c->keep_rc) c->keep_rc = c->ops->keepalive(c->conf.t, &c->keep_err);
    return c->keep_rc || ew__consumer_stopping(c);
}

bool ew__consumer_stopping(ew__consumer *c)
{
    pthread_mutex_lock(&c->mu);
    bool s = c->stopping;
    pthread_mutex_unlock(&c->mu);
    return s;
}

int ew__consumer_wake_fd(const ew__consumer *c)
{
    return c->efd;
}

static centry *track_locked(ew__consumer *c, ew__ack_token tok);

/* A message not taken. With ops->release it goes back to the broker; without, it stays
 * unsettled in its place: a hole in its lane that no run passes (the deliveries before it are
 * still settled). */
static bool release(ew__consumer *c, const ew__ack_token *tok)
{
    if (c->ops->release) {
        if (!c->release_rc) c->release_rc = c->ops->release(c->conf.t, tok, &c->release_err);
        return false;
    }
    pthread_mutex_lock(&c->mu);
    centry *e = track_locked(c, *tok);
    if (e) {
        e->state = E_ABANDONED;
        c->unfinished--;
        c->dirty = true;
    } else {
        lane *l = lane_of(c, tok->lane); /* out of memory: block the lane from now on */
        if (l) l->blocked = true;
    }
    pthread_mutex_unlock(&c->mu);
    return false;
}

/* Under mu: a new entry at the end of tok's lane, counted in the window. NULL: out of memory. */
static centry *track_locked(ew__consumer *c, ew__ack_token tok)
{
    lane *l = lane_of(c, tok.lane);
    centry *e = l ? calloc(1, sizeof *e) : NULL;
    if (!e) return NULL;
    e->c = c;
    e->tok = tok;
    e->at_ns = ew_mono_ns();
    e->state = E_PENDING;
    c->unfinished++;
    if (l->tail)
        l->tail->next = e;
    else
        l->head = e;
    l->tail = e;
    c->held++;
    return e;
}

bool ew__consumer_receive(ew__consumer *c, const ew__recv_msg *m, ew__ack_token tok)
{
    ew_bus *bus = c->conf.bus;
    ew__recv_msg rm = *m;
    if (!rm.group) rm.group = c->conf.group;
    if (ew__consumer_stopping(c)) return release(c, &tok);
    ew_event *ev = NULL;
    ew__recv_result r = ew__receive(bus, &rm, c->conf.max_bytes, recv_stopping, c, &ev);
    if (r == EW__RECV_STOPPED) return release(c, &tok);

    pthread_mutex_lock(&c->mu);
    bool stopping = c->stopping;
    centry *e = stopping ? NULL : track_locked(c, tok);
    if (e) c->in_deliver = true;
    pthread_mutex_unlock(&c->mu);
    if (!e) {
        if (!stopping)
            ew__bus_log(bus, EW_LOG_ERROR, "%s: out of memory: a message is left for redelivery",
                        c->conf.what);
        ew_event_unref(ev);
        return release(c, &tok);
    }
    e->dl.group = c->conf.group;
    e->dl.done = on_done;
    e->dl.token = e;
    int rc = 0;
    if (r == EW__RECV_DEAD) {
        on_done(&e->dl, EW_DELIVERY_ACK); /* in the sink: settled in its place in the order */
    } else {
        ew_error de = {0};
        e->dl.event = ev;
        rc = ew__dispatch_deliver(ew__bus_dispatcher(bus), &e->dl, &de);
        if (rc == EW_ENOMEM) {
            ew__bus_log(bus, EW_LOG_ERROR,
                        "%s: event %s not handed to the handlers (%s): left for "
                        "redelivery",
                        c->conf.what, ew_event_id(ev), de.msg);
        } else if (rc) {
            /* Not an event the dispatcher can route (cannot happen for a decoded one): dead
             * letter it under the one policy rather than loop on it. */
            bool kept =
                ew__recv_refused(bus, ev, rm.group, rm.transport, rc, de.msg, recv_stopping, c);
            on_done(&e->dl, kept ? EW_DELIVERY_ACK : EW_DELIVERY_ABANDONED);
            rc = 0;
        }
        ew_event_unref(ev);
    }
    pthread_mutex_lock(&c->mu);
    if (rc) { /* nothing queued: out of the window, back to the broker */
        lane *l = &c->lanes[tok.lane];
        centry **pp = &l->head, *prev = NULL;
        while (*pp != e) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        *pp = e->next;
        if (l->tail == e) l->tail = prev;
        c->held--;
        c->unfinished--; /* no done() comes for it */
        free(e);
    }
    c->in_deliver = false;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return rc ? release(c, &tok) : true;
}

/* ---- the thread ------------------------------------------------------------------------------ */

/* Waits up to ms for a wake-up. */
static void wait_wake(ew__consumer *c, int ms)
{
    struct pollfd p = {.fd = c->efd, .events = POLLIN};
    poll(&p, 1, ms);
}

static void drain_wake(ew__consumer *c)
{
    uint64_t n;
    ssize_t rd = read(c->efd, &n, sizeof n);
    (void)rd;
    pthread_mutex_lock(&c->mu);
    c->wake_pending = false;
    c->quiet = 0;
    pthread_mutex_unlock(&c->mu);
}

static void *consumer_main(void *arg)
{
    ew__consumer *c = arg;
    const ew__consumer_ops *ops = c->ops;
    ew_bus *bus = c->conf.bus;
    int backoff = 0;
    int64_t next_try = 0;
    bool ever = false, down_logged = false;
    for (;;) {
        ew_error e = {0};
        /* The flags first: every done() comes before quit, so what is settled after seeing quit
         * is the last of it. Reading the wake-up first keeps one that comes after. */
        drain_wake(c);
        pthread_mutex_lock(&c->mu);
        bool quit = c->quit, stopping = c->stopping;
        pthread_mutex_unlock(&c->mu);
        if (c->connected && settle(c, &e)) goto lost;
        if (quit) break;
        pthread_mutex_lock(&c->mu);
        size_t held = c->held;
        pthread_mutex_unlock(&c->mu);
        if (!c->connected) {
            int64_t now = ew_mono_ns();
            if (stopping) {
                wait_wake(c, ops->idle_ms);
            } else if (now < next_try) {
                wait_wake(c, (int)((next_try - now) / 1000000) + 1);
            } else if (ops->connect(c->conf.t, &e) == 0) {
                ew__bus_log(bus, ever ? EW_LOG_INFO : EW_LOG_DEBUG, "%s: %s", c->conf.what,
                            ever ? "reconnected" : "started");
                c->connected = true;
                c->cancelled = false;
                ever = true;
                down_logged = false;
                backoff = 0;
            } else {
                backoff = ew__backoff_next(backoff, ops->backoff_min_ms, ops->backoff_max_ms);
                ew__bus_log(bus, down_logged ? EW_LOG_DEBUG : EW_LOG_WARN,
                            "%s: %s; retrying in about %d ms", c->conf.what, e.msg, backoff);
                down_logged = true;
                next_try = ew_mono_ns() + (int64_t)ew__jitter_ms(backoff) * 1000000;
            }
            continue;
        }
        if (stopping && !c->cancelled) {
            c->cancelled = true;
            if (ops->stop_fetching && ops->stop_fetching(c->conf.t, &e)) goto lost;
        }
        size_t room = held < c->conf.max_inflight ? c->conf.max_inflight - held : 0;
        if (stopping) room = c->conf.max_inflight; /* what still arrives is released */
        /* With settle_delay_ms, done() calls seldom wake the thread: while it holds deliveries
         * it comes back within the delay by itself to settle what finished. (Only this thread
         * adds to held: with none held no done() can come during the wait.) */
        int wait_ms = ops->idle_ms;
        if (ops->settle_delay_ms && held && ops->settle_delay_ms < wait_ms)
            wait_ms = ops->settle_delay_ms;
        if (room == 0) {
            if (ops->keepalive && ops->keepalive(c->conf.t, &e)) goto lost;
            wait_wake(c, wait_ms); /* a full window: fetch nothing until done() */
            continue;
        }
        c->release_rc = c->keep_rc = 0;
        int rc = ops->fetch(c->conf.t, room, wait_ms, &e);
        if (!rc && c->release_rc) {
            rc = c->release_rc;
            e = c->release_err;
        }
        if (!rc && c->keep_rc) {
            rc = c->keep_rc;
            e = c->keep_err;
        }
        if (!rc) continue;
    lost:
        ew__bus_log(bus, stopping ? EW_LOG_DEBUG : EW_LOG_WARN,
                    "%s lost its connection: %s; reconnecting (unsettled messages will be "
                    "delivered again)",
                    c->conf.what, e.msg);
        ops->disconnect(c->conf.t, false);
        c->connected = false;
        if (!ops->keep_on_reconnect) {
            pthread_mutex_lock(&c->mu);
            forget_locked(c);
            pthread_mutex_unlock(&c->mu);
        }
        backoff = ew__backoff_next(backoff, ops->backoff_min_ms, ops->backoff_max_ms);
        next_try = ew_mono_ns() + (int64_t)ew__jitter_ms(backoff) * 1000000;
        down_logged = true;
    }
    if (c->connected) ops->disconnect(c->conf.t, true);
    c->connected = false;
    pthread_mutex_lock(&c->mu);
    forget_locked(c);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------- */

int ew__consumer_new(ew__consumer **out, const ew__consumer_conf *conf, ew_error *err)
{
    ew__consumer *c = calloc(1, sizeof *c);
    if (!c) return ew_error_set(err, EW_ENOMEM, "out of memory");
    c->conf = *conf;
    if (c->conf.max_inflight < 1) c->conf.max_inflight = 1;
    c->wake_every = c->conf.max_inflight / 8 ? c->conf.max_inflight / 8 : 1;
    c->ops = conf->ops;
    c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->efd < 0) {
        free(c);
        return ew_error_set(err, EW_ENOMEM, "cannot make an eventfd: %s", strerror(errno));
    }
    pthread_mutex_init(&c->mu, NULL);
    ew__cond_init_mono(&c->cv);
    *out = c;
    return 0;
}

int ew__consumer_start(ew__consumer *c, ew_error *err)
{
    if (c->started) return 0;
    int rc = pthread_create(&c->th, NULL, consumer_main, c);
    if (rc)
        return ew_error_set(err, EW_ENOMEM, "cannot start the thread of %s: %s", c->conf.what,
                            strerror(rc));
    char name[16];
    snprintf(name, sizeof name, "%s", c->conf.thread ? c->conf.thread : "ew:consume");
    pthread_setname_np(c->th, name);
    c->started = true;
    return 0;
}

void ew__consumer_stop(ew__consumer *c)
{
    pthread_mutex_lock(&c->mu);
    c->stopping = true;
    wake(c);
    while (c->in_deliver)
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

void ew__consumer_close(ew__consumer *c)
{
    if (!c->started) return;
    pthread_mutex_lock(&c->mu);
    c->stopping = c->quit = true;
    wake(c);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    c->started = false;
}

void ew__consumer_free(ew__consumer *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    forget_locked(c);
    pthread_mutex_unlock(&c->mu);
    /* Entries still stale here have no done() to come (close runs after the drain). */
    free(c->lanes);
    free(c->ones);
    close(c->efd);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}
