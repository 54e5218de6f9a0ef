/* eventwire — the event object: building (with validation), reference counting, equality, and
 * the CloudEvents structured-JSON codec. An event is one malloc: the header, then its data
 * struct, its extension table and its strings, sized exactly before they are copied in. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "catalog/event_internal.h"
#include "catalog/upcast.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"
#include "core/uuid.h"
#include "eventwire/clock.h"
#include "eventwire/event.h"
#include "eventwire/id.h"

/* The ciphertext of the fields an event had sealed when it was received, by field index: what
 * its received form is built from (ew__event_received). One malloc, the strings after it. */
struct ew__event_cipher {
    uint64_t fields;
    const char *tok[64];
};

#define DEFAULT_MAX_BYTES (1u << 20)
#define DEFAULT_MAX_DEPTH 32
#define MAX_ATTR_LEN 4096 /* id, source, subject and the other envelope strings */

/* ---- validation ------------------------------------------------------------------------- */

/* The checks every field of every event goes through, inlined into their callers. */
#if defined(__GNUC__)
#define HOT_INLINE inline __attribute__((always_inline))
#else
#define HOT_INLINE inline
#endif

static HOT_INLINE bool email_valid(const char *s)
{
    const char *at = strchr(s, '@');
    size_t n = strlen(s);
    if (!at || at == s || n > 254 || strchr(at + 1, '@')) return false;
    const char *dot = strrchr(at + 1, '.');
    if (!dot || dot == at + 1 || dot[1] == '\0') return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '<' || *p == '>' || *p == ',' || *p == '"')
            return false;
    return true;
}

static bool url_valid(const char *s)
{
    const char *rest = NULL;
    if (strncmp(s, "https://", 8) == 0)
        rest = s + 8;
    else if (strncmp(s, "http://", 7) == 0)
        rest = s + 7;
    if (!rest || !*rest || *rest == '/') return false;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '"' || *p == '<' || *p == '>') return false;
    return true;
}

/* Lower-case hex digits. */
static const unsigned char hex_digit[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
};

/* Are s[0..n) lower-case hex digits? *nonzero (may be NULL): is one of them not '0'? One pass
 * without branches: it runs for every event decoded. */
static bool hex_run(const char *s, int n, bool *nonzero)
{
    unsigned char ok = 1, nz = 0;
    for (int i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        ok &= hex_digit[c];
        nz |= (unsigned char)(c ^ '0');
    }
    if (nonzero) *nonzero = nz != 0;
    return ok;
}

/* W3C trace context: version-traceid-parentid-flags, lower-case hex, ids not all zero. */
static bool traceparent_valid(const char *s)
{
    if (strnlen(s, 56) != 55 || s[2] != '-' || s[35] != '-' || s[52] != '-') return false;
    bool trace, parent;
    if (!hex_run(s, 2, NULL) || !hex_run(s + 3, 32, &trace) || !hex_run(s + 36, 16, &parent) ||
        !hex_run(s + 53, 2, NULL))
        return false;
    return !(s[0] == 'f' && s[1] == 'f') && trace && parent;
}

bool ew_field_valid(ew_field_kind kind, const char *s)
{
    if (!s || !ew_utf8_valid(s, strlen(s))) return false;
    switch (kind) {
    case EW_FIELD_STRING:
        return true;
    case EW_FIELD_UUID:
        return ew_uuid_valid(s);
    case EW_FIELD_EMAIL:
        return email_valid(s);
    case EW_FIELD_TIME: {
        int64_t t_us;
        return ew_time_parse(s, &t_us) == 0;
    }
    case EW_FIELD_URL:
        return url_valid(s);
    default:
        return false;
    }
}

/* Checks one field's value against its kind. Inlined: it runs for every field of every event
 * built or decoded. */
static HOT_INLINE int check_field(const ew_type_info *t, const ew_field_info *f, const void *data,
                                  size_t *len, ew_error *err)
{
    *len = 0;
    const char *base = (const char *)data + f->offset;
    bool req = f->flags & EW_FIELD_REQ;
    switch (f->kind) {
    case EW_FIELD_INT:
    case EW_FIELD_BOOL:
        return 0;
    case EW_FIELD_STRLIST: {
        const ew_strlist *l = (const ew_strlist *)(const void *)base;
        if (req && l->count == 0)
            return ew_error_set(err, EW_EDATA, "%s: data.%s must hold at least one item", t->type,
                                f->name);
        if (l->count && !l->items)
            return ew_error_set(err, EW_EDATA, "%s: data.%s has %zu items but no array", t->type,
                                f->name, l->count);
        for (size_t i = 0; i < l->count; i++) {
            if (!l->items[i])
                return ew_error_set(err, EW_EDATA, "%s: data.%s[%zu] is NULL", t->type, f->name, i);
            size_t n = strlen(l->items[i]);
            if (!ew_utf8_valid(l->items[i], n))
                return ew_error_set(err, EW_EUTF8, "data.%s[%zu] is not valid UTF-8", f->name, i);
            *len += n + 1;
        }
        return 0;
    }
    default:
        break;
    }
    const char *s = *(const char *const *)(const void *)base;
    if (!s) {
        if (req) return ew_error_set(err, EW_EDATA, "%s: data.%s is required", t->type, f->name);
        return 0;
    }
    if (req && !*s && f->kind != EW_FIELD_OBJECT)
        return ew_error_set(err, EW_EDATA, "%s: data.%s must not be empty", t->type, f->name);
    *len = strlen(s);
    if (!ew_utf8_valid(s, *len))
        return ew_error_set(err, EW_EUTF8, "data.%s is not valid UTF-8", f->name);
    switch (f->kind) {
    case EW_FIELD_UUID:
        if (!ew_uuid_valid(s))
            return ew_error_set(err, EW_EDATA, "%s: data.%s '%.40s' is not a UUID", t->type,
                                f->name, s);
        break;
    case EW_FIELD_EMAIL:
        if (!email_valid(s))
            return ew_error_set(err, EW_EDATA, "%s: data.%s '%.64s' is not an email address",
                                t->type, f->name, s);
        break;
    case EW_FIELD_TIME: {
        int64_t t_us;
        if (ew_time_parse(s, &t_us))
            return ew_error_set(err, EW_EDATA, "%s: data.%s '%.40s' is not an RFC 3339 time",
                                t->type, f->name, s);
        break;
    }
    case EW_FIELD_URL:
        if (!url_valid(s))
            return ew_error_set(err, EW_EDATA, "%s: data.%s '%.64s' is not an http(s) URL", t->type,
                                f->name, s);
        break;
    default:
        break;
    }
    return 0;
}

/* The envelope strings, in the order build() lays them out. */
enum {
    A_ID,
    A_SOURCE,
    A_SUBJECT,
    A_CORRELATION,
    A_CAUSATION,
    A_DATASCHEMA,
    A_TRACEPARENT,
    A_COUNT
};

/* How far an event's attributes were checked before it is built. */
typedef enum attrs_state {
    ATTRS_UNCHECKED, /* given by a caller: everything checked here */
    ATTRS_PARSED,    /* decoded: the JSON parser checked their UTF-8 and decode_tree() the
                        traceparent; their lengths are still checked here */
    ATTRS_KNOWN,     /* an existing event's: nothing checked again */
    ATTRS_KNOWN_ALL  /* an existing event's with its own extensions (checked, sorted): neither */
} attrs_state;

static int check_attrs(const ew_event_attrs *a, attrs_state st, size_t alen[A_COUNT], ew_error *err)
{
    if (!a || !a->source || !*a->source)
        return ew_error_set(err, EW_EEMPTY, "attribute 'source' is required and must not be empty");
    const char *names[] = {"id", "source", "subject", "correlationid", "causationid", "dataschema"};
    const char *vals[] = {a->id,           a->source,    a->subject, a->correlation_id,
                          a->causation_id, a->dataschema};
    for (int i = 0; i < A_TRACEPARENT; i++) {
        alen[i] = 0;
        if (!vals[i]) continue;
        size_t n = alen[i] = strlen(vals[i]);
        if (n == 0)
            return ew_error_set(err, EW_EEMPTY, "attribute '%s' must not be empty", names[i]);
        if (n > MAX_ATTR_LEN)
            return ew_error_set(err, EW_ETOOBIG, "attribute '%s' is %zu bytes, more than %d",
                                names[i], n, MAX_ATTR_LEN);
        if (st != ATTRS_PARSED && !ew_utf8_valid(vals[i], n))
            return ew_error_set(err, EW_EUTF8, "attribute '%s' is not valid UTF-8", names[i]);
    }
    alen[A_TRACEPARENT] = a->traceparent ? strlen(a->traceparent) : 0;
    if (st != ATTRS_PARSED && a->traceparent && !traceparent_valid(a->traceparent))
        return ew_error_set(err, EW_EINVAL,
                            "attribute 'traceparent' '%.60s' is not W3C trace context "
                            "(00-<32 hex>-<16 hex>-<2 hex>)",
                            a->traceparent);
    return 0;
}

