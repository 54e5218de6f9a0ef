/* eventwire — the domain event catalog.
 *
 * The types themselves are declared once, in events.def; this header expands that list into a
 * type id (EW_T_USER_REGISTERED), a data struct (ew_user_registered) and typed helpers per type,
 * and gives the field tables that validation, the codec and the JSON Schemas read.
 * All catalog data is static and read-only: every function here is thread-safe. */
#ifndef EVENTWIRE_CATALOG_H
#define EVENTWIRE_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "eventwire/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A list of strings in event data. Borrowed in both directions: what an event gives out lives as
 * long as the event; what a publisher passes in is copied by ew_event_new(). */
typedef struct ew_strlist {
    const char *const *items;
    size_t count;
} ew_strlist;

/* Field kinds and their C types. */
typedef enum ew_field_kind {
    EW_FIELD_STRING,  /* const char *, NULL when absent */
    EW_FIELD_UUID,    /* const char *, canonical lower-case 8-4-4-4-12 */
    EW_FIELD_EMAIL,   /* const char * */
    EW_FIELD_TIME,    /* const char *, RFC 3339 */
    EW_FIELD_URL,     /* const char *, absolute http(s) URL */
    EW_FIELD_INT,     /* int64_t, 0 when absent */
    EW_FIELD_BOOL,    /* bool, false when absent */
    EW_FIELD_STRLIST, /* ew_strlist, empty when absent */
    EW_FIELD_OBJECT   /* const char *, a JSON object as compact text, NULL when absent */
} ew_field_kind;

#define EW_FIELD_REQ 1u    /* must be present (strings must also be non-empty) */
#define EW_FIELD_PII 2u    /* personal data: encrypted per subject and erased with it */
#define EW_FIELD_SECRET 4u /* a secret (a token): encrypted like personal data, erased with it */
/* The fields encrypted on the wire and at rest (docs/security.md#encrypted-fields): personal
 * data and secrets. Only string-like kinds and OBJECT carry these flags. */
#define EW_FIELD_ENCRYPTED (EW_FIELD_PII | EW_FIELD_SECRET)

typedef struct ew_field_info {
    const char *name;
    ew_field_kind kind;
    unsigned flags;
    size_t offset; /* of the member in the type's data struct */
    const char *doc;
    size_t name_len; /* strlen(name) */
} ew_field_info;

/* Type ids: one per entry of events.def, old versions included. */
typedef enum ew_type_id {
    EW_T_NONE = 0,
#define EW_EVENT(ID, name, type, version, doc) EW_T_##ID,
#define EW_FIELD(name, field, kind, flags, doc)
#define EW_END(name)
#include "eventwire/events.def"
#undef EW_EVENT
#undef EW_FIELD
#undef EW_END
    EW_T__COUNT
} ew_type_id;

/* Data structs: ew_user_registered and so on, one member per field. */
#define EW__CTYPE_STRING const char *
#define EW__CTYPE_UUID const char *
#define EW__CTYPE_EMAIL const char *
#define EW__CTYPE_TIME const char *
#define EW__CTYPE_URL const char *
#define EW__CTYPE_INT int64_t
#define EW__CTYPE_BOOL bool
#define EW__CTYPE_STRLIST ew_strlist
#define EW__CTYPE_OBJECT const char *
#define EW_EVENT(ID, name, type, version, doc) typedef struct ew_##name {
#define EW_FIELD(name, field, kind, flags, doc) EW__CTYPE_##kind field;
#define EW_END(name)                                                                               \
    }                                                                                              \
    ew_##name;
#include "eventwire/events.def"
#undef EW_EVENT
#undef EW_FIELD
#undef EW_END

/* One type at one version. */
typedef struct ew_type_info {
    ew_type_id id;
    const char *type; /* "user.registered" */
    int version;      /* 1, 2, ... */
    bool latest;      /* the version publishers build and decoding yields */
    const char *doc;
    const char *struct_name; /* "ew_user_registered" */
    size_t struct_size;
    const ew_field_info *fields;
    size_t nfields;
    size_t type_len; /* strlen(type) */
} ew_type_info;

/* The type with this id, or NULL. */
const ew_type_info *ew_catalog_get(ew_type_id id);

/* The type with this name at this version (0: the latest), or NULL. */
const ew_type_info *ew_catalog_find(const char *type, int version);

/* The same for the name type[0..len), which need not be NUL-terminated. */
const ew_type_info *ew_catalog_find_n(const char *type, size_t len, int version);

/* Every entry, in declaration order: i from 0 to ew_catalog_count() - 1. */
size_t ew_catalog_count(void);
const ew_type_info *ew_catalog_at(size_t i);

/* The field of a type with this name, or NULL. */
const ew_field_info *ew_type_field(const ew_type_info *t, const char *name);

/* Does s pass the check that events make of a field of this kind -- the same rule, so that a
 * program can refuse at its door what an event would refuse later? Valid UTF-8, and by kind:
 * EW_FIELD_UUID 8-4-4-4-12 hex; EW_FIELD_EMAIL local@domain.tld, at most 254 bytes, no spaces,
 * '<', '>', ',' or '"'; EW_FIELD_TIME RFC 3339; EW_FIELD_URL an absolute http(s) URL;
 * EW_FIELD_STRING anything. false for NULL and for the other kinds. */
bool ew_field_valid(ew_field_kind kind, const char *s);

/* The dataschema URI of a type: "urn:eventwire:schema:user.registered:2". Writes at most n bytes
 * and returns the length it needed, like snprintf. */
int ew_type_schema_uri(const ew_type_info *t, char *buf, size_t n);

/* The JSON Schema (draft 2020-12) of the type's data, pretty-printed. Personal data fields carry
 * "x-personal-data": true, secrets "x-secret": true; both say "x-encrypted": true. *out is
 * malloc'ed and NUL-terminated: caller frees it with free(). */
int ew_type_schema(const ew_type_info *t, char **out, ew_error *err);

/* The JSON Schema of a whole CloudEvent of this type (envelope attributes and data). */
int ew_type_envelope_schema(const ew_type_info *t, char **out, ew_error *err);

/* Does an event type match a subscription pattern? Patterns are exact types, "*" (everything),
 * or dotted with wildcards: "user.*" matches one segment ("user.registered", not
 * "user.a.b"), "user.#" matches any number of trailing segments, as in AMQP topic routing. */
bool ew_pattern_match(const char *pattern, const char *type);

/* Is this a valid pattern (non-empty, segments of [a-z0-9_], '*' or '#' alone in a segment)? */
bool ew_pattern_valid(const char *pattern);

#ifdef __cplusplus
}
#endif
#endif
