/* eventwire — the store handle: its connection's mutex, its one transaction, group commit and
 * holds (handle.c), shared by store.c, which does everything else a store does with it.
 *
 * Calling convention: everything but a transaction's statements runs between ew__store_lock and
 * ew__store_unlock (which first commits an open chain of transactions, so nothing but
 * transactions ever sees one). A transaction is ew__txn_open, then statements, then ew__txn_keep
 * (commit) or ew__txn_undo (rollback); both end it and let go of the mutex. */
#ifndef EW_STORE_HANDLE_H
#define EW_STORE_HANDLE_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>
#include "store/store_impl.h"

typedef struct chain_waiter {
    int rc;
    ew_error err;
    int done;
    struct chain_waiter *next;
} chain_waiter;

/* The one transaction a handle can have open: it holds the handle's mutex from begin to its end,
 * so it lives in the handle and needs no allocation. */
struct ew_txn {
    ew_store *s;
    int active;
    int failed;    /* a statement in it failed: it can only be rolled back */
    int savepoint; /* it runs as a savepoint of a chain (see handle.c) */
};

struct ew_store {
    const ew_store_ops *ops;
    void *conn;
    pthread_mutex_t mu;       /* guards conn; held by an open transaction */
    pthread_mutex_t relay_mu; /* one outbox relay at a time */
    ew__store_log log;
    int64_t ttl_us;   /* 0: events never expire */
    size_t max_bytes; /* EVENT_MAX_BYTES */
    ew_txn txn;
    /* Which thread has txn open, readable without mu: a call on the handle from that very thread
     * would wait for itself (ew__store_lock says EW_ESTATE instead). */
    atomic_int txn_busy;
    _Atomic(pthread_t) txn_thread;
    /* Group commit: guarded by mu, but for the waiters' list (chain_mu) and want. */
    atomic_int want;  /* threads waiting for mu */
    int chain_open;   /* the database transaction holds committed transactions */
    int chain_n;      /* how many */
    int sp_kept;      /* the last one's savepoint is still open: released with the next one's */
    int64_t chain_t0; /* when the first of them committed */
    pthread_mutex_t chain_mu;
    pthread_cond_t chain_cv;
    chain_waiter *waiters; /* their threads, waiting for the database commit */
    /* ew__store_hold (store/batch.h): the holding thread's commits wait for ew__store_release. */
    int held;
    pthread_t holder;
    int chain_held; /* the open chain has transactions of the holder */
    int hold_rc;    /* a commit of the holder's transactions failed */
    ew_error hold_err;
    /* SQLite files: the file's identity, to tell handles on the same file apart from others
     * (ew__batch_txn_on, ew__batch_flush). */
    int has_file;
    dev_t dev;
    ino_t ino;
    /* EVENT_ENCRYPTION: encrypts the personal fields of every event the store writes (events,
     * outbox, dead letters, parked saga events); NULL when off. */
    struct ew__keyring *keys;
};

/* Decodes json as ew_event_decode() then ew__store_unseal() do, building one event: each
 * encrypted field decrypted and checked as the decoder builds the data (ew__keyring_decode)
 * when the store's keyring is on. On success *out holds one reference. */
int ew__store_decode(const ew_store *s, const char *json, size_t len, const ew_decode_opts *opts,
                     ew_event **out, ew_error *err);

/* Encodes ev as ew_event_encode() does, its personal and secret fields encrypted when the
 * store's keyring is on. *out is malloc'ed: caller frees it. */
int ew__store_encode(const ew_store *s, const ew_event *ev, char **out, size_t *len, ew_error *err);

/* Replaces *ev (a reference the caller holds) by its decrypted copy when it holds encrypted
 * fields and the store's keyring is on (ew__keyring_unseal); leaves it otherwise. */
int ew__store_unseal(const ew_store *s, ew_event **ev, ew_error *err);

/* The store's keyring, NULL when EVENT_ENCRYPTION=off. */
struct ew__keyring *ew__store_keyring(const ew_store *s);

/* Mutexes and the transaction's back pointer; before the connection is opened. */
void ew__store_handle_init(ew_store *s);
/* Rolls back a transaction left open (by the calling thread) and commits an open chain; before
 * the connection is closed. */
void ew__store_handle_end(ew_store *s);
/* After the connection is closed. */
void ew__store_handle_free(ew_store *s);

/* The handle for anything but a transaction: EW_ESTATE when this thread holds a transaction on
 * it (it would wait for itself). */
int ew__store_lock(ew_store *s, ew_error *err);
void ew__store_unlock(ew_store *s);

/* Begins the handle's transaction (or the next savepoint of an open chain). */
int ew__txn_open(ew_store *s, ew_error *err);
/* Ends it with its writes, returning once they are committed (or, held, at once). */
int ew__txn_keep(ew_store *s, ew_error *err);
/* Ends it without its writes. */
void ew__txn_undo(ew_store *s);
/* EW_ESTATE unless t is open and none of its statements failed. */
int ew__txn_check(ew_txn *t, ew_error *err);

#endif
