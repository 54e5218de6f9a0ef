/* The service runtime's housekeeping: a thread that, every HOUSEKEEPING_INTERVAL_MS, applies the
 * retention settings in bounded batches — events past EVENT_STORE_TTL_DAYS in the event store,
 * outbox rows published more than OUTBOX_RETENTION_SECONDS ago, dead letters past
 * DEAD_LETTER_RETENTION_DAYS, inbox ids past INBOX_RETENTION_DAYS — so that nothing waits for an
 * operator's command. Several services sharing one event store purge it side by side: each
 * batch is its own short transaction, and deleting what another already deleted is no error.
 * After an erasure (a new tombstone in svc_erased_users) it also compacts the tables the
 * service deleted the user's rows from (ew_store_compact: VACUUM FULL on PostgreSQL, where
 * deleted rows stay in the files until then; nothing on SQLite, whose secure_delete overwrote
 * them already). */
#ifndef SVC_KEEPER_H
#define SVC_KEEPER_H

#include <stddef.h>
#include "eventwire/config.h"
#include "eventwire/log.h"
#include "eventwire/store.h"

typedef struct svc_keeper svc_keeper;

/* What one round removed. */
typedef struct svc_kept {
    size_t events, outbox, dead_letters, inbox;
    size_t compacted; /* tables compacted after an erasure */
} svc_kept;

/* Starts the thread; everything is borrowed until svc_keeper_stop(). log may be NULL.
 * erase_tables: the tables of db an erasure deletes the user's rows from (NULL-terminated; NULL:
 * none), compacted after each new erasure — and once at start when the service erased anyone
 * before. */
int svc_keeper_start(svc_keeper **out, const ew_config *cfg, ew_store *db, ew_store *events,
                     const char *const *erase_tables, ew_logger *log, ew_error *err);

/* Stops the thread (a round in progress finishes its batch) and frees. NULL is ignored. */
void svc_keeper_stop(svc_keeper *k);

/* One round on the calling thread: at most a few batches of each kind. */
int svc_keeper_round(svc_keeper *k, svc_kept *out, ew_error *err);

#endif
