/* eventwire — the store handle: the mutex that serialises its connection, its one transaction,
 * group commit and holds (store.h, store/batch.h, docs/store.md "Group commit").
 *
 * Group commit. A handle runs one transaction at a time, and under load its threads queue for
 * it. When a transaction commits while another thread waits to begin one, the database
 * transaction is not committed yet: the next one goes on in it, as a savepoint (its rollback
 * undoes only itself), and the first waits. Whoever finds nobody waiting, or the chain at
 * CHAIN_MAX transactions or CHAIN_MAX_NS old, commits them all at once and tells the waiting
 * ones how it went: a commit returns only once its writes are on the database, and a failed
 * commit fails every transaction of the chain. One database commit then stands for many: one
 * lock round, one WAL write of each page however many of them changed it (SQLite), one fsync
 * (PostgreSQL, durable). Any other use of the handle commits the open chain first. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/clock.h"
#include "store/batch.h"
#include "store/handle.h"

#define CHAIN_MAX 32
#define CHAIN_MAX_NS 5000000
/* A held chain is committed every this many transactions all the same: PostgreSQL keeps 64
 * subtransaction ids per backend in shared memory, and other sessions' snapshots slow down once
 * a transaction has more. */
#define HELD_MAX 64

static void chain_end(ew_store *s);
static int same_file(const ew_store *a, const ew_store *b);

/* ---- the mutex ------------------------------------------------------------------------------ */

void ew__store_handle_init(ew_store *s)
{
    s->txn.s = s;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->chain_mu, NULL);
    pthread_cond_init(&s->chain_cv, NULL);
}

void ew__store_handle_end(ew_store *s)
{
    if (s->txn.active) /* a transaction left open by its owner, which must be this thread */
        ew_txn_rollback(&s->txn);
    pthread_mutex_lock(&s->mu);
    if (s->chain_open) chain_end(s);
    pthread_mutex_unlock(&s->mu);
}

void ew__store_handle_free(ew_store *s)
{
    pthread_cond_destroy(&s->chain_cv);
    pthread_mutex_destroy(&s->chain_mu);
    pthread_mutex_destroy(&s->mu);
}

/* Takes the handle's mutex, counted in want while it waits (a committing transaction looks at
 * it to decide whether to wait for company). */
static int lock_raw(ew_store *s, ew_error *err)
{
    if (atomic_load(&s->txn_busy) && pthread_equal(atomic_load(&s->txn_thread), pthread_self()))
        return ew_error_set(err, EW_ESTATE,
                            "this thread has a transaction open on the store: use the "
                            "transaction (ew_txn_exec), or another store handle");
    atomic_fetch_add_explicit(&s->want, 1, memory_order_relaxed);
    pthread_mutex_lock(&s->mu);
    atomic_fetch_sub_explicit(&s->want, 1, memory_order_relaxed);
    return 0;
}

/* The handle for anything but a transaction: an open chain is committed first. */
int ew__store_lock(ew_store *s, ew_error *err)
{
    int rc = lock_raw(s, err);
    if (!rc && s->chain_open) chain_end(s);
    return rc;
}

void ew__store_unlock(ew_store *s)
{
    pthread_mutex_unlock(&s->mu);
}

/* ---- transactions ---------------------------------------------------------------------------- */

/* Savepoint statements, in one round trip. A committed transaction of a chain keeps its
 * savepoint open (sp_kept): the next one's SAVEPOINT releases it in the same trip, and the
 * database commit releases the last. */
static int unit_sql(ew_store *s, const char *sql, ew_error *err)
{
    return s->ops->script(s->conn, sql, err);
}

/* Commits the chain's database transaction and tells its waiting transactions; its result also
 * goes to the caller (err may be NULL). mu held. */
static int chain_end_with(ew_store *s, ew_error *out)
{
    ew_error err = {0};
    int rc = s->ops->commit(s->conn, &err);
    if (rc) ew_error_set(out, rc, "the commit failed: %s", err.msg);
    if (rc && s->chain_held && !s->hold_rc) {
        s->hold_rc = rc;
        ew_error_set(&s->hold_err, rc, "the commit failed: %s", err.msg);
    }
    s->chain_open = 0;
    s->chain_n = 0;
    s->chain_held = 0;
    s->sp_kept = 0;
    pthread_mutex_lock(&s->chain_mu);
    for (chain_waiter *w = s->waiters; w; w = w->next) {
        w->rc = rc;
        if (rc) ew_error_set(&w->err, rc, "the commit failed: %s", err.msg);
        w->done = 1;
    }
    s->waiters = NULL;
    pthread_cond_broadcast(&s->chain_cv);
    pthread_mutex_unlock(&s->chain_mu);
    return rc;
}

