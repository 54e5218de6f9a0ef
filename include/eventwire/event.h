/* eventwire — the event envelope and its codec.
 *
 * An ew_event is one domain event in a CloudEvents 1.0 envelope: id (UUIDv7), type, source,
 * subject, time, dataschema, the extension attributes eventversion, correlationid, causationid
 * and traceparent, any other extension attributes its producer set (carried unchanged), and the
 * typed data of its catalog type. Events are immutable once built and
 * reference counted, so one event can be handed to many handlers on many threads.
 *
 * On the wire an event is CloudEvents structured-mode JSON (docs/events.md). Decoding is strict:
 * every malformed input is refused with its own error code and a sentence, never a crash.
 *
 * Thread safety: every function here may be called from any thread; an event may be read from
 * many threads at once. */
#ifndef EVENTWIRE_EVENT_H
#define EVENTWIRE_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "eventwire/catalog.h"
#include "eventwire/error.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_event ew_event;

/* What an extension attribute's value is, as the JSON event format carries it. */
typedef enum ew_ext_kind {
    EW_EXT_STRING = 0, /* a JSON string (CloudEvents String, URI, Timestamp, Binary as text) */
    EW_EXT_NUMBER,     /* a JSON number; value is its text as written ("42", "0.5") */
    EW_EXT_BOOL        /* a JSON boolean; value is "true" or "false" */
} ew_ext_kind;

/* An extension attribute that is not one of eventwire's own (eventversion, correlationid,
 * causationid, traceparent): `tenantid`, `partitionkey`, `tracestate`, ... Events carry them
 * unchanged from decoding through handlers to re-encoding. The name is lower-case ASCII letters
 * and digits (the CloudEvents rule; the spec recommends at most 20 characters, which is not
 * enforced) and is none of the context attributes. */
typedef struct ew_event_ext {
    const char *name;
    ew_ext_kind kind;
    const char *value; /* NUL-terminated text, as described by kind */
} ew_event_ext;

/* Envelope attributes a publisher chooses. Every pointer is copied by ew_event_new(). */
typedef struct ew_event_attrs {
    const char *source;         /* required: the publishing service, e.g. "auth-service" */
    const char *subject;        /* the aggregate, e.g. the user id; NULL for none */
    const char *id;             /* NULL: a new UUIDv7 */
    int64_t time_us;            /* microseconds since the epoch, UTC; 0: now */
    const char *correlation_id; /* NULL: the event's own id (it starts a conversation) */
    const char *causation_id;   /* the id of the event that caused this one; NULL for none */
    const char *traceparent; /* W3C trace context "00-<32 hex>-<16 hex>-<2 hex>"; NULL for none */
    /* The producer's dataschema URI; NULL: the catalog's, urn:eventwire:schema:TYPE:VERSION. */
    const char *dataschema;
    /* Further extension attributes (names unique; order does not matter); NULL for none. A bad
     * name, a duplicate or a value that is not of its kind is EW_EINVAL. */
    const ew_event_ext *extensions;
    size_t nextensions;
} ew_event_attrs;

/* Builds an event of a catalog type from its data struct (ew_user_registered for
 * EW_T_USER_REGISTERED). The data is validated against the type (required fields, formats of
 * uuid, email, time, url, JSON of object fields) and deep-copied; attrs is copied.
 * On success *out holds one reference: release it with ew_event_unref(). */
int ew_event_new(ew_event **out, ew_type_id type, const void *data, const ew_event_attrs *attrs,
                 ew_error *err);

/* Builds an event of the latest version of `type` ("user.registered") from its data as JSON
 * text (an object), validated exactly as decoding validates it: how HTTP bodies and the command
 * line become events. attrs as for ew_event_new(). EW_EUNKNOWNTYPE, EW_EJSON, EW_EDATA, ... */
int ew_event_from_json(ew_event **out, const char *type, const char *data_json, size_t len,
                       const ew_event_attrs *attrs, ew_error *err);

/* Takes one more reference; returns ev. */
ew_event *ew_event_ref(const ew_event *ev);

/* Drops one reference; the last one frees the event. NULL is ignored. */
void ew_event_unref(const ew_event *ev);

