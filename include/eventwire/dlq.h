/* eventwire — dead letters.
 *
 * An event that a handler failed for good goes to a dead letter sink with the handler, the
 * error, the number of attempts and the first and last failure times. The sink is an interface:
 * the memory sink here keeps them in the process (tests, the memory bus); the store's sink keeps
 * them in event_store.dead_letter_queue where SQL can query them. */
#ifndef EVENTWIRE_DLQ_H
#define EVENTWIRE_DLQ_H

#include <stddef.h>
#include <stdint.h>
#include "eventwire/error.h"
#include "eventwire/event.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One dead letter. Every pointer is borrowed for the duration of the call that passes it. */
typedef struct ew_dead_letter {
    const ew_event *event; /* NULL when the message could not be decoded */
    const char *payload;   /* the message as received, when event is NULL; else NULL */
    size_t payload_len;
    const char *event_id;   /* from the event, or what could be read of the payload; may be NULL */
    const char *event_type; /* likewise */
    const char *group;      /* the subscriber group */
    const char *handler;    /* the handler's name */
    const char *error;      /* the last error: what ew_ctx_set_error() said, or the reason */
    int attempts;
    int64_t first_failed_us;
    int64_t last_failed_us;
    /* Where the message came from, when it could not be decoded: the transport's own words for
     * its place, such as "kafka topic=ew.user.registered partition=0 offset=42" or "redis
     * stream=ew:user.registered entry=1700000000000-0"; NULL for a handler's failure. */
    const char *transport;
} ew_dead_letter;

typedef struct ew_dlq_sink_ops {
    int version; /* 1, or 2 with resolved */
    /* Keeps a copy of dl. 0, or an error: the dispatcher then keeps the event and tries again. */
    int (*put)(void *self, const ew_dead_letter *dl, ew_error *err);
    /* Version 2; may be NULL. The dead letter with this id (one the sink numbered, such as
     * event_store.dead_letter_queue.id) was retried (eventwire.redelivery) and its handler has
     * now handled it. A failure is logged; the event stays handled. */
    int (*resolved)(void *self, int64_t dead_letter_id, ew_error *err);
} ew_dlq_sink_ops;

typedef struct ew_dlq_sink {
    const ew_dlq_sink_ops *ops; /* static; NULL for none */
    void *self;                 /* borrowed by whoever holds the sink */
} ew_dlq_sink;

/* ---- the memory sink ------------------------------------------------------------------ */

typedef struct ew_memdlq ew_memdlq;

/* A dead letter kept by the memory sink: the sink's own copy. */
typedef struct ew_memdlq_entry {
    uint64_t seq;    /* 1, 2, ... in arrival order; never reused */
    ew_event *event; /* NULL when undecodable */
    char *payload;
    size_t payload_len;
    char *event_id, *event_type, *group, *handler, *error;
    int attempts;
    int64_t first_failed_us, last_failed_us;
    char *transport; /* ew_dead_letter.transport; NULL when none */
} ew_memdlq_entry;

/* Caller frees with ew_memdlq_free(). Thread-safe: entries may be added from worker threads
 * while another thread reads. */
int ew_memdlq_new(ew_memdlq **out, ew_error *err);
void ew_memdlq_free(ew_memdlq *q);

/* The sink that adds to q. q is borrowed and must outlive every user of the sink. */
ew_dlq_sink ew_memdlq_sink(ew_memdlq *q);

size_t ew_memdlq_count(ew_memdlq *q);

/* A copy of the i-th entry (0 = oldest) into *out, which the caller releases with
 * ew_memdlq_entry_release(). EW_ENOTFOUND past the end. */
int ew_memdlq_get(ew_memdlq *q, size_t i, ew_memdlq_entry *out);

/* Removes the entry with this seq; EW_ENOTFOUND when there is none. With out not NULL the entry
 * is moved to *out (caller releases it), which is how a dead letter is taken out to retry it. */
int ew_memdlq_take(ew_memdlq *q, uint64_t seq, ew_memdlq_entry *out);

void ew_memdlq_entry_release(ew_memdlq_entry *e);

#ifdef __cplusplus
}
#endif
#endif