/* CloudEvents attribute names: lower-case ASCII letters and digits. The spec recommends at
 * most 20 characters (SHOULD); longer names are valid, and accepted. */
static bool ext_name_valid(const char *s, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9'))) return false;
    return true;
}

/* The context attributes and eventwire's own extensions: not names of further extensions. */
static bool attr_name_reserved(const char *s)
{
    static const char *const names[] = {
        "specversion",     "id",         "source", "type",         "subject",       "time",
        "datacontenttype", "dataschema", "data",   "eventversion", "correlationid", "causationid",
        "traceparent"};
    /* the first letter first: every event's extensions are checked each time one is built */
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (s[0] == names[i][0] && strcmp(s, names[i]) == 0) return true;
    return false;
}

/* A JSON number's text: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool json_number_valid(const char *s)
{
    if (*s == '-') s++;
    if (*s == '0')
        s++;
    else if (*s >= '1' && *s <= '9')
        s += strspn(s, "0123456789");
    else
        return false;
    if (*s == '.') {
        size_t n = strspn(++s, "0123456789");
        if (!n) return false;
        s += n;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') s++;
        size_t n = strspn(s, "0123456789");
        if (!n) return false;
        s += n;
    }
    return *s == '\0';
}

static int ext_cmp(const void *a, const void *b)
{
    return strcmp((*(const ew_event_ext *const *)a)->name, (*(const ew_event_ext *const *)b)->name);
}

/* Checks the extensions of attrs and sorts them by name into sorted[0..n); *text gets the bytes
 * their names and values take with their NULs. */
static int check_exts(const ew_event_attrs *a, const ew_event_ext **sorted, size_t *text,
                      ew_error *err)
{
    *text = 0;
    for (size_t i = 0; i < a->nextensions; i++) {
        const ew_event_ext *x = &a->extensions[i];
        if (!x->name || !ext_name_valid(x->name, strlen(x->name)))
            return ew_error_set(err, EW_EINVAL,
                                "extension attribute name '%.40s' is not a CloudEvents name "
                                "(lower-case letters a-z and digits 0-9)",
                                x->name ? x->name : "(null)");
        if (attr_name_reserved(x->name))
            return ew_error_set(err, EW_EINVAL,
                                "'%s' is an attribute of its own, not a further extension",
                                x->name);
        if (!x->value)
            return ew_error_set(err, EW_EINVAL, "extension attribute '%.40s' has no value",
                                x->name);
        size_t vn = strlen(x->value);
        bool ok;
        switch (x->kind) {
        case EW_EXT_STRING:
            ok = ew_utf8_valid(x->value, vn);
            break;
        case EW_EXT_NUMBER:
            ok = json_number_valid(x->value);
            break;
        case EW_EXT_BOOL:
            ok = strcmp(x->value, "true") == 0 || strcmp(x->value, "false") == 0;
            break;
        default:
            ok = false;
        }
        if (!ok)
            return ew_error_set(err, EW_EINVAL,
                                "extension attribute '%.40s': '%.40s' is not a valid %s", x->name,
                                x->value,
                                x->kind == EW_EXT_NUMBER ? "JSON number"
                                : x->kind == EW_EXT_BOOL ? "boolean (true or false)"
                                                         : "UTF-8 string");
        sorted[i] = x;
        *text += strlen(x->name) + 1 + vn + 1;
    }
    if (a->nextensions == 2 && ext_cmp(&sorted[0], &sorted[1]) > 0) { /* a signed event's */
        const ew_event_ext *t = sorted[0];
        sorted[0] = sorted[1];
        sorted[1] = t;
    } else if (a->nextensions > 2) {
        qsort(sorted, a->nextensions, sizeof *sorted, ext_cmp);
    }
    for (size_t i = 1; i < a->nextensions; i++)
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
            return ew_error_set(err, EW_EINVAL, "extension attribute '%.40s' is given twice",
                                sorted[i]->name);
    return 0;
}

/* Is s the type's own dataschema, urn:eventwire:schema:TYPE:VERSION? */
static bool schema_is_default(const ew_type_info *t, const char *s)
{
    static const char pre[] = "urn:eventwire:schema:";
    if (strncmp(s, pre, sizeof pre - 1) != 0) return false;
    s += sizeof pre - 1;
    if (strncmp(s, t->type, t->type_len) != 0 || s[t->type_len] != ':') return false;
    s += t->type_len + 1;
    if (*s < '1' || *s > '9') return false;
    int v = 0;
    for (; *s >= '0' && *s <= '9' && v < 1000000; s++)
        v = v * 10 + (*s - '0');
    return *s == '\0' && v == t->version;
}

/* ---- building ------------------------------------------------------------------------- */

/* Object fields are stored as compact JSON: parse what the publisher gave, write it back. The
 * canonical text is appended to `canon` and its offset recorded in off[i] (SIZE_MAX: as given). */
static int canon_objects(const ew_type_info *t, const void *data, uint64_t sealed, ew_buf *canon,
                         size_t *off, ew_error *err)
{
    for (size_t i = 0; i < t->nfields; i++) {
        const ew_field_info *f = &t->fields[i];
        off[i] = SIZE_MAX;
        if (f->kind != EW_FIELD_OBJECT || ((sealed >> i) & 1)) continue;
        const char *s = *(const char *const *)(const void *)((const char *)data + f->offset);
        if (!s) continue;
        char stack[2048];
        ew_arena a;
        ew_arena_init(&a, stack, sizeof stack);
        ew_json *v;
        ew_error perr;
        int rc = ew_json_parse(&v, s, strlen(s), NULL, &a, &perr);
        if (rc == 0 && v->kind != EW_JSON_OBJECT) {
            rc = EW_EDATA;
            snprintf(perr.msg, sizeof perr.msg, "not a JSON object");
        }
        if (rc) {
            ew_arena_release(&a);
            return ew_error_set(err, EW_EDATA, "%s: data.%s is not a JSON object: %s", t->type,
                                f->name, perr.msg);
        }
        off[i] = canon->len;
        ew_json_write(canon, v);
        ew_buf_putc(canon, '\0');
        ew_arena_release(&a);
    }
    return canon->oom ? ew_error_set(err, EW_ENOMEM, "out of memory") : 0;
}

/* Copies s (n bytes and a NUL) into the event's tail at *p; returns the copy (NULL stays NULL). */
static const char *put(char **p, const char *s, size_t n)
{
    if (!s) return NULL;
    memcpy(*p, s, n);
    (*p)[n] = '\0';
    const char *r = *p;
    *p += n + 1;
    return r;
}

#define ALIGN_UP(n) (((n) + 15) & ~(size_t)15)

/* The length check_field() gives a field, for one known to be valid. */
static size_t field_len(const ew_field_info *f, const void *data)
{
    const char *base = (const char *)data + f->offset;
    if (f->kind == EW_FIELD_INT || f->kind == EW_FIELD_BOOL) return 0;
    if (f->kind == EW_FIELD_STRLIST) {
        const ew_strlist *l = (const ew_strlist *)(const void *)base;
        size_t n = 0;
        for (size_t i = 0; i < l->count; i++)
            n += strlen(l->items[i]) + 1;
        return n;
    }
    const char *str = *(const char *const *)(const void *)base;
    return str ? strlen(str) : 0;
}

/* check_attrs()' lengths, for attributes known to be valid (those of an existing event). */
static void attr_lens(const ew_event_attrs *a, size_t alen[A_COUNT])
{
    const char *vals[A_COUNT] = {a->id,           a->source,     a->subject,    a->correlation_id,
                                 a->causation_id, a->dataschema, a->traceparent};
    for (int i = 0; i < A_COUNT; i++)
        alen[i] = vals[i] ? strlen(vals[i]) : 0;
}

/* Validates and builds. `canon_given` tells that object fields are already compact JSON from our
 * own parser (decoding), so they are copied as they are. `sealed` fields hold ciphertext and
 * are not checked; `known` fields come from an event that was checked already, and are not
 * checked again; `attrs` says what of the attributes was. */
