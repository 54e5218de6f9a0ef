/* eventwire — the SQLite bus, consuming: each group's consumer thread, its lease on the group's
 * row, the ring of deliveries in flight, waiting for commits (inotify on the WAL, data_version),
 * rows through the receive path, and the group's position moved up to the oldest delivery not yet
 * done. */
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
#include "bus/receive.h"
#include "bus/sqlite_bus.h"
#include "eventwire/catalog.h"
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

/* Under g->mu: wakes the consumer when it sleeps. */
void ew__sq_wake(group *g)
{
    if (!g->idle) return;
    uint64_t one = 1;
    ssize_t k = write(g->wake_fd, &one, sizeof one);
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

/* ---- the ring of deliveries ------------------------------------------------------------------ */

/* Ring index i (< max_inflight); its chunk exists (ring_reserve). */
static slot *slot_at(const group *g, size_t i)
{
    return &g->chunks[i / CHUNK][i % CHUNK];
}

/* Under g->mu: makes sure the next n slots after the tail exist; how many do (<= n). */
static size_t ring_reserve(group *g, size_t n)
{
    size_t cap = g->b->max_inflight;
    for (size_t k = 0; k < n; k++) {
        size_t i = (g->head + g->count + k) % cap;
        if (g->chunks[i / CHUNK]) continue;
        size_t len = cap - i / CHUNK * CHUNK < CHUNK ? cap - i / CHUNK * CHUNK : CHUNK;
        if (!(g->chunks[i / CHUNK] = calloc(len, sizeof(slot)))) return k;
    }
    return n;
}

/* Under g->mu: frees the finished slots at the head. */
static void ring_pop(group *g)
{
    size_t cap = g->b->max_inflight;
    while (g->count && slot_at(g, g->head)->state == SLOT_DONE) {
        slot *s = slot_at(g, g->head);
        ew_event_unref(s->ev);
        s->ev = NULL;
        s->state = 0;
        g->head = (g->head + 1) % cap;
        g->count--;
    }
}

/* Under g->mu: the highest position below which every delivery is done. */
int64_t ew__sq_ring_floor(const group *g)
{
    return g->count ? slot_at(g, g->head)->position - 1 : g->scanned;
}

static void slot_finish(slot *s, int state)
{
    group *g = s->g;
    pthread_mutex_lock(&g->mu);
    s->state = state;
    if (state == SLOT_RETRY) {
        g->retry = true;
        ew__sq_wake(g);
    }
    size_t before = g->count;
    ring_pop(g);
    if (g->count < before && g->for_room) ew__sq_wake(g);
    pthread_mutex_unlock(&g->mu);
}

/* The dispatcher's done(): every handler of the group is finished with the row, or the bus
 * closed first. An abandon while the bus runs (the dispatcher ran out of memory for one of the
 * handlers) delivers the row again; at close it stays undone, so the position stops before it. */
static void on_done(ew_delivery *dl, ew_delivery_outcome outcome)
{
    slot *s = dl->token;
    int state = SLOT_DONE;
    if (outcome == EW_DELIVERY_ABANDONED)
        state = atomic_load(&s->g->b->stopping) ? SLOT_ABANDONED : SLOT_RETRY;
    slot_finish(s, state);
}

/* ---- waiting for work ----------------------------------------------------------------------- */

enum { WOKE_KICK = 1, WOKE_WRITE = 2 };

/* Watches the WAL: a commit by anyone writes it (IN_MODIFY). Without inotify (a limit reached,
 * a file system that has none) the consumer polls. */
static void watch_wal(group *g)
{
    if (g->ino_fd < 0 || g->watching || !g->b->wal_path) return;
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

/* Sleeps up to timeout_us, or until woken: by a kick, a retry or the stop (when awake is true),
 * a slot coming free (for_room), or the WAL changing. Returns WOKE_ bits. */
static int consumer_wait(group *g, int64_t timeout_us, bool awake, bool for_room)
{
    pthread_mutex_lock(&g->mu);
    bool ready = atomic_load(&g->b->stopping) ||
                 (awake && (g->kick || g->retry || (for_room && g->count < g->b->max_inflight)));
    g->idle = awake && !ready;
    g->for_room = for_room;
    pthread_mutex_unlock(&g->mu);
    int why = 0;
    if (!ready) {
        struct pollfd p[2] = {{g->wake_fd, POLLIN, 0}, {g->ino_fd, POLLIN, 0}};
        struct timespec ts = {(time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000};
        if (ppoll(p, awake && g->watching ? 2 : 1, &ts, NULL) > 0 && (p[1].revents & POLLIN))
            why |= drain_inotify(g);
    }
    pthread_mutex_lock(&g->mu);
    g->idle = g->for_room = false;
    uint64_t v;
    ssize_t k = read(g->wake_fd, &v, sizeof v); /* non-blocking: empties the counter */
    (void)k;
    if (g->kick && awake) why |= WOKE_KICK;
    if (awake) g->kick = false;
    pthread_mutex_unlock(&g->mu);
    return why;
}

/* ---- consuming ------------------------------------------------------------------------------ */

/* ew__receive's question while the dead letter sink refuses a row. */
static bool recv_stopping(void *ud)
{
    group *g = ud;
    return atomic_load(&g->b->stopping);
}

/* Hands a slot's event to the dispatcher, waiting out a shortage of memory. False when the bus
 * stopped first (the slot is then abandoned). */
static bool deliver(group *g, slot *s)
{
    for (;;) {
        s->dl = (ew_delivery){.event = s->ev, .group = g->name, .done = on_done, .token = s};
        ew_error e = {0};
        int rc = ew__dispatch_deliver(g->b->disp, &s->dl, &e);
        if (rc == 0) return true;
        if (rc != EW_ENOMEM) { /* not a catalog event: cannot happen for a decoded one */
            char where[64];
            snprintf(where, sizeof where, "sqlite position=%lld", (long long)s->position);
            if (!ew__recv_refused(g->b->bus, s->ev, g->name, where, rc, e.msg, recv_stopping, g))
                break;
            slot_finish(s, SLOT_DONE);
            return true;
        }
        consumer_error(g, "cannot hand an event to the dispatcher", &e);
        if (atomic_load(&g->b->stopping)) break;
        usleep(RETRY_MS * 1000);
    }
    slot_finish(s, SLOT_ABANDONED);
    return false;
}

/* ew__store_scan's callback: one wanted row into a slot, then to the dispatcher or the dead
 * letters. The scan never brings more rows than there are free slots. */
static int on_entry(void *ud, const ew__store_entry *e)
{
    group *g = ud;
    pthread_mutex_lock(&g->mu);
    slot *s = slot_at(g, (g->head + g->count) % g->b->max_inflight);
    s->g = g;
    s->position = e->position;
    s->ev = NULL;
    s->state = SLOT_BUSY;
    g->count++;
    pthread_mutex_unlock(&g->mu);
    if (atomic_load(&g->b->stopping)) { /* the scan counts this row: it stays undone */
        slot_finish(s, SLOT_ABANDONED);
        return 1;
    }
    /* The store's scan decoded the row already: the receive path takes its result as it is
     * (predecoded) and runs the rest — the hook points, or the dead letter and its retries. */
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
    switch (ew__receive(g->b->bus, &rm, g->b->max_bytes, recv_stopping, g, &s->ev)) {
    case EW__RECV_EVENT:
        return deliver(g, s) ? 0 : 1;
    case EW__RECV_DEAD:
        slot_finish(s, SLOT_DONE);
        return 0;
    case EW__RECV_STOPPED:
        break;
    }
    slot_finish(s, SLOT_ABANDONED);
    return 1;
}

/* Delivers again, in order of position, the slots whose delivery was abandoned while the bus
 * ran. Slots do not move and only done ones leave the ring, so every slot marked for retry when
 * this starts lies in [head, head + count) as they were then, also while others finish meanwhile
 * (one marked later sets retry again). */
static void redeliver(group *g)
{
    size_t cap = g->b->max_inflight;
    pthread_mutex_lock(&g->mu);
    g->retry = false;
    size_t start = g->head, n = g->count;
    for (size_t k = 0; k < n; k++) {
        slot *s = slot_at(g, (start + k) % cap);
        if (s->state != SLOT_RETRY) continue;
        s->state = SLOT_BUSY;
        pthread_mutex_unlock(&g->mu);
        bool ok = deliver(g, s);
        pthread_mutex_lock(&g->mu);
        if (!ok) break;
    }
    pthread_mutex_unlock(&g->mu);
}

/* Reads up to room rows after read_pos. True when there may be more right away. */
static bool scan(group *g, size_t room)
{
    const char *pats[64], **pv = pats;
    pthread_mutex_lock(&g->mu);
    room = ring_reserve(g, room); /* each row the scan brings takes a slot */
    size_t np = g->npatterns;
    if (np > 64 && !(pv = malloc(np * sizeof *pv))) room = 0;
    if (room) memcpy(pv, g->patterns, np * sizeof *pv); /* the strings live until close */
    pthread_mutex_unlock(&g->mu);
    if (!room) {
        if (pv != pats) free(pv);
        ew_error e;
        ew_error_set(&e, EW_ENOMEM, "out of memory for deliveries in flight");
        consumer_error(g, "reading the log", &e);
        usleep(RETRY_MS * 1000);
        return true;
    }
    int64_t from = g->read_pos, last = from;
    ew_error e = {0};
    int rc = ew__store_scan(g->st, from, pv, np, room, g->b->max_bytes, on_entry, g, &last, &e);
    if (pv != pats) free(pv);
    if (rc) {
        consumer_error(g, "reading the log", &e);
        usleep(RETRY_MS * 1000);
        return true;
    }
    pthread_mutex_lock(&g->mu);
    if (last > g->scanned) g->scanned = last;
    pthread_mutex_unlock(&g->mu);
    g->read_pos = last;
    return last - from >= (int64_t)room;
}

/* Takes the group's lease when it is free, expired or its holder's process is gone, and then
 * starts after the group's position. Only once every delivery of an earlier tenure is done. */
static void try_acquire(group *g)
{
    sqbus *b = g->b;
    pthread_mutex_lock(&g->mu);
    size_t busy = g->count;
    pthread_mutex_unlock(&g->mu);
    if (busy) return;
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
    g->active = true;
    g->read_pos = g->committed = row.position;
    pthread_mutex_lock(&g->mu);
    g->scanned = row.position;
    pthread_mutex_unlock(&g->mu);
    ew__bus_log(b->bus, EW_LOG_INFO, "sqlite bus: %s consumes group %s from position %lld%s%s",
                g->owner, g->name, (long long)row.position, from ? ", taken from " : "",
                from ? from : "");
}

/* Writes the group's position (as far as every delivery is done) and renews the lease. */
static void commit_position(group *g)
{
    pthread_mutex_lock(&g->mu);
    int64_t floor = ew__sq_ring_floor(g);
    pthread_mutex_unlock(&g->mu);
    int held = 0;
    ew_error e = {0};
    if (ew__store_group_commit(g->st, g->name, g->owner, floor, LEASE_MS, &held, &e)) {
        consumer_error(g, "writing the group's position", &e);
        return;
    }
    if (held) {
        if (floor > g->committed) g->committed = floor;
        return;
    }
    /* Another consumer took the lease over (ours expired): stop reading; what is in flight
     * finishes, and it resumes from the position we last wrote. */
    g->active = false;
    ew__bus_log(g->b->bus, EW_LOG_WARN,
                "sqlite bus: %s lost the lease of group %s (not renewed for %d ms): standing by",
                g->owner, g->name, LEASE_MS);
}

/* The consumer of a group. While it does not hold the lease it looks at it every STANDBY_MS.
 * Holding it, it reads whenever there may be something to read: this bus committed (a kick),
 * the WAL changed and data_version says another connection committed, or a timer ran out. The
 * data_version it compares with is always one read before the scan it led to, so a commit after
 * that scan shows as a change. */
static void *consumer_main(void *arg)
{
    group *g = arg;
    sqbus *b = g->b;
    int64_t dv = 0, settle_until = 0, next_lease = 0, next_renew = 0, last_commit = 0;
    bool have_dv = false, want = true;
    while (!atomic_load(&b->stopping)) {
        int64_t now = mono_ms();
        if (!g->active) {
            if (now >= next_lease) {
                next_lease = now + STANDBY_MS;
                try_acquire(g);
            }
            if (!g->active) {
                consumer_wait(g, STANDBY_MS * 1000, false, false);
                continue;
            }
            want = true;
            next_renew = now + RENEW_MS;
        }
        pthread_mutex_lock(&g->mu);
        int64_t floor = ew__sq_ring_floor(g);
        size_t room = b->max_inflight - g->count, inflight = g->count;
        bool retry = g->retry;
        pthread_mutex_unlock(&g->mu);
        if ((floor > g->committed && now - last_commit >= COMMIT_MS) || now >= next_renew) {
            commit_position(g);
            last_commit = now;
            next_renew = now + RENEW_MS;
            if (!g->active) continue;
        }
        if (retry) redeliver(g);
        watch_wal(g);
        if (want && room > 0) {
            if (!have_dv) have_dv = ew__store_data_version(g->st, &dv, NULL) == 0;
            want = scan(g, room);
            continue;
        }
        int64_t timeout_us;
        if (room == 0 || inflight || floor > g->committed)
            timeout_us = COMMIT_MS * 1000; /* positions to write as deliveries finish */
        else if (settle_until > now)
            timeout_us = SETTLE_US;
        else
            timeout_us = g->watching ? FALLBACK_MS * 1000 : POLL_US;
        if (settle_until > now && timeout_us > SETTLE_US) timeout_us = SETTLE_US;
        if ((next_renew - now) * 1000 < timeout_us)
            timeout_us = next_renew > now ? (next_renew - now) * 1000 : 0;
        int why = consumer_wait(g, timeout_us, true, room == 0);
        if (why & WOKE_KICK) {
            want = true;
            continue;
        }
        int64_t v;
        now = mono_ms();
        if (ew__store_data_version(g->st, &v, NULL) != 0) {
            want = true;
            have_dv = false;
        } else if (!have_dv || v != dv) {
            want = true;
            dv = v;
            have_dv = true;
            settle_until = 0;
        } else if (why & WOKE_WRITE) {
            settle_until = now + SETTLE_MS; /* a commit may be syncing: look again soon */
        } else if (settle_until && now >= settle_until) {
            settle_until = 0;
        }
    }
    return NULL;
}

int ew__sq_group_start(group *g, ew_error *err)
{
    sqbus *b = g->b;
    ew_store_options so = {.config = b->cfg, .log = ew__sq_store_log, .log_ud = b->bus};
    int rc = ew_store_open(&g->st, &so, err);
    if (rc) return rc;
    g->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (g->ino_fd < 0)
        ew__bus_log(b->bus, EW_LOG_DEBUG,
                    "sqlite bus: group %s: no inotify (%s): idle consumers poll every %d us",
                    g->name, strerror(errno), POLL_US);
    if (pthread_create(&g->thread, NULL, consumer_main, g)) {
        ew_store_close(g->st);
        g->st = NULL;
        return ew_error_set(err, EW_ENOMEM, "cannot start the consumer of group %s", g->name);
    }
    pthread_setname_np(g->thread, "ew:sqlite-read"); /* top -H, perf: which thread is which */
    g->running = true;
    return 0;
}

void ew__sq_group_free(group *g)
{
    if (!g) return;
    for (size_t i = 0; i < g->npatterns; i++)
        free(g->patterns[i]);
    free(g->patterns);
    for (size_t c = 0; c < g->nchunks; c++) {
        if (!g->chunks[c]) continue;
        for (size_t i = 0; i < CHUNK && c * CHUNK + i < g->b->max_inflight; i++)
            ew_event_unref(g->chunks[c][i].ev);
        free(g->chunks[c]);
    }
    free(g->chunks);
    free(g->name);
    if (g->wake_fd >= 0) close(g->wake_fd);
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
    g->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (pthread_mutex_init(&g->mu, NULL)) {
        if (g->wake_fd >= 0) close(g->wake_fd);
        free(g);
        return NULL;
    }
    g->name = strdup(name);
    g->nchunks = (b->max_inflight + CHUNK - 1) / CHUNK;
    g->chunks = calloc(g->nchunks, sizeof *g->chunks);
    if (!g->name || !g->chunks || g->wake_fd < 0) {
        ew__sq_group_free(g);
        return NULL;
    }
    owner_make(b, g->owner, sizeof g->owner);
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
