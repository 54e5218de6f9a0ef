/* Tests of group commit (store.h): transactions of several threads on one handle committed
 * together, each commit returning only once it is on the database, a rollback undoing only its
 * own transaction; ew__store_hold / ew__store_release; a failed database commit failing every
 * transaction it held. On SQLite and PostgreSQL.
 * ew-fixture: postgres */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include "eventwire/clock.h"
#include "store/batch.h"
#include "store/store_env.h"

#define THREADS 8
#define PER_THREAD 60

static void exec_ok(ew_txn *t, const char *sql, const char *const *p, size_t n)
{
    ew_error err = {0};
    int rc = ew_txn_exec(t, sql, p, n, NULL, &err);
    if (rc) fail_msg("%s: %s: %s", sql, ew_err_name(rc), err.msg);
}

static void setup_table(ew_store *s)
{
    ew_txn *t;
    ew_error err = {0};
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    exec_ok(t, "CREATE TABLE event_store.gc_rows (id TEXT PRIMARY KEY, who TEXT NOT NULL)", NULL,
            0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
}

static int count_cb(void *ud, const ew_row *row)
{
    *(long *)ud = strtol(row->values[0], NULL, 10);
    return 0;
}

/* Rows with id (NULL: all), through handle s. */
static long count_rows(ew_store *s, const char *id)
{
    ew_txn *t;
    ew_error err = {0};
    long n = -1;
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    const char *p[] = {id};
    int rc = id ? ew_txn_query(t, "SELECT count(*) FROM event_store.gc_rows WHERE id = $1", p, 1,
                               count_cb, &n, &err)
                : ew_txn_query(t, "SELECT count(*) FROM event_store.gc_rows", NULL, 0, count_cb, &n,
                               &err);
    assert_int_equal(rc, 0);
    ew_txn_rollback(t);
    return n;
}

static void insert(ew_store *s, const char *id, const char *who, bool keep, int *rc_out)
{
    ew_txn *t;
    ew_error err = {0};
    assert_int_equal(ew_store_begin(s, &t, &err), 0);
    const char *p[] = {id, who};
    exec_ok(t, "INSERT INTO event_store.gc_rows (id, who) VALUES ($1, $2)", p, 2);
    if (keep) {
        int rc = ew_txn_commit(t, &err);
        if (rc_out)
            *rc_out = rc;
        else if (rc)
            fail_msg("commit of %s: %s: %s", id, ew_err_name(rc), err.msg);
    } else {
        ew_txn_rollback(t);
    }
}

/* Another handle on the case's database. */
static ew_store *open_other(env *e)
{
    ew_store *other = NULL;
    ew_error err = {0};
    ew_store_options o = {.url = e->url};
    if (ew_store_open(&other, &o, &err)) fail_msg("ew_store_open: %s", err.msg);
    return other;
}

/* ---- many threads on one handle -------------------------------------------------------------- */

typedef struct writer {
    pthread_t th;
    int index;
    ew_store *s;     /* the handle they share */
    ew_store *other; /* another handle on the same database */
    long kept, seen_late;
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        char id[48];
        snprintf(id, sizeof id, "w%d-%d", w->index, i);
        bool keep = i % 3 != 2; /* every third rolls back */
        insert(w->s, id, "writer", keep, NULL);
        if (!keep) continue;
        w->kept++;
        /* Returned from commit: on the database, for every other connection to see. */
        if (count_rows(w->other, id) != 1) w->seen_late++;
    }
    return NULL;
}

static void commits_of_many_threads(env *e)
{
    setup_table(e->s);
    ew_store *other = open_other(e);
    writer w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (writer){.index = i, .s = e->s, .other = other};
        assert_int_equal(pthread_create(&w[i].th, NULL, writer_main, &w[i]), 0);
    }
    long kept = 0, late = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(w[i].th, NULL);
        kept += w[i].kept;
        late += w[i].seen_late;
    }
    assert_int_equal(late, 0);
    assert_int_equal(count_rows(other, NULL), kept);
    assert_int_equal(kept, THREADS * (PER_THREAD - PER_THREAD / 3));
    ew_store_close(other);
}

/* ---- hold and release ------------------------------------------------------------------------ */

