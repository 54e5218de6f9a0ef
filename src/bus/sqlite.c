/* eventwire — the SQLite bus (EVENT_BUS_TYPE=sqlite, the default): the event store's log is the
 * bus. Publishing appends to event_store.events (ew_store_record), with concurrent publishers of
 * one bus gathered into one transaction (group commit). Each subscriber group keeps its position
 * in event_store.bus_groups; one consumer thread per group reads the log after it, hands events
 * to the dispatcher and moves the position up to the oldest delivery not yet done. Several
 * processes share the file: the consumers of one group compete for a lease on its row, and an
 * idle consumer sleeps until inotify says the WAL changed (or a timer), then asks PRAGMA
 * data_version whether a commit happened. docs/bus-sqlite.md has the details and the numbers. */
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
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "eventwire/store.h"

/* A group's lease lasts LEASE_MS unless renewed, which its holder does every RENEW_MS; a
 * consumer without it looks at it every STANDBY_MS. */
#define LEASE_MS 5000
#define RENEW_MS 1000
#define STANDBY_MS 100
/* A position that moved is written at most every COMMIT_MS. */
#define COMMIT_MS 10
/* An idle consumer with inotify checks data_version every FALLBACK_MS anyway; without inotify it
 * polls every POLL_US. After a write to the WAL with no commit visible yet (a commit being synced
 * in the lock: SQLite's synchronous=FULL), it looks again every SETTLE_US for SETTLE_MS. */
#define FALLBACK_MS 100
#define POLL_US 2000
#define SETTLE_US 1000
#define SETTLE_MS 3
/* After a database error, before trying again. */
#define RETRY_MS 100
/* One group commit takes at most this many events (and always at least one publish). */
#define MAX_COMMIT_EVENTS 4096
/* Slots of deliveries in flight are allocated this many at a time, when first needed. */
#define CHUNK 1024

typedef struct sqbus sqbus;
typedef struct group group;

/* ---- deliveries in flight ----------------------------------------------------------------- */

enum { SLOT_BUSY = 1, SLOT_DONE, SLOT_RETRY, SLOT_ABANDONED };

/* One row handed to the dispatcher. Slots form a ring in the order of their positions. */
typedef struct slot {
    ew_delivery dl; /* dl.token is the slot */
    group *g;
    int64_t position;
    ew_event *ev; /* our reference, kept to deliver it again after an abandon while running */
    int state;
} slot;

/* ---- subscriber groups ---------------------------------------------------------------------- */

struct group {
    sqbus *b;
    group *next; /* the bus's groups, newest first; never removed before close */
    char *name;
    bool ephemeral; /* its row goes when the bus closes */
    char owner[EW_STORE_OWNER_MAX];

    pthread_mutex_t mu; /* everything down to idle */
    char **patterns;
    size_t npatterns, pcap;
    /* The ring of max_inflight slots, [head, head + count) in flight, by position. Slots never
     * move (the dispatcher holds them): they come in chunks of CHUNK, allocated when first
     * needed, so that a large EVENT_BUS_MAX_IN_FLIGHT costs only what is used. */
    slot **chunks;
    size_t nchunks;
    size_t head, count;
    int64_t scanned; /* the last position the consumer looked at */
    bool kick;       /* this bus committed events: read now */
    bool retry;      /* some slot wants delivering again */
    bool idle;       /* the consumer sleeps and wants waking for these */
    bool for_room;   /* ... and for a slot coming free */
    int wake_fd;     /* eventfd: wakes the sleeping consumer */

    /* The consumer thread's own. */
    ew_store *st; /* its connection: reads, data_version, lease and position */
    int ino_fd;   /* inotify on the WAL file; -1 without */
    bool watching;
    pthread_t thread;
    bool running;
    bool active;        /* holds the lease */
    int64_t read_pos;   /* reads continue after it */
    int64_t committed;  /* the position in the database */
    int64_t last_error; /* mono ms of the last logged error, to log a failing loop sparingly */
};

/* ---- group commit --------------------------------------------------------------------------- */