static int build_known(ew_event **out, const ew_type_info *t, const void *data,
                       const ew_event_attrs *a, bool canon_given, uint64_t sealed, uint64_t known,
                       attrs_state attrs, ew_error *err)
{
    size_t alen[A_COUNT], flen[64];
    if (t->nfields > 64) return ew_error_set(err, EW_EINVAL, "%s has too many fields", t->type);
    /* The catalog's own dataschema is not kept: it is what the event carries without one. */
    ew_event_attrs norm;
    if (a && a->dataschema && schema_is_default(t, a->dataschema)) {
        norm = *a;
        norm.dataschema = NULL;
        a = &norm;
    }
    int rc = 0;
    if (attrs == ATTRS_KNOWN || attrs == ATTRS_KNOWN_ALL)
        attr_lens(a, alen);
    else if ((rc = check_attrs(a, attrs, alen, err)))
        return rc;
    if (a->nextensions && !a->extensions)
        return ew_error_set(err, EW_EINVAL, "%zu extensions but no array", a->nextensions);
    for (size_t i = 0; i < t->nfields; i++) {
        if ((sealed >> i) & 1) { /* ciphertext: checked when it is plaintext again */
            const char *s =
                *(const char *const *)(const void *)((const char *)data + t->fields[i].offset);
            flen[i] = s ? strlen(s) : 0;
            continue;
        }
        if ((known >> i) & 1) {
            flen[i] = field_len(&t->fields[i], data);
            continue;
        }
        if ((rc = check_field(t, &t->fields[i], data, &flen[i], err))) return rc;
        const ew_field_info *f = &t->fields[i];
        const char *s = (f->flags & EW_FIELD_ENCRYPTED) && f->kind != EW_FIELD_STRLIST
                            ? *(const char *const *)(const void *)((const char *)data + f->offset)
                            : NULL;
        if (s && strncmp(s, EW__SEALED_PREFIX, sizeof EW__SEALED_PREFIX - 1) == 0)
            return ew_error_set(err, EW_EDATA,
                                "%s: data.%s starts like ciphertext (" EW__SEALED_PREFIX
                                "), which plaintext may not",
                                t->type, f->name);
    }
    const char *schema = a->dataschema;

    const ew_event_ext *sorted_stack[16], **sorted = sorted_stack;
    size_t next = a->nextensions, ext_text = 0;
    if (next > 16 && !(sorted = malloc(next * sizeof *sorted)))
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (attrs == ATTRS_KNOWN_ALL) {
        for (size_t i = 0; i < next; i++) {
            sorted[i] = &a->extensions[i];
            ext_text += strlen(sorted[i]->name) + 1 + strlen(sorted[i]->value) + 1;
        }
    } else if (next && (rc = check_exts(a, sorted, &ext_text, err))) {
        if (sorted != sorted_stack) free(sorted);
        return rc;
    }

    size_t off[64];
    ew_buf canon;
    ew_buf_init(&canon);
    if (!canon_given && (rc = canon_objects(t, data, sealed, &canon, off, err))) {
        ew_buf_release(&canon);
        if (sorted != sorted_stack) free(sorted);
        return rc;
    }

    /* One clock read serves the id and the time. */
    int64_t now = a->time_us && a->id ? a->time_us : ew_now_us();
    char idbuf[EW_UUID_LEN + 1];
    const char *id = a->id;
    if (!id) {
        ew__uuid7_at(idbuf, now);
        id = idbuf;
        alen[A_ID] = EW_UUID_LEN;
    }
    /* Size: header, data struct, string arrays, extension table, then the text, each string
     * with its NUL. */
    size_t arrays = 0, text = ext_text;
    for (int i = 0; i < A_COUNT; i++)
        text += alen[i] + 1;
    for (size_t i = 0; i < t->nfields; i++) {
        const ew_field_info *f = &t->fields[i];
        if (f->kind == EW_FIELD_STRLIST) {
            const ew_strlist *l =
                (const ew_strlist *)(const void *)((const char *)data + f->offset);
            arrays += l->count * sizeof(char *);
            text += flen[i];
        } else if (f->kind == EW_FIELD_OBJECT && !canon_given && off[i] != SIZE_MAX) {
            flen[i] = strlen(canon.data + off[i]);
            text += flen[i] + 1;
        } else if (f->kind != EW_FIELD_INT && f->kind != EW_FIELD_BOOL) {
            text += flen[i] + 1;
        }
    }
    size_t head = ALIGN_UP(sizeof(ew_event)), body = ALIGN_UP(t->struct_size);
    size_t exts = next * sizeof(ew_event_ext);
    ew_event *ev = malloc(head + body + arrays + exts + text);
    if (!ev) {
        ew_buf_release(&canon);
        if (sorted != sorted_stack) free(sorted);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    char *d = (char *)ev + head;
    const char **arr = (const char **)(void *)(d + body);
    ew_event_ext *ext = (ew_event_ext *)(void *)((char *)arr + arrays);
    char *p = (char *)ext + exts;

    atomic_init(&ev->refs, 1);
    ev->info = t;
    ev->id = put(&p, id, alen[A_ID]);
    ev->source = put(&p, a->source, alen[A_SOURCE]);
    ev->subject = put(&p, a->subject, alen[A_SUBJECT]);
    ev->correlation_id =
        a->correlation_id ? put(&p, a->correlation_id, alen[A_CORRELATION]) : ev->id;
    ev->causation_id = put(&p, a->causation_id, alen[A_CAUSATION]);
    ev->traceparent = put(&p, a->traceparent, alen[A_TRACEPARENT]);
    ev->dataschema = put(&p, schema, alen[A_DATASCHEMA]);
    for (size_t i = 0; i < next; i++) {
        ext[i].name = put(&p, sorted[i]->name, strlen(sorted[i]->name));
        ext[i].kind = sorted[i]->kind;
        ext[i].value = put(&p, sorted[i]->value, strlen(sorted[i]->value));
    }
    ev->ext = next ? ext : NULL;
    ev->next = next;
    ev->sealed = sealed;
    ev->erased = false;
    atomic_init(&ev->received, NULL);
    ev->cipher = NULL;
    if (sorted != sorted_stack) free(sorted);
    ev->time_us = a->time_us ? a->time_us : now;
    ev->data = d;
    memcpy(d, data, t->struct_size);
    for (size_t i = 0; i < t->nfields; i++) {
        const ew_field_info *f = &t->fields[i];
        char *dst = d + f->offset;
        if (f->kind == EW_FIELD_STRLIST) {
            ew_strlist *l = (ew_strlist *)(void *)dst;
            if (l->count == 0) {
                l->items = NULL;
                continue;
            }
            for (size_t j = 0; j < l->count; j++)
                arr[j] = put(&p, l->items[j], strlen(l->items[j]));
            l->items = arr;
            arr += l->count;
        } else if (f->kind == EW_FIELD_OBJECT && !canon_given && off[i] != SIZE_MAX) {
            *(const char **)(void *)dst = put(&p, canon.data + off[i], flen[i]);
        } else if (f->kind != EW_FIELD_INT && f->kind != EW_FIELD_BOOL) {
            const char **sp = (const char **)(void *)dst;
            *sp = put(&p, *sp, flen[i]);
        }
    }
    ew_buf_release(&canon);
    *out = ev;
    return 0;
}

static int build(ew_event **out, const ew_type_info *t, const void *data, const ew_event_attrs *a,
                 bool canon_given, uint64_t sealed, ew_error *err)
{
    return build_known(out, t, data, a, canon_given, sealed, 0, ATTRS_UNCHECKED, err);
}

/* build() of a decoded event, whose attributes decode_tree() took from the parser's tree. */
static int build_decoded(ew_event **out, const ew_type_info *t, const void *data,
                         const ew_event_attrs *a, bool canon_given, uint64_t sealed, ew_error *err)
{
    return build_known(out, t, data, a, canon_given, sealed, 0, ATTRS_PARSED, err);
}

int ew_event_new(ew_event **out, ew_type_id type, const void *data, const ew_event_attrs *attrs,
                 ew_error *err)
{
    const ew_type_info *t = ew_catalog_get(type);
    if (!out || !data) return ew_error_set(err, EW_EINVAL, "out and data are required");
    if (!t)
        return ew_error_set(err, EW_EUNKNOWNTYPE, "type id %d is not in the catalog", (int)type);
    return build(out, t, data, attrs, false, 0, err);
}

ew_event *ew_event_ref(const ew_event *ev)
{
    ew_event *e = (ew_event *)ev;
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}

void ew_event_unref(const ew_event *ev)
{
    if (!ev) return;
    ew_event *e = (ew_event *)ev;
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1) {
        ew_event_unref(atomic_load_explicit(&e->received, memory_order_acquire));
        free(e->cipher);
        free(e);
    }
}