static void chain_end(ew_store *s)
{
    chain_end_with(s, NULL);
}

/* The chain can take the transaction that just committed: its thread holds the handle (the
 * release commits), or somebody waits to begin one and the chain is neither long nor old. When
 * another thread holds the handle, the commit is done now, with the holder's so far: nobody
 * waits for a holder. mu held. */
static int chain_goes_on(ew_store *s)
{
    if (s->held) return pthread_equal(s->holder, pthread_self()) && s->chain_n + 1 < HELD_MAX;
    if (atomic_load_explicit(&s->want, memory_order_relaxed) == 0 || s->chain_n >= CHAIN_MAX)
        return 0;
    return !s->chain_open || ew_mono_ns() - s->chain_t0 < CHAIN_MAX_NS;
}

int ew__txn_open(ew_store *s, ew_error *err)
{
    int rc = lock_raw(s, err);
    if (rc) return rc;
    s->txn.savepoint = s->chain_open;
    if (s->chain_open) {
        const char *sql =
            s->sp_kept ? "RELEASE SAVEPOINT ew_txn; SAVEPOINT ew_txn" : "SAVEPOINT ew_txn";
        if (unit_sql(s, sql, err) == 0) {
            s->sp_kept = 0;
        } else {
            chain_end(s); /* a fresh transaction instead */
            s->txn.savepoint = 0;
        }
    }
    if (!s->txn.savepoint && (rc = s->ops->begin(s->conn, err))) {
        ew__store_unlock(s);
        return rc;
    }
    s->txn.active = 1;
    s->txn.failed = 0;
    atomic_store(&s->txn_thread, pthread_self());
    atomic_store(&s->txn_busy, 1);
    return 0;
}

static void txn_close(ew_store *s)
{
    atomic_store(&s->txn_busy, 0);
    s->txn.active = 0;
    ew__store_unlock(s);
}

/* Ends the open transaction without its writes. */
void ew__txn_undo(ew_store *s)
{
    if (!s->txn.savepoint) {
        s->ops->rollback(s->conn); /* the chain is empty: the database transaction is all its own */
    } else if (unit_sql(s, "ROLLBACK TO SAVEPOINT ew_txn; RELEASE SAVEPOINT ew_txn", NULL)) {
        /* The database transaction is in no known state: the chain's commit says so. */
        chain_end(s);
    } else if (!s->held && !chain_goes_on(s)) { /* held: the holder ends it */
        chain_end(s);
    }
    txn_close(s);
}

/* Ends the open transaction with its writes: returns once they are committed, with the chain
 * or alone. */
int ew__txn_keep(ew_store *s, ew_error *err)
{
    s->sp_kept = s->txn.savepoint; /* released by the next SAVEPOINT, or by the commit */
    if (!chain_goes_on(s)) {
        int rc = s->chain_open ? chain_end_with(s, err) : s->ops->commit(s->conn, err);
        txn_close(s);
        return rc;
    }
    if (!s->chain_open) {
        s->chain_open = 1;
        s->chain_t0 = ew_mono_ns();
    }
    s->chain_n++;
    if (s->held && pthread_equal(s->holder, pthread_self())) {
        s->chain_held = 1; /* committed by ew__store_release, or by whoever comes first */
        txn_close(s);
        return 0;
    }
    chain_waiter me = {0};
    pthread_mutex_lock(&s->chain_mu);
    me.next = s->waiters;
    s->waiters = &me;
    pthread_mutex_unlock(&s->chain_mu);
    txn_close(s);
    pthread_mutex_lock(&s->chain_mu);
    while (!me.done)
        pthread_cond_wait(&s->chain_cv, &s->chain_mu);
    pthread_mutex_unlock(&s->chain_mu);
    if (me.rc) ew_error_set(err, me.rc, "%s", me.err.msg);
    return me.rc;
}