static void hold_commits_at_release(env *e)
{
    setup_table(e->s);
    ew_error err = {0};
    ew_store *other = open_other(e);
    assert_int_equal(ew__store_hold(e->s, &err), 0);
    assert_int_equal(ew__store_hold(e->s, &err), EW_ESTATE); /* one per thread */
    insert(e->s, "a", "held", true, NULL);
    insert(e->s, "b", "held", false, NULL); /* undoes itself only */
    insert(e->s, "c", "held", true, NULL);
    /* Read through the held handle: its own writes; through another: none yet. (On SQLite this
     * thread's use of another handle on the file commits the hold first, see below.) */
    assert_int_equal(count_rows(e->s, NULL), 2);
    if (e->pg) assert_int_equal(count_rows(other, NULL), 0);
    assert_int_equal(ew__store_release(e->s, &err), 0);
    assert_int_equal(count_rows(other, NULL), 2);
    assert_int_equal(count_rows(other, "b"), 0);
    assert_int_equal(ew__store_release(e->s, &err), EW_ESTATE); /* not held any more */
    ew_store_close(other);
}

/* Savepoints one after the other: a rollback after several commits undoes only itself. */
static void hold_rollback_after_commits(env *e)
{
    setup_table(e->s);
    ew_error err = {0};
    assert_int_equal(ew__store_hold(e->s, &err), 0);
    insert(e->s, "a", "held", true, NULL);
    insert(e->s, "b", "held", true, NULL);
    insert(e->s, "c", "held", true, NULL);
    insert(e->s, "d", "held", false, NULL);
    insert(e->s, "e", "held", false, NULL);
    insert(e->s, "f", "held", true, NULL);
    assert_int_equal(ew__store_release(e->s, &err), 0);
    ew_store *other = open_other(e);
    assert_int_equal(count_rows(other, NULL), 4);
    assert_int_equal(count_rows(other, "d"), 0);
    assert_int_equal(count_rows(other, "e"), 0);
    assert_int_equal(count_rows(other, "f"), 1);
    ew_store_close(other);
}

/* A long hold is committed every 64 transactions (PostgreSQL's subtransaction cache); the
 * release commits the rest. */
static void long_hold_commits_in_steps(env *e)
{
    setup_table(e->s);
    ew_error err = {0};
    ew_store *other = open_other(e);
    assert_int_equal(ew__store_hold(e->s, &err), 0);
    for (int i = 0; i < 100; i++) {
        char id[16];
        snprintf(id, sizeof id, "r%d", i);
        insert(e->s, id, "held", true, NULL);
    }
    if (e->pg) assert_int_equal(count_rows(other, NULL), 64); /* SQLite: the read commits all */
    assert_int_equal(ew__store_release(e->s, &err), 0);
    assert_int_equal(count_rows(other, NULL), 100);
    ew_store_close(other);
}

/* Anything else done with the handle commits what is held so far; the release then has the
 * rest. */
static void other_uses_commit_early(env *e)
{
    setup_table(e->s);
    ew_error err = {0};
    ew_store *other = open_other(e);
    assert_int_equal(ew__store_hold(e->s, &err), 0);
    insert(e->s, "a", "held", true, NULL);
    int64_t head = 0;
    assert_int_equal(ew_store_head(e->s, &head, &err), 0);
    assert_int_equal(count_rows(other, "a"), 1);
    insert(e->s, "b", "held", true, NULL);
    if (e->pg) assert_int_equal(count_rows(other, "b"), 0);
    assert_int_equal(ew__store_release(e->s, &err), 0);
    assert_int_equal(count_rows(other, "b"), 1);
    ew_store_close(other);
}

/* SQLite: the holder's open chain holds the file's write lock. A write of the holding thread
 * through another handle on the file (the SQLite bus publishing, say) would wait for that lock
 * until the busy timeout: with the worker's batch naming the held handle, ew__batch_flush commits
 * the hold first, and the write goes through at once; the hold goes on. Without a batch, or for
 * the held handle itself, it does nothing. */
