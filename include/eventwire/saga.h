/* eventwire — sagas: long-running workflows across services, driven by events.
 *
 * A saga type is declared once (ew_saga_def) as a start event and an ordered list of steps. Each
 * step may issue events when it begins (its action), completes on some event types and fails on
 * others, may have a deadline, and may have a compensation that undoes it. The engine
 * (ew_saga_engine) subscribes to those types on a bus, finds the instance an event belongs to
 * (by correlation id, subject or a data field), decides the transition in C and writes it to the
 * store (event_store.sagas, with every transition in event_store.saga_transitions) in one
 * transaction, together with the events the transition issues (through the store's outbox, so
 * that a crash after the commit never loses them). docs/sagas.md is the long version.
 *
 * Statuses: running (waiting for events) -> completed (every step done); or, when a step fails
 * or a deadline passes, compensating (the compensations of the completed steps are issued, in
 * reverse order) -> compensated (a step failed; something was undone), failed (a step failed or
 * escalated; nothing to undo) or timed_out (a deadline passed). A finished instance ignores
 * every further event. saga.completed, saga.failed or saga.timed_out is published at the end.
 *
 * Guarantees: concurrent events for one instance serialise (optimistic concurrency: a version
 * column, retried on conflict); an event is applied to an instance at most once (its id is
 * recorded with the transition); a deadline fires even when no event arrives (a timer thread
 * polls the earliest deadline), once, whichever of several engines on the store sees it first;
 * events a transition issues are published at least once, also across a crash; an instance
 * outlives its process and goes on in the next one.
 *
 * Threads: every callback of a declaration runs on a bus worker or on the engine's timer thread,
 * with a transaction of the engine's store open on that thread: callbacks must not use that
 * store handle, and must be quick. ew_saga_* calls on an ew_saga are valid only inside the
 * callback that was handed it. */
#ifndef EVENTWIRE_SAGA_H
#define EVENTWIRE_SAGA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "eventwire/audit.h"
#include "eventwire/bus.h"
#include "eventwire/config.h"
#include "eventwire/error.h"
#include "eventwire/event.h"
#include "eventwire/log.h"
#include "eventwire/store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_saga_engine ew_saga_engine;
/* One instance, as a declaration's callbacks see it. Borrowed for the callback. */
typedef struct ew_saga ew_saga;

typedef enum ew_saga_status {
    EW_SAGA_RUNNING = 0,
    EW_SAGA_COMPLETED = 1,
    EW_SAGA_COMPENSATING = 2,
    EW_SAGA_COMPENSATED = 3,
    EW_SAGA_FAILED = 4,
    EW_SAGA_TIMED_OUT = 5
} ew_saga_status;

/* "running", "completed", "compensating", "compensated", "failed", "timed_out". Static. */
const char *ew_saga_status_name(ew_saga_status st);
/* The status with that name, or -1. */
int ew_saga_status_parse(const char *name);

/* ---- declaring a saga ------------------------------------------------------------------------ */

/* How an event finds its instance. The start event's value becomes the instance's correlation
 * key (one instance per saga type and key). BY_SUBJECT and BY_FIELD fall back to the event's
 * correlation id for an event without that subject or field (notification.email_sent has no
 * request_id): the instance whose start event had that correlation id. */
typedef enum ew_saga_correlate {
    EW_SAGA_BY_CORRELATION_ID = 0, /* the CloudEvents correlationid */
    EW_SAGA_BY_SUBJECT = 1,        /* the CloudEvents subject */
    EW_SAGA_BY_FIELD = 2           /* a field of the event's data (string, uuid, email or int) */
} ew_saga_correlate;

