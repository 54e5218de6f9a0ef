/* eventwire — the SQLite bus, consuming: the transport of each group's consumer core
 * (consumer.h: its thread, window and in-order settlement). The transport holds the group's
 * lease, reads the log after the group's position (tokens are log positions, in one lane), waits
 * for commits (the bus's own kick, inotify on the WAL, data_version) and writes the position up
 * to the newest run of finished deliveries. */
#ifdef EW_HAVE_SQLITE_BUS

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>
#include "bus/backend.h"
#include "bus/consumer.h"
#include "bus/receive.h"
#include "bus/sqlite_bus.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "store/store_bus.h"

/* ---- small helpers -------------------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    return ew_mono_ns() / 1000000;
}

void ew__sq_store_log(void *ud, const ew_log_record *rec)
{
    ew__bus_log_record(ud, rec);
}

/* Logs a consumer's database error at most once a second while it keeps failing. */
static void consumer_error(group *g, const char *what, const ew_error *e)
{
    int64_t now = mono_ms();
    if (g->last_error && now - g->last_error < 1000) return;
    g->last_error = now;
    ew__bus_log(g->b->bus, EW_LOG_ERROR, "sqlite bus: group %s: %s: %s (retrying)", g->name, what,
                e->msg);
}

/* This bus committed, or the group has a new pattern: the consumer reads at once. Any thread. */
void ew__sq_kick(group *g)
{
    atomic_store(&g->kick, true);
    if (!atomic_load(&g->idle)) return; /* it looks at kick before it sleeps */
    uint64_t one = 1;
    ssize_t k = write(g->kick_fd, &one, sizeof one);
    (void)k; /* a full counter wakes it as well */
}

/* ---- owners: who holds a lease, and whether it still lives ----------------------------------- */

/* host/pid namespace/pid/random: unique per consumer, and telling, on this machine, whether the
 * process that holds a lease is gone (then its lease is taken at once, not after it expires). */
static void owner_make(const sqbus *b, char *out, size_t n)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(out, n, "%s/%s/%ld/%.8s", b->host, b->pidns, (long)b->pid, id + 28);
}

