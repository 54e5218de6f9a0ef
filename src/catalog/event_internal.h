/* eventwire — what the codec shares with the protocol bindings (src/bus/binding.c) and the rest
 * of the library. */
#ifndef EW_CATALOG_EVENT_INTERNAL_H
#define EW_CATALOG_EVENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include "core/buf.h"
#include "eventwire/catalog.h"
#include "eventwire/event.h"

/* The event object's layout (event.c owns it): internal, so that the dispatcher's per-call
 * reads of an event's type, id and traceparent (src/bus/dispatch.c) cost a load, not a call.
 * Everything else goes through the functions of eventwire/event.h. */
struct ew__event_cipher;
struct ew_event {
    atomic_int refs;
    const ew_type_info *info;
    const char *id, *source, *subject, *correlation_id, *causation_id, *traceparent;
    const char *dataschema; /* NULL: the catalog's */
    int64_t time_us;
    void *data;
    const ew_event_ext *ext; /* sorted by name, names unique */
    size_t next;
    uint64_t sealed; /* fields (by index) that hold ciphertext (event_internal.h) */
    bool erased;     /* fields whose subject's key was destroyed were emptied */
    /* The event as it was received (one reference), when this one is not that: decoding
     * upcast it from an older version, or decryption made a plaintext copy (event_internal.h,
     * ew__event_received). NULL otherwise, or not made yet: an event decrypted while it was
     * decoded keeps its ciphertext in `cipher`, and the received form is built from it the
     * first time it is asked for (atomically: the event may be shared by then). */
    _Atomic(const ew_event *) received;
    struct ew__event_cipher *cipher;
    /* the data struct, the extension table and the strings follow */
};

/* Is the media type s[0..n) JSON by the CloudEvents JSON format's rule: application/json,
 * text/json or any type/subtype+json, parameters (; charset=utf-8) and case aside? */
bool ew__media_type_json(const char *s, size_t n);

/* Appends the event's data, as the compact JSON object ew_event_encode() puts in "data", to b:
 * the body of a binary-mode message. EW_ENOMEM when b ran out of memory. */
int ew__event_encode_data(const ew_event *ev, ew_buf *b);

/* ---- encrypted fields (src/security/keyring.c) ----
 *
 * An encrypted field (EW_FIELD_ENCRYPTED) travels as a JSON string that starts with this prefix:
 * "ewenc1.SUBJECT.BASE64URL" (docs/security.md#encrypted-fields). Decoding keeps such a value as
 * it is, whatever the field's kind, without checking its format, and marks the field sealed;
 * encoding writes a sealed field back as that string. */
#define EW__SEALED_PREFIX "ewenc1."

/* Sealing while encoding and opening while decoding (src/security/keyring.c): the encoder
 * writes each field a sealer names through it, the decoder hands each sealed field to an
 * opener before it builds the event, so that each side builds one event where sealing then
 * encoding, or decoding then opening, built two. */
typedef struct ew__sealer {
    uint64_t fields; /* the fields (bits by index) seal() writes; each holds a string */
    /* Appends to b the JSON string (quotes included) that carries field f of ev, whose
     * plaintext is p, sealed. 0, or an EW_E… code with err. */
    int (*seal)(void *ud, const ew_event *ev, const ew_field_info *f, const char *p, ew_buf *b,
                ew_error *err);
    void *ud;
} ew__sealer;

typedef struct ew__opener {
    /* Appends to plain the plaintext of field f of an event of type t with id `id`, sealed as
     * token, and a NUL: 0; 1 when its subject's key was destroyed (nothing appended: the field
     * is erased); or an EW_E… code with err. */
    int (*open)(void *ud, const ew_type_info *t, const ew_field_info *f, const char *id,
                const char *token, ew_buf *plain, ew_error *err);
    void *ud;
} ew__opener;

/* ew__event_encode_data() with the fields s names (may be NULL) sealed by it on the way: the
 * data of the event that sealing would make, without making it. 0, or an EW_E… code with err
 * (the sealer's, or EW_ENOMEM). */
int ew__event_encode_data_sealed(const ew_event *ev, const ew__sealer *s, ew_buf *b, ew_error *err);

/* ew_event_encode() with the fields s names sealed by it on the way. */
int ew__event_encode_sealed(const ew_event *ev, const ew__sealer *s, char **out, size_t *out_len,
                            ew_error *err);

/* ew_event_decode() with the sealed fields opened by o: the plaintext checked as ew_event_new()
 * checks it, in the one event built, whose received form (ew__event_received) is made from
 * the ciphertext when first asked for. An event upcast from an older version comes back still
 * sealed (ew_event_encrypted): the caller opens it as upcast. */
int ew__event_decode_opened(ew_event **out, const char *json, size_t len,
                            const ew_decode_opts *opts, const ew__opener *o, ew_error *err);

/* The fields of ev (bits by index) that hold ciphertext. */
uint64_t ew__event_sealed(const ew_event *ev);

/* A copy of ev with the attributes a (the data as ev has it, ciphertext and erased fields
 * included): how an event gets attributes added after it was built (signing). */
int ew__event_with_attrs(const ew_event *ev, const ew_event_attrs *a, ew_event **out,
                         ew_error *err);

/* A copy of ev whose fields named by `replace` (bits by field index) hold values[i] instead: the
 * copy's `sealed` fields are ciphertext (not checked), its `erased` fields are emptied values of
 * a destroyed key (not checked, ew_event_erased() true), and every other replaced field is
 * plaintext, checked as ew_event_new() checks it. Fields not replaced keep what ev had. On
 * success *out holds one reference. */
int ew__event_replace(const ew_event *ev, uint64_t replace, const char *const *values,
                      uint64_t sealed, uint64_t erased, ew_event **out, ew_error *err);

/* ew__event_replace() whose copy has the extension attributes exts[0..nexts) instead of ev's
 * (checked as ew_event_new() checks them): sealing and signing an event in one copy. */
int ew__event_replace_exts(const ew_event *ev, uint64_t replace, const char *const *values,
                           uint64_t sealed, uint64_t erased, const ew_event_ext *exts, size_t nexts,
                           ew_event **out, ew_error *err);

/* The event as it was received: the one ev was made from when decoding upcast it from an older
 * version (its data at that version, its producer's dataschema), or when decryption made ev a
 * plaintext copy (the ciphertext as it came); else ev itself. Borrowed, valid while ev is. What
 * a received event's tag covers, and what a dead letter or a redelivery of it carries on, so
 * that replays and retries of old events still verify. Thread-safe: the received form of an
 * event opened while decoding is built at the first call; when memory for it runs out, this
 * gives ev itself (the plaintext), which the stores and redelivery seal again. */
const ew_event *ew__event_received(const ew_event *ev);

/* Makes copy (a new event, not yet shared with another thread) keep from's received form:
 * decryption's plaintext copies. */
void ew__event_keep_received(ew_event *copy, const ew_event *from);

#endif