/* What an event or a deadline means for a step. */
typedef enum ew_saga_verdict {
    EW_SAGA_IGNORE = 0,   /* not for this step (the next steps are asked) */
    EW_SAGA_PROGRESS = 1, /* the event counts (recorded, data may have changed); still waiting */
    EW_SAGA_DONE = 2,     /* the step is complete */
    EW_SAGA_FAIL = 3,     /* the step failed: compensations, then compensated or failed */
    EW_SAGA_RETRY = 4,    /* from on_timeout only: wait another step timeout (re-issue first) */
    EW_SAGA_TIMEOUT = 5   /* from on_timeout only, its default: compensations, then timed_out */
} ew_saga_verdict;

/* Issues events (ew_saga_issue) and changes data; an error aborts the transition, which is
 * tried again (the event is redelivered, the deadline fires again). */
typedef int (*ew_saga_action_fn)(ew_saga *s, void *ud, ew_error *err);
/* Decides what ev (one of the step's types) means for the step. */
typedef ew_saga_verdict (*ew_saga_event_fn)(ew_saga *s, const ew_event *ev, void *ud);
/* The step's deadline passed: RETRY, FAIL (with ew_saga_set_reason) or TIMEOUT. */
typedef ew_saga_verdict (*ew_saga_timeout_fn)(ew_saga *s, void *ud);

/* A step. Lists of event types end with NULL. A step begins when every step before it is
 * complete; an event that completes a later step may arrive first and is remembered (the services
 * of one flow answer in any order): the step is then complete when it begins, and its action is
 * not issued. */
typedef struct ew_saga_step {
    const char *name;                /* unique in the saga: 1 to 64 of [a-z0-9_] */
    const char *const *completed_by; /* types that complete it */
    const char *const *failed_by;    /* types that fail it; NULL: none */
    /* NULL: a type of completed_by completes it, one of failed_by fails it (the reason is the
     * event's "reason" field when it has one). */
    ew_saga_event_fn on_event;
    ew_saga_action_fn action;       /* when the step begins; NULL: it only waits */
    ew_saga_action_fn compensation; /* undoes the completed step; NULL: nothing to undo */
    int64_t timeout_ms;             /* the step's deadline, from when it begins; 0: none */
    ew_saga_timeout_fn on_timeout;  /* NULL: a passed step deadline times the saga out */
} ew_saga_step;

typedef struct ew_saga_def {
    const char *name;       /* "UserRegistration": 1 to 64 of [A-Za-z0-9_.-] */
    const char *started_by; /* the event type that starts an instance */
    ew_saga_correlate correlate;
    const char *correlation_field; /* EW_SAGA_BY_FIELD: the data field, e.g. "user_id" */
    const ew_saga_step *steps;     /* 1 to 64 */
    size_t nsteps;
    /* The instance's deadline, from its start; 0: SAGA_TIMEOUT_SECONDS of the engine's
     * configuration (ew_saga_set_deadline changes it per instance). */
    int64_t timeout_ms;
    ew_saga_action_fn on_start; /* the start event (ew_saga_cause) fills the data; may be NULL */
    /* The instance finished (ew_saga_state: completed, compensated, failed or timed_out): the
     * events that say so in the saga's own terms. May be NULL. saga.completed, saga.failed or
     * saga.timed_out is issued by the engine after it. */
    ew_saga_action_fn on_end;
    void *ud;                  /* handed to every callback; borrowed, see ud_free */
    void (*ud_free)(void *ud); /* when not NULL, the engine calls it on ud when it is closed (or
                                  when ew_saga_engine_register fails) */
} ew_saga_def;

/* ---- inside a callback ----------------------------------------------------------------------- */

const char *ew_saga_id(const ew_saga *s);             /* a UUIDv7 */
const char *ew_saga_type(const ew_saga *s);           /* the declaration's name */
const char *ew_saga_key(const ew_saga *s);            /* the correlation key */
const char *ew_saga_correlation_id(const ew_saga *s); /* what issued events carry */
const char *ew_saga_subject(const ew_saga *s);        /* the start event's subject, or NULL */
ew_saga_status ew_saga_state(const ew_saga *s);
const char *ew_saga_step_name(const ew_saga *s); /* the current step; NULL past the last */
int ew_saga_step_attempts(const ew_saga *s);     /* on_timeout RETRYs of the current step */
bool ew_saga_step_done(const ew_saga *s, const char *step);
const char *ew_saga_reason(const ew_saga *s); /* why it failed or timed out, or "" */
/* The event being applied; NULL when a deadline is (on_timeout, and what follows it). */
const ew_event *ew_saga_cause(const ew_saga *s);

