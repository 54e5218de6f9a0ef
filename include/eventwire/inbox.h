/* eventwire — the inbox: effectively-once handling.
 *
 * Delivery is at least once, so a handler may see an event again. The inbox records which
 * (handler, event id) pairs were processed; the dispatcher asks it before calling a handler and
 * skips what it already has. A store-backed inbox opens a transaction in begin() that the
 * handler writes in too (ew_ctx_txn()), and records the id in that same transaction in commit(),
 * so the handler's effects and the record happen together or not at all.
 * The memory inbox here keeps the ids in the process: it de-duplicates redeliveries within one
 * run, which is what the memory bus needs. */
#ifndef EVENTWIRE_INBOX_H
#define EVENTWIRE_INBOX_H

#include <stddef.h>
#include <stdint.h>
#include "eventwire/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_inbox_ops {
    int version; /* 1, or 2 with hold and release */
    /* Before the handler. 1: (handler, event_id) was processed already, skip it. 0: go on; *txn
     * may be set to a transaction for the handler. < 0: an error; the delivery is retried. */
    int (*begin)(void *self, const char *handler, const char *event_id, void **txn, ew_error *err);
    /* After the handler returned ok: record the pair (in txn) and commit. < 0: the delivery is
     * retried, and begin() will tell whether the record made it. commit() ends txn either way:
     * rollback() is not called after it. */
    int (*commit)(void *self, const char *handler, const char *event_id, void *txn, ew_error *err);
    /* After the handler returned retry or fail: undo what txn holds. */
    void (*rollback)(void *self, void *txn);
    /* Version 2. Before a batch of deliveries on the calling thread: commit() may return before
     * the commit, and release() says how the commits since hold() went; the dispatcher
     * acknowledges the batch's events only after release() returned 0. hold() < 0: no hold (the
     * commits are done one by one, as without it). */
    int (*hold)(void *self, ew_error *err);
    int (*release)(void *self, ew_error *err);
} ew_inbox_ops;

typedef struct ew_inbox {
    const ew_inbox_ops *ops; /* static; NULL for none */
    void *self;              /* borrowed by whoever holds the inbox */
} ew_inbox;

typedef struct ew_meminbox ew_meminbox;

/* Caller frees with ew_meminbox_free(). Thread-safe. */
int ew_meminbox_new(ew_meminbox **out, ew_error *err);
void ew_meminbox_free(ew_meminbox *ib);

/* The inbox that records into ib; ib is borrowed and must outlive every user. */
ew_inbox ew_meminbox_inbox(ew_meminbox *ib);

/* How many pairs it holds. */
size_t ew_meminbox_count(ew_meminbox *ib);

#ifdef __cplusplus
}
#endif
#endif