/* A publish waiting for its turn. The first to arrive leads: it commits everything queued and
 * wakes each publisher it committed for on its own semaphore (they never take the queue's lock
 * again), then names the next leader, the oldest publisher still queued. */
typedef struct pubreq {
    const ew_event *const *evs;
    size_t n;
    int rc;
    ew_error err;
    bool lead; /* woken to lead, not because it is done */
    sem_t sem;
    struct pubreq *next;
} pubreq;

struct sqbus {
    ew_bus *bus;
    ew_dispatcher *disp;
    const ew_config *cfg;
    ew_store *st; /* publishing and group creation */
    size_t max_inflight, max_bytes;
    char *wal_path; /* the database's WAL file, which idle consumers watch */
    int wal_fd;     /* open on it, to sync it after each group commit; -1: FULL commits instead */
    char host[64], pidns[32];
    pid_t pid;

    pthread_mutex_t mu; /* groups, started */
    _Atomic(group *) groups;
    bool started;
    atomic_bool stopping;

    pthread_mutex_t gc_mu; /* the queue of publishes */
    pubreq *q_head, *q_tail;
    bool leading;
    atomic_uint_fast64_t commits, events;
};

/* ---- small helpers -------------------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    return ew_mono_ns() / 1000000;
}

static void store_log(void *ud, const ew_log_record *rec)
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
static void wake(group *g)
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
static int64_t ring_floor(const group *g)
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
        wake(g);
    }
    size_t before = g->count;
    ring_pop(g);
    if (g->count < before && g->for_room) wake(g);
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

/* Keeps a row that cannot be decoded in the bus's dead letter sink, trying again while the sink
 * refuses it. False when the bus stopped first. */
