/* eventwire — the SQLite bus's internal header: its state, shared by its files (sqlite.c:
 * publishing with group commit, and the ops; sqlite_consume.c: the transport of each group's
 * consumer core). Nothing here is used outside src/bus/sqlite*.c. Each function's contract is
 * stated where it is defined. */
#ifndef EW_BUS_SQLITE_BUS_H
#define EW_BUS_SQLITE_BUS_H

#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "bus/backend.h"
#include "bus/consumer.h"
#include "store/store_bus.h"

/* A group's lease lasts LEASE_MS unless renewed, which its holder does every RENEW_MS; a
 * consumer without it looks at it every STANDBY_MS. */
#define LEASE_MS 5000
#define RENEW_MS 1000
#define STANDBY_MS 100
/* A position that moved is written at most every COMMIT_MS. */
#define COMMIT_MS 10
/* An idle consumer with inotify (on the store's signal file, else on the WAL) checks
 * data_version every FALLBACK_MS anyway; without inotify it polls every POLL_US. After a change
 * of the watched file with no commit visible yet (watching the WAL: a commit being synced in
 * the lock, SQLite's synchronous=FULL), it looks again every SETTLE_US for SETTLE_MS. */
#define FALLBACK_MS 100
#define POLL_US 2000
#define SETTLE_US 1000
#define SETTLE_MS 3
/* After a database error, before trying again. */
#define RETRY_MS 100
/* One group commit takes at most this many events (and always at least one publish). */
#define MAX_COMMIT_EVENTS 4096

typedef struct sqbus sqbus;
typedef struct group group;

/* ---- subscriber groups ---------------------------------------------------------------------- */

/* A group of this bus: its patterns, and the transport its consumer core runs (consumer.h). The
 * core owns the thread, the window of deliveries in flight and their settlement in order; the
 * transport owns the lease, reading the log and writing the position. Tokens are log positions,
 * in one lane. */
struct group {
    sqbus *b;
    group *next; /* the bus's groups, newest first; never removed before close */
    char *name;
    char *what; /* how log lines name the consumer */
    char thread[16];
    bool ephemeral; /* its row goes when the bus closes */
    char owner[EW__STORE_OWNER_MAX];
    ew__consumer *core;
    bool started;

    pthread_mutex_t mu; /* the patterns */
    char **patterns;
    size_t npatterns, pcap;
    atomic_bool kick; /* this bus committed events, or a pattern came: read now */
    atomic_bool idle; /* the consumer sleeps in fetch: a kick writes kick_fd */
    int kick_fd;      /* eventfd */

    /* The consumer thread's own. */
    ew_store *st; /* its connection: reads, data_version, lease and position */
    int ino_fd;   /* inotify on the WAL file; -1 without */
    bool watching;
    bool active;       /* holds the lease */
    bool want;         /* there may be rows to read */
    bool released;     /* the core gave a row back during this read */
    bool have_dv;      /* dv holds a data_version read before the last read */
    int64_t dv;        /* PRAGMA data_version */
    int64_t read_pos;  /* every row up to it was handed to the core or is not wanted */
    int64_t delivered; /* the last row handed to the core */
    int64_t settled;   /* every delivery up to it is settled */
    int64_t committed; /* the position in the database */
    /* mono ms: of the last position written, when the lease is next renewed, when a standby
     * next looks at the lease, until when a write to the WAL is looked at again, when reading
     * may resume after an error, of the last logged error */
    int64_t last_commit, next_renew, next_lease, settle_until, resume_at, last_error;
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
    const ew_config *cfg;
    ew_store *st; /* publishing and group creation */
    size_t max_inflight, max_bytes;
    char *wal_path;    /* the database's WAL file, synced after each group commit */
    char *signal_path; /* PATH-signal (store_bus.h), which idle consumers watch */
    int wal_fd; /* open on it, to sync it after each group commit; -1: FULL commits instead */
    char host[64], pidns[32];
    pid_t pid;

    pthread_mutex_t mu; /* groups, started */
    _Atomic(group *) groups;
    bool started;

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
void ew__sq_store_log(void *ud, const ew_log_record *rec);
void ew__sq_kick(group *g);

/* ---- sqlite.c ---------------------------------------------------------------------------- */

void ew__sq_committed(sqbus *b);

#endif