int ew__txn_check(ew_txn *t, ew_error *err)
{
    if (!t || !t->active) return ew_error_set(err, EW_ESTATE, "the transaction is not open");
    if (t->failed)
        return ew_error_set(err, EW_ESTATE,
                            "an earlier statement of this transaction failed: "
                            "it can only be rolled back");
    return 0;
}

int ew_store_begin(ew_store *s, ew_txn **out, ew_error *err)
{
    if (!s || !out) return ew_error_set(err, EW_EINVAL, "store and out are required");
    *out = NULL;
    int rc = ew__txn_open(s, err);
    if (!rc) *out = &s->txn;
    return rc;
}

int ew_txn_commit(ew_txn *t, ew_error *err)
{
    if (!t || !t->active) return ew_error_set(err, EW_ESTATE, "the transaction is not open");
    if (t->failed) {
        ew__txn_undo(t->s);
        return ew_error_set(err, EW_ESTATE,
                            "a statement of this transaction failed: it was rolled back");
    }
    return ew__txn_keep(t->s, err);
}

void ew_txn_rollback(ew_txn *t)
{
    if (!t || !t->active) return;
    ew__txn_undo(t->s);
}

int ew__store_hold(ew_store *s, ew_error *err)
{
    if (!s) return ew_error_set(err, EW_EINVAL, "a store is required");
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    if (s->held && pthread_equal(s->holder, pthread_self())) {
        rc = ew_error_set(err, EW_ESTATE, "this thread holds the store already");
    } else if (s->held) {
        rc = ew_error_set(err, EW_EAGAIN, "another thread holds the store");
    } else {
        s->held = 1;
        s->holder = pthread_self();
        s->hold_rc = 0;
    }
    ew__store_unlock(s);
    return rc;
}

int ew__store_release(ew_store *s, ew_error *err)
{
    if (!s) return ew_error_set(err, EW_ESTATE, "this thread does not hold the store");
    int rc = lock_raw(s, err);
    if (rc) return rc;
    if (!s->held || !pthread_equal(s->holder, pthread_self())) {
        ew__store_unlock(s);
        return ew_error_set(err, EW_ESTATE, "this thread does not hold the store");
    }
    s->held = 0;
    if (s->chain_open) chain_end(s);
    if ((rc = s->hold_rc)) ew_error_set(err, rc, "%s", s->hold_err.msg);
    s->hold_rc = 0;
    ew__store_unlock(s);
    return rc;
}

static int txn_run(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                   ew__exec_row_fn fn, void *ud, int64_t *changes, ew_error *err)
{
    int rc = ew__txn_check(t, err);
    if (rc) return rc;
    if (!sql || (nparams && !params))
        return ew_error_set(err, EW_EINVAL, "sql and its parameters are required");
    if ((rc = t->s->ops->exec(t->s->conn, sql, params, nparams, fn, ud, changes, err)))
        t->failed = 1;
    return rc;
}

int ew_txn_exec(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                int64_t *changes, ew_error *err)
{
    return txn_run(t, sql, params, nparams, NULL, NULL, changes, err);
}

int ew_txn_query(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                 ew_row_fn fn, void *ud, ew_error *err)
{
    if (!fn) return ew_error_set(err, EW_EINVAL, "callback is required");
    return txn_run(t, sql, params, nparams, fn, ud, NULL, err);
}

/* ---- a worker's batch (store/batch.h) ---------------------------------------------------------
 */

static int same_file(const ew_store *a, const ew_store *b)
{
    return a->has_file && b->has_file && a->dev == b->dev && a->ino == b->ino;
}

ew_txn *ew__batch_txn_on(const ew__batch *b, const ew_store *s)
{
    if (!b || !b->txn || !s || !b->txn->active) return NULL;
    return same_file(b->txn->s, s) ? b->txn : NULL;
}

void ew__batch_flush(const ew__batch *b, const ew_store *s)
{
    ew_store *h = b ? b->held : NULL;
    if (!h || !s || h == s || !same_file(h, s)) return;
    /* This thread inside a transaction of h: h's mutex is its own, and the chain waits for it. */
    if (atomic_load(&h->txn_busy) && pthread_equal(atomic_load(&h->txn_thread), pthread_self()))
        return;
    pthread_mutex_lock(&h->mu);
    if (h->chain_open) chain_end(h);
    pthread_mutex_unlock(&h->mu);
}
