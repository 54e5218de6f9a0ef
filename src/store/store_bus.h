/* eventwire — the store's log as a bus: what the SQLite bus (src/bus/sqlite*.c) and ewctl's
 * console use of the event store beside its public API (eventwire/store.h). Internal: not in the
 * installed headers, not exported from libeventwire.so; tests reach it through the static library.
 *
 * Records without an expected version, reads that hand over undecodable rows too, the cheap
 * "did anyone commit?" probe, synchronous commits, and the subscriber groups' rows with their
 * leases (event_store.bus_groups). docs/bus-sqlite.md says how the bus uses them. */
#ifndef EW_STORE_STORE_BUS_H
#define EW_STORE_STORE_BUS_H

#include <stddef.h>
#include <stdint.h>
#include "eventwire/store.h"

/* Appends n events in one transaction, all or none, each to its own stream: the stream named by
 * its subject, or by its type when it has none, whatever that stream's version (EW_EXPECT_ANY).
 * Positions follow the order of evs, across streams. An event whose id is stored already, or
 * came earlier in evs, is skipped (res->duplicates). EW_ETOOBIG when an event encodes larger than
 * EVENT_MAX_BYTES, EW_EINVAL for a NULL event: nothing is written, and the message names the
 * event's index. res may be NULL; res->version is the version of the last event written in its
 * stream. This is how the SQLite bus publishes. */
int ew__store_record(ew_store *s, const ew_event *const *evs, size_t n, ew_append_result *res,
                     ew_error *err);

/* ew__store_record inside an open transaction: the events are written when it commits, and not at
 * all when it rolls back. */
int ew__txn_record(ew_txn *t, const ew_event *const *evs, size_t n, ew_append_result *res,
                   ew_error *err);

/* A row of the log as ew__store_scan hands it over, decoded or not. Borrowed for the callback. */
typedef struct ew__store_entry {
    int64_t position;
    const char *event_id;   /* the row's event_id column */
    const char *event_type; /* the row's event_type column */
    const char *stream_id;
    int64_t version;
    int64_t recorded_us;
    const ew_event *event; /* the event; NULL when the row could not be decoded */
    const char *json;      /* the CloudEvent the row holds (metadata and data), decoded or not */
    size_t json_len;
    int error;             /* when event is NULL: why (EW_EJSON, EW_EDATA, EW_ETOOBIG, ...) */
    const char *error_msg; /* and the sentence; "" when event is not NULL */
} ew__store_entry;

/* Called for each entry, in order of position. 0 goes on; nonzero stops (not an error). */
typedef int (*ew__store_scan_fn)(void *ud, const ew__store_entry *e);

/* Reads the log forwards from from_position (exclusive), looking at no more than max rows (0: no
 * limit), and hands to fn every row whose type matches one of patterns[0..npatterns)
 * (ew_pattern_match; npatterns 0: every row). Unlike ew_store_read_all a row that does not decode
 * does not end the read: it is handed over with event NULL and the reason, and so is a row whose
 * CloudEvent is longer than max_bytes (0: no limit), without decoding it (EW_ETOOBIG).
 * *last_position (may be NULL) gets the position of the last row looked at, wanted or not
 * (from_position when there was none), so that a reader can move past rows it does not want;
 * when fn stops the read, the position of the row it stopped at. EW_EINVAL for a bad pattern. */
int ew__store_scan(ew_store *s, int64_t from_position, const char *const *patterns,
                   size_t npatterns, size_t max, size_t max_bytes, ew__store_scan_fn fn, void *ud,
                   int64_t *last_position, ew_error *err);

/* A number that changes whenever another connection, of this process or another, commits to the
 * database: SQLite's PRAGMA data_version, which reads shared memory, not the disk. A reader that
 * has caught up polls it to learn cheaply whether there may be more to read. EW_ENOTSUP on
 * PostgreSQL. */
int ew__store_data_version(ew_store *s, int64_t *version, ew_error *err);

/* Beside a SQLite store's file PATH, the file PATH-signal (0600), to which every connection of
 * this library writes a byte after each commit that added events to the log. Its IN_MODIFY
 * (inotify) tells consumers in other processes that there is something new to read, once per
 * such commit; the WAL, which they watched before, changes at every page written, by any
 * commit (positions, leases, inbox records). A writer that does not write it (another program,
 * the sqlite3 shell) is noticed by the consumers' timer. */
#define EW__STORE_SIGNAL_SUFFIX "-signal"

/* Makes every commit of this handle wait until it is on disk (on = 1), or not (on = 0, the
 * default). SQLite: PRAGMA synchronous=FULL, which syncs the WAL at each commit, instead of
 * NORMAL, which syncs it only at checkpoints — a commit is then safe from a crash of the process
 * but not from one of the machine. The setting is the handle's own (other handles and processes
 * keep theirs); a sync also makes every commit before it on disk. PostgreSQL: the session's
 * synchronous_commit = on (whatever the server's default, which may be off), kept across
 * reconnects; on = 0 gives it the server's default back. Not inside a transaction (EW_ESTATE). */
int ew__store_sync_commits(ew_store *s, int on, ew_error *err);

/* ---- subscriber groups of the SQLite bus (event_store.bus_groups) -------------------------- */

#define EW__STORE_OWNER_MAX 128 /* the longest owner name, with its NUL */

/* A subscriber group's row: where it is in the log and which consumer holds it. */
typedef struct ew__store_group {
    int64_t position;                /* the last position the group is done with */
    char owner[EW__STORE_OWNER_MAX]; /* the consumer holding the lease; "" when none does */
    int64_t lease_until_us;          /* when that lease ends unless renewed; 0 when none */
    int64_t updated_us;              /* the row's last change */
} ew__store_group;

/* Creates group, unless it exists, at the last position handed out (ew_store_head; at 0 with
 * from_beginning), in one transaction; *g (may be NULL) gets its row either way. Group names are
 * what ew_bus_subscribe allows (1 to 200 of a-z, A-Z, 0-9, '.', '_', '-'). */
int ew__store_group_open(ew_store *s, const char *group, int from_beginning, ew__store_group *g,
                         ew_error *err);

/* The group's row into *g; EW_ENOTFOUND when there is none. */
int ew__store_group_get(ew_store *s, const char *group, ew__store_group *g, ew_error *err);

/* Takes or renews the group's lease for owner (1 to EW__STORE_OWNER_MAX - 1 bytes) for lease_ms
 * from now: when nobody holds it, owner does, the lease expired, or its holder is `from` (not
 * NULL: a holder the caller knows to be dead). *held gets 1 when owner holds it now, 0 when
 * another does. EW_ENOTFOUND when the group does not exist. */
int ew__store_group_lease(ew_store *s, const char *group, const char *owner, const char *from,
                          int64_t lease_ms, int *held, ew_error *err);

/* While owner holds the group's lease: moves its position forwards to position (never back) and
 * renews the lease for lease_ms (0: gives it up). *held gets 0, and nothing changes, when owner
 * does not hold it (another took it over after it expired). */
int ew__store_group_commit(ew_store *s, const char *group, const char *owner, int64_t position,
                           int64_t lease_ms, int *held, ew_error *err);

#endif
