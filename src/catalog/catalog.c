/* eventwire — the catalog's tables, expanded from events.def: one ew_type_info per entry, with
 * the field table that validation, the codec and the JSON Schemas read. Also subscription
 * patterns, which match against the same dotted type names. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/catalog.h"

/* Field tables: ew__fields_user_registered[] and so on. */
#define REQ EW_FIELD_REQ
#define PII EW_FIELD_PII
#define SECRET EW_FIELD_SECRET
#define EW_EVENT(ID, name, type, version, doc) static const ew_field_info ew__fields_##name[] = {
#define EW_FIELD(name, field, kind, flags, doc)                                                    \
    {#field, EW_FIELD_##kind, (flags), offsetof(ew_##name, field), doc, sizeof #field - 1},
#define EW_END(name)                                                                               \
    }                                                                                              \
    ;
#include "eventwire/events.def"
#undef EW_EVENT
#undef EW_FIELD
#undef EW_END
#undef REQ
#undef PII
#undef SECRET

#define TYPE_ENTRY(ID, name, type, version, doc, is_latest)                                        \
    {EW_T_##ID,                                                                                    \
     type,                                                                                         \
     version,                                                                                      \
     is_latest,                                                                                    \
     doc,                                                                                          \
     "ew_" #name,                                                                                  \
     sizeof(ew_##name),                                                                            \
     ew__fields_##name,                                                                            \
     sizeof ew__fields_##name / sizeof ew__fields_##name[0],                                       \
     sizeof type - 1},

/* The types in declaration order: types[id - 1]. */
static const ew_type_info types[] = {
#define EW_EVENT(ID, name, type, version, doc) TYPE_ENTRY(ID, name, type, version, doc, true)
#define EW_EVENT_OLD(ID, name, type, version, doc) TYPE_ENTRY(ID, name, type, version, doc, false)
#define EW_FIELD(name, field, kind, flags, doc)
#define EW_END(name)
#include "eventwire/events.def"
#undef EW_EVENT
#undef EW_EVENT_OLD
#undef EW_FIELD
#undef EW_END
};

#define NTYPES (sizeof types / sizeof types[0])

size_t ew_catalog_count(void)
{
    return NTYPES;
}

const ew_type_info *ew_catalog_at(size_t i)
{
    return i < NTYPES ? &types[i] : NULL;
}

const ew_type_info *ew_catalog_get(ew_type_id id)
{
    return id > EW_T_NONE && id < EW_T__COUNT ? &types[id - 1] : NULL;
}

/* Lengths first: most names differ in length, and the decoder looks a type up per event. */
const ew_type_info *ew_catalog_find_n(const char *type, size_t len, int version)
{
    if (!type) return NULL;
    for (size_t i = 0; i < NTYPES; i++) {
        const ew_type_info *t = &types[i];
        if (t->type_len != len || memcmp(t->type, type, len) != 0) continue;
        if (version == 0 ? t->latest : t->version == version) return t;
    }
    return NULL;
}

const ew_type_info *ew_catalog_find(const char *type, int version)
{
    return type ? ew_catalog_find_n(type, strlen(type), version) : NULL;
}

const ew_field_info *ew_type_field(const ew_type_info *t, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < t->nfields; i++)
        if (t->fields[i].name_len == len && memcmp(t->fields[i].name, name, len) == 0)
            return &t->fields[i];
    return NULL;
}

int ew_type_schema_uri(const ew_type_info *t, char *buf, size_t n)
{
    return snprintf(buf, n, "urn:eventwire:schema:%s:%d", t->type, t->version);
}

/* ---- patterns ------------------------------------------------------------------------------ */

bool ew_pattern_valid(const char *p)
{
    if (!p || !*p) return false;
    const char *seg = p;
    for (const char *c = p;; c++) {
        if (*c == '.' || *c == '\0') {
            size_t len = (size_t)(c - seg);
            if (len == 0) return false;
            if ((memchr(seg, '*', len) || memchr(seg, '#', len)) && len != 1) return false;
            if (*c == '\0') return true;
            seg = c + 1;
        } else if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' ||
                     *c == '*' || *c == '#')) {
            return false;
        }
    }
}

