/* eventwire — the SQLite bus (EVENT_BUS_TYPE=sqlite, the default): the event store's log is the
 * bus. Publishing appends to event_store.events (ew__store_record), with concurrent publishers of
 * one bus gathered into one transaction (group commit). Each subscriber group keeps its position
 * in event_store.bus_groups; each group's consumer core (consumer.h) reads the log after it
 * through the transport of sqlite_consume.c, and moves the position up to the oldest delivery
 * not yet done. Several
 * processes share the file: the consumers of one group compete for a lease on its row, and an
 * idle consumer sleeps until inotify says the WAL changed (or a timer), then asks PRAGMA
 * data_version whether a commit happened. docs/bus-sqlite.md has the details and the numbers.
 *
 * This file: publishing and the ops; sqlite_consume.c: the consumers' transport. */
#ifdef EW_HAVE_SQLITE_BUS

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>
#include "bus/backend.h"
#include "bus/url.h"
#include "bus/receive.h"
#include "bus/sqlite_bus.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "eventwire/store.h"
#include "store/store_bus.h"

/* ---- publishing ------------------------------------------------------------------------------ */

/* After a commit: this bus's consumers read at once (other processes' see the WAL written). */
void ew__sq_committed(sqbus *b)
{
    for (group *g = atomic_load(&b->groups); g; g = g->next)
        ew__sq_kick(g);
}

/* One transaction for the requests of a group commit; when it fails and there were several,
 * each again on its own, so that one bad event fails only its own publish. */
static void commit_batch(sqbus *b, pubreq *first, pubreq *end)
{
    size_t total = 0, nreq = 0;
    for (pubreq *r = first; r != end; r = r->next) {
        total += r->n;
        nreq++;
    }
    const ew_event **all = nreq > 1 ? malloc(total * sizeof *all) : NULL;
    int rc;
    ew_error e = {0};
    if (nreq == 1) {
        rc = first->rc = ew__store_record(b->st, first->evs, first->n, NULL, &first->err);
    } else if (!all) {
        rc = EW_ENOMEM;
    } else {
        size_t k = 0;
        for (pubreq *r = first; r != end; r = r->next) {
            memcpy(all + k, r->evs, r->n * sizeof *all);
            k += r->n;
        }
        rc = ew__store_record(b->st, all, total, NULL, &e);
        for (pubreq *r = first; r != end; r = r->next)
            r->rc = rc;
    }
    free(all);
    if (rc == 0) {
        atomic_fetch_add(&b->commits, 1);
        atomic_fetch_add(&b->events, total);
    } else if (nreq > 1) {
        for (pubreq *r = first; r != end; r = r->next) {
            r->rc = ew__store_record(b->st, r->evs, r->n, NULL, &r->err);
            if (r->rc == 0) {
                atomic_fetch_add(&b->commits, 1);
                atomic_fetch_add(&b->events, r->n);
            }
        }
    }
}

/* Makes the group's commits durable before anyone is told: one fdatasync of the WAL, made after
 * the commit let go of the file's write lock (see sq_open). A failed sync fails the publishes it
 * was for; their events are stored, and publishing them again stores nothing twice. */
static void sync_batch(sqbus *b, pubreq *first, pubreq *end)
{
    if (b->wal_fd < 0) return; /* the connection commits with synchronous=FULL */
    bool any = false;
    for (pubreq *r = first; r != end && !any; r = r->next)
        any = r->rc == 0;
    if (!any || fdatasync(b->wal_fd) == 0) return;
    int e = errno;
    for (pubreq *r = first; r != end; r = r->next)
        if (r->rc == 0)
            r->rc = ew_error_set(&r->err, EW_EIO,
                                 "sqlite bus: the commit could not be synced to disk (%s); "
                                 "publishing again is safe: a stored event is not stored twice",
                                 strerror(e));
}