const char *ew_event_id(const ew_event *ev)
{
    return ev->id;
}
const char *ew_event_type(const ew_event *ev)
{
    return ev->info->type;
}
ew_type_id ew_event_type_id(const ew_event *ev)
{
    return ev->info->id;
}
const ew_type_info *ew_event_info(const ew_event *ev)
{
    return ev->info;
}
int ew_event_version(const ew_event *ev)
{
    return ev->info->version;
}
const char *ew_event_source(const ew_event *ev)
{
    return ev->source;
}
const char *ew_event_subject(const ew_event *ev)
{
    return ev->subject;
}
int64_t ew_event_time_us(const ew_event *ev)
{
    return ev->time_us;
}
const char *ew_event_correlation_id(const ew_event *ev)
{
    return ev->correlation_id;
}
const char *ew_event_causation_id(const ew_event *ev)
{
    return ev->causation_id;
}
const char *ew_event_traceparent(const ew_event *ev)
{
    return ev->traceparent;
}
const char *ew_event_dataschema(const ew_event *ev)
{
    return ev->dataschema;
}
size_t ew_event_extension_count(const ew_event *ev)
{
    return ev->next;
}
const ew_event_ext *ew_event_extension_at(const ew_event *ev, size_t i)
{
    return i < ev->next ? &ev->ext[i] : NULL;
}
const ew_event_ext *ew_event_extension(const ew_event *ev, const char *name)
{
    size_t lo = 0, hi = ev->next;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, ev->ext[mid].name);
        if (c == 0) return &ev->ext[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const void *ew_event_data_as(const ew_event *ev, ew_type_id type)
{
    return ev && ev->info->id == type ? ev->data : NULL;
}

bool ew_event_encrypted(const ew_event *ev)
{
    return ev && ev->sealed != 0;
}

bool ew_event_erased(const ew_event *ev)
{
    return ev && ev->erased;
}

uint64_t ew__event_sealed(const ew_event *ev)
{
    return ev->sealed;
}

/* ev's received form from its ciphertext: ev's data with the sealed fields as they came. */
static int sealed_form(const ew_event *ev, ew_event **out)
{
    const struct ew__event_cipher *c = ev->cipher;
    int rc = ew__event_replace(ev, c->fields, c->tok, c->fields, 0, out, NULL);
    if (!rc) (*out)->erased = false; /* as received: ciphertext, whatever its key's fate */
    return rc;
}

const ew_event *ew__event_received(const ew_event *ev)
{
    ew_event *e = (ew_event *)ev;
    const ew_event *r = atomic_load_explicit(&e->received, memory_order_acquire);
    if (r || !ev->cipher) return r ? r : ev;
    ew_event *made;
    if (sealed_form(ev, &made)) return ev; /* out of memory: see event_internal.h */
    const ew_event *none = NULL;
    if (!atomic_compare_exchange_strong_explicit(&e->received, &none, made, memory_order_acq_rel,
                                                 memory_order_acquire)) {
        ew_event_unref(made); /* another thread made it first */
        return none;
    }
    return made;
}

void ew__event_keep_received(ew_event *copy, const ew_event *from)
{
    const ew_event *r = ew_event_ref(ew__event_received(from));
    ew_event_unref(atomic_exchange_explicit(&copy->received, r, memory_order_acq_rel));
}

int ew__event_with_attrs(const ew_event *ev, const ew_event_attrs *a, ew_event **out, ew_error *err)
{
    const ew_type_info *t = ev->info;
    uint64_t skip = ev->sealed;
    for (size_t i = 0; ev->erased && i < t->nfields && i < 64; i++)
        if (t->fields[i].flags & EW_FIELD_ENCRYPTED) skip |= UINT64_C(1) << i;
    /* Attributes that are ev's own strings were checked when ev was built (signing adds
     * extensions only): not again. The extensions are checked either way. */
    bool own = a->id == ev->id && a->source == ev->source && a->subject == ev->subject &&
               a->correlation_id == ev->correlation_id && a->causation_id == ev->causation_id &&
               a->traceparent == ev->traceparent && a->dataschema == ev->dataschema &&
               a->time_us == ev->time_us;
    int rc = build_known(out, t, ev->data, a, true, skip, ~UINT64_C(0),
                         own ? ATTRS_KNOWN : ATTRS_UNCHECKED, err);
    if (rc) return rc;
    (*out)->sealed = ev->sealed;
    (*out)->erased = ev->erased;
    return 0;
}

static int replace_impl(const ew_event *ev, uint64_t replace, const char *const *values,
                        uint64_t sealed, uint64_t erased, const ew_event_ext *exts, size_t nexts,
                        ew_event **out, ew_error *err);

int ew__event_replace(const ew_event *ev, uint64_t replace, const char *const *values,
                      uint64_t sealed, uint64_t erased, ew_event **out, ew_error *err)
{
    return replace_impl(ev, replace, values, sealed, erased, NULL, 0, out, err);
}

int ew__event_replace_exts(const ew_event *ev, uint64_t replace, const char *const *values,
                           uint64_t sealed, uint64_t erased, const ew_event_ext *exts, size_t nexts,
                           ew_event **out, ew_error *err)
{
    static const ew_event_ext none;
    if (!exts && nexts) return ew_error_set(err, EW_EINVAL, "%zu extensions but no array", nexts);
    return replace_impl(ev, replace, values, sealed, erased, exts ? exts : &none, nexts, out, err);
}

/* exts NULL: ev's own, as they are (checked and sorted when ev was built). */
static int replace_impl(const ew_event *ev, uint64_t replace, const char *const *values,
                        uint64_t sealed, uint64_t erased, const ew_event_ext *exts, size_t nexts,
                        ew_event **out, ew_error *err)
{
    const ew_type_info *t = ev->info;
    _Alignas(max_align_t) char tmp[1024];
    if (t->struct_size > sizeof tmp || t->nfields > 64)
        return ew_error_set(err, EW_EINVAL, "%s: data struct too large", t->type);
    memcpy(tmp, ev->data, t->struct_size);
    bool plain_object = false;
    for (size_t i = 0; i < t->nfields; i++) {
        if (!((replace >> i) & 1)) continue;
        const ew_field_info *f = &t->fields[i];
        if (f->kind == EW_FIELD_STRLIST || f->kind == EW_FIELD_INT || f->kind == EW_FIELD_BOOL)
            return ew_error_set(err, EW_EINVAL, "%s: data.%s cannot be replaced", t->type, f->name);
        *(const char **)(void *)(tmp + f->offset) = values[i];
        if (f->kind == EW_FIELD_OBJECT && !((sealed | erased) >> i & 1)) plain_object = true;
    }
    ew_event_attrs a = {.source = ev->source,
                        .subject = ev->subject,
                        .id = ev->id,
                        .time_us = ev->time_us,
                        .correlation_id = ev->correlation_id,
                        .causation_id = ev->causation_id,
                        .traceparent = ev->traceparent,
                        .dataschema = ev->dataschema,
                        .extensions = exts ? exts : ev->ext,
                        .nextensions = exts ? nexts : ev->next};
    /* Untouched fields keep what the event had: ciphertext stays ciphertext. */
    uint64_t keep = ev->sealed & ~replace;
    int rc = build_known(out, t, tmp, &a, !plain_object, sealed | erased | keep, ~replace,
                         exts ? ATTRS_KNOWN : ATTRS_KNOWN_ALL, err);
    if (rc) return rc;
    (*out)->sealed = sealed | keep;
    (*out)->erased = ev->erased || erased != 0;
    return 0;
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

int ew_event_equal(const ew_event *a, const ew_event *b)
{
    if (a == b) return 1;
    if (!a || !b || a->info != b->info || a->time_us != b->time_us) return 0;
    if (!str_eq(a->id, b->id) || !str_eq(a->source, b->source) || !str_eq(a->subject, b->subject) ||
        !str_eq(a->correlation_id, b->correlation_id) ||
        !str_eq(a->causation_id, b->causation_id) || !str_eq(a->traceparent, b->traceparent) ||
        !str_eq(a->dataschema, b->dataschema) || a->next != b->next || a->sealed != b->sealed ||
        a->erased != b->erased)
        return 0;
    for (size_t i = 0; i < a->next; i++)
        if (a->ext[i].kind != b->ext[i].kind || strcmp(a->ext[i].name, b->ext[i].name) != 0 ||
            strcmp(a->ext[i].value, b->ext[i].value) != 0)
            return 0;
    const ew_type_info *t = a->info;
    for (size_t i = 0; i < t->nfields; i++) {
        const ew_field_info *f = &t->fields[i];
        const char *pa = (const char *)a->data + f->offset, *pb = (const char *)b->data + f->offset;
        switch (f->kind) {
        case EW_FIELD_INT:
            if (*(const int64_t *)(const void *)pa != *(const int64_t *)(const void *)pb) return 0;
            break;
        case EW_FIELD_BOOL:
            if (*(const bool *)pa != *(const bool *)pb) return 0;
            break;
        case EW_FIELD_STRLIST: {
            const ew_strlist *la = (const void *)pa, *lb = (const void *)pb;
            if (la->count != lb->count) return 0;
            for (size_t j = 0; j < la->count; j++)
                if (strcmp(la->items[j], lb->items[j]) != 0) return 0;
            break;
        }
        default:
            if (!str_eq(*(const char *const *)(const void *)pa,
                        *(const char *const *)(const void *)pb))
                return 0;
        }
    }
    return 1;
}

/* ---- encoding ------------------------------------------------------------------------- */

static void put_attr(ew_buf *b, const char *name, const char *v)
{
    if (!v) return;
    ew_buf_append(b, name, strlen(name));
    ew_json_write_string(b, v, strlen(v));
}

/* Writes the members of the event's data object (compact JSON, no braces); the fields the
 * sealer names (NULL: none) sealed as they are written. */
static HOT_INLINE int write_data(ew_buf *b, const ew_event *ev, const ew__sealer *sealer,
                                 ew_error *err)
{
    const ew_type_info *t = ev->info;
    int first = 1;
    for (size_t i = 0; i < t->nfields; i++) {
        const ew_field_info *f = &t->fields[i];
        const char *p = (const char *)ev->data + f->offset;
        const char *s = NULL;
        if (f->kind != EW_FIELD_INT && f->kind != EW_FIELD_BOOL && f->kind != EW_FIELD_STRLIST) {
            s = *(const char *const *)(const void *)p;
            if (!s) continue; /* absent optional field */
        }
        if (!first) ew_buf_putc(b, ',');
        first = 0;
        ew_json_write_string(b, f->name, strlen(f->name));
        ew_buf_putc(b, ':');
        if (sealer && i < 64 && ((sealer->fields >> i) & 1)) {
            int rc = sealer->seal(sealer->ud, ev, f, s, b, err);
            if (rc) return rc;
            continue;
        }
        switch (f->kind) {
        case EW_FIELD_INT:
            ew_buf_printf(b, "%lld", (long long)*(const int64_t *)(const void *)p);
            break;
        case EW_FIELD_BOOL:
            ew_buf_puts(b, *(const bool *)p ? "true" : "false");
            break;
        case EW_FIELD_STRLIST: {
            const ew_strlist *l = (const void *)p;
            ew_buf_putc(b, '[');
            for (size_t j = 0; j < l->count; j++) {
                if (j) ew_buf_putc(b, ',');
                ew_json_write_string(b, l->items[j], strlen(l->items[j]));
            }
            ew_buf_putc(b, ']');
            break;
        }
        case EW_FIELD_OBJECT:
            if ((ev->sealed >> i) & 1)
                ew_json_write_string(b, s, strlen(s)); /* ciphertext is a string */
            else
                ew_buf_puts(b, s); /* compact JSON, made so when the event was built */
            break;
        default:
            ew_json_write_string(b, s, strlen(s));
        }
    }
    return 0;
}

int ew__event_encode_data(const ew_event *ev, ew_buf *b)
{
    return ew__event_encode_data_sealed(ev, NULL, b, NULL);
}

int ew__event_encode_data_sealed(const ew_event *ev, const ew__sealer *sealer, ew_buf *b,
                                 ew_error *err)
{
    ew_buf_putc(b, '{');
    int rc = write_data(b, ev, sealer, err);
    ew_buf_putc(b, '}');
    if (!rc && b->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    return rc;
}

/* v in decimal into buf (room for 12): its length. */
static int int_text(char *buf, int v)
{
    char tmp[12];
    int n = 0;
    unsigned u = v < 0 ? 0u - (unsigned)v : (unsigned)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    int l = 0;
    if (v < 0) buf[l++] = '-';
    while (n)
        buf[l++] = tmp[--n];
    buf[l] = '\0';
    return l;
}

static HOT_INLINE int encode(const ew_event *ev, const ew__sealer *sealer, char **out,
                             size_t *out_len, ew_error *err)
{
    if (!ev || !out) return ew_error_set(err, EW_EINVAL, "event and out are required");
    const ew_type_info *t = ev->info;
    ew_buf b;
    ew_buf_init(&b);
    if (ew_buf_reserve(&b, 512)) return ew_error_set(err, EW_ENOMEM, "out of memory");
    char tbuf[EW_TIME_LEN + 1];
    if (ew_time_format(ev->time_us, tbuf)) {
        ew_buf_release(&b);
        return ew_error_set(err, EW_ETIME, "event time %lld is outside years 0..9999",
                            (long long)ev->time_us);
    }
    put_attr(&b, "{\"specversion\":\"1.0\",\"id\":", ev->id);
    put_attr(&b, ",\"source\":", ev->source);
    put_attr(&b, ",\"type\":", t->type);
    put_attr(&b, ",\"subject\":", ev->subject);
    /* no printf on this path: it cost more than the rest of the envelope */
    char ver[24];
    int vl = int_text(ver, t->version);
    ew_buf_puts(&b, ",\"time\":\"");
    ew_buf_append(&b, tbuf, strlen(tbuf));
    ew_buf_puts(&b, "\",\"datacontenttype\":\"application/json\"");
    if (ev->dataschema) {
        put_attr(&b, ",\"dataschema\":", ev->dataschema);
    } else {
        ew_buf_puts(&b, ",\"dataschema\":\"urn:eventwire:schema:");
        ew_buf_puts(&b, t->type);
        ew_buf_putc(&b, ':');
        ew_buf_append(&b, ver, (size_t)vl);
        ew_buf_putc(&b, '"');
    }
    ew_buf_puts(&b, ",\"eventversion\":");
    ew_buf_append(&b, ver, (size_t)vl);
    put_attr(&b, ",\"correlationid\":", ev->correlation_id);
    put_attr(&b, ",\"causationid\":", ev->causation_id);
    put_attr(&b, ",\"traceparent\":", ev->traceparent);
    for (size_t i = 0; i < ev->next; i++) {
        const ew_event_ext *x = &ev->ext[i];
        ew_buf_putc(&b, ',');
        ew_json_write_string(&b, x->name, strlen(x->name));
        ew_buf_putc(&b, ':');
        if (x->kind == EW_EXT_STRING)
            ew_json_write_string(&b, x->value, strlen(x->value));
        else
            ew_buf_puts(&b, x->value);
    }
    ew_buf_puts(&b, ",\"data\":{");
    int rc = write_data(&b, ev, sealer, err);
    ew_buf_puts(&b, "}}");
    if (!rc && b.oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    if (rc) {
        ew_buf_release(&b);
        return rc;
    }
    *out = ew_buf_steal(&b, out_len);
    return 0;
}

int ew_event_encode(const ew_event *ev, char **out, size_t *out_len, ew_error *err)
{
    return encode(ev, NULL, out, out_len, err);
}

int ew__event_encode_sealed(const ew_event *ev, const ew__sealer *sealer, char **out,
                            size_t *out_len, ew_error *err)
{
    return encode(ev, sealer, out, out_len, err);
}

/* ---- decoding ------------------------------------------------------------------------- */

static const char *kind_name(ew_json_kind k)
{
    static const char *const n[] = {"null",     "false",    "true",     "a number",
                                    "a string", "an array", "an object"};
    return n[k];
}

/* An envelope attribute that must be a string: EW_ETYPE otherwise. v: the member, or NULL. */
static int attr_str(const ew_json *v, const char *name, bool required, const char **out,
                    ew_error *err)
{
    *out = NULL;
    if (!v) {
        if (required)
            return ew_error_set(err, EW_EMISSING, "missing required attribute '%s'", name);
        return 0;
    }
    if (v->kind != EW_JSON_STRING)
        return ew_error_set(err, EW_ETYPE, "attribute '%s' must be a string, not %s", name,
                            kind_name(v->kind));
    if (v->len == 0) return ew_error_set(err, EW_EEMPTY, "attribute '%s' must not be empty", name);
    *out = v->str;
    return 0;
}

/* Fills a data struct from a JSON object, for type t. Strings point into the tree; string
 * arrays and object texts are allocated from the arena. */
/* The field named key[0..len), or NULL. */
static const ew_field_info *field_n(const ew_type_info *t, const char *key, size_t len)
{
    for (size_t i = 0; i < t->nfields; i++)
        if (t->fields[i].name_len == len && memcmp(t->fields[i].name, key, len) == 0)
            return &t->fields[i];
    return NULL;
}

/* Is the JSON value m ciphertext of an encrypted field (event_internal.h)? */
static bool is_sealed(const ew_field_info *f, const ew_json *m)
{
    return (f->flags & EW_FIELD_ENCRYPTED) && m->kind == EW_JSON_STRING &&
           m->len > sizeof EW__SEALED_PREFIX - 1 &&
           memcmp(m->str, EW__SEALED_PREFIX, sizeof EW__SEALED_PREFIX - 1) == 0;
}

/* Fills data from obj. Encrypted fields holding ciphertext are kept as their text, whatever
 * their kind, and named in *sealed. */
static int data_from_json(const ew_type_info *t, const ew_json *obj, void *data, ew_arena *a,
                          uint64_t *sealed, ew_error *err)
{
    memset(data, 0, t->struct_size);
    *sealed = 0;
    uint64_t seen = 0; /* fields present, by index (a type has fewer than 64) */
    for (const ew_json *m = obj->child; m; m = m->next) {
        const ew_field_info *f = field_n(t, m->key, m->key_len);
        if (!f)
            return ew_error_set(err, EW_EDATA, "%s v%d: data has no field '%.64s'", t->type,
                                t->version, m->key);
        size_t fi = (size_t)(f - t->fields);
        if (fi < 64) seen |= UINT64_C(1) << fi;
        char *dst = (char *)data + f->offset;
        if (m->kind == EW_JSON_NULL && !(f->flags & EW_FIELD_REQ)) continue;
        if (fi < 64 && is_sealed(f, m)) {
            *sealed |= UINT64_C(1) << fi;
            *(const char **)(void *)dst = m->str;
            continue;
        }
        bool ok = true;
        switch (f->kind) {
        case EW_FIELD_INT:
            ok = m->kind == EW_JSON_NUMBER && m->is_int;
            if (ok) *(int64_t *)(void *)dst = m->i64;
            break;
        case EW_FIELD_BOOL:
            ok = m->kind == EW_JSON_TRUE || m->kind == EW_JSON_FALSE;
            if (ok) *(bool *)dst = m->kind == EW_JSON_TRUE;
            break;
        case EW_FIELD_STRLIST: {
            ok = m->kind == EW_JSON_ARRAY;
            if (!ok) break;
            const char **items = ew_arena_alloc(a, (m->count ? m->count : 1) * sizeof(char *));
            if (!items) return ew_error_set(err, EW_ENOMEM, "out of memory");
            size_t j = 0;
            for (const ew_json *e = m->child; e; e = e->next, j++) {
                if (e->kind != EW_JSON_STRING)
                    return ew_error_set(err, EW_EDATA, "%s: data.%s[%zu] must be a string, not %s",
                                        t->type, f->name, j, kind_name(e->kind));
                items[j] = e->str;
            }
            ((ew_strlist *)(void *)dst)->items = items;
            ((ew_strlist *)(void *)dst)->count = j;
            break;
        }
        case EW_FIELD_OBJECT: {
            ok = m->kind == EW_JSON_OBJECT;
            if (!ok) break;
            ew_buf b;
            ew_buf_init(&b);
            ew_json_write(&b, m);
            char *s = b.oom ? NULL : ew_arena_strndup(a, b.data, b.len);
            ew_buf_release(&b);
            if (!s) return ew_error_set(err, EW_ENOMEM, "out of memory");
            *(const char **)(void *)dst = s;
            break;
        }
        default:
            ok = m->kind == EW_JSON_STRING;
            if (ok) *(const char **)(void *)dst = m->str;
        }
        if (!ok) {
            static const char *const want[] = {
                [EW_FIELD_STRING] = "a string", [EW_FIELD_UUID] = "a string",
                [EW_FIELD_EMAIL] = "a string",  [EW_FIELD_TIME] = "a string",
                [EW_FIELD_URL] = "a string",    [EW_FIELD_INT] = "an integer",
                [EW_FIELD_BOOL] = "a boolean",  [EW_FIELD_STRLIST] = "an array of strings",
                [EW_FIELD_OBJECT] = "an object"};
            return ew_error_set(err, EW_EDATA, "%s: data.%s must be %s, not %s", t->type, f->name,
                                want[f->kind], kind_name(m->kind));
        }
    }
    for (size_t i = 0; i < t->nfields; i++) {
        const ew_field_info *f = &t->fields[i];
        bool present = i < 64 ? (seen >> i) & 1 : ew_json_get(obj, f->name) != NULL;
        if ((f->flags & EW_FIELD_REQ) && !present)
            return ew_error_set(err, EW_EDATA, "%s: data.%s is required", t->type, f->name);
    }
    return 0;
}

/* The envelope's members, found in one pass over the object (the parser has refused duplicate
 * names already). */
enum {
    M_SPECVERSION,
    M_ID,
    M_SOURCE,
    M_TYPE,
    M_SUBJECT,
    M_TIME,
    M_DATACONTENTTYPE,
    M_DATASCHEMA,
    M_DATA,
    M_EVENTVERSION,
    M_CORRELATIONID,
    M_CAUSATIONID,
    M_TRACEPARENT,
    M__COUNT
};

static const struct {
    const char *name;
    size_t len;
} attr_names[M__COUNT] = {
#define A(s)                                                                                       \
    {                                                                                              \
        s, sizeof s - 1                                                                            \
    }
    A("specversion"), A("id"),           A("source"),          A("type"),
    A("subject"),     A("time"),         A("datacontenttype"), A("dataschema"),
    A("data"),        A("eventversion"), A("correlationid"),   A("causationid"),
    A("traceparent"),
#undef A
};

/* Finds the envelope's members; the further extensions go to *ext (from arena a), *next of them. */
static int find_members(const ew_json *root, const ew_json *at[M__COUNT], ew_event_ext **ext,
                        size_t *next, ew_arena *a, ew_error *err)
{
    memset(at, 0, M__COUNT * sizeof at[0]);
    *ext = NULL;
    *next = 0;
    for (const ew_json *m = root->child; m; m = m->next) {
        size_t i = 0;
        while (i < M__COUNT &&
               (attr_names[i].len != m->key_len || memcmp(attr_names[i].name, m->key, m->key_len)))
            i++;
        if (i < M__COUNT) {
            at[i] = m;
            continue;
        }
        if (strcmp(m->key, "data_base64") == 0)
            return ew_error_set(err, EW_EDATA,
                                "binary data (data_base64) is not supported: "
                                "event data must be a JSON object");
        if (!ext_name_valid(m->key, m->key_len))
            return ew_error_set(err, EW_ETYPE,
                                "attribute name '%.40s' is not a CloudEvents name (lower-case "
                                "a-z and 0-9 only)",
                                m->key);
        if (m->kind == EW_JSON_OBJECT || m->kind == EW_JSON_ARRAY || m->kind == EW_JSON_NULL)
            return ew_error_set(err, EW_ETYPE,
                                "extension attribute '%.40s' must be a string, "
                                "number or boolean, not %s",
                                m->key, kind_name(m->kind));
        if (!*ext && !(*ext = ew_arena_alloc(a, root->count * sizeof **ext)))
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        ew_event_ext *x = &(*ext)[(*next)++];
        x->name = m->key;
        x->kind = m->kind == EW_JSON_STRING   ? EW_EXT_STRING
                  : m->kind == EW_JSON_NUMBER ? EW_EXT_NUMBER
                                              : EW_EXT_BOOL;
        x->value = m->kind == EW_JSON_TRUE ? "true" : m->kind == EW_JSON_FALSE ? "false" : m->str;
    }
    return 0;
}

bool ew__media_type_json(const char *s, size_t n)
{
    if (n >= 16 && memcmp(s, "application/json", 16) == 0 &&
        (n == 16 || s[16] == ';' || s[16] == ' ' || s[16] == '\t'))
        return true; /* what nearly every event says */
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    size_t end = 0;
    while (end < n && s[end] != ';' && s[end] != ' ' && s[end] != '\t')
        end++;
    if (end == 16 && strncasecmp(s, "application/json", 16) == 0) return true;
    if (end == 9 && strncasecmp(s, "text/json", 9) == 0) return true;
    const char *slash = memchr(s, '/', end);
    return slash && slash > s && end >= 5 && (size_t)(s + end - slash) > 5 &&
           strncasecmp(s + end - 5, "+json", 5) == 0;
}

/* The version a dataschema names: urn:eventwire:schema:TYPE:N, or a URL ending in vN, -vN or /N
 * (before an optional ".json"). 0 and *version 0 when it names none; an error when it is our
 * URN of another type or without a version. */
static int schema_version(const char *type, size_t tlen, const char *s, size_t n, int *version,
                          ew_error *err)
{
    static const char urn[] = "urn:eventwire:schema:";
    *version = 0;
    if (n >= sizeof urn - 1 && strncmp(s, urn, sizeof urn - 1) == 0) {
        const char *r = s + sizeof urn - 1, *colon = memrchr(r, ':', n - (sizeof urn - 1));
        if (!colon || (size_t)(colon - r) != tlen || memcmp(r, type, tlen) != 0)
            return ew_error_set(err, EW_ETYPE,
                                "dataschema '%.100s' is not urn:eventwire:schema:%.60s:VERSION", s,
                                type);
        size_t dn = (size_t)(s + n - colon - 1);
        if (dn == 0 || dn > 6 || colon[1] == '0' || strspn(colon + 1, "0123456789") != dn)
            return ew_error_set(err, EW_ETYPE, "dataschema '%.100s' has no version number", s);
        *version = atoi(colon + 1);
        return 0;
    }
    if (n > 5 && strncasecmp(s + n - 5, ".json", 5) == 0) n -= 5;
    size_t d = 0;
    while (d < n && s[n - 1 - d] >= '0' && s[n - 1 - d] <= '9')
        d++;
    if (d == 0 || d > 6 || s[n - d] == '0' || d == n) return 0;
    char before = s[n - d - 1];
    bool named = before == '/';
    if (before == 'v' || before == 'V') {
        char b2 = n - d - 1 > 0 ? s[n - d - 2] : '/';
        named = !((b2 >= 'a' && b2 <= 'z') || (b2 >= 'A' && b2 <= 'Z') || (b2 >= '0' && b2 <= '9'));
    }
    if (named) *version = atoi(s + n - d);
    return 0;
}

/* Does data fit version t: its fields, their JSON types and their formats? Fills tmp. */
static int data_fits(const ew_type_info *t, const ew_json *data, void *tmp, ew_arena *a,
                     ew_error *err)
{
    uint64_t sealed;
    int rc = data_from_json(t, data, tmp, a, &sealed, err);
    for (size_t i = 0; !rc && i < t->nfields; i++) {
        size_t len;
        if (!((sealed >> i) & 1)) rc = check_field(t, &t->fields[i], tmp, &len, err);
    }
    return rc;
}

/* No eventversion and a dataschema that names none: the newest version whose schema the data
 * satisfies. EW_EDATA with each version's first error when none does. */
static int version_by_data(const ew_type_info *latest, const ew_json *data, void *tmp, ew_arena *a,
                           const ew_type_info **out, ew_error *err)
{
    ew_buf why;
    ew_buf_init(&why);
    for (int v = latest->version; v >= 1; v--) {
        const ew_type_info *t = ew_catalog_find(latest->type, v);
        if (!t) continue;
        ew_error e = {0};
        int rc = data_fits(t, data, tmp, a, &e);
        if (rc == EW_ENOMEM) {
            ew_buf_release(&why);
            return ew_error_set(err, rc, "out of memory");
        }
        if (!rc) {
            ew_buf_release(&why);
            *out = t;
            return 0;
        }
        ew_buf_printf(&why, "%sv%d: %.90s", v == latest->version ? "" : "; ", v, e.msg);
    }
    int rc = ew_error_set(err, EW_EDATA, "%s without eventversion: the data fits no version: %s",
                          latest->type, why.oom ? "out of memory" : why.data);
    ew_buf_release(&why);
    return rc;
}

/* The one event of a decoding that opens its sealed fields (ew__event_decode_opened): tmp's
 * sealed fields (ciphertext, in the parser's arena) become their plaintext, checked as
 * ew_event_new() checks it, or the emptied value of an erased field; the ciphertext is kept in
 * the event, what its received form is made of. */
static int build_opened(ew_event **out, const ew_type_info *t, void *tmp, const ew_event_attrs *at,
                        uint64_t sealed, const ew__opener *o, ew_error *err)
{
    const char *tok[64];
    size_t off[64], clen = 0;
    uint64_t erased = 0;
    bool plain_object = false;
    ew_buf plain;
    ew_buf_init(&plain);
    int rc = 0;
    for (size_t i = 0; !rc && i < t->nfields && i < 64; i++) {
        if (!((sealed >> i) & 1)) continue;
        const ew_field_info *f = &t->fields[i];
        tok[i] = *(const char **)(void *)((char *)tmp + f->offset);
        clen += strlen(tok[i]) + 1;
        off[i] = plain.len;
        rc = o->open(o->ud, t, f, at->id, tok[i], &plain, err);
        if (rc == 1) {
            erased |= UINT64_C(1) << i;
            rc = 0;
        } else if (!rc && f->kind == EW_FIELD_OBJECT) {
            plain_object = true;
        }
    }
    if (!rc && plain.oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    struct ew__event_cipher *c = NULL;
    if (!rc && !(c = malloc(sizeof *c + clen))) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    if (!rc) {
        c->fields = sealed;
        char *p = (char *)(c + 1);
        for (size_t i = 0; i < t->nfields && i < 64; i++) {
            if (!((sealed >> i) & 1)) continue;
            const ew_field_info *f = &t->fields[i];
            c->tok[i] = put(&p, tok[i], strlen(tok[i]));
            *(const char **)(void *)((char *)tmp + f->offset) = !((erased >> i) & 1)
                                                                    ? plain.data + off[i]
                                                                : f->kind == EW_FIELD_OBJECT ? "{}"
                                                                                             : "";
        }
        /* the erased fields are not checked: a destroyed key's emptied values */
        rc = build_decoded(out, t, tmp, at, !plain_object, erased, err);
    }
    if (!rc) {
        (*out)->sealed = 0; /* build() took the erased fields' bits for sealed ones */
        (*out)->erased = erased != 0;
        (*out)->cipher = c;
    } else {
        free(c);
    }
    if (plain.data) explicit_bzero(plain.data, plain.len);
    ew_buf_release(&plain);
    return rc;
}

static int decode_tree(ew_event **out, const ew_json *root, ew_arena *a, const ew__opener *opener,
                       ew_error *err)
{
    int rc;
    if (root->kind != EW_JSON_OBJECT)
        return ew_error_set(err, EW_ENOTOBJ, "an event must be a JSON object, not %s",
                            kind_name(root->kind));
    const ew_json *m[M__COUNT];
    ew_event_ext *ext;
    size_t next;
    if ((rc = find_members(root, m, &ext, &next, a, err))) return rc;
    const char *spec, *type, *tstr, *ctype, *schema;
    ew_event_attrs at = {.extensions = ext, .nextensions = next};
    if ((rc = attr_str(m[M_SPECVERSION], "specversion", true, &spec, err))) return rc;
    if (strcmp(spec, "1.0") != 0)
        return ew_error_set(err, EW_ESPECVERSION, "specversion '%.20s' is not 1.0", spec);
    if ((rc = attr_str(m[M_ID], "id", true, &at.id, err)) ||
        (rc = attr_str(m[M_SOURCE], "source", true, &at.source, err)) ||
        (rc = attr_str(m[M_TYPE], "type", true, &type, err)) ||
        (rc = attr_str(m[M_SUBJECT], "subject", false, &at.subject, err)) ||
        (rc = attr_str(m[M_TIME], "time", false, &tstr, err)) ||
        (rc = attr_str(m[M_DATACONTENTTYPE], "datacontenttype", false, &ctype, err)) ||
        (rc = attr_str(m[M_DATASCHEMA], "dataschema", false, &schema, err)) ||
        (rc = attr_str(m[M_CORRELATIONID], "correlationid", false, &at.correlation_id, err)) ||
        (rc = attr_str(m[M_CAUSATIONID], "causationid", false, &at.causation_id, err)) ||
        (rc = attr_str(m[M_TRACEPARENT], "traceparent", false, &at.traceparent, err)))
        return rc;
    if (tstr && ew_time_parse(tstr, &at.time_us))
        return ew_error_set(err, EW_ETIME, "attribute 'time' '%.40s' is not an RFC 3339 time",
                            tstr);
    if (tstr && at.time_us == 0) at.time_us = 1; /* 0 means "now" to build() */
    if (ctype && !ew__media_type_json(ctype, strlen(ctype)))
        return ew_error_set(err, EW_EDATA,
                            "datacontenttype '%.60s' is not JSON (application/json or +json): "
                            "catalog events carry JSON data",
                            ctype);
    if (at.traceparent && !traceparent_valid(at.traceparent))
        return ew_error_set(err, EW_ETYPE,
                            "attribute 'traceparent' '%.60s' is not W3C trace "
                            "context",
                            at.traceparent);

    int version = 0; /* 0: not given */
    const ew_json *vj = m[M_EVENTVERSION];
    if (vj) {
        if (vj->kind == EW_JSON_NUMBER && vj->is_int) {
            version = vj->i64 > 0 && vj->i64 < 1000000 ? (int)vj->i64 : -1;
        } else if (vj->kind == EW_JSON_STRING && vj->len > 0 && vj->len < 7 &&
                   strspn(vj->str, "0123456789") == vj->len) {
            version = atoi(vj->str);
        } else {
            return ew_error_set(err, EW_ETYPE,
                                "attribute 'eventversion' must be a positive "
                                "integer");
        }
        if (version < 1)
            return ew_error_set(err, EW_ETYPE,
                                "attribute 'eventversion' must be a positive "
                                "integer");
    }
    size_t type_len = m[M_TYPE]->len;
    const ew_type_info *latest = ew_catalog_find_n(type, type_len, 0);
    if (!latest) return ew_error_set(err, EW_EUNKNOWNTYPE, "unknown event type '%.80s'", type);
    /* Without eventversion, a dataschema that names a version decides. */
    if (!version && schema &&
        (rc = schema_version(type, type_len, schema, m[M_DATASCHEMA]->len, &version, err)))
        return rc;
    const ew_type_info *t = NULL;
    if (version) {
        t = latest->version == version ? latest : ew_catalog_find_n(type, type_len, version);
        if (!t)
            return ew_error_set(err, EW_EVERSION,
                                "%s version %d is not supported (this build reads "
                                "up to version %d)",
                                type, version, latest->version);
    }

    const ew_json *dj = m[M_DATA];
    if (!dj) return ew_error_set(err, EW_EMISSING, "missing required attribute 'data'");
    if (dj->kind != EW_JSON_OBJECT)
        return ew_error_set(err, EW_EDATA, "%s: data must be an object, not %s", type,
                            kind_name(dj->kind));

    /* Room for the data struct of the version read and of the latest; of every version when
     * the data is to decide. */
    size_t tmp_size = latest->struct_size;
    if (t && t->struct_size > tmp_size) tmp_size = t->struct_size;
    for (int v = 1; !t && v < latest->version; v++) {
        const ew_type_info *o = ew_catalog_find_n(type, type_len, v);
        if (o && o->struct_size > tmp_size) tmp_size = o->struct_size;
    }
    ew_json *data = (ew_json *)dj;
    void *tmp = ew_arena_alloc(a, tmp_size);
    if (!tmp) return ew_error_set(err, EW_ENOMEM, "out of memory");
    /* Otherwise the newest version the data fits. */
    if (!t && (rc = version_by_data(latest, dj, tmp, a, &t, err))) return rc;
    /* The producer's dataschema describes the version it published: kept while the event keeps
     * it, replaced by the catalog's after an upcast. */
    at.dataschema = t == latest ? schema : NULL;

    /* Old versions: valid as what they claim to be, then upcast step by step. The event as
     * received, at its own version, is built first and kept beside the upcast one: a tag or a
     * signature covers that form (docs/bus-auth.md), and a dead letter or a redelivery carries
     * it on as it came. */
    uint64_t sealed;
    ew_event *received = NULL;
    while (t != latest) {
        if ((rc = data_from_json(t, data, tmp, a, &sealed, err))) goto fail;
        if (!received) {
            ew_event_attrs ra = at;
            ra.dataschema = schema;
            if ((rc = build_decoded(&received, t, tmp, &ra, true, sealed, err))) goto fail;
        }
        if ((rc = ew__upcast(t, data, a, err))) goto fail;
        const ew_type_info *up = ew_catalog_find(type, t->version + 1);
        if (!up) {
            rc = ew_error_set(err, EW_EVERSION, "%s has no version %d to upcast to", type,
                              t->version + 1);
            goto fail;
        }
        t = up;
    }
    if ((rc = data_from_json(t, data, tmp, a, &sealed, err))) goto fail;
    /* An upcast event's fields are opened by the caller, on the event as upcast. */
    if (opener && sealed && !received) return build_opened(out, t, tmp, &at, sealed, opener, err);
    if ((rc = build_decoded(out, t, tmp, &at, true, sealed, err))) goto fail;
    atomic_store_explicit(&(*out)->received, received, memory_order_release);
    return 0;
fail:
    ew_event_unref(received);
    return rc;
}

static int decode(ew_event **out, const char *json, size_t len, const ew_decode_opts *opts,
                  const ew__opener *o, ew_error *err)
{
    if (!out || (!json && len)) return ew_error_set(err, EW_EINVAL, "out and json are required");
    ew_json_limits lim = {.max_bytes = DEFAULT_MAX_BYTES, .max_depth = DEFAULT_MAX_DEPTH};
    if (opts && opts->max_bytes) lim.max_bytes = opts->max_bytes;
    if (opts && opts->max_depth) lim.max_depth = opts->max_depth;
    char stack[8192];
    ew_arena a;
    ew_arena_init(&a, stack, sizeof stack);
    ew_json *root;
    int rc = ew_json_parse(&root, json ? json : "", len, &lim, &a, err);
    if (rc == 0) rc = decode_tree(out, root, &a, o, err);
    ew_arena_release(&a);
    return rc;
}

int ew_event_decode(ew_event **out, const char *json, size_t len, const ew_decode_opts *opts,
                    ew_error *err)
{
    return decode(out, json, len, opts, NULL, err);
}

int ew__event_decode_opened(ew_event **out, const char *json, size_t len,
                            const ew_decode_opts *opts, const ew__opener *o, ew_error *err)
{
    return decode(out, json, len, opts, o, err);
}

int ew_event_from_json(ew_event **out, const char *type, const char *data_json, size_t len,
                       const ew_event_attrs *attrs, ew_error *err)
{
    if (!out || !type || (!data_json && len))
        return ew_error_set(err, EW_EINVAL, "out, type and data are required");
    const ew_type_info *t = ew_catalog_find(type, 0);
    if (!t) return ew_error_set(err, EW_EUNKNOWNTYPE, "unknown event type '%.80s'", type);
    ew_json_limits lim = {.max_bytes = DEFAULT_MAX_BYTES, .max_depth = DEFAULT_MAX_DEPTH};
    char stack[8192];
    ew_arena a;
    ew_arena_init(&a, stack, sizeof stack);
    ew_json *root;
    int rc = ew_json_parse(&root, data_json ? data_json : "", len, &lim, &a, err);
    if (rc == 0 && root->kind != EW_JSON_OBJECT)
        rc = ew_error_set(err, EW_EDATA, "%s: data must be an object, not %s", type,
                          kind_name(root->kind));
    void *tmp = rc ? NULL : ew_arena_alloc(&a, t->struct_size);
    if (rc == 0 && !tmp) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    uint64_t sealed = 0;
    if (rc == 0) rc = data_from_json(t, root, tmp, &a, &sealed, err);
    if (rc == 0 && sealed)
        rc = ew_error_set(err, EW_EDATA,
                          "%s: data holds ciphertext (" EW__SEALED_PREFIX
                          "...): publish personal data as plaintext, it is encrypted on the way",
                          type);
    if (rc == 0) rc = build(out, t, tmp, attrs, true, 0, err);
    ew_arena_release(&a);
    return rc;
}