/* AMQP topic matching over dot-separated segments: '*' is one segment, '#' zero or more. */
static bool match_from(const char *p, const char *t)
{
    for (;;) {
        if (*p == '#') {
            if (p[1] == '\0') return true;
            /* '#.' then the rest: try the rest at every segment boundary of t, t itself included.
             */
            for (const char *s = t;; s++) {
                if ((s == t || s[-1] == '.') && match_from(p + 2, s)) return true;
                if (*s == '\0') return false;
            }
        }
        const char *pe = strchr(p, '.'), *te = strchr(t, '.');
        size_t pl = pe ? (size_t)(pe - p) : strlen(p), tl = te ? (size_t)(te - t) : strlen(t);
        if (*t == '\0') return false;
        if (!(pl == 1 && *p == '*') && (pl != tl || memcmp(p, t, pl) != 0)) return false;
        if (!pe && !te) return true;
        if (!pe || !te) {
            /* "user.#" matches "user": the pattern may end in ".#". */
            return !te && pe && strcmp(pe, ".#") == 0;
        }
        p = pe + 1;
        t = te + 1;
    }
}

bool ew_pattern_match(const char *pattern, const char *type)
{
    if (!pattern || !type) return false;
    if (pattern[0] == '*' && pattern[1] == '\0') return true;
    return match_from(pattern, type);
}

/* ---- JSON Schema ------------------------------------------------------------------------- */

static void indent(ew_buf *b, int n)
{
    ew_buf_putc(b, '\n');
    for (int i = 0; i < n; i++)
        ew_buf_putc(b, ' ');
}

static void put_key(ew_buf *b, int ind, const char *k)
{
    indent(b, ind);
    ew_json_write_string(b, k, strlen(k));
    ew_buf_puts(b, ": ");
}

static void put_str(ew_buf *b, const char *s)
{
    ew_json_write_string(b, s, strlen(s));
}

static void field_schema(ew_buf *b, const ew_field_info *f, int ind)
{
    bool opt = !(f->flags & EW_FIELD_REQ);
    static const char *const json_type[] = {
        [EW_FIELD_STRING] = "string", [EW_FIELD_UUID] = "string",   [EW_FIELD_EMAIL] = "string",
        [EW_FIELD_TIME] = "string",   [EW_FIELD_URL] = "string",    [EW_FIELD_INT] = "integer",
        [EW_FIELD_BOOL] = "boolean",  [EW_FIELD_STRLIST] = "array", [EW_FIELD_OBJECT] = "object"};
    static const char *const format[] = {[EW_FIELD_UUID] = "uuid",
                                         [EW_FIELD_EMAIL] = "email",
                                         [EW_FIELD_TIME] = "date-time",
                                         [EW_FIELD_URL] = "uri"};
    ew_buf_putc(b, '{');
    put_key(b, ind + 2, "type");
    if (opt) {
        ew_buf_putc(b, '[');
        put_str(b, json_type[f->kind]);
        ew_buf_puts(b, ", \"null\"]");
    } else {
        put_str(b, json_type[f->kind]);
    }
    ew_buf_putc(b, ',');
    if (f->kind < sizeof format / sizeof format[0] && format[f->kind]) {
        put_key(b, ind + 2, "format");
        put_str(b, format[f->kind]);
        ew_buf_putc(b, ',');
    }
    if (f->kind == EW_FIELD_STRING && !opt) {
        put_key(b, ind + 2, "minLength");
        ew_buf_puts(b, "1,");
    }
    if (f->kind == EW_FIELD_STRLIST) {
        put_key(b, ind + 2, "items");
        ew_buf_puts(b, "{\"type\": \"string\"},");
        if (!opt) {
            put_key(b, ind + 2, "minItems");
            ew_buf_puts(b, "1,");
        }
    }
    if (f->flags & EW_FIELD_PII) {
        put_key(b, ind + 2, "x-personal-data");
        ew_buf_puts(b, "true,");
    }
    if (f->flags & EW_FIELD_SECRET) {
        put_key(b, ind + 2, "x-secret");
        ew_buf_puts(b, "true,");
    }
    if (f->flags & EW_FIELD_ENCRYPTED) {
        put_key(b, ind + 2, "x-encrypted");
        ew_buf_puts(b, "true,");
    }
    put_key(b, ind + 2, "description");
    put_str(b, f->doc);
    indent(b, ind);
    ew_buf_putc(b, '}');
}