/* The instance's data: a JSON object of strings and lists of strings, kept with the instance
 * (`ewctl saga show` prints it). Strings are borrowed until the callback returns. */
const char *ew_saga_get(const ew_saga *s, const char *key); /* NULL: absent or a list */
int ew_saga_set(ew_saga *s, const char *key, const char *value, ew_error *err); /* copies */
size_t ew_saga_list_len(const ew_saga *s, const char *key);
const char *ew_saga_list_at(const ew_saga *s, const char *key, size_t i);
bool ew_saga_list_has(const ew_saga *s, const char *key, const char *item);
/* Appends item unless the list has it (1: added, 0: was there); creates the list. */
int ew_saga_list_add(ew_saga *s, const char *key, const char *item, ew_error *err);

/* Issues an event of a catalog type from its data (validated now): published once the
 * transition commits, with the saga's correlation id, the applied event as causation (and its
 * traceparent), source SERVICE_NAME, and subject (NULL: the saga's subject). */
int ew_saga_issue(ew_saga *s, ew_type_id type, const void *data, const char *subject,
                  ew_error *err);

/* Moves the instance's deadline (microseconds since the epoch; 0: none). */
void ew_saga_set_deadline(ew_saga *s, int64_t at_us);
/* Says why the saga fails (before returning FAIL or TIMEOUT); also the transition's note. */
void ew_saga_set_reason(ew_saga *s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Adds a sentence to the note of the transition being recorded. */
void ew_saga_note(ew_saga *s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- the engine ------------------------------------------------------------------------------ */

typedef struct ew_saga_engine_options {
    ew_bus *bus;             /* required; borrowed: see ew_saga_engine_stop for the order */
    ew_store *store;         /* required; borrowed, must outlive the engine. Give the engine a
                                handle of its own: its transactions hold the handle */
    const ew_config *config; /* ENABLE_SAGAS, SAGA_TIMEOUT_SECONDS, SERVICE_NAME; NULL: the bus's */
    ew_log_fn log;           /* NULL: silent */
    void *log_ud;
    int concurrency; /* workers of each subscription; 0: 1 */
    int64_t poll_ms; /* the timer's longest sleep; 0: 1000 */
    ew_audit *audit; /* NULL: none. Borrowed, must outlive the engine, on a store handle other
                        than `store`: the audit chain (eventwire/audit.h) where the engine
                        records the data keys its sagas destroy ("key.shredded", actor
                        "service:SERVICE_NAME", subject the user's id, details the saga's type
                        and id), as the UserDeletion saga does */
} ew_saga_engine_options;

/* Opens an engine (nothing runs until ew_saga_engine_start). Caller frees it with
 * ew_saga_engine_close(). */
int ew_saga_engine_open(ew_saga_engine **out, const ew_saga_engine_options *o, ew_error *err);

/* Adds a saga type (before start). def is copied (names, steps, type lists); def->ud is
 * borrowed. EW_EINVAL says what is wrong with the declaration; EW_EEXIST for a second type of
 * that name; EW_ESTATE after start. */
int ew_saga_engine_register(ew_saga_engine *e, const ew_saga_def *def, ew_error *err);

/* Subscribes the handlers (group "saga.<name>", one handler "<name>" for all the saga's event
 * types, holding the store across a worker's batch: ew_subscribe_opts) and starts
 * the timer thread, which first publishes what a previous process left in the outbox. With
 * ENABLE_SAGAS=false it does nothing and returns 0: no subscription, no thread. */
int ew_saga_engine_start(ew_saga_engine *e, ew_error *err);

/* false when ENABLE_SAGAS=false. */
bool ew_saga_engine_enabled(const ew_saga_engine *e);

/* Stops the timer thread: after it returns the engine publishes nothing of its own accord.
 * The handlers stay subscribed until their bus is closed. The order of shutting down is:
 * ew_saga_engine_stop, ew_bus_close, ew_saga_engine_close (the bus calls the handlers until it
 * is closed; the engine must not publish on a closed bus). Idempotent. */
void ew_saga_engine_stop(ew_saga_engine *e);

/* Stops (when not yet stopped) and frees the engine. The bus must be closed already, or never
 * started with this engine's handlers. NULL is ignored. */
void ew_saga_engine_close(ew_saga_engine *e);

/* Runs the timer's work once on the calling thread: due deadlines, then the outbox. *fired
 * (may be NULL) gets how many deadlines this call handled. For tests and tools. */
int ew_saga_engine_tick(ew_saga_engine *e, size_t *fired, ew_error *err);

typedef struct ew_saga_engine_stats {
    uint64_t started;    /* instances created */
    uint64_t applied;    /* events that changed an instance */
    uint64_t duplicates; /* events an instance had consumed already */
    uint64_t parked;     /* events that came before their instance (applied once it exists) */
    uint64_t conflicts;  /* transitions retried after another writer changed the instance */
    uint64_t deadlines;  /* deadlines handled */
    uint64_t finished;   /* instances that reached an end */
    uint64_t errors;     /* transitions that failed and were left for a retry */
} ew_saga_engine_stats;

void ew_saga_engine_stats_get(ew_saga_engine *e, ew_saga_engine_stats *out);

/* ---- reading saga state from a store (`ewctl saga`) ------------------------------------------ */

/* An instance as stored. Strings are owned by the info: release with ew_saga_info_release(). */
typedef struct ew_saga_info {
    char *id, *type, *correlation_key, *correlation_id, *subject;
    ew_saga_status status;
    char *step; /* the current step, or where it ended; NULL past the last */
    int step_index;
    int step_attempts;
    char *steps_done; /* JSON array of step names */
    char *data;       /* JSON object */
    char *reason;     /* NULL unless it failed or timed out */
    int64_t version;
    int64_t started_us, updated_us, finished_us; /* finished_us 0 while it runs */
    int64_t deadline_us, step_deadline_us;       /* 0 for none */
} ew_saga_info;

void ew_saga_info_release(ew_saga_info *info);

/* One transition. Strings are borrowed for the callback. from_* are NULL for the first. */
typedef struct ew_saga_transition {
    int64_t seq;
    const char *from_status, *to_status;
    const char *from_step, *to_step;
    const char *event_id, *event_type; /* NULL for a deadline */
    int64_t at_us;
    const char *note;
} ew_saga_transition;

typedef struct ew_saga_filter {
    const char *type; /* NULL: any */
    int status;       /* -1: any; else an ew_saga_status */
    size_t limit;     /* 0: no limit */
} ew_saga_filter;

typedef int (*ew_saga_list_fn)(void *ud, const ew_saga_info *info);
typedef int (*ew_saga_transition_fn)(void *ud, const ew_saga_transition *t);

/* Instances matching f (NULL: all), most recently changed first. fn returns nonzero to stop. */
int ew_saga_list(ew_store *st, const ew_saga_filter *f, ew_saga_list_fn fn, void *ud,
                 ew_error *err);

/* One instance by id into *info (caller releases). EW_ENOTFOUND when there is none. */
int ew_saga_get_info(ew_store *st, const char *id, ew_saga_info *info, ew_error *err);

/* The instance of a saga type with that correlation key. EW_ENOTFOUND when there is none. */
int ew_saga_find(ew_store *st, const char *type, const char *key, ew_saga_info *info,
                 ew_error *err);

/* The transitions of an instance in order. */
int ew_saga_transitions(ew_store *st, const char *id, ew_saga_transition_fn fn, void *ud,
                        ew_error *err);

#ifdef __cplusplus
}
#endif
#endif
