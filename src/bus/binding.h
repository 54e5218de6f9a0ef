/* eventwire — CloudEvents protocol bindings: how one event travels in one broker message.
 *
 * Structured mode: the message body is the whole event as CloudEvents JSON (content type
 * application/cloudevents+json). Binary mode: the attributes travel as the message's headers
 * (Kafka: `ce_<name>` headers; AMQP: `cloudEvents_<name>` or `cloudEvents:<name>` application
 * properties), `datacontenttype` as the message's content type, and the body is the data.
 * Redis and the SQLite bus have no binding of their own: their messages are structured.
 *
 * The transport adapters (src/bus/<broker>.c) only move bytes and headers; which mode a message
 * is in, and how it becomes an event, is decided here, once, for every broker. */
#ifndef EW_BUS_BINDING_H
#define EW_BUS_BINDING_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"
#include "eventwire/error.h"
#include "eventwire/event.h"

typedef enum ew__binding {
    EW__BINDING_STRUCTURED = 0, /* the body is structured JSON; headers are ignored */
    EW__BINDING_KAFKA,          /* CloudEvents Kafka protocol binding */
    EW__BINDING_AMQP            /* CloudEvents AMQP protocol binding */
} ew__binding;

/* What a header's value is. Kafka headers are always bytes; AMQP application properties are
 * typed, and the adapter passes the types it meets as they are. */
typedef enum ew__header_kind {
    EW__HV_BYTES = 0, /* value, value_len */
    EW__HV_INT,       /* num */
    EW__HV_BOOL,      /* num: 0 or 1 */
    EW__HV_TIME_S,    /* num: an AMQP timestamp, seconds since the epoch */
    EW__HV_OTHER      /* a type the binding does not map (a table, an array, ...) */
} ew__header_kind;

/* One header or application property as received, borrowed for the call. Names and values are
 * not NUL-terminated. */
typedef struct ew__header {
    const char *name;
    size_t name_len;
    ew__header_kind kind;
    const void *value; /* EW__HV_BYTES */
    size_t value_len;
    int64_t num; /* EW__HV_INT, EW__HV_BOOL, EW__HV_TIME_S */
} ew__header;

/* One received message, as its transport hands it over. Everything is borrowed for the call. */
typedef struct ew__wire_msg {
    ew__binding binding;
    const void *body; /* NULL with body_len 0 for an empty body */
    size_t body_len;
    /* The message's own content type where the protocol has one apart from its headers (AMQP's
     * content-type property); NULL when none. Kafka's is the `content-type` header. */
    const char *content_type;
    size_t content_type_len;
    const ew__header *headers;
    size_t nheaders;
} ew__wire_msg;

/* Decodes m into an event (validated, upcast to its latest version; opts as for
 * ew_event_decode, and its max_bytes also bounds the body, and in binary mode the body and the
 * attribute headers together). On success *out holds one reference.
 * On failure err says why; when as_json is not NULL and m was in binary mode, as_json receives
 * the message rebuilt as one structured JSON document (data that is not JSON as data_base64),
 * so that a dead letter keeps the whole message readable.
 *
 * Which mode (Kafka and AMQP): a content type that starts with application/cloudevents is
 * structured mode (only application/cloudevents+json is read: EW_ENOTSUP for other formats and
 * for batches); else a specversion attribute header (Kafka `ce_specversion`, AMQP
 * `cloudEvents_specversion` or `cloudEvents:specversion`) is binary mode; else the body is
 * tried as a structured event, and the error says that it was neither. In binary mode the
 * attribute headers map to attributes by the binding's type rules (AMQP longs to numbers,
 * booleans, timestamps to RFC 3339 times; EW_ETYPE for a type with no mapping), the content type
 * is datacontenttype (a `ce_datacontenttype` header beside a `content-type` one, as the
 * JavaScript SDK sends, gives way to it), and the body is the data: JSON when the content type is
 * a JSON media type or absent, else EW_EDATA (catalog events carry JSON data). One attribute
 * twice with different values (a repeated Kafka header, both AMQP prefixes) is EW_EDUPKEY. */
int ew__binding_decode(const ew__wire_msg *m, const ew_decode_opts *opts, ew_event **out,
                       ew_buf *as_json, ew_error *err);

/* Is m in binary mode by its binding's rules (Kafka and AMQP only)? */
int ew__binding_is_binary(const ew__wire_msg *m);

/* How we publish: structured (the default) or binary (EVENT_CONTENT_MODE=binary), on the
 * brokers whose binding has a binary mode (Kafka, AMQP); structured elsewhere. */
typedef enum ew__content_mode { EW__MODE_STRUCTURED = 0, EW__MODE_BINARY } ew__content_mode;

/* EVENT_CONTENT_MODE's value as a mode: "structured" (also NULL or empty) or "binary";
 * EW_ECONFIG (and structured) for anything else. */
int ew__content_mode_parse(const char *s, ew__content_mode *mode);

/* One message to send, as ew__binding_encode() made it. Everything in it is owned by it until
 * ew__wire_out_release(). */
typedef struct ew__wire_out {
    char *body; /* NUL-terminated */
    size_t body_len;
    /* static: the message's content type, which the adapter sends as Kafka's `content-type`
     * header or AMQP's content-type property: application/cloudevents+json (structured) or
     * application/json (binary: the datacontenttype) */
    const char *content_type;
    /* The attribute headers of binary mode (Kafka `ce_*`, AMQP `cloudEvents_*` application
     * properties), none in structured mode; the content type is not among them. Names and values
     * in their canonical string form; for AMQP an integer or boolean extension is also EW__HV_INT
     * or EW__HV_BOOL with num set, to be sent as that type (value keeps the string). */
    ew__header *headers;
    size_t nheaders;
} ew__wire_out;

/* Encodes ev for binding b in mode (structured where b has no binary mode). EW_ETOOBIG when the
 * event (the body, and in binary mode the headers too) is larger than max_bytes (0: no limit);
 * then out holds nothing. */
int ew__binding_encode(const ew_event *ev, ew__binding b, ew__content_mode mode, size_t max_bytes,
                       ew__wire_out *out, ew_error *err);

void ew__wire_out_release(ew__wire_out *out);

#endif