/* Attributes. Strings are borrowed: valid while the caller holds a reference. */
const char *ew_event_id(const ew_event *ev);
const char *ew_event_type(const ew_event *ev); /* "user.registered" */
ew_type_id ew_event_type_id(const ew_event *ev);
const ew_type_info *ew_event_info(const ew_event *ev);
int ew_event_version(const ew_event *ev);
const char *ew_event_source(const ew_event *ev);
const char *ew_event_subject(const ew_event *ev); /* NULL when none */
int64_t ew_event_time_us(const ew_event *ev);
const char *ew_event_correlation_id(const ew_event *ev);
const char *ew_event_causation_id(const ew_event *ev); /* NULL when none */
const char *ew_event_traceparent(const ew_event *ev);  /* NULL when none */

/* The dataschema the producer set, kept as sent while the event keeps the version it was
 * published as; NULL when the event carries its catalog type's own,
 * urn:eventwire:schema:TYPE:VERSION (ew_type_schema_uri), also after an upcast. */
const char *ew_event_dataschema(const ew_event *ev);

/* Extension attributes other than eventwire's own: the one named `name`, or NULL. Borrowed, like
 * the attributes above. */
const ew_event_ext *ew_event_extension(const ew_event *ev, const char *name);

/* Every extension attribute, by index from 0 to ew_event_extension_count() - 1, in the order of
 * their names. */
size_t ew_event_extension_count(const ew_event *ev);
const ew_event_ext *ew_event_extension_at(const ew_event *ev, size_t i);

/* The event's data struct, or NULL when the event is not of type `type`. Borrowed. */
const void *ew_event_data_as(const ew_event *ev, ew_type_id type);

/* Does the event still hold ciphertext in fields the catalog marks personal or secret? Events
 * handlers get are decrypted (false); `ewctl tail` without the key file and foreign consumers
 * see them encrypted (docs/security.md#encrypted-fields). */
bool ew_event_encrypted(const ew_event *ev);

/* Was the event's subject erased (its data key destroyed) before the event was decrypted? Its
 * personal and secret fields then hold "" (an object field "{}"): the data is gone. Handlers
 * that would create something from it should do nothing. */
bool ew_event_erased(const ew_event *ev);

/* Do two events hold the same attributes (extensions and dataschema included) and the same
 * data? */
int ew_event_equal(const ew_event *a, const ew_event *b);

/* Encodes ev as CloudEvents structured JSON (compact, one line). *out is malloc'ed and
 * NUL-terminated; caller frees it with free(). *out_len (when not NULL) gets its length. */
int ew_event_encode(const ew_event *ev, char **out, size_t *out_len, ew_error *err);

/* Limits of decoding. Zero members take the defaults. */
typedef struct ew_decode_opts {
    size_t max_bytes; /* default 1 MiB (EVENT_MAX_BYTES) */
    int max_depth;    /* default 32 levels of nesting */
} ew_decode_opts;

/* Decodes one event from CloudEvents structured JSON. Old versions are upcast, so the result is
 * always the latest version of its type. opts may be NULL. On success *out holds one reference.
 * Errors: EW_ETOOBIG, EW_EUTF8, EW_EJSON, EW_EDUPKEY, EW_EDEPTH, EW_ENOTOBJ, EW_EMISSING,
 * EW_ETYPE, EW_EEMPTY, EW_ESPECVERSION, EW_EUNKNOWNTYPE, EW_EVERSION, EW_ETIME, EW_EDATA. */
int ew_event_decode(ew_event **out, const char *json, size_t len, const ew_decode_opts *opts,
                    ew_error *err);

/* Typed helpers for every catalog type, e.g.
 *   int ew_user_registered_new(ew_event **out, const ew_user_registered *d,
 *                              const ew_event_attrs *a, ew_error *err);
 *   const ew_user_registered *ew_user_registered_data(const ew_event *ev);  -- NULL if not one */
#define EW_EVENT(ID, name, type, version, doc)                                                     \
    static inline int ew_##name##_new(ew_event **out, const ew_##name *d, const ew_event_attrs *a, \
                                      ew_error *err)                                               \
    {                                                                                              \
        return ew_event_new(out, EW_T_##ID, d, a, err);                                            \
    }                                                                                              \
    static inline const ew_##name *ew_##name##_data(const ew_event *ev)                            \
    {                                                                                              \
        return (const ew_##name *)ew_event_data_as(ev, EW_T_##ID);                                 \
    }
#define EW_FIELD(name, field, kind, flags, doc)
#define EW_END(name)
#include "eventwire/events.def"
#undef EW_EVENT
#undef EW_FIELD
#undef EW_END

#ifdef __cplusplus
}
#endif
#endif