static bool dead_letter_row(group *g, const ew_store_entry *e, int code, const char *msg)
{
    char error[400];
    snprintf(error, sizeof error, "%s: event at position %lld: %s", ew_err_name(code),
             (long long)e->position, msg);
    int64_t now = ew_now_us();
    ew_dead_letter dl = {
        .event = NULL,
        .payload = e->json,
        .payload_len = e->json_len,
        .event_id = e->event_id && *e->event_id ? e->event_id : NULL,
        .event_type = e->event_type,
        .group = g->name,
        .handler = "<decode>",
        .error = error,
        .attempts = 1,
        .first_failed_us = now,
        .last_failed_us = now,
    };
    for (;;) {
        ew_error err = {0};
        if (ew__bus_dead_letter(g->b->bus, &dl, &err) == 0) {
            ew__bus_log(g->b->bus, EW_LOG_WARN, "sqlite bus: group %s: %s (dead-lettered)", g->name,
                        error);
            return true;
        }
        consumer_error(g, "the dead letter sink refused a row that does not decode", &err);
        if (atomic_load(&g->b->stopping)) return false;
        usleep(RETRY_MS * 1000);
    }
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
            ew_store_entry en = {.position = s->position,
                                 .event_id = ew_event_id(s->ev),
                                 .event_type = ew_event_type(s->ev),
                                 .json = ""};
            if (!dead_letter_row(g, &en, rc, e.msg)) break;
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

/* ew_store_scan's callback: one wanted row into a slot, then to the dispatcher or the dead
 * letters. The scan never brings more rows than there are free slots. */
static int on_entry(void *ud, const ew_store_entry *e)
{
    group *g = ud;
    pthread_mutex_lock(&g->mu);
    slot *s = slot_at(g, (g->head + g->count) % g->b->max_inflight);
    s->g = g;
    s->position = e->position;
    s->ev = e->event ? ew_event_ref(e->event) : NULL;
    s->state = SLOT_BUSY;
    g->count++;
    pthread_mutex_unlock(&g->mu);
    if (atomic_load(&g->b->stopping)) { /* the scan counts this row: it stays undone */
        slot_finish(s, SLOT_ABANDONED);
        return 1;
    }
    if (e->event) return deliver(g, s) ? 0 : 1;
    if (!dead_letter_row(g, e, e->error, e->error_msg)) {
        slot_finish(s, SLOT_ABANDONED);
        return 1;
    }
    slot_finish(s, SLOT_DONE);
    return 0;
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
    int rc = ew_store_scan(g->st, from, pv, np, room, g->b->max_bytes, on_entry, g, &last, &e);
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
    ew_store_group row;
    ew_error e = {0};
    if (ew_store_group_get(g->st, g->name, &row, &e)) {
        consumer_error(g, "reading the group's row", &e);
        return;
    }
    const char *from = NULL;
    if (row.owner[0] && strcmp(row.owner, g->owner) != 0 && row.lease_until_us > ew_now_us()) {
        if (!owner_dead(b, row.owner)) return; /* a live holder: stand by */
        from = row.owner;
    }
    int held = 0;
    if (ew_store_group_lease(g->st, g->name, g->owner, from, LEASE_MS, &held, &e)) {
        consumer_error(g, "taking the group's lease", &e);
        return;
    }
    if (!held) return;
    if (ew_store_group_get(g->st, g->name, &row, &e)) { /* the position, now that it is ours */
        consumer_error(g, "reading the group's row", &e);
        int ignored;
        ew_store_group_commit(g->st, g->name, g->owner, 0, 0, &ignored, NULL);
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
    int64_t floor = ring_floor(g);
    pthread_mutex_unlock(&g->mu);
    int held = 0;
    ew_error e = {0};
    if (ew_store_group_commit(g->st, g->name, g->owner, floor, LEASE_MS, &held, &e)) {
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
        int64_t floor = ring_floor(g);
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
            if (!have_dv) have_dv = ew_store_data_version(g->st, &dv, NULL) == 0;
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
        if (ew_store_data_version(g->st, &v, NULL) != 0) {
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

static int group_start(group *g, ew_error *err)
{
    sqbus *b = g->b;
    ew_store_options so = {.config = b->cfg, .log = store_log, .log_ud = b->bus};
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

static void group_free(group *g)
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

static group *group_new(sqbus *b, const char *name)
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
        group_free(g);
        return NULL;
    }
    owner_make(b, g->owner, sizeof g->owner);
    return g;
}

static group *group_find(sqbus *b, const char *name)
{
    for (group *g = atomic_load(&b->groups); g; g = g->next)
        if (strcmp(g->name, name) == 0) return g;
    return NULL;
}

/* ---- publishing ------------------------------------------------------------------------------ */

/* After a commit: this bus's consumers read at once (other processes' see the WAL written). */
static void committed(sqbus *b)
{
    for (group *g = atomic_load(&b->groups); g; g = g->next) {
        pthread_mutex_lock(&g->mu);
        g->kick = true;
        wake(g);
        pthread_mutex_unlock(&g->mu);
    }
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
        rc = first->rc = ew_store_record(b->st, first->evs, first->n, NULL, &first->err);
    } else if (!all) {
        rc = EW_ENOMEM;
    } else {
        size_t k = 0;
        for (pubreq *r = first; r != end; r = r->next) {
            memcpy(all + k, r->evs, r->n * sizeof *all);
            k += r->n;
        }
        rc = ew_store_record(b->st, all, total, NULL, &e);
        for (pubreq *r = first; r != end; r = r->next)
            r->rc = rc;
    }
    free(all);
    if (rc == 0) {
        atomic_fetch_add(&b->commits, 1);
        atomic_fetch_add(&b->events, total);
    } else if (nreq > 1) {
        for (pubreq *r = first; r != end; r = r->next) {
            r->rc = ew_store_record(b->st, r->evs, r->n, NULL, &r->err);
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
                      ew_error *err)
{
    sqbus *b = self;
    *npublished = 0;
    /* A thread inside a write transaction on the file (a handler's inbox, publishing its
     * follow-ups) would wait for itself: the events go into that transaction, and are
     * committed, or rolled back, with it. */
    ew_txn *t = ew_store_thread_txn(b->st);
    if (t) {
        int rc = ew_txn_record(t, evs, n, NULL, err);
        if (!rc) *npublished = n;
        return rc;
    }
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
        committed(b);
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
    b->disp = ew__bus_dispatcher(bus);
    b->cfg = cfg;
    b->wal_fd = -1;
    b->max_inflight = (size_t)ew_config_get_int(cfg, "EVENT_BUS_MAX_IN_FLIGHT");
    b->max_bytes = (size_t)ew_config_get_int(cfg, "EVENT_MAX_BYTES");
    if (b->max_inflight < 1) b->max_inflight = 1;
    whoami(b);
    if (pthread_mutex_init(&b->mu, NULL)) goto fail_free;
    if (pthread_mutex_init(&b->gc_mu, NULL)) goto fail_mu;
    ew_store_options so = {.config = cfg, .log = store_log, .log_ud = bus};
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
        if ((rc = ew_store_sync_commits(b->st, 1, err))) goto fail_store;
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
    group *g = group_find(b, name);
    bool fresh = !g;
    if (fresh) {
        /* The group's row first: from now on the log keeps its events, also before start and
         * while none of its consumers runs. A group the file does not have yet starts at the
         * head of the log, or at its start with from_beginning; one it has keeps its position. */
        if ((rc = ew_store_group_open(b->st, name, bsub->from_beginning, NULL, err))) goto out;
        if (!(g = group_new(b, name))) {
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
            g->kick = true; /* read with the new pattern from here on */
            wake(g);
        }
    }
    pthread_mutex_unlock(&g->mu);
    if (rc) {
        if (fresh) group_free(g);
        goto out;
    }
    if (fresh) {
        if (b->started && (rc = group_start(g, err))) {
            group_free(g);
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
        if (!g->running) rc = group_start(g, err);
    b->started = rc == 0;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static void sq_stop(void *self)
{
    sqbus *b = self;
    atomic_store(&b->stopping, true);
    for (group *g = atomic_load(&b->groups); g; g = g->next) {
        uint64_t one = 1;
        ssize_t k = write(g->wake_fd, &one, sizeof one);
        (void)k;
    }
    for (group *g = atomic_load(&b->groups); g; g = g->next) {
        if (!g->running) continue;
        pthread_join(g->thread, NULL);
        g->running = false;
    }
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

/* Every done() has been called: writes each group's final position and gives its lease up, so
 * that a standby consumer takes over at once; an ephemeral group is removed instead. */
static void sq_close(void *self)
{
    sqbus *b = self;
    sq_stop(b);
    for (group *g = atomic_load(&b->groups), *next; g; g = next) {
        next = g->next;
        if (g->ephemeral) {
            forget_group(b, g);
        } else if (g->st && g->active) {
            pthread_mutex_lock(&g->mu);
            int64_t floor = ring_floor(g);
            pthread_mutex_unlock(&g->mu);
            int held = 0;
            ew_error e = {0};
            if (ew_store_group_commit(g->st, g->name, g->owner, floor, 0, &held, &e))
                ew__bus_log(b->bus, EW_LOG_ERROR,
                            "sqlite bus: group %s: position %lld not written at close: %s", g->name,
                            (long long)floor, e.msg);
            else if (held)
                ew__bus_log(b->bus, EW_LOG_DEBUG, "sqlite bus: %s left group %s at position %lld",
                            g->owner, g->name, (long long)floor);
        }
        ew_store_close(g->st);
        group_free(g);
    }
    ew__bus_log(b->bus, EW_LOG_INFO,
                "sqlite bus: %" PRIuFAST64 " events published in %" PRIuFAST64 " commits",
                atomic_load(&b->events), atomic_load(&b->commits));
    ew_store_close(b->st);
    if (b->wal_fd >= 0) close(b->wal_fd);
    free(b->wal_path);
    pthread_mutex_destroy(&b->gc_mu);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

const ew_bus_ops ew__bus_sqlite_ops = {
    .version = EW_BUS_OPS_VERSION,
    .name = "sqlite",
    .open = sq_open,
    .publish = sq_publish,
    .subscribed = sq_subscribed,
    .start = sq_start,
    .stop = sq_stop,
    .close = sq_close,
};