static bool owner_dead(const sqbus *b, const char *owner)
{
    char host[64], ns[32];
    long pid;
    int used = 0;
    if (sscanf(owner, "%63[^/]/%31[^/]/%ld/%n", host, ns, &pid, &used) != 3 || !used) return false;
    if (strcmp(host, b->host) != 0 || strcmp(ns, b->pidns) != 0 || strcmp(ns, "?") == 0)
        return false; /* another machine or container: only the lease's expiry tells */
    if (pid <= 0 || pid == (long)b->pid) return false; /* ours: a bus of this process */
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* ---- the lease and the position ------------------------------------------------------------- */

/* Takes the group's lease when it is free, expired or its holder's process is gone, and then
 * starts after the group's position. */
static void try_acquire(group *g)
{
    sqbus *b = g->b;
    ew__store_group row;
    ew_error e = {0};
    if (ew__store_group_get(g->st, g->name, &row, &e)) {
        consumer_error(g, "reading the group's row", &e);
        return;
    }
    const char *from = NULL;
    if (row.owner[0] && strcmp(row.owner, g->owner) != 0 && row.lease_until_us > ew_now_us()) {
        if (!owner_dead(b, row.owner)) return; /* a live holder: stand by */
        from = row.owner;
    }
    int held = 0;
    if (ew__store_group_lease(g->st, g->name, g->owner, from, LEASE_MS, &held, &e)) {
        consumer_error(g, "taking the group's lease", &e);
        return;
    }
    if (!held) return;
    if (ew__store_group_get(g->st, g->name, &row, &e)) { /* the position, now that it is ours */
        consumer_error(g, "reading the group's row", &e);
        int ignored;
        ew__store_group_commit(g->st, g->name, g->owner, 0, 0, &ignored, NULL);
        return;
    }
    g->active = g->want = true;
    g->have_dv = false;
    g->read_pos = g->delivered = g->settled = g->committed = row.position;
    g->last_commit = g->next_renew = mono_ms();
    g->next_renew += RENEW_MS;
    ew__bus_log(b->bus, EW_LOG_INFO, "sqlite bus: %s consumes group %s from position %lld%s%s",
                g->owner, g->name, (long long)row.position, from ? ", taken from " : "",
                from ? from : "");
}

/* The group's position: every delivery up to it is settled, and past the last one delivered
 * (when that is settled too) the rows read were not the group's. */
static int64_t floor_of(const group *g)
{
    return g->settled >= g->delivered ? g->read_pos : g->settled;
}

/* Whether the position is to be written before the lease's renewal: a delivery was settled
 * since the last write. A position moved only past rows that were not the group's (every other
 * group's events, for a group that waits for a few types) goes with the renewal, once a second:
 * a consumer that starts from the older one reads those rows again and skips them again, which
 * is all it costs, where writing it every COMMIT_MS made each idle group a writer of the shared
 * file (a transaction and its WAL pages) after almost every commit of the others. */
static bool position_due(const group *g)
{
    return g->settled > g->committed && floor_of(g) > g->committed;
}

/* Writes the position when deliveries moved it and COMMIT_MS passed, and renews the lease (with
 * the position, wherever it is) when due. EW_ECONFLICT when another consumer took the lease
 * over (ours expired): what is in flight finishes without moving the position any more. */
static int commit_position(group *g, ew_error *err)
{
    int64_t now = mono_ms(), floor = floor_of(g);
    if (!(position_due(g) && now - g->last_commit >= COMMIT_MS) && now < g->next_renew) return 0;
    int held = 0;
    ew_error e = {0};
    g->last_commit = now;
    if (ew__store_group_commit(g->st, g->name, g->owner, floor, LEASE_MS, &held, &e)) {
        consumer_error(g, "writing the group's position", &e);
        return 0; /* tried again at the next turn; the lease lasts LEASE_MS */
    }
    if (held) {
        g->next_renew = now + RENEW_MS;
        if (floor > g->committed) g->committed = floor;
        return 0;
    }
    g->active = false;
    return ew_error_set(err, EW_ECONFLICT,
                        "%s lost the lease of group %s (not renewed for %d ms): standing by",
                        g->owner, g->name, LEASE_MS);
}

/* ---- waiting for work ----------------------------------------------------------------------- */

enum { WOKE_KICK = 1, WOKE_WRITE = 2 };

/* Watches the store's signal file, which every connection of this library writes after a
 * commit that added events (store_bus.h: IN_MODIFY once per such commit); where it cannot be
 * watched, the WAL, which every commit of anyone writes, page by page. Without inotify (a limit
 * reached, a file system that has none) the consumer polls. */
static void watch_wal(group *g)
{
    if (g->ino_fd < 0 || g->watching) return;
    if (g->b->signal_path)
        g->watching = inotify_add_watch(g->ino_fd, g->b->signal_path, IN_MODIFY) >= 0;
    if (!g->watching && g->b->wal_path)
        g->watching = inotify_add_watch(g->ino_fd, g->b->wal_path, IN_MODIFY) >= 0;
}

static int drain_inotify(group *g)
{
    int why = 0;
    _Alignas(struct inotify_event) char buf[4096];
    ssize_t n;
    while ((n = read(g->ino_fd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *e = (const struct inotify_event *)p;
            if (e->mask & (IN_MODIFY | IN_Q_OVERFLOW)) why |= WOKE_WRITE;
            if (e->mask & IN_IGNORED) g->watching = false; /* the WAL went: watch it again */
            p += sizeof *e + e->len;
        }
    }
    return why;
}

/* Sleeps up to timeout_us, or until the core has work (done() calls, stop) or, when awake, a
 * kick or a change of the WAL. Returns WOKE_ bits. */
static int wait_for_work(group *g, int64_t timeout_us, bool awake)
{
    int why = 0;
    if (awake) atomic_store(&g->idle, true);
    if (!awake || !atomic_load(&g->kick)) {
        struct pollfd p[3] = {{ew__consumer_wake_fd(g->core), POLLIN, 0},
                              {g->kick_fd, POLLIN, 0},
                              {g->ino_fd, POLLIN, 0}};
        struct timespec ts = {(time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000};
        nfds_t n = !awake ? 1 : g->watching ? 3 : 2;
        if (ppoll(p, n, &ts, NULL) > 0 && n == 3 && (p[2].revents & POLLIN))
            why |= drain_inotify(g);
    }
    if (!awake) return why;
    atomic_store(&g->idle, false);
    uint64_t v;
    ssize_t k = read(g->kick_fd, &v, sizeof v); /* non-blocking: empties the counter */
    (void)k;
    if (atomic_exchange(&g->kick, false)) why |= WOKE_KICK;
    return why;
}

/* ---- reading -------------------------------------------------------------------------------- */

/* ew__store_scan's callback: one wanted row through the consumer core, its position the token.
 * The store's scan decoded the row already: the receive path takes its result as it is
 * (predecoded) and runs the rest — the hook points, or the dead letter under the one policy. A
 * row the core gives back (the consumer is stopping, no memory) ends the read before it. */
static int on_entry(void *ud, const ew__store_entry *e)
{
    group *g = ud;
    char where[64], why[400];
    snprintf(where, sizeof where, "sqlite position=%lld", (long long)e->position);
    if (!e->event)
        snprintf(why, sizeof why, "event at position %lld: %s", (long long)e->position,
                 e->error_msg ? e->error_msg : "cannot be decoded");
    ew__recv_msg rm = {
        .wire = {.binding = EW__BINDING_STRUCTURED, .body = e->json, .body_len = e->json_len},
        .group = g->name,
        .type_hint = e->event_type,
        .id_hint = e->event_id,
        .transport = where,
        .predecoded = true,
        .event = e->event,
        .error = e->error,
        .error_msg = e->event ? NULL : why,
    };
    if (!ew__consumer_receive(g->core, &rm, (ew__ack_token){.a = (uint64_t)e->position})) {
        g->released = true; /* read again from it */
        return 1;
    }
    g->delivered = e->position;
    return 0;
}

/* Reads up to max rows after read_pos. */
static void scan(group *g, size_t max)
{
    const char *pats[64], **pv = pats;
    pthread_mutex_lock(&g->mu);
    size_t np = g->npatterns;
    if (np > 64 && !(pv = malloc(np * sizeof *pv))) np = 0;
    if (np) memcpy(pv, g->patterns, np * sizeof *pv); /* the strings live until close */
    pthread_mutex_unlock(&g->mu);
    int64_t from = g->read_pos, last = from;
    ew_error e = {0};
    int rc = np ? ew__store_scan(g->st, from, pv, np, max, g->b->max_bytes, on_entry, g, &last, &e)
                : ew_error_set(&e, EW_ENOMEM, "out of memory for the group's patterns");
    if (pv != pats) free(pv);
    if (rc) {
        consumer_error(g, "reading the log", &e);
        g->resume_at = mono_ms() + RETRY_MS;
        return;
    }
    g->want = last - from >= (int64_t)max;
    if (g->released) { /* the row the read stopped at goes again, after a pause */
        g->released = false;
        g->want = true;
        last--;
        g->resume_at = mono_ms() + RETRY_MS;
    }
    g->read_pos = last;
}

/* ---- the transport (consumer.h) -------------------------------------------------------------- */

/* ops->connect: the connection is the group's store handle, open from the start; a consumer
 * (again) in this role stands by until it holds the lease (t_fetch). */
static int t_connect(void *t, ew_error *err)
{
    (void)err;
    group *g = t;
    g->active = false;
    g->next_lease = 0;
    return 0;
}

/* The wait in fetch: short while a position is due or a commit may be syncing, longer when idle,
 * never past the lease's renewal. */
static int64_t idle_wait_us(const group *g, int64_t now, bool busy)
{
    int64_t us;
    if (position_due(g))
        us = (g->last_commit + COMMIT_MS - now) * 1000;
    else if (g->settle_until > now)
        us = SETTLE_US;
    else if (busy)
        us = RENEW_MS * 1000; /* the core wakes us as deliveries finish */
    else
        us = g->watching ? FALLBACK_MS * 1000 : POLL_US;
    if (g->settle_until > now && us > SETTLE_US) us = SETTLE_US;
    if ((g->next_renew - now) * 1000 < us) us = (g->next_renew - now) * 1000;
    return us > 0 ? us : 0;
}

/* ops->fetch: stands by without the lease; holding it, writes what is due, reads when there may
 * be something to read (the bus committed, the WAL changed and data_version says another
 * connection committed, a timer ran out), else waits. The data_version compared with is always
 * one read before the scan it led to, so a commit after that scan shows as a change. */
static int t_fetch(void *t, size_t max, int wait_ms, ew_error *err)
{
    group *g = t;
    int64_t now = mono_ms();
    bool stopping = ew__consumer_stopping(g->core);
    if (!g->active) {
        /* Only once every delivery of an earlier tenure is done (the window is empty). */
        if (!stopping && now >= g->next_lease && max >= g->b->max_inflight) {
            g->next_lease = now + STANDBY_MS;
            try_acquire(g);
        }
        if (!g->active) wait_for_work(g, (int64_t)STANDBY_MS * 1000, false);
        return 0;
    }
    int rc = commit_position(g, err);
    if (rc) return rc;
    if (stopping) {
        wait_for_work(g, idle_wait_us(g, now, true), false);
        return 0;
    }
    watch_wal(g);
    if (g->want && now >= g->resume_at) {
        if (!g->have_dv) g->have_dv = ew__store_data_version(g->st, &g->dv, NULL) == 0;
        scan(g, max);
        return 0;
    }
    int64_t us = idle_wait_us(g, now, max < g->b->max_inflight);
    if (g->want && (g->resume_at - now) * 1000 < us) us = (g->resume_at - now) * 1000;
    if (us > (int64_t)wait_ms * 1000) us = (int64_t)wait_ms * 1000;
    int why = wait_for_work(g, us, true);
    if (why & WOKE_KICK) {
        g->want = true;
        return 0;
    }
    int64_t v;
    now = mono_ms();
    if (ew__store_data_version(g->st, &v, NULL) != 0) {
        g->want = true;
        g->have_dv = false;
    } else if (!g->have_dv || v != g->dv) {
        g->want = true;
        g->dv = v;
        g->have_dv = true;
        g->settle_until = 0;
    } else if (why & WOKE_WRITE) {
        g->settle_until = now + SETTLE_MS; /* a commit may be syncing: look again soon */
    } else if (g->settle_until && now >= g->settle_until) {
        g->settle_until = 0;
    }
    return 0;
}

/* ops->settle: every delivery up to tok is finished; the position follows (commit_position). */
static int t_settle(void *t, const ew__ack_token *tok, size_t count, bool upto, ew_error *err)
{
    (void)count;
    group *g = t;
    if (upto && (int64_t)tok->a > g->settled) g->settled = (int64_t)tok->a;
    return g->active ? commit_position(g, err) : 0;
}

/* ops->keepalive: the lease and the position while the thread is away from fetch (a full
 * window, a dead letter sink that refuses). */
static int t_keepalive(void *t, ew_error *err)
{
    group *g = t;
    return g->active ? commit_position(g, err) : 0;
}

/* ops->release: the row goes again — the read that brought it stops there (on_entry), and the
 * next one starts with it. Nothing to tell the database. */
static int t_release(void *t, const ew__ack_token *tok, ew_error *err)
{
    (void)t, (void)tok, (void)err;
    return 0;
}

/* ops->disconnect: the lease was lost (what the core held is forgotten: its deliveries finish
 * without moving the position), or the bus closes: the last position is written and the lease
 * given up, so that a standby consumer takes over at once. */
static void t_disconnect(void *t, bool closing)
{
    group *g = t;
    if (!closing || !g->active || g->ephemeral) {
        g->active = false;
        return;
    }
    g->active = false;
    int64_t floor = floor_of(g);
    int held = 0;
    ew_error e = {0};
    if (ew__store_group_commit(g->st, g->name, g->owner, floor, 0, &held, &e))
        ew__bus_log(g->b->bus, EW_LOG_ERROR,
                    "sqlite bus: group %s: position %lld not written at close: %s", g->name,
                    (long long)floor, e.msg);
    else if (held)
        ew__bus_log(g->b->bus, EW_LOG_DEBUG, "sqlite bus: %s left group %s at position %lld",
                    g->owner, g->name, (long long)floor);
}

static const ew__consumer_ops transport = {
    .connect = t_connect,
    .fetch = t_fetch,
    .settle = t_settle,
    .keepalive = t_keepalive,
    .disconnect = t_disconnect,
    .release = t_release,
    .settle_one = false, /* a position covers everything before it */
    .backoff_min_ms = STANDBY_MS,
    .backoff_max_ms = LEASE_MS,
    .idle_ms = FALLBACK_MS,
};

/* ---- groups --------------------------------------------------------------------------------- */

/* Opens the group's connection (its errors surface here, at start) and starts its core. */
int ew__sq_group_start(group *g, ew_error *err)
{
    sqbus *b = g->b;
    if (!g->st) {
        ew_store_options so = {.config = b->cfg, .log = ew__sq_store_log, .log_ud = b->bus};
        int rc = ew_store_open(&g->st, &so, err);
        if (rc) return rc;
    }
    if (g->ino_fd < 0 && (g->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0)
        ew__bus_log(b->bus, EW_LOG_DEBUG,
                    "sqlite bus: group %s: no inotify (%s): idle consumers poll every %d us",
                    g->name, strerror(errno), POLL_US);
    int rc = ew__consumer_start(g->core, err);
    if (rc) return rc;
    g->started = true;
    return 0;
}

void ew__sq_group_free(group *g)
{
    if (!g) return;
    ew__consumer_free(g->core);
    ew_store_close(g->st);
    for (size_t i = 0; i < g->npatterns; i++)
        free(g->patterns[i]);
    free(g->patterns);
    free(g->name);
    free(g->what);
    if (g->kick_fd >= 0) close(g->kick_fd);
    if (g->ino_fd >= 0) close(g->ino_fd);
    pthread_mutex_destroy(&g->mu);
    free(g);
}

group *ew__sq_group_new(sqbus *b, const char *name)
{
    group *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->b = b;
    g->ino_fd = -1;
    g->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (pthread_mutex_init(&g->mu, NULL)) {
        if (g->kick_fd >= 0) close(g->kick_fd);
        free(g);
        return NULL;
    }
    g->name = strdup(name);
    snprintf(g->thread, sizeof g->thread, "ews:%.11s", name); /* top -H: which group's */
    if (!g->name || g->kick_fd < 0 ||
        asprintf(&g->what, "sqlite bus: consumer of group %s", name) < 0) {
        g->what = NULL;
        ew__sq_group_free(g);
        return NULL;
    }
    owner_make(b, g->owner, sizeof g->owner);
    ew__consumer_conf conf = {
        .bus = b->bus,
        .group = g->name,
        .what = g->what,
        .thread = g->thread,
        .max_inflight = b->max_inflight,
        .max_bytes = b->max_bytes,
        .ops = &transport,
        .t = g,
    };
    if (ew__consumer_new(&g->core, &conf, NULL)) {
        ew__sq_group_free(g);
        return NULL;
    }
    return g;
}

group *ew__sq_group_find(sqbus *b, const char *name)
{
    for (group *g = atomic_load(&b->groups); g; g = g->next)
        if (strcmp(g->name, name) == 0) return g;
    return NULL;
}

#else
typedef int ew__sqlite_consume_unused;
#endif