static int sq_publish(void *self, const ew_event *const *evs, size_t n, size_t *npublished,
                      const ew__batch *batch, ew_error *err)
{
    sqbus *b = self;
    *npublished = 0;
    /* A handler's worker (its batch, store/batch.h: passed with its follow-ups, looked up for
     * an ew_bus_publish from inside the handler) may hold the file's write lock: in the inbox's
     * transaction, where the events go, to be committed or rolled back with it; or in a held
     * store's chain, which is committed first. Either way the write would otherwise wait for
     * its own thread until the busy timeout. */
    if (!batch) batch = ew__dispatch_batch_here(ew__bus_dispatcher(b->bus));
    ew_txn *t = ew__batch_txn_on(batch, b->st);
    if (t) {
        int rc = ew__txn_record(t, evs, n, NULL, err);
        if (!rc) *npublished = n;
        return rc;
    }
    ew__batch_flush(batch, b->st);
    pubreq me = {.evs = evs, .n = n};
    sem_init(&me.sem, 0, 0);
    pthread_mutex_lock(&b->gc_mu);
    if (b->q_tail)
        b->q_tail->next = &me;
    else
        b->q_head = &me;
    b->q_tail = &me;
    bool lead = !b->leading;
    if (lead) b->leading = true;
    pthread_mutex_unlock(&b->gc_mu);
    if (!lead) {
        while (sem_wait(&me.sem) != 0)
            ; /* EINTR */
        lead = me.lead;
    }
    if (lead) {
        /* Take what is queued, from me (the head) up to the limit, and commit it. */
        pthread_mutex_lock(&b->gc_mu);
        pubreq *first = b->q_head, *end = first;
        size_t taken = 0;
        do {
            taken += end->n;
            end = end->next;
        } while (end && taken + end->n <= MAX_COMMIT_EVENTS);
        b->q_head = end;
        if (!end) b->q_tail = NULL;
        pthread_mutex_unlock(&b->gc_mu);
        commit_batch(b, first, end);
        sync_batch(b, first, end);
        ew__sq_committed(b);
        for (pubreq *r = first; r != end;) {
            pubreq *next = r->next; /* r may return and be gone once posted */
            if (r != &me) sem_post(&r->sem);
            r = next;
        }
        pthread_mutex_lock(&b->gc_mu);
        pubreq *heir = b->q_head;
        b->leading = heir != NULL;
        if (heir) heir->lead = true;
        pthread_mutex_unlock(&b->gc_mu);
        if (heir) sem_post(&heir->sem);
    }
    sem_destroy(&me.sem);
    if (me.rc) {
        if (err) *err = me.err;
        return me.rc;
    }
    *npublished = n;
    return 0;
}

/* ---- the backend ---------------------------------------------------------------------------- */

/* EVENT_STORE_URL must name an SQLite file: the bus's connections (one to publish, one per
 * group) and other processes must all reach the same database. */
int ew__sqlite_bus_url_check(const char *url, ew_error *err)
{
    if (!url || strncasecmp(url, "sqlite:", 7) != 0)
        return ew_error_set(err, EW_ECONFIG,
                            "the sqlite bus needs EVENT_STORE_URL=sqlite:PATH, not '%.100s'",
                            url ? url : "");
    const char *path = url + 7;
    if (!*path || strcmp(path, ":memory:") == 0)
        return ew_error_set(
            err, EW_ECONFIG,
            "the sqlite bus needs EVENT_STORE_URL=sqlite:PATH, a file (not "
            "'%.100s': %s)",
            url, *path ? "an in-memory database is private to one connection" : "no path");
    return 0;
}

static void whoami(sqbus *b)
{
    if (gethostname(b->host, sizeof b->host) != 0 || !b->host[0]) strcpy(b->host, "localhost");
    b->host[sizeof b->host - 1] = '\0';
    for (char *p = b->host; *p; p++)
        if (*p == '/') *p = '_';
    char link[64] = "";
    ssize_t n = readlink("/proc/self/ns/pid", link, sizeof link - 1);
    unsigned long long ns = 0;
    if (n > 0) {
        link[n] = '\0';
        sscanf(link, "pid:[%llu]", &ns);
    }
    if (ns)
        snprintf(b->pidns, sizeof b->pidns, "%llu", ns);
    else
        strcpy(b->pidns, "?");
    b->pid = getpid();
}

/* Syncs the folder that holds path, so that a file created in it keeps its name after a crash. */
static void sync_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash)
        strcpy(dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash > path ? slash - path : 1), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    fsync(fd);
    close(fd);
}

