/* eventwire — the saga engine: declarations, the bus handler, the timer thread and the relay.
 *
 * An event goes through one transaction on the engine's store: load the instance it belongs to,
 * let machine.c decide, write the instance back at the version it was read at (persist.c), with
 * its transitions, the event's id (so a redelivery changes nothing) and the events it issues,
 * which go into the store's outbox. When another writer changed the instance in between (another
 * worker, another engine), nothing is written and the whole is tried again from the load.
 *
 * Issued events are published after the commit by the store's outbox relay, right away by the
 * thread that committed and otherwise by the timer thread: a process that dies between the
 * commit and the publish leaves them in the outbox, and the next engine on the store publishes
 * them when it starts. At least once, never lost; receivers de-duplicate by event id (the inbox).
 *
 * Events may come before the instance they belong to exists (the services of a flow answer the
 * start event in any order, and brokers keep no order across types): such an event is parked in
 * event_store.saga_parked and applied when the instance is created. After parking, the handler
 * looks once more for the instance, and after creating one the creator reads the parked events
 * in a transaction of its own; between them, whichever way two writers interleave, one of them
 * sees the other's row (the start's commit comes before its read of the parked events).
 *
 * The timer thread sleeps until the earliest wake_at of the engine's saga types (at most
 * poll_ms), then handles the instances that are due, each in a transaction that ends in the same
 * conditional UPDATE: when several engines see the same deadline, one writes and the others
 * find the instance changed. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "core/log.h"
#include "core/mono.h"
#include "eventwire/clock.h"
#include "saga/saga_impl.h"
#include "security/keyring.h"
#include "store/handle.h"

#define DEFAULT_POLL_MS 1000
#define MAX_CONFLICTS 64 /* a transition retried more often than this gives up (retry later) */
#define MAX_ERRORS 3     /* database errors on one transition before the delivery is retried */
#define DUE_BATCH 32
#define PARKED_BATCH 64
#define HOUSEKEEPING_TICKS 10 /* parked events are looked after every this many timer rounds */
#define RETRY_US 100000       /* a deadline that could not be handled is tried again after this */
#define MAX_NAME 64

struct ew_saga_engine {
    ew_bus *bus;
    ew_store *store;
    ew_config *cfg;
    ew_log_fn log;
    void *log_ud;
    ew_audit *audit; /* borrowed; NULL: shreds are not recorded */
    int concurrency;
    int64_t poll_ms;
    bool enabled;
    char *source;
    int64_t timeout_ms; /* SAGA_TIMEOUT_SECONDS */
    ew__saga_type **types;
    size_t ntypes, cap;
    bool started;

    /* The timer thread. */
    pthread_t thread;
    bool running;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;
    bool kick;          /* something changed since the timer last looked */
    int64_t planned_us; /* when the sleeping timer wakes; 0 while it works */
    unsigned ticks;

    _Atomic uint64_t n_started, n_applied, n_duplicates, n_parked, n_conflicts, n_deadlines,
        n_finished, n_errors;
};

/* ---- small things ---------------------------------------------------------------------------- */

void ew__saga_engine_log(ew_saga_engine *e, ew_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ew__logv(&(ew__log_sink){e->log, e->log_ud}, level, "saga", NULL, fmt, ap);
    va_end(ap);
}

int ew__saga_shred(ew_saga *s, const char *subject, ew_error *err)
{
    ew_saga_engine *e = s->t->e;
    ew__keyring *keys = ew__store_keyring(e->store);
    if (!keys) return 0;
    int rc = ew__keyring_shred(keys, subject, err);
    if (rc || !e->audit) return rc;
    /* Who shredded what, by ids: the saga that did it. A transition retried after a conflict
     * shreds again (idempotent) and is recorded again. An entry that cannot be written does not
     * undo or hold up the erasure: it is logged. */
    char actor[MAX_NAME + 16], details[3 * MAX_NAME + 160];
    snprintf(actor, sizeof actor, "service:%s", e->source);
    snprintf(details, sizeof details, "{\"saga\":\"%s\",\"saga_id\":\"%s\"}", ew_saga_type(s),
             ew_saga_id(s));
    ew_error ae = {0};
    if (ew_audit_append(e->audit, actor, "key.shredded", subject, details, NULL, &ae))
        ew__saga_engine_log(e, EW_LOG_ERROR,
                            "the shred of subject %s's data key is not in the "
                            "audit chain: %s",
                            subject, ae.msg);
    return 0;
}