static void sqlite_holder_writes_through_another_handle(void **state)
{
    env *e = *state;
    setup_table(e->s);
    ew_error err = {0};
    ew_store *other = open_other(e);
    assert_int_equal(ew__store_hold(e->s, &err), 0);
    insert(e->s, "a", "held", true, NULL);
    ew__batch b = {.held = e->s};
    ew__batch_flush(NULL, other);
    ew__batch_flush(&b, e->s);
    ew__batch_flush(&b, other);
    int64_t t0 = ew_mono_ns();
    insert(other, "b", "other handle", true, NULL);
    assert_true(ew_mono_ns() - t0 < 1000000000LL); /* not the busy timeout */
    assert_int_equal(count_rows(other, NULL), 2);
    insert(e->s, "c", "held", true, NULL); /* still held: not on the database yet */
    assert_int_equal(ew__store_release(e->s, &err), 0);
    assert_int_equal(count_rows(other, NULL), 3);
    ew_store_close(other);
}

typedef struct bystander {
    ew_store *s;
    int rc;
} bystander;

static void *bystander_main(void *arg)
{
    bystander *b = arg;
    insert(b->s, "by", "another thread", true, &b->rc);
    return NULL;
}

/* Another thread's commit does not wait for the holder: it commits, the holder's so far with it. */
static void holder_never_blocks_others(env *e)
{
    setup_table(e->s);
    ew_error err = {0};
    ew_store *other = open_other(e);
    assert_int_equal(ew__store_hold(e->s, &err), 0);
    insert(e->s, "a", "held", true, NULL);
    bystander b = {.s = e->s, .rc = -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, bystander_main, &b), 0);
    pthread_join(th, NULL); /* would hang if it waited for the release */
    assert_int_equal(b.rc, 0);
    assert_int_equal(count_rows(other, "by"), 1);
    assert_int_equal(count_rows(other, "a"), 1);
    assert_int_equal(ew__store_release(e->s, &err), 0);
    ew_store_close(other);
}

BOTH(commits_of_many_threads)
BOTH(hold_commits_at_release)
BOTH(hold_rollback_after_commits)
BOTH(long_hold_commits_in_steps)
BOTH(other_uses_commit_early)
BOTH(holder_never_blocks_others)

/* ---- a database commit that fails ------------------------------------------------------------ */

/* PostgreSQL checks a deferred constraint at COMMIT: the held transactions were each told ok,
 * and the release says that none of them is on the database. */
static void postgres_failed_commit_fails_the_hold(void **state)
{
    env *e = *state;
    ew_error err = {0};
    ew_txn *t;
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    exec_ok(t,
            "CREATE TABLE event_store.gc_rows (id TEXT PRIMARY KEY, who TEXT NOT NULL,"
            " k TEXT, CONSTRAINT gc_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)",
            NULL, 0);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    assert_int_equal(ew__store_hold(e->s, &err), 0);
    const char *p1[] = {"a", "x"}, *p2[] = {"b", "x"};
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    exec_ok(t, "INSERT INTO event_store.gc_rows (id, who, k) VALUES ($1, 'h', $2)", p1, 2);
    assert_int_equal(ew_txn_commit(t, &err), 0);
    assert_int_equal(ew_store_begin(e->s, &t, &err), 0);
    exec_ok(t, "INSERT INTO event_store.gc_rows (id, who, k) VALUES ($1, 'h', $2)", p2, 2);
    assert_int_equal(ew_txn_commit(t, &err), 0); /* the duplicate k shows at COMMIT */
    int rc = ew__store_release(e->s, &err);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(err.msg, "commit failed"));
    assert_int_equal(count_rows(e->s, NULL), 0); /* neither */
    /* The handle goes on. */
    insert(e->s, "c", "after", true, NULL);
    assert_int_equal(count_rows(e->s, "c"), 1);
}

static const struct CMUnitTest tests[] = {
    CASES(commits_of_many_threads),
    CASES(hold_commits_at_release),
    CASES(hold_rollback_after_commits),
    CASES(long_hold_commits_in_steps),
    CASES(other_uses_commit_early),
    CASES(holder_never_blocks_others),
    cmocka_unit_test_setup_teardown(sqlite_holder_writes_through_another_handle, setup_sqlite,
                                    teardown),
    cmocka_unit_test_setup_teardown(postgres_failed_commit_fails_the_hold, setup_postgres,
                                    teardown),
};

EW_TEST_MAIN(tests)
