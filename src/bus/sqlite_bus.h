/* eventwire — the SQLite bus's internal header: its state, shared by its files (sqlite.c:
 * publishing with group commit, and the ops; sqlite_consume.c: the groups' consumers). Nothing
 * here is used outside src/bus/sqlite*.c. Each function's contract is stated where it is defined.
 */
#ifndef EW_BUS_SQLITE_BUS_H
#define EW_BUS_SQLITE_BUS_H

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bus/backend.h"
#include "store/store_bus.h"

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
    char owner[EW__STORE_OWNER_MAX];

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

/* ---- sqlite_consume.c -------------------------------------------------------------------- */

group *ew__sq_group_find(sqbus *b, const char *name);
void ew__sq_group_free(group *g);
group *ew__sq_group_new(sqbus *b, const char *name);
int ew__sq_group_start(group *g, ew_error *err);
int64_t ew__sq_ring_floor(const group *g);
void ew__sq_store_log(void *ud, const ew_log_record *rec);
void ew__sq_wake(group *g);

/* ---- sqlite.c ---------------------------------------------------------------------------- */

void ew__sq_committed(sqbus *b);

#endif