/* The data schema's members (without braces), at indentation ind. */
static void data_schema_body(ew_buf *b, const ew_type_info *t, int ind)
{
    put_key(b, ind, "type");
    ew_buf_puts(b, "\"object\",");
    put_key(b, ind, "properties");
    ew_buf_putc(b, '{');
    for (size_t i = 0; i < t->nfields; i++) {
        put_key(b, ind + 2, t->fields[i].name);
        field_schema(b, &t->fields[i], ind + 2);
        if (i + 1 < t->nfields) ew_buf_putc(b, ',');
    }
    indent(b, ind);
    ew_buf_puts(b, "},");
    put_key(b, ind, "required");
    ew_buf_putc(b, '[');
    int first = 1;
    for (size_t i = 0; i < t->nfields; i++) {
        if (!(t->fields[i].flags & EW_FIELD_REQ)) continue;
        if (!first) ew_buf_puts(b, ", ");
        put_str(b, t->fields[i].name);
        first = 0;
    }
    ew_buf_puts(b, "],");
    put_key(b, ind, "additionalProperties");
    ew_buf_puts(b, "false");
}

static int finish(ew_buf *b, char **out, ew_error *err)
{
    ew_buf_putc(b, '\n');
    if (b->oom) {
        ew_buf_release(b);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    *out = ew_buf_steal(b, NULL);
    return 0;
}

static void schema_head(ew_buf *b, const ew_type_info *t, const char *id_suffix)
{
    char uri[160];
    ew_type_schema_uri(t, uri, sizeof uri);
    ew_buf_putc(b, '{');
    put_key(b, 2, "$schema");
    put_str(b, "https://json-schema.org/draft/2020-12/schema");
    ew_buf_putc(b, ',');
    put_key(b, 2, "$id");
    ew_buf_printf(b, "\"%s%s\",", uri, id_suffix);
    put_key(b, 2, "title");
    ew_buf_printf(b, "\"%s v%d%s\",", t->type, t->version, *id_suffix ? " (CloudEvent)" : "");
    put_key(b, 2, "description");
    put_str(b, t->doc);
    ew_buf_putc(b, ',');
}

int ew_type_schema(const ew_type_info *t, char **out, ew_error *err)
{
    if (!t || !out) return ew_error_set(err, EW_EINVAL, "type and out are required");
    ew_buf b;
    ew_buf_init(&b);
    schema_head(&b, t, "");
    data_schema_body(&b, t, 2);
    ew_buf_puts(&b, "\n}");
    return finish(&b, out, err);
}

int ew_type_envelope_schema(const ew_type_info *t, char **out, ew_error *err)
{
    if (!t || !out) return ew_error_set(err, EW_EINVAL, "type and out are required");
    char uri[160];
    ew_type_schema_uri(t, uri, sizeof uri);
    ew_buf b;
    ew_buf_init(&b);
    schema_head(&b, t, ":envelope");
    put_key(&b, 2, "type");
    ew_buf_puts(&b, "\"object\",");
    put_key(&b, 2, "properties");
    ew_buf_putc(&b, '{');
    ew_buf_puts(&b, "\n    \"specversion\": {\"const\": \"1.0\"},"
                    "\n    \"id\": {\"type\": \"string\", \"minLength\": 1},");
    ew_buf_printf(&b, "\n    \"type\": {\"const\": \"%s\"},", t->type);
    ew_buf_puts(&b, "\n    \"source\": {\"type\": \"string\", \"minLength\": 1},"
                    "\n    \"subject\": {\"type\": \"string\"},"
                    "\n    \"time\": {\"type\": \"string\", \"format\": \"date-time\"},"
                    "\n    \"datacontenttype\": {\"const\": \"application/json\"},");
    ew_buf_printf(&b, "\n    \"dataschema\": {\"const\": \"%s\"},", uri);
    ew_buf_printf(&b, "\n    \"eventversion\": {\"enum\": [%d, \"%d\"]},", t->version, t->version);
    ew_buf_puts(&b, "\n    \"correlationid\": {\"type\": \"string\"},"
                    "\n    \"causationid\": {\"type\": \"string\"},"
                    "\n    \"traceparent\": {\"type\": \"string\", \"pattern\": "
                    "\"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$\"},"
                    "\n    \"data\": {\"$ref\": \"#/$defs/data\"}"
                    "\n  },");
    put_key(&b, 2, "required");
    ew_buf_puts(&b, "[\"specversion\", \"id\", \"type\", \"source\", \"data\"],");
    put_key(&b, 2, "$defs");
    ew_buf_puts(&b, "{\n    \"data\": {");
    data_schema_body(&b, t, 6);
    ew_buf_puts(&b, "\n    }\n  }\n}");
    return finish(&b, out, err);
}
