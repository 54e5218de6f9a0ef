/* eventwire — trace context (W3C Trace Context, carried by events as the CloudEvents
 * distributed-tracing extension `traceparent`) and the spans the library reports.
 *
 * An HTTP request's traceparent (or a new trace) is the parent of the server span that answers
 * it; an event published while serving it carries that span; a handler runs as a child span of
 * the event it handles, and the events it publishes carry the handler's span. Spans are reported
 * to a callback (ew_span_fn) given in the bus's and the HTTP server's options; the OTLP
 * exporter (eventwire/otlp.h) is one such callback. */
#ifndef EVENTWIRE_TRACE_H
#define EVENTWIRE_TRACE_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EW_TRACEPARENT_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */

/* A position in a trace: the trace, the span, and the flags (bit 0: sampled). */
typedef struct ew_trace_ctx {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t flags;
} ew_trace_ctx;

/* Parses a traceparent header or attribute ("00-<trace>-<span>-<flags>", lower-case hex; a
 * future version's longer value is read by its first four fields). false for anything else, an
 * all-zero trace or span id included. */
bool ew_trace_parse(const char *traceparent, ew_trace_ctx *out);

/* Writes ctx as a version-00 traceparent into out (EW_TRACEPARENT_LEN + 1 bytes). Returns out. */
char *ew_trace_format(const ew_trace_ctx *ctx, char *out);

/* A new trace, sampled, with a new span. */
void ew_trace_new(ew_trace_ctx *out);

/* A child of parent: the same trace and flags, a new span id. parent NULL: a new trace. */
void ew_trace_child(const ew_trace_ctx *parent, ew_trace_ctx *out);

/* Hex of the ids, into out (33 and 17 bytes). Return out. */
char *ew_trace_id_hex(const ew_trace_ctx *ctx, char *out);
char *ew_trace_span_hex(const ew_trace_ctx *ctx, char *out);

/* ---- spans ------------------------------------------------------------------------------- */

typedef enum ew_span_kind {
    EW_SPAN_INTERNAL = 1,
    EW_SPAN_SERVER = 2,  /* an HTTP request answered */
    EW_SPAN_CONSUMER = 5 /* an event handled */
} ew_span_kind;

/* One finished span. Every pointer is borrowed for the callback. */
typedef struct ew_span {
    ew_trace_ctx ctx;          /* its trace and its own span id */
    uint8_t parent_span_id[8]; /* all zero: a root span */
    const char *name; /* "user.registered user-service/create_profile", "POST /auth/register" */
    ew_span_kind kind;
    int64_t start_us, end_us; /* wall clock, microseconds since the epoch */
    bool error; /* the handler call did not end ok (its result, or its follow-ups or inbox commit
                   failed); the HTTP status was 5xx */
    /* attributes, NULL when not known */
    const char *event_id, *event_type, *group, *handler; /* consumer spans */
    const char *http_method, *http_route;                /* server spans */
    int http_status;
} ew_span;

/* Receives each finished span. Runs on the thread that finished it (a worker, a connection
 * thread): it must be quick and must not block. */
typedef void (*ew_span_fn)(void *ud, const ew_span *span);

#ifdef __cplusplus
}
#endif
#endif