const char *ew__saga_engine_source(const ew_saga_engine *e)
{
    return e->source;
}

int64_t ew__saga_engine_timeout_ms(const ew_saga_engine *e)
{
    return e->timeout_ms;
}

static void bump(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static void sleep_us(int64_t us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* A conflict's back-off: a little longer each time, with jitter, so that two writers racing for
 * one instance stop meeting. */
static void conflict_pause(int attempt)
{
    int64_t cap = attempt < 10 ? attempt * 500 : 5000;
    sleep_us(100 + ew_mono_ns() / 1000 % (cap + 1));
}

/* ---- the outbox relay ------------------------------------------------------------------------ */

static int publish_batch(void *ud, const ew_event *const *evs, size_t n, ew_error *err)
{
    ew_saga_engine *e = ud;
    return ew_bus_publish_batch(e->bus, evs, n, err);
}

/* Publishes what the outbox holds. A failure leaves it for the next round. */
static void relay(ew_saga_engine *e)
{
    for (int round = 0; round < 64; round++) {
        size_t sent = 0;
        ew_error err = {0};
        int rc = ew_store_outbox_relay(e->store, 0, publish_batch, e, &sent, &err);
        if (rc) {
            ew__saga_engine_log(e, EW_LOG_WARN, "saga engine: publishing from the outbox: %s",
                                err.msg);
            return;
        }
        if (sent < 100) return; /* the relay's batch: less means it is empty */
    }
}

/* Tells the timer that an instance's wake time is at_us (0: none) or that the outbox holds
 * events for it to publish. */
static void kick_timer(ew_saga_engine *e, int64_t at_us)
{
    pthread_mutex_lock(&e->mu);
    if (e->planned_us == 0 || (at_us && at_us < e->planned_us)) {
        e->kick = true;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
}

/* Has the timer thread publish what the outbox holds, now. */
static void relay_soon(ew_saga_engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->kick = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/* ---- applying an event ----------------------------------------------------------------------- */

typedef enum outcome {
    O_DONE,     /* applied, or nothing to do */
    O_CONFLICT, /* another writer was first: load again */
    O_PARKED,   /* parked; look for the instance once more */
    O_CREATED   /* a new instance: apply what was parked for it */
} outcome;

/* The key ev is matched on; *by_corr when that is its correlation id because it lacks the
 * subject or field the saga correlates on. buf holds an integer field's text. */
static const char *key_of(const ew__saga_type *t, const ew_event *ev, char *buf, size_t n,
                          bool *by_corr)
{
    *by_corr = false;
    if (t->correlate == EW_SAGA_BY_SUBJECT) {
        const char *s = ew_event_subject(ev);
        if (s && *s) return s;
    } else if (t->correlate == EW_SAGA_BY_FIELD) {
        const ew_type_info *ti = ew_event_info(ev);
        const ew_field_info *f = ti ? ew_type_field(ti, t->field) : NULL;
        const char *data = ti ? ew_event_data_as(ev, ti->id) : NULL;
        if (f && data) {
            if (f->kind == EW_FIELD_INT) {
                snprintf(buf, n, "%lld", (long long)*(const int64_t *)(data + f->offset));
                return buf;
            }
            if (f->kind != EW_FIELD_BOOL && f->kind != EW_FIELD_STRLIST) {
                const char *v = *(const char *const *)(data + f->offset);
                if (v && *v) return v;
            }
        }
    } else {
        return ew_event_correlation_id(ev);
    }
    *by_corr = true;
    return ew_event_correlation_id(ev);
}

/* After a commit: publish what it issued, tell the timer about the wake time, count. */
static void committed(ew_saga_engine *e, const ew_saga *s)
{
    if (!s->changed) return; /* only a parked event's row went */
    if (s->is_new) bump(&e->n_started);
    if (s->cause) bump(&e->n_applied);
    if (s->status != EW_SAGA_RUNNING) bump(&e->n_finished);
    int64_t wake = ew__saga_wake_us(s);
    if (s->nout)
        relay_soon(e); /* not here: a worker's batch commits at its end (batch_store) */
    else if (wake)
        kick_timer(e, wake);
}

/* Ends the transaction: commits when keep, else rolls back. */
static int end_txn(ew_txn *txn, bool keep, ew_error *err)
{
    if (keep) return ew_txn_commit(txn, err);
    ew_txn_rollback(txn);
    return 0;
}

/* One try at applying ev: one transaction. parked: ev comes from saga_parked (its row goes in
 * the same transaction); may_park: it may be parked when its instance does not exist. */
static int try_event(ew__saga_type *t, const ew_event *ev, const char *key, bool by_corr,
                     bool parked, bool may_park, outcome *o, ew_error *err)
{
    ew_saga_engine *e = t->e;
    ew_txn *txn;
    int rc = ew_store_begin(e->store, &txn, err);
    if (rc) return rc;
    ew_saga s;
    ew__saga_init(&s, t);
    int found = 0, seen = 0, written = 0;
    bool keep = false;
    *o = O_DONE;
    rc = ew__saga_load(txn, t, NULL, by_corr ? NULL : key, by_corr ? key : NULL, &s, &found, err);
    if (rc) goto out;
    if (!found && strcmp(ew_event_type(ev), t->started_by) != 0) {
        if (may_park && !(rc = ew__saga_park(txn, t, ev, key, err))) {
            keep = true;
            *o = O_PARKED;
        }
        goto out;
    }
    if (!found) {
        if (!(rc = ew__saga_start(&s, ev, key, err)) &&
            !(rc = ew__saga_save(txn, &s, &written, err))) {
            /* not written: another writer created the instance first */
            *o = written ? O_CREATED : O_CONFLICT;
            keep = written;
        }
        goto out;
    }
    if ((rc = ew__saga_consumed(txn, s.id, ew_event_id(ev), &seen, err))) goto out;
    if (seen) bump(&e->n_duplicates);
    if (!seen && s.status == EW_SAGA_RUNNING && (rc = ew__saga_apply(&s, ev, err))) goto out;
    if (!seen && s.changed) {
        if ((rc = ew__saga_save(txn, &s, &written, err))) goto out;
        if (!written) {
            *o = O_CONFLICT;
            goto out;
        }
        keep = true;
    }
    if (parked) { /* applied or of no use: either way it leaves the parking */
        rc = ew__saga_unpark(txn, t, ew_event_id(ev), err);
        keep = !rc;
    } else if (!seen && keep) {
        /* The same event may be parked already: parked by a process that died before it looked
         * for the instance again, and now delivered again. Applied here, it leaves the parking
         * too, or it would wait there for an instance that has come and gone. */
        rc = ew__saga_unpark(txn, t, ew_event_id(ev), err);
        if (rc) keep = false;
    }
out:
    if (rc) {
        ew_txn_rollback(txn);
    } else if ((rc = end_txn(txn, keep, err)) == 0 && keep && *o != O_PARKED) {
        committed(e, &s);
    }
    ew__saga_release(&s);
    return rc;
}

static int handle(ew__saga_type *t, const ew_event *ev, bool parked, ew_error *err);

/* Applies the events parked for an instance just created (key or its correlation id), or, with
 * both NULL, those of every instance that exists (what a crash may have left). */
static void drain_parked(ew__saga_type *t, const char *key, const char *correlation_id)
{
    ew_saga_engine *e = t->e;
    for (int round = 0; round < 16; round++) {
        ew_txn *txn;
        ew__parked p = {0};
        ew_error err = {0};
        int rc = ew_store_begin(e->store, &txn, &err);
        if (!rc) {
            rc = ew__saga_parked(txn, t, key, correlation_id, PARKED_BATCH, &p, &err);
            ew_txn_rollback(txn);
        }
        if (rc)
            ew__saga_engine_log(e, EW_LOG_WARN, "saga %s: reading parked events: %s", t->name,
                                err.msg);
        for (size_t i = 0; i < p.n; i++) {
            ew_error e2 = {0};
            if (handle(t, p.evs[i], true, &e2))
                ew__saga_engine_log(e, EW_LOG_WARN, "saga %s: parked event %s: %s", t->name,
                                    ew_event_id(p.evs[i]), e2.msg);
        }
        size_t n = p.n;
        ew__parked_release(&p);
        if (rc || n < PARKED_BATCH) return;
    }
}

/* Applies ev to its instance of saga type t, retrying on conflicts. */
static int handle(ew__saga_type *t, const ew_event *ev, bool parked, ew_error *err)
{
    char buf[32];
    bool by_corr;
    const char *key = key_of(t, ev, buf, sizeof buf, &by_corr);
    bool may_park = !parked;
    int conflicts = 0, errors = 0;
    for (;;) {
        outcome o;
        ew_error e1 = {0};
        int rc = try_event(t, ev, key, by_corr, parked, may_park, &o, &e1);
        if (rc) {
            /* PostgreSQL turns a lost race on a unique key into an error: try again, a few times */
            if (++errors >= MAX_ERRORS || !(ew_err_retriable(rc) || rc == EW_ESTATE)) {
                bump(&t->e->n_errors);
                return ew_error_set(err, rc, "saga %s: %s %s: %s", t->name, ew_event_type(ev),
                                    ew_event_id(ev), e1.msg);
            }
            conflict_pause(errors);
            continue;
        }
        switch (o) {
        case O_DONE:
            return 0;
        case O_PARKED:
            bump(&t->e->n_parked);
            parked = true; /* the row is there now: applying it must remove it */
            may_park = false;
            continue;
        case O_CREATED:
            drain_parked(t, by_corr ? NULL : key, ew_event_correlation_id(ev));
            return 0;
        case O_CONFLICT:
            bump(&t->e->n_conflicts);
            if (++conflicts >= MAX_CONFLICTS) {
                bump(&t->e->n_errors);
                return ew_error_set(err, EW_ECONFLICT,
                                    "saga %s: %s %s: the instance kept changing under %d tries",
                                    t->name, ew_event_type(ev), ew_event_id(ev), conflicts);
            }
            conflict_pause(conflicts);
            continue;
        }
    }
}

static ew_handler_result on_event(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    ew__saga_type *t = ud;
    ew_error err = {0};
    int rc = handle(t, ev, false, &err);
    if (!rc) return EW_HANDLER_OK;
    ew_ctx_set_error(ctx, "%s", err.msg);
    ew__saga_engine_log(t->e, EW_LOG_WARN, "%s", err.msg);
    return ew_err_retriable(rc) || rc == EW_ECONFLICT || rc == EW_ESTATE ? EW_HANDLER_RETRY
                                                                         : EW_HANDLER_FAIL;
}

/* ---- deadlines ------------------------------------------------------------------------------- */

/* One try at the deadline of instance id: 0 with *again set when another writer changed it. */
static int try_deadline(ew__saga_type *t, const char *id, bool *fired, bool *again, ew_error *err)
{
    ew_txn *txn;
    int rc = ew_store_begin(t->e->store, &txn, err);
    if (rc) return rc;
    ew_saga s;
    ew__saga_init(&s, t);
    int found = 0, written = 0;
    bool keep = false;
    *again = false;
    rc = ew__saga_load(txn, t, id, NULL, NULL, &s, &found, err);
    int64_t wake = found ? ew__saga_wake_us(&s) : 0;
    if (!rc && wake && wake <= ew_now_us() && !(rc = ew__saga_deadline(&s, err)) && s.changed) {
        if (!(rc = ew__saga_save(txn, &s, &written, err))) {
            keep = written;
            *again = !written;
        }
    }
    if (rc)
        ew_txn_rollback(txn);
    else if (!(rc = end_txn(txn, keep, err)) && keep) {
        *fired = true;
        bump(&t->e->n_deadlines);
        committed(t->e, &s);
    }
    ew__saga_release(&s);
    return rc;
}

static int handle_deadline(ew__saga_type *t, const char *id, bool *fired, ew_error *err)
{
    *fired = false;
    for (int i = 0, errors = 0;; i++) {
        bool again = false;
        int rc = try_deadline(t, id, fired, &again, err);
        if (rc && ++errors < MAX_ERRORS && (ew_err_retriable(rc) || rc == EW_ESTATE)) {
            conflict_pause(errors);
            continue;
        }
        if (rc) bump(&t->e->n_errors);
        if (rc || !again || i >= MAX_CONFLICTS) return rc;
        bump(&t->e->n_conflicts);
    }
}

/* Parked events: those of instances that exist (a crash between creating one and applying
 * them), and those older than the saga's timeout, whose instance never came: deleted. */
static void housekeeping(ew_saga_engine *e)
{
    for (size_t i = 0; i < e->ntypes; i++) {
        ew__saga_type *t = e->types[i];
        drain_parked(t, NULL, NULL);
        ew_txn *txn;
        ew_error err = {0};
        int rc = ew_store_begin(e->store, &txn, &err);
        if (!rc) {
            rc = ew__saga_parked_purge(txn, t, ew_now_us() - t->timeout_ms * 1000, &err);
            if (rc)
                ew_txn_rollback(txn);
            else
                rc = ew_txn_commit(txn, &err);
        }
        if (rc)
            ew__saga_engine_log(e, EW_LOG_WARN, "saga %s: purging parked events: %s", t->name,
                                err.msg);
    }
}

int ew_saga_engine_tick(ew_saga_engine *e, size_t *fired, ew_error *err)
{
    if (fired) *fired = 0;
    if (!e) return ew_error_set(err, EW_EINVAL, "an engine is required");
    if (!e->enabled) return 0;
    int rc = 0;
    for (size_t i = 0; i < e->ntypes && !rc; i++) {
        ew__saga_type *t = e->types[i];
        char ids[DUE_BATCH][EW_UUID_LEN + 1];
        size_t n = 0;
        ew_txn *txn;
        if ((rc = ew_store_begin(e->store, &txn, err))) break;
        rc = ew__saga_due(txn, t, ew_now_us(), DUE_BATCH, ids, &n, err);
        ew_txn_rollback(txn);
        for (size_t j = 0; j < n && !rc; j++) {
            bool f = false;
            ew_error e1 = {0};
            if (handle_deadline(t, ids[j], &f, &e1)) {
                ew__saga_engine_log(e, EW_LOG_WARN, "saga %s %s: deadline: %s", t->name, ids[j],
                                    e1.msg);
                continue; /* the others are due too; this one comes round again */
            }
            if (f && fired) (*fired)++;
        }
    }
    relay(e);
    return rc;
}

/* The earliest wake time of every saga type (0: none). */
static int64_t next_wake(ew_saga_engine *e)
{
    int64_t best = 0;
    for (size_t i = 0; i < e->ntypes; i++) {
        ew_txn *txn;
        ew_error err = {0};
        int64_t at = 0;
        if (ew_store_begin(e->store, &txn, &err)) return ew_now_us() + e->poll_ms * 1000;
        if (ew__saga_next_wake(txn, e->types[i], &at, &err)) at = 0;
        ew_txn_rollback(txn);
        if (at && (!best || at < best)) best = at;
    }
    return best;
}

static void timed_wait(ew_saga_engine *e, int64_t until_us)
{
    /* Wake times are wall-clock; the condition variable waits on the monotonic clock. */
    int64_t delta = until_us - ew_now_us();
    if (delta <= 0) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + delta % 1000000 * 1000;
    ts.tv_sec += (time_t)(delta / 1000000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    while (!e->stopping && !e->kick)
        if (pthread_cond_timedwait(&e->cv, &e->mu, &ts) != 0) break;
}

static void *timer_main(void *arg)
{
    ew_saga_engine *e = arg;
    housekeeping(e); /* first: what a previous process left */
    pthread_mutex_lock(&e->mu);
    while (!e->stopping) {
        e->kick = false;
        e->planned_us = 0;
        pthread_mutex_unlock(&e->mu);
        ew_error err = {0};
        size_t fired = 0;
        if (ew_saga_engine_tick(e, &fired, &err))
            ew__saga_engine_log(e, EW_LOG_WARN, "saga engine: %s", err.msg);
        if (++e->ticks % HOUSEKEEPING_TICKS == 0) housekeeping(e);
        int64_t now = ew_now_us(), until = now + e->poll_ms * 1000, wake = next_wake(e);
        /* Still due after the tick: more than a batch (go on at once), or one that failed or
         * another engine holds (look again a little later, not in a tight loop). */
        if (wake && wake < until) until = wake > now ? wake : fired ? now : now + RETRY_US;
        pthread_mutex_lock(&e->mu);
        if (e->stopping || e->kick) continue;
        e->planned_us = until;
        timed_wait(e, until);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---- declarations ---------------------------------------------------------------------------- */

static bool name_ok(const char *s, bool upper, bool dots)
{
    size_t n = 0;
    for (; s && s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
              (upper && c >= 'A' && c <= 'Z') || (dots && (c == '.' || c == '-'))))
            return false;
    }
    return n > 0 && n <= MAX_NAME;
}

static void type_free(ew__saga_type *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->nsteps; i++) {
        ew__saga_step *st = &t->steps[i];
        free(st->name);
        for (char **p = st->completed_by; p && *p; p++)
            free(*p);
        for (char **p = st->failed_by; p && *p; p++)
            free(*p);
        free(st->completed_by);
        free(st->failed_by);
    }
    free(t->steps);
    free(t->types);
    free(t->name);
    free(t->group);
    free(t->started_by);
    free(t->field);
    if (t->ud_free) t->ud_free(t->ud);
    free(t);
}

static int check_type_name(const char *type, const char *saga, ew_error *err)
{
    if (!type || !ew_catalog_find(type, 0))
        return ew_error_set(err, EW_EINVAL, "saga %s: '%.100s' is not an event type of the catalog",
                            saga, type ? type : "(null)");
    return 0;
}

/* A NULL-terminated copy of a NULL-terminated list of catalog types. */
static int copy_types(char ***out, const char *const *in, const char *saga, ew_error *err)
{
    size_t n = 0;
    while (in && in[n])
        n++;
    char **c = calloc(n + 1, sizeof *c);
    if (!c) return ew_error_set(err, EW_ENOMEM, "out of memory");
    *out = c;
    for (size_t i = 0; i < n; i++) {
        int rc = check_type_name(in[i], saga, err);
        if (rc) return rc;
        if (!(c[i] = strdup(in[i]))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    return 0;
}

static int add_subscribed(ew__saga_type *t, const char *type, size_t *cap)
{
    for (size_t i = 0; i < t->ntypes; i++)
        if (strcmp(t->types[i], type) == 0) return 0;
    if (t->ntypes == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        char **types = realloc(t->types, *cap * sizeof *types);
        if (!types) return EW_ENOMEM;
        t->types = types;
    }
    t->types[t->ntypes++] = (char *)type; /* borrowed from the steps or started_by */
    return 0;
}

static int copy_step(ew__saga_step *d, const ew_saga_step *s, const char *saga, ew_error *err)
{
    if (!name_ok(s->name, false, false))
        return ew_error_set(err, EW_EINVAL,
                            "saga %s: step name '%.100s' must be 1 to %d of a-z, 0-9 and _", saga,
                            s->name ? s->name : "(null)", MAX_NAME);
    if (!s->completed_by || !s->completed_by[0])
        return ew_error_set(err, EW_EINVAL, "saga %s: step %s completes on no event type", saga,
                            s->name);
    if (s->timeout_ms < 0)
        return ew_error_set(err, EW_EINVAL, "saga %s: step %s has a negative timeout", saga,
                            s->name);
    if (!(d->name = strdup(s->name))) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = copy_types(&d->completed_by, s->completed_by, saga, err);
    if (!rc) rc = copy_types(&d->failed_by, s->failed_by, saga, err);
    d->on_event = s->on_event;
    d->action = s->action;
    d->compensation = s->compensation;
    d->timeout_ms = s->timeout_ms;
    d->on_timeout = s->on_timeout;
    return rc;
}

static int check_def(const ew_saga_engine *e, const ew_saga_def *d, ew_error *err)
{
    if (!name_ok(d->name, true, true))
        return ew_error_set(err, EW_EINVAL,
                            "saga name '%.100s' must be 1 to %d of A-Z, a-z, 0-9, '_', '.' and '-'",
                            d->name ? d->name : "(null)", MAX_NAME);
    for (size_t i = 0; i < e->ntypes; i++)
        if (strcmp(e->types[i]->name, d->name) == 0)
            return ew_error_set(err, EW_EEXIST, "saga %s is registered already", d->name);
    int rc = check_type_name(d->started_by, d->name, err);
    if (rc) return rc;
    if (!d->steps || d->nsteps == 0 || d->nsteps > EW__SAGA_MAX_STEPS)
        return ew_error_set(err, EW_EINVAL, "saga %s: 1 to %d steps are required", d->name,
                            EW__SAGA_MAX_STEPS);
    if (d->timeout_ms < 0)
        return ew_error_set(err, EW_EINVAL, "saga %s: negative timeout", d->name);
    if ((unsigned)d->correlate > EW_SAGA_BY_FIELD)
        return ew_error_set(err, EW_EINVAL, "saga %s: unknown correlation %d", d->name,
                            (int)d->correlate);
    if (d->correlate == EW_SAGA_BY_FIELD) {
        const ew_type_info *ti = ew_catalog_find(d->started_by, 0);
        const ew_field_info *f =
            d->correlation_field ? ew_type_field(ti, d->correlation_field) : NULL;
        if (!f || f->kind == EW_FIELD_BOOL || f->kind == EW_FIELD_STRLIST ||
            f->kind == EW_FIELD_OBJECT)
            return ew_error_set(
                err, EW_EINVAL, "saga %s: %s has no string or number field '%.64s' to correlate on",
                d->name, d->started_by, d->correlation_field ? d->correlation_field : "(null)");
    }
    for (size_t i = 0; i < d->nsteps; i++)
        for (size_t j = 0; j < i; j++)
            if (d->steps[i].name && d->steps[j].name &&
                strcmp(d->steps[i].name, d->steps[j].name) == 0)
                return ew_error_set(err, EW_EINVAL, "saga %s: two steps are named %s", d->name,
                                    d->steps[i].name);
    return 0;
}

static int build_type(ew_saga_engine *e, const ew_saga_def *d, ew__saga_type *t, ew_error *err)
{
    t->e = e;
    t->correlate = d->correlate;
    t->timeout_ms = d->timeout_ms ? d->timeout_ms : e->timeout_ms;
    t->on_start = d->on_start;
    t->on_end = d->on_end;
    size_t glen = strlen(d->name) + 6;
    if (!(t->name = strdup(d->name)) || !(t->started_by = strdup(d->started_by)) ||
        !(t->group = malloc(glen)) ||
        (d->correlation_field && !(t->field = strdup(d->correlation_field))) ||
        !(t->steps = calloc(d->nsteps, sizeof *t->steps)))
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    snprintf(t->group, glen, "saga.%s", d->name);
    for (size_t i = 0; i < d->nsteps; i++) {
        int rc = copy_step(&t->steps[t->nsteps++], &d->steps[i], d->name, err);
        if (rc) return rc;
    }
    size_t cap = 0;
    int rc = add_subscribed(t, t->started_by, &cap);
    for (size_t i = 0; !rc && i < t->nsteps; i++) {
        for (char **p = t->steps[i].completed_by; !rc && *p; p++)
            rc = add_subscribed(t, *p, &cap);
        for (char **p = t->steps[i].failed_by; !rc && *p; p++)
            rc = add_subscribed(t, *p, &cap);
    }
    return rc ? ew_error_set(err, rc, "out of memory") : 0;
}

int ew_saga_engine_register(ew_saga_engine *e, const ew_saga_def *def, ew_error *err)
{
    int rc = 0;
    if (!e || !def) {
        rc = ew_error_set(err, EW_EINVAL, "an engine and a declaration are required");
    } else if (e->started) {
        rc = ew_error_set(err, EW_ESTATE, "saga %s: the engine has started already",
                          def->name ? def->name : "(null)");
    } else {
        rc = check_def(e, def, err);
    }
    if (rc) {
        if (def && def->ud_free) def->ud_free(def->ud);
        return rc;
    }
    ew__saga_type *t = calloc(1, sizeof *t);
    if (!t) {
        if (def->ud_free) def->ud_free(def->ud);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    t->ud = def->ud;
    t->ud_free = def->ud_free;
    if ((rc = build_type(e, def, t, err))) {
        type_free(t);
        return rc;
    }
    if (e->ntypes == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 4;
        ew__saga_type **types = realloc(e->types, cap * sizeof *types);
        if (!types) {
            type_free(t);
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
        e->types = types;
        e->cap = cap;
    }
    e->types[e->ntypes++] = t;
    return 0;
}

/* ---- the engine ------------------------------------------------------------------------------ */

int ew_saga_engine_open(ew_saga_engine **out, const ew_saga_engine_options *o, ew_error *err)
{
    if (!out || !o || !o->bus || !o->store)
        return ew_error_set(err, EW_EINVAL, "a bus and a store are required");
    if (o->concurrency < 0 || o->concurrency > 1024 || o->poll_ms < 0)
        return ew_error_set(err, EW_EINVAL, "concurrency must be 0..1024 and poll_ms >= 0");
    *out = NULL;
    ew_saga_engine *e = calloc(1, sizeof *e);
    if (!e) return ew_error_set(err, EW_ENOMEM, "out of memory");
    const ew_config *cfg = o->config ? o->config : ew_bus_config(o->bus);
    int rc = ew_config_dup(&e->cfg, cfg, err);
    if (rc) {
        free(e);
        return rc;
    }
    e->bus = o->bus;
    e->store = o->store;
    e->log = o->log;
    e->log_ud = o->log_ud;
    e->audit = o->audit;
    e->concurrency = o->concurrency ? o->concurrency : 1;
    e->poll_ms = o->poll_ms ? o->poll_ms : DEFAULT_POLL_MS;
    e->enabled = ew_config_get_int(e->cfg, "ENABLE_SAGAS") != 0;
    e->timeout_ms = ew_config_get_int(e->cfg, "SAGA_TIMEOUT_SECONDS") * 1000;
    e->source = strdup(ew_config_get(e->cfg, "SERVICE_NAME"));
    ew__cond_init_mono(&e->cv);
    pthread_mutex_init(&e->mu, NULL);
    if (!e->source) {
        ew_saga_engine_close(e);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    *out = e;
    return 0;
}

bool ew_saga_engine_enabled(const ew_saga_engine *e)
{
    return e && e->enabled;
}

int ew_saga_engine_start(ew_saga_engine *e, ew_error *err)
{
    if (!e) return ew_error_set(err, EW_EINVAL, "an engine is required");
    if (e->started) return ew_error_set(err, EW_ESTATE, "the saga engine has started already");
    if (!e->enabled) {
        ew__saga_engine_log(e, EW_LOG_INFO, "sagas are off (ENABLE_SAGAS=false)");
        return 0;
    }
    e->started = true;
    for (size_t i = 0; i < e->ntypes; i++) {
        ew__saga_type *t = e->types[i];
        for (size_t j = 0; j < t->ntypes; j++) {
            /* One handler for all the saga's types: one queue, in the order the events come
             * (a start event is seldom overtaken by its answers), a worker's batch committed
             * at once. */
            ew_subscribe_opts so = {.group = t->group,
                                    .name = t->name,
                                    .concurrency = e->concurrency,
                                    .no_inbox = true, /* the engine keeps its own record */
                                    .batch_store = e->store,
                                    .add_pattern = true};
            int rc = ew_bus_subscribe(e->bus, t->types[j], on_event, t, &so, err);
            if (rc) return rc;
        }
    }
    if (pthread_create(&e->thread, NULL, timer_main, e) != 0)
        return ew_error_set(err, EW_ENOMEM, "cannot start the saga timer thread");
    e->running = true;
    return 0;
}

void ew_saga_engine_stop(ew_saga_engine *e)
{
    if (!e || !e->running) return;
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->thread, NULL);
    e->running = false;
}

void ew_saga_engine_close(ew_saga_engine *e)
{
    if (!e) return;
    ew_saga_engine_stop(e);
    for (size_t i = 0; i < e->ntypes; i++)
        type_free(e->types[i]);
    free(e->types);
    free(e->source);
    ew_config_free(e->cfg);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

void ew_saga_engine_stats_get(ew_saga_engine *e, ew_saga_engine_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!e) return;
    out->started = atomic_load(&e->n_started);
    out->applied = atomic_load(&e->n_applied);
    out->duplicates = atomic_load(&e->n_duplicates);
    out->parked = atomic_load(&e->n_parked);
    out->conflicts = atomic_load(&e->n_conflicts);
    out->deadlines = atomic_load(&e->n_deadlines);
    out->finished = atomic_load(&e->n_finished);
    out->errors = atomic_load(&e->n_errors);
}
