/* eventwire — batches: how a bus worker and the store commit many deliveries at once, and the
 * one object through which the two learn what the other holds.
 *
 * Group commit inside one handle needs nothing from outside (handle.c): transactions that queue
 * for a handle share its database commit. A bus worker goes further. When it has several
 * deliveries queued it *holds* a store handle — the inbox's (ew_inbox_ops.hold, which is
 * ew__store_hold for ew_store_inbox) or the subscription's batch_store — runs the deliveries, and
 * *releases* it (ew__store_release: one database commit for all of them) before it acknowledges
 * them. A hold is the handle's own state: between hold and release, commits on the handle made
 * by the holding thread return at once and stay in the handle's open chain, which on SQLite keeps
 * the file's write lock.
 *
 * That lock is what reaches outside the handle. A write of the same thread through *another*
 * connection to the same SQLite file would wait for it until the busy timeout: the SQLite bus
 * publishing a handler's follow-ups, the dead letter sink, the audit log. So the worker carries
 * an ew__batch and passes it to each call it makes that may write elsewhere:
 *
 *   - the dispatcher (src/bus/dispatch.c) owns one per worker thread, zeroed, and keeps it up to
 *     date: `held` while it holds a store, `txn` while a delivery runs in the transaction of the
 *     store's own inbox (ew__inbox_txn);
 *   - it hands the batch to the bus's publish (ew_dispatch_host.publish, ew_bus_ops.publish),
 *     which gives it to the backend; ew_bus_publish from inside a handler finds its worker's
 *     batch through the dispatcher (ew__dispatch_batch_here);
 *   - a writer on the store side asks the batch: ew__batch_txn_on (a transaction of the batch on
 *     the same file: write in it, and the writes commit or roll back with the delivery), or
 *     ew__batch_flush (commit what the batch holds on that file first). The dispatcher itself
 *     ends a hold before it hands a dead letter to the sink.
 *
 * Nothing else carries this: no thread-local or global state. A call without the batch (NULL)
 * behaves as a call from any other thread. The batch is touched only by its worker's thread. A
 * handler's own writes through another handle on the file of a held store wait for the worker's
 * release like anyone's (docs/store.md, "Group commit"). */
#ifndef EW_STORE_BATCH_H
#define EW_STORE_BATCH_H

#include "eventwire/inbox.h"
#include "eventwire/store.h"

typedef struct ew__batch {
    ew_store *held; /* the handle the worker holds now (ew__store_hold); NULL: none */
    ew_txn *txn;    /* the delivery's transaction in the store's own inbox; NULL: none */
} ew__batch;

/* Holds s for the calling thread: its commits on s return at once, before the database commit,
 * which ew__store_release does (or any other use of the handle, earlier: its failure is then
 * ew__store_release's). Other threads' commits on s do not wait for the holder: they commit what
 * it holds with theirs. A hold is also committed every 64 transactions. EW_ESTATE when this
 * thread holds s already, EW_EAGAIN when another does. */
int ew__store_hold(ew_store *s, ew_error *err);

/* Commits what the hold chained and ends it; the result of that commit (or of an earlier one
 * of the held transactions). EW_ESTATE when the calling thread does not hold s. */
int ew__store_release(ew_store *s, ew_error *err);

/* The batch's transaction when it is open on the same SQLite file as s (through any handle),
 * else NULL (always on PostgreSQL and sqlite::memory:). b may be NULL. Borrowed: valid until the
 * delivery ends. */
ew_txn *ew__batch_txn_on(const ew__batch *b, const ew_store *s);

/* Before the batch's thread writes through s: when the batch holds another handle on the same
 * SQLite file, commits what that handle holds (the hold goes on). b may be NULL. */
void ew__batch_flush(const ew__batch *b, const ew_store *s);

/* The store behind ib when ib is a store's own inbox (ew_store_inbox), else NULL. */
ew_store *ew__inbox_store(ew_inbox ib);

/* txn, a transaction ib's begin() handed out, as the store transaction it is when ib is a store's
 * own inbox; NULL otherwise. */
ew_txn *ew__inbox_txn(ew_inbox ib, void *txn);

#endif