static int sq_open(void **self, ew_bus *bus, const ew_config *cfg, ew_error *err)
{
    const char *url = ew_config_get(cfg, "EVENT_STORE_URL");
    int rc = ew__sqlite_bus_url_check(url, err);
    if (rc) return rc;
    sqbus *b = calloc(1, sizeof *b);
    if (!b) return ew_error_set(err, EW_ENOMEM, "out of memory");
    b->bus = bus;
    b->cfg = cfg;
    b->wal_fd = -1;
    b->max_inflight = (size_t)ew_config_get_int(cfg, "EVENT_BUS_MAX_IN_FLIGHT");
    b->max_bytes = (size_t)ew_config_get_int(cfg, "EVENT_MAX_BYTES");
    if (b->max_inflight < 1) b->max_inflight = 1;
    whoami(b);
    if (pthread_mutex_init(&b->mu, NULL)) goto fail_free;
    if (pthread_mutex_init(&b->gc_mu, NULL)) goto fail_mu;
    ew_store_options so = {.config = cfg, .log = ew__sq_store_log, .log_ud = bus};
    if ((rc = ew_store_open(&b->st, &so, err))) goto fail_gc;
    /* Publish returns once its commit is on disk, and group commit shares that sync between
     * publishers. The publishing connection commits with synchronous=NORMAL, which holds the
     * file's write lock only while it writes the WAL; the leader of a group commit then syncs
     * the WAL itself, without the lock. With synchronous=FULL the lock would be held through
     * every sync, and since SQLite's lock has no queue, a writer that wants it for a moment (a
     * group's position, a lease, a handler's inbox transaction) would have to find it free
     * between two of a busy publisher's commits: it waited hundreds of milliseconds. The sync
     * covers every frame written so far, ours included; a checkpoint that copies frames into the
     * database syncs the WAL before and the database after, before the WAL may be reused. (The
     * WAL exists while a connection is open: ours is.) When the WAL cannot be opened: FULL. */
    size_t len = strlen(url + 7);
    if ((b->signal_path = malloc(len + sizeof EW__STORE_SIGNAL_SUFFIX))) {
        memcpy(b->signal_path, url + 7, len);
        memcpy(b->signal_path + len, EW__STORE_SIGNAL_SUFFIX, sizeof EW__STORE_SIGNAL_SUFFIX);
    }
    if ((b->wal_path = malloc(len + 5))) {
        memcpy(b->wal_path, url + 7, len);
        memcpy(b->wal_path + len, "-wal", 5);
        b->wal_fd = open(b->wal_path, O_RDONLY | O_CLOEXEC);
    }
    if (b->wal_fd >= 0) {
        sync_dir(b->wal_path); /* the WAL's own name, once */
    } else {
        ew__bus_log(bus, EW_LOG_WARN, "sqlite bus: cannot open %s (%s): commits sync in the lock",
                    b->wal_path ? b->wal_path : "the WAL", strerror(errno));
        if ((rc = ew__store_sync_commits(b->st, 1, err))) goto fail_store;
    }
    ew__bus_log(bus, EW_LOG_DEBUG, "sqlite bus: %s opened", url);
    *self = b;
    return 0;
fail_store:
    ew_store_close(b->st);
fail_gc:
    pthread_mutex_destroy(&b->gc_mu);
fail_mu:
    pthread_mutex_destroy(&b->mu);
fail_free:
    free(b);
    return rc ? rc : ew_error_set(err, EW_ENOMEM, "cannot create a mutex");
}

static int sq_subscribed(void *self, const ew_backend_sub *bsub, ew_error *err)
{
    const char *name = bsub->group, *pattern = bsub->pattern;
    sqbus *b = self;
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    group *g = ew__sq_group_find(b, name);
    bool fresh = !g;
    if (fresh) {
        /* The group's row first: from now on the log keeps its events, also before start and
         * while none of its consumers runs. A group the file does not have yet starts at the
         * head of the log, or at its start with from_beginning; one it has keeps its position. */
        if ((rc = ew__store_group_open(b->st, name, bsub->from_beginning, NULL, err))) goto out;
        if (!(g = ew__sq_group_new(b, name))) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
            goto out;
        }
    }
    if (bsub->ephemeral) g->ephemeral = true;
    pthread_mutex_lock(&g->mu);
    bool have = false;
    for (size_t i = 0; i < g->npatterns && !have; i++)
        have = strcmp(g->patterns[i], pattern) == 0;
    if (!have) {
        char *p = strdup(pattern);
        if (p && g->npatterns == g->pcap) {
            size_t cap = g->pcap ? g->pcap * 2 : 4;
            char **v = realloc(g->patterns, cap * sizeof *v);
            if (v) {
                g->patterns = v;
                g->pcap = cap;
            }
        }
        if (!p || g->npatterns == g->pcap) {
            free(p);
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        } else {
            g->patterns[g->npatterns++] = p;
        }
    }
    pthread_mutex_unlock(&g->mu);
    if (!have && !rc) ew__sq_kick(g); /* read with the new pattern from here on */
    if (rc) {
        if (fresh) ew__sq_group_free(g);
        goto out;
    }
    if (fresh) {
        if (b->started && (rc = ew__sq_group_start(g, err))) {
            ew__sq_group_free(g);
            goto out;
        }
        g->next = atomic_load(&b->groups);
        atomic_store(&b->groups, g);
    }
