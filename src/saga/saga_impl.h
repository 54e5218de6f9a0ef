/* eventwire — the saga engine's insides, shared by its files:
 *
 *   engine.c   the engine: declarations, subscriptions, the handler, the timer thread, the relay
 *   machine.c  the state machine: what an event or a deadline does to an instance, in memory
 *   persist.c  instances in the store: load, insert, update, transitions, parked events, and the
 *              read API of saga.h (ew_saga_list, ...)
 *   data.c     an instance's data (a JSON object of strings and lists of strings)
 *
 * An instance is loaded into a struct ew_saga inside a transaction, changed in memory by
 * machine.c (which records the transitions and the events to issue as it goes), and written
 * back by persist.c in the same transaction with a version check. */
#ifndef EW_SAGA_IMPL_H
#define EW_SAGA_IMPL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include "core/buf.h"
#include "eventwire/id.h"
#include "eventwire/saga.h"

#define EW__SAGA_MAX_STEPS 64

/* ---- declarations ---------------------------------------------------------------------------- */

typedef struct ew__saga_step {
    char *name;
    char **completed_by, **failed_by; /* NULL-terminated copies */
    ew_saga_event_fn on_event;
    ew_saga_action_fn action, compensation;
    int64_t timeout_ms;
    ew_saga_timeout_fn on_timeout;
} ew__saga_step;

typedef struct ew__saga_type {
    ew_saga_engine *e;
    char *name;
    char *group; /* "saga.<name>" */
    char *started_by;
    ew_saga_correlate correlate;
    char *field;
    ew__saga_step *steps;
    size_t nsteps;
    int64_t timeout_ms; /* resolved: never 0 */
    ew_saga_action_fn on_start, on_end;
    void *ud;
    void (*ud_free)(void *ud);
    char **types; /* every type the saga subscribes to, each once */
    size_t ntypes;
} ew__saga_type;

/* ---- an instance's data ---------------------------------------------------------------------- */

typedef struct ew__kv_item {
    char *key;
    bool is_list;
    char *value;  /* !is_list */
    char **items; /* is_list */
    size_t n, cap;
} ew__kv_item;

typedef struct ew__kv {
    ew__kv_item *items;
    size_t n, cap;
} ew__kv;

void ew__kv_release(ew__kv *kv);
/* Parses a JSON object of strings and arrays of strings (other values are kept as their JSON
 * text, as strings). */
int ew__kv_parse(ew__kv *kv, const char *json, ew_error *err);
void ew__kv_write(const ew__kv *kv, ew_buf *b);

/* ---- an instance ----------------------------------------------------------------------------- */

/* A transition to record: statuses and steps as they were and are, and why. */
typedef struct ew__saga_trans {
    int from_status; /* -1: none (the first) */
    int to_status;
    char *from_step, *to_step; /* NULL: none */
    int64_t at_us;
    char *note;
} ew__saga_trans;

struct ew_saga {
    ew__saga_type *t;
    char id[EW_UUID_LEN + 1];
    char *key, *correlation_id, *subject;
    ew_saga_status status;
    size_t step;   /* the current step; t->nsteps past the last */
    uint64_t done; /* bit i: step i is complete */
    int attempts;
    char *reason;
    int64_t version, last_seq;
    int64_t started_us, updated_us, finished_us, deadline_us, step_deadline_us;
    ew__kv data;
    bool is_new;

    /* The transition being made. */
    const ew_event *cause; /* borrowed; NULL for a deadline */
    int64_t now_us;
    bool changed;
    ew_event **out; /* events to issue, in order */
    size_t nout, outcap;
    ew__saga_trans *tr;
    size_t ntr, trcap;
    ew_buf note; /* sentences for the next transition recorded */
    int oom;
};

void ew__saga_init(ew_saga *s, ew__saga_type *t);
void ew__saga_release(ew_saga *s);
int64_t ew__saga_wake_us(const ew_saga *s); /* when the timer must look at it; 0: never */

/* ---- the state machine (machine.c) ----------------------------------------------------------- */

/* A new instance started by ev: its data, its first step, and ev applied to the steps. */
int ew__saga_start(ew_saga *s, const ew_event *ev, const char *key, ew_error *err);
/* ev applied to a running instance. s->changed says whether anything changed. */
int ew__saga_apply(ew_saga *s, const ew_event *ev, ew_error *err);
/* The timer: a passed deadline (step first, then the instance's). */
int ew__saga_deadline(ew_saga *s, ew_error *err);

/* ---- persistence (persist.c) ----------------------------------------------------------------- */

/* Loads into s (initialised) the instance of type t found by: id, or key, or correlation id
 * (exactly one not NULL). *found 0 when there is none. */
int ew__saga_load(ew_txn *txn, ew__saga_type *t, const char *id, const char *key,
                  const char *correlation_id, ew_saga *s, int *found, ew_error *err);
/* Writes s: insert when new (*written 0: another writer created that key first), else update
 * at its version (*written 0: another writer changed it). Then its transitions, the consumed
 * event, and the events it issues into the outbox. */
int ew__saga_save(ew_txn *txn, ew_saga *s, int *written, ew_error *err);
int ew__saga_consumed(ew_txn *txn, const char *saga_id, const char *event_id, int *seen,
                      ew_error *err);
int ew__saga_park(ew_txn *txn, const ew__saga_type *t, const ew_event *ev, const char *key,
                  ew_error *err);
int ew__saga_unpark(ew_txn *txn, const ew__saga_type *t, const char *event_id, ew_error *err);

/* Parked events, decoded; the caller releases with ew__parked_release. */
typedef struct ew__parked {
    ew_event **evs;
    size_t n;
} ew__parked;
void ew__parked_release(ew__parked *p);
/* Parked events of t for key or correlation_id (NULL: of every instance that exists now). */
int ew__saga_parked(ew_txn *txn, const ew__saga_type *t, const char *key,
                    const char *correlation_id, size_t limit, ew__parked *out, ew_error *err);
/* Deletes parked events of t older than before_us. */
int ew__saga_parked_purge(ew_txn *txn, const ew__saga_type *t, int64_t before_us, ew_error *err);
/* Ids of running instances of t whose wake time is at or before now_us, earliest first. */
int ew__saga_due(ew_txn *txn, const ew__saga_type *t, int64_t now_us, size_t limit,
                 char (*ids)[EW_UUID_LEN + 1], size_t *n, ew_error *err);
/* The earliest wake time of t's instances (0: none). */
int ew__saga_next_wake(ew_txn *txn, const ew__saga_type *t, int64_t *at_us, ew_error *err);

/* Times as the store returns them: RFC 3339 from SQLite, PostgreSQL's ISO text. */
int ew__saga_time_parse(const char *s, int64_t *us);

/* ---- the engine (engine.c) ------------------------------------------------------------------- */

const char *ew__saga_engine_source(const ew_saga_engine *e);

/* Destroys the data key of subject (crypto-shredding, src/security/keyring.h) in the key store
 * of the engine's store; 0 without doing anything when EVENT_ENCRYPTION=off. */
int ew__saga_shred(ew_saga *s, const char *subject, ew_error *err);
int64_t ew__saga_engine_timeout_ms(const ew_saga_engine *e);
void ew__saga_engine_log(ew_saga_engine *e, ew_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#endif