out:
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static int sq_start(void *self, ew_error *err)
{
    sqbus *b = self;
    int rc = 0;
    pthread_mutex_lock(&b->mu);
    for (group *g = atomic_load(&b->groups); g && !rc; g = g->next)
        if (!g->started) rc = ew__sq_group_start(g, err);
    b->started = rc == 0;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

/* No delivery after it returns; each group's core keeps its connection to write the positions
 * of what the handlers finish while the bus drains. */
static void sq_stop(void *self)
{
    sqbus *b = self;
    for (group *g = atomic_load(&b->groups); g; g = g->next)
        ew__consumer_stop(g->core);
}

/* An ephemeral group's row goes with the bus. */
static void forget_group(sqbus *b, group *g)
{
    ew_txn *t;
    ew_error e = {0};
    const char *p[] = {g->name};
    int rc = ew_store_begin(b->st, &t, &e);
    if (!rc && !(rc = ew_txn_exec(t, "DELETE FROM event_store.bus_groups WHERE group_name = $1", p,
                                  1, NULL, &e)))
        rc = ew_txn_commit(t, &e);
    else if (!rc)
        ew_txn_rollback(t);
    if (rc)
        ew__bus_log(b->bus, EW_LOG_WARN, "sqlite bus: group %s was not removed: %s", g->name,
                    e.msg);
}

/* Every done() has been called: each group's core writes its final position and gives its lease
 * up (ops->disconnect), so that a standby consumer takes over at once; an ephemeral group is
 * removed instead. */
static void sq_close(void *self)
{
    sqbus *b = self;
    sq_stop(b);
    for (group *g = atomic_load(&b->groups), *next; g; g = next) {
        next = g->next;
        ew__consumer_close(g->core);
        if (g->ephemeral) forget_group(b, g);
        ew__sq_group_free(g);
    }
    ew__bus_log(b->bus, EW_LOG_INFO,
                "sqlite bus: %" PRIuFAST64 " events published in %" PRIuFAST64 " commits",
                atomic_load(&b->events), atomic_load(&b->commits));
    ew_store_close(b->st);
    if (b->wal_fd >= 0) close(b->wal_fd);
    free(b->wal_path);
    free(b->signal_path);
    pthread_mutex_destroy(&b->gc_mu);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

/* ---- consumer lag ---------------------------------------------------------------------------- */

typedef struct lagq {
    int64_t head;
    ew_lag_fn fn;
    void *ud;
    bool found;
} lagq;

static int lag_row(void *ud, const ew_row *row)
{
    lagq *q = ud;
    if (row->ncols < 2 || !row->values[0] || !row->values[1]) return 0;
    int64_t pos = strtoll(row->values[1], NULL, 10);
    q->found = true;
    return q->fn(q->ud, row->values[0], q->head > pos ? (uint64_t)(q->head - pos) : 0);
}

/* A group's lag is the log's head (the last position handed out) minus the group's position
 * (the last one it is done with), as the row says: what its consumers in any process have
 * written. Positions are written as deliveries finish, so a busy group's figure is behind by
 * what its consumer has not written yet. */
static int sq_lag(void *self, const char *name, ew_lag_fn fn, void *ud, ew_error *err)
{
    sqbus *b = self;
    lagq q = {.fn = fn, .ud = ud};
    ew_txn *t;
    const char *p[] = {name};
    /* the head first: a position read after it may have passed it (then the lag is 0) */
    int rc = ew_store_head(b->st, &q.head, err);
    if (rc) return rc;
    if ((rc = ew_store_begin(b->st, &t, err))) return rc;
    rc = ew_txn_query(t,
                      name ? "SELECT group_name, position FROM event_store.bus_groups "
                             "WHERE group_name = $1"
                           : "SELECT group_name, position FROM event_store.bus_groups "
                             "ORDER BY group_name",
                      name ? p : NULL, name ? 1 : 0, lag_row, &q, err);
    ew_txn_rollback(t);
    if (rc) return rc;
    if (name && !q.found)
        return ew_error_set(err, EW_ENOTFOUND, "sqlite bus: no group %s in the log", name);
    return 0;
}

const ew_bus_ops ew__bus_sqlite_ops = {
    .name = "sqlite",
    .open = sq_open,
    .publish = sq_publish,
    .subscribed = sq_subscribed,
    .start = sq_start,
    .stop = sq_stop,
    .close = sq_close,
    .lag = sq_lag,
};

#else
typedef int ew__sqlite_unused;
#endif
