/* eventwire — CloudEvents protocol bindings (binding.h): which content mode a received message
 * is in and how it becomes an event; how an event becomes the message to publish.
 *
 * A binary-mode message is read by rebuilding it as the structured JSON document it stands for
 * (attributes from the headers, the body as "data") and decoding that: one decoder, one set of
 * rules and error messages for every mode, and a dead letter keeps the whole message readable. */
#include "bus/binding.h"

#include <stdio.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "catalog/event_internal.h"
#include "core/arena.h"
#include "core/json.h"
#include "eventwire/clock.h"

#define CE_JSON "application/cloudevents+json"
#define CE_MEDIA "application/cloudevents"
#define DATA_JSON "application/json"

static bool eq_ci(const char *s, size_t len, const char *lit)
{
    size_t n = strlen(lit);
    return len == n && strncasecmp(s, lit, n) == 0;
}

static bool has_prefix_ci(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(s, prefix, n) == 0;
}

/* The last header of that name (Kafka keeps every one; the binding reads the last). */
static const ew__header *header(const ew__wire_msg *m, const char *name)
{
    for (size_t i = m->nheaders; i-- > 0;) {
        const ew__header *h = &m->headers[i];
        if (eq_ci(h->name, h->name_len, name)) return h;
    }
    return NULL;
}

/* The attribute prefixes of a binding's binary mode; NULL-terminated. */
static const char *const *prefixes(ew__binding b)
{
    static const char *const kafka[] = {"ce_", NULL};
    static const char *const amqp[] = {"cloudEvents_", "cloudEvents:", NULL};
    static const char *const none[] = {NULL};
    return b == EW__BINDING_KAFKA ? kafka : b == EW__BINDING_AMQP ? amqp : none;
}

/* The length of the attribute prefix h's name starts with, 0 when none. */
static size_t attr_prefix(ew__binding b, const ew__header *h)
{
    for (const char *const *p = prefixes(b); *p; p++)
        if (has_prefix_ci(h->name, h->name_len, *p)) return strlen(*p);
    return 0;
}

/* The message's content type: AMQP's property, Kafka's `content-type` header. */
static bool content_type(const ew__wire_msg *m, const char **s, size_t *n)
{
    if (m->binding == EW__BINDING_AMQP) {
        *s = m->content_type;
        *n = m->content_type ? m->content_type_len : 0;
        return m->content_type != NULL;
    }
    if (m->binding != EW__BINDING_KAFKA) return false;
    const ew__header *h = header(m, "content-type");
    if (!h || h->kind != EW__HV_BYTES || !h->value) return false;
    *s = h->value;
    *n = h->value_len;
    return true;
}

/* Does the message carry a specversion attribute in its binding's binary-mode headers? */
static bool has_binary_specversion(const ew__wire_msg *m)
{
    for (size_t i = 0; i < m->nheaders; i++) {
        const ew__header *h = &m->headers[i];
        size_t p = attr_prefix(m->binding, h);
        if (p && eq_ci(h->name + p, h->name_len - p, "specversion")) return true;
    }
    return false;
}

/* The content type says structured mode: it starts with application/cloudevents. */
static bool ct_structured(const ew__wire_msg *m)
{
    const char *ct;
    size_t n;
    return content_type(m, &ct, &n) && has_prefix_ci(ct, n, CE_MEDIA);
}

int ew__binding_is_binary(const ew__wire_msg *m)
{
    if (m->binding != EW__BINDING_KAFKA && m->binding != EW__BINDING_AMQP) return 0;
    return !ct_structured(m) && has_binary_specversion(m);
}

static void base64(ew_buf *b, const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        char q[4] = {tab[v >> 18 & 63], tab[v >> 12 & 63], i + 1 < n ? tab[v >> 6 & 63] : '=',
                     i + 2 < n ? tab[v & 63] : '='};
        ew_buf_append(b, q, 4);
    }
}

/* One attribute of a binary-mode message: its name and the header it comes from. */
typedef struct attr {
    const char *key;
    size_t klen;
    const ew__header *h;
    size_t order; /* index of the header: the sort is stable */
} attr;

static int attr_cmp(const void *pa, const void *pb)
{
    const attr *a = pa, *b = pb;
    size_t n = a->klen < b->klen ? a->klen : b->klen;
    int c = memcmp(a->key, b->key, n);
    if (c) return c;
    if (a->klen != b->klen) return a->klen < b->klen ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

static bool same_value(const ew__header *a, const ew__header *b)
{
    if (a->kind != b->kind) return false;
    if (a->kind != EW__HV_BYTES) return a->num == b->num;
    return a->value_len == b->value_len &&
           (a->value_len == 0 || memcmp(a->value, b->value, a->value_len) == 0);
}

/* Writes one header's value as the JSON value of its attribute, by the binding's type mapping:
 * strings (and Kafka's bytes) as strings, AMQP longs as numbers, booleans as booleans,
 * timestamps as RFC 3339 strings. */
/* Text an attribute may hold: UTF-8, and no NUL (which no attribute of ours carries, and which
 * the strict parser refuses in a string). */
static bool text_ok(const char *s, size_t n)
{
    return ew_utf8_valid(s, n) && !memchr(s, 0, n);
}

static int put_value(ew_buf *b, const ew__header *h, ew_error *err)
{
    switch (h->kind) {
    case EW__HV_BYTES:
        if (h->value && !text_ok(h->value, h->value_len))
            return ew_error_set(err, EW_EUTF8, "header '%.*s' is not UTF-8 text without NUL",
                                (int)(h->name_len > 60 ? 60 : h->name_len), h->name);
        ew_json_write_string(b, h->value ? h->value : "", h->value ? h->value_len : 0);
        return 0;
    case EW__HV_INT:
        ew_buf_printf(b, "%lld", (long long)h->num);
        return 0;
    case EW__HV_BOOL:
        ew_buf_puts(b, h->num ? "true" : "false");
        return 0;
    case EW__HV_TIME_S: {
        char t[EW_TIME_LEN + 1];
        if (h->num < -62135596800LL || h->num > 253402300799LL ||
            ew_time_format(h->num * 1000000, t))
            return ew_error_set(err, EW_ETIME, "header '%.*s': timestamp %lld is out of range",
                                (int)(h->name_len > 60 ? 60 : h->name_len), h->name,
                                (long long)h->num);
        ew_buf_putc(b, '"');
        ew_buf_puts(b, t);
        ew_buf_putc(b, '"');
        return 0;
    }
    default:
        return ew_error_set(err, EW_ETYPE,
                            "header '%.*s' has a type the CloudEvents binding does not map (a "
                            "table, an array, a float...)",
                            (int)(h->name_len > 60 ? 60 : h->name_len), h->name);
    }
}

/* A binary-mode message (attributes in headers, datacontenttype the content type, the body the
 * data) as the structured JSON that ew_event_decode() reads. The JSON is built also when the
 * body is not JSON (then as data_base64), so that a dead letter keeps the whole message in one
 * readable document; the return value then says why it cannot be an event. */
static int binary_to_json(const ew__wire_msg *m, size_t max, ew_buf *b, ew_error *err)
{
    int rc = 0;
    attr local[32], *as = local;
    if (m->nheaders > 32 && !(as = malloc(m->nheaders * sizeof *as)))
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < m->nheaders; i++) {
        const ew__header *h = &m->headers[i];
        size_t p = attr_prefix(m->binding, h);
        if (!p) continue;
        as[n++] = (attr){.key = h->name + p, .klen = h->name_len - p, .h = h, .order = i};
    }
    qsort(as, n, sizeof *as, attr_cmp);

    /* datacontenttype: the message's content type (the binding's mapping); a
     * ce_datacontenttype header beside it, as the JavaScript SDK sends, gives way to it. */
    const char *ct = NULL;
    size_t ctn = 0;
    bool have_ct = content_type(m, &ct, &ctn);
    const ew__header *ct_attr = NULL;

    /* An attribute that cannot be read is left out, the first such error kept, and the rest
     * still written: the document stays whole for the dead letter. */
    ew_buf_putc(b, '{');
    ew_buf one;
    ew_buf_init(&one);
    for (size_t i = 0; i < n; i++) {
        const attr *a = &as[i];
        if (i + 1 < n && a->klen == as[i + 1].klen && memcmp(a->key, as[i + 1].key, a->klen) == 0) {
            /* the same attribute twice (one header repeated, or both AMQP prefixes) */
            if (!same_value(a->h, as[i + 1].h) && !rc)
                rc = ew_error_set(err, EW_EDUPKEY,
                                  "attribute '%.*s' is given twice with different values (headers "
                                  "'%.*s' and '%.*s')",
                                  (int)(a->klen > 40 ? 40 : a->klen), a->key,
                                  (int)(a->h->name_len > 60 ? 60 : a->h->name_len), a->h->name,
                                  (int)(as[i + 1].h->name_len > 60 ? 60 : as[i + 1].h->name_len),
                                  as[i + 1].h->name);
            continue;
        }
        if (eq_ci(a->key, a->klen, "datacontenttype")) {
            ct_attr = a->h;
            if (have_ct) continue;
        }
        if (eq_ci(a->key, a->klen, "data") || eq_ci(a->key, a->klen, "data_base64")) {
            if (!rc)
                rc = ew_error_set(err, EW_ETYPE,
                                  "header '%.*s': in binary mode the data is the message body",
                                  (int)(a->h->name_len > 60 ? 60 : a->h->name_len), a->h->name);
            continue;
        }
        if (!text_ok(a->key, a->klen)) {
            if (!rc) rc = ew_error_set(err, EW_EUTF8, "a header's name is not UTF-8 text");
            continue;
        }
        ew_buf_reset(&one);
        ew_json_write_string(&one, a->key, a->klen);
        ew_buf_putc(&one, ':');
        ew_error e = {0};
        int vrc = put_value(&one, a->h, &e);
        if (vrc) {
            if (!rc) rc = ew_error_set(err, vrc, "%s", e.msg);
            continue;
        }
        ew_buf_putc(&one, ',');
        ew_buf_append(b, one.data, one.len);
    }
    ew_buf_release(&one);
    if (as != local) free(as);
    if (have_ct && !text_ok(ct, ctn)) {
        if (!rc) rc = ew_error_set(err, EW_EUTF8, "the content type is not UTF-8 text");
    } else if (have_ct) {
        ew_buf_puts(b, "\"datacontenttype\":");
        ew_json_write_string(b, ct, ctn);
        ew_buf_putc(b, ',');
    } else if (ct_attr && ct_attr->kind == EW__HV_BYTES && ct_attr->value) {
        ct = ct_attr->value;
        ctn = ct_attr->value_len;
    }

    /* The data: JSON when the content type says so, or says nothing (the JSON format's
     * default); anything else cannot be a catalog event, whose data is a JSON object. */
    if (rc) {
        /* refused already: the data goes along as base64 */
    } else if (ct && !ew__media_type_json(ct, ctn)) {
        rc = ew_error_set(err, EW_EDATA,
                          "binary-mode data of content type '%.*s' is not JSON: catalog events "
                          "carry JSON data (application/json)",
                          (int)(ctn > 60 ? 60 : ctn), ct);
    } else if (m->body_len) {
        /* the body must be one JSON value and nothing else before it is spliced in */
        ew_arena a;
        ew_arena_init(&a, NULL, 0);
        ew_json *v;
        ew_error e = {0};
        rc = ew_json_parse(&v, m->body, m->body_len,
                           &(ew_json_limits){.max_bytes = max, .max_depth = EW_JSON_DEPTH}, &a, &e);
        ew_arena_release(&a);
        if (rc) ew_error_set(err, rc, "binary-mode data: %s", e.msg);
    }
    if (rc) {
        ew_buf_puts(b, "\"data_base64\":\"");
        base64(b, m->body, m->body_len);
        ew_buf_puts(b, "\"}");
    } else {
        ew_buf_puts(b, "\"data\":");
        if (m->body_len)
            ew_buf_append(b, m->body, m->body_len);
        else
            ew_buf_puts(b, "null");
        ew_buf_putc(b, '}');
    }
    if (b->oom) return ew_error_set(err, EW_ENOMEM, "out of memory");
    return rc;
}

/* The bytes the event takes in a message: the body, and in binary mode the attribute headers'
 * names and values too (what EVENT_MAX_BYTES bounds is the event, in either mode). */
static size_t event_size(const ew__wire_msg *m, bool binary)
{
    size_t n = m->body_len;
    for (size_t i = 0; binary && i < m->nheaders; i++) {
        const ew__header *h = &m->headers[i];
        if (attr_prefix(m->binding, h))
            n += h->name_len + (h->kind == EW__HV_BYTES ? h->value_len : sizeof(int64_t));
    }
    return n;
}

int ew__binding_decode(const ew__wire_msg *m, const ew_decode_opts *opts, ew_event **out,
                       ew_buf *as_json, ew_error *err)
{
    ew_decode_opts o = opts ? *opts : (ew_decode_opts){0};
    size_t size = event_size(m, ew__binding_is_binary(m));
    if (o.max_bytes && size > o.max_bytes)
        return ew_error_set(err, EW_ETOOBIG,
                            "the message is %zu bytes, more than EVENT_MAX_BYTES=%zu", size,
                            o.max_bytes);
    const char *body = m->body ? m->body : "";
    if (m->binding != EW__BINDING_KAFKA && m->binding != EW__BINDING_AMQP)
        return ew_event_decode(out, body, m->body_len, &o, err);

    const char *ct;
    size_t ctn;
    if (content_type(m, &ct, &ctn) && has_prefix_ci(ct, ctn, CE_MEDIA)) {
        /* structured mode: the event format the media type names */
        size_t fmt = 0;
        while (fmt < ctn && ct[fmt] != ';' && ct[fmt] != ' ' && ct[fmt] != '\t')
            fmt++;
        if (!eq_ci(ct, fmt, CE_JSON))
            return ew_error_set(err, EW_ENOTSUP,
                                "content type '%.*s': only the JSON event format (%s) is "
                                "supported, one event per message",
                                (int)(ctn > 60 ? 60 : ctn), ct, CE_JSON);
        return ew_event_decode(out, body, m->body_len, &o, err);
    }
    if (has_binary_specversion(m)) {
        ew_buf own;
        ew_buf_init(&own);
        ew_buf *json = as_json ? as_json : &own;
        int rc = binary_to_json(m, o.max_bytes, json, err);
        if (!rc) rc = ew_event_decode(out, json->data, json->len, &o, err);
        ew_buf_release(&own);
        return rc;
    }
    /* Neither mode's mark: a structured event sent without its content type (kcat, a plain
     * producer) is still one. */
    int rc = ew_event_decode(out, body, m->body_len, &o, err);
    if (rc && err) {
        char why[sizeof err->msg];
        snprintf(why, sizeof why, "%s", err->msg);
        ew_error_set(err, rc,
                     "not a CloudEvent by the %s binding (no content type %s, no %sspecversion "
                     "%s) nor as structured JSON: %s",
                     m->binding == EW__BINDING_KAFKA ? "Kafka" : "AMQP", CE_JSON,
                     prefixes(m->binding)[0],
                     m->binding == EW__BINDING_KAFKA ? "header" : "application property", why);
    }
    return rc;
}

/* ---- encoding --------------------------------------------------------------------------- */

/* Headers being made: names and values appended to text, offsets recorded. */
typedef struct hdrs {
    ew_buf text;
    size_t n, cap;
    struct {
        size_t name, name_len, value, value_len;
        ew__header_kind kind; /* EW__HV_BYTES, or a typed AMQP value (num) */
        int64_t num;
    } * at;
    bool oom;
} hdrs;

static void hdr_add(hdrs *h, const char *prefix, const char *name, const char *value)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        void *at = realloc(h->at, cap * sizeof *h->at);
        if (!at) {
            h->oom = true;
            return;
        }
        h->at = at;
        h->cap = cap;
    }
    h->at[h->n].name = h->text.len;
    ew_buf_puts(&h->text, prefix);
    ew_buf_puts(&h->text, name);
    h->at[h->n].name_len = h->text.len - h->at[h->n].name;
    h->at[h->n].value = h->text.len;
    ew_buf_puts(&h->text, value);
    h->at[h->n].value_len = h->text.len - h->at[h->n].value;
    h->at[h->n].kind = EW__HV_BYTES;
    h->at[h->n].num = 0;
    h->n++;
}

/* An extension attribute as a header: AMQP carries an integer or a boolean as its own type (the
 * binding maps CloudEvents Integer to a long and Boolean to a boolean), so that it reads back
 * as one; everything else, and every Kafka header, is its canonical string. */
static void ext_add(hdrs *h, ew__binding b, const char *prefix, const ew_event_ext *x)
{
    hdr_add(h, prefix, x->name, x->value);
    if (b != EW__BINDING_AMQP || h->oom) return;
    if (x->kind == EW_EXT_BOOL) {
        h->at[h->n - 1].kind = EW__HV_BOOL;
        h->at[h->n - 1].num = strcmp(x->value, "true") == 0;
    } else if (x->kind == EW_EXT_NUMBER) {
        char *end;
        errno = 0;
        long long v = strtoll(x->value, &end, 10);
        if (!errno && *x->value && !*end) {
            h->at[h->n - 1].kind = EW__HV_INT;
            h->at[h->n - 1].num = v;
        }
    }
}

/* The event's attributes as binary-mode headers, every value in its canonical string form
 * (which the bindings allow for every type and which Kafka headers require), AMQP's integer and
 * boolean extensions typed besides (ext_add). */
static int binary_headers(const ew_event *ev, ew__binding b, const char *prefix, ew__wire_out *out,
                          size_t *bytes, ew_error *err)
{
    hdrs h = {0};
    ew_buf_init(&h.text);
    char tbuf[EW_TIME_LEN + 1], num[24], schema[512];
    if (ew_time_format(ew_event_time_us(ev), tbuf))
        return ew_error_set(err, EW_ETIME, "event time %lld is outside years 0..9999",
                            (long long)ew_event_time_us(ev));
    const char *ds = ew_event_dataschema(ev);
    if (!ds) {
        ew_type_schema_uri(ew_event_info(ev), schema, sizeof schema);
        ds = schema;
    }
    snprintf(num, sizeof num, "%d", ew_event_version(ev));
    hdr_add(&h, prefix, "specversion", "1.0");
    hdr_add(&h, prefix, "id", ew_event_id(ev));
    hdr_add(&h, prefix, "source", ew_event_source(ev));
    hdr_add(&h, prefix, "type", ew_event_type(ev));
    if (ew_event_subject(ev)) hdr_add(&h, prefix, "subject", ew_event_subject(ev));
    hdr_add(&h, prefix, "time", tbuf);
    hdr_add(&h, prefix, "dataschema", ds);
    hdr_add(&h, prefix, "eventversion", num);
    hdr_add(&h, prefix, "correlationid", ew_event_correlation_id(ev));
    if (ew_event_causation_id(ev)) hdr_add(&h, prefix, "causationid", ew_event_causation_id(ev));
    if (ew_event_traceparent(ev)) hdr_add(&h, prefix, "traceparent", ew_event_traceparent(ev));
    for (size_t i = 0; i < ew_event_extension_count(ev); i++) {
        ext_add(&h, b, prefix, ew_event_extension_at(ev, i));
    }
    int rc = 0;
    if (h.oom || h.text.oom) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    } else {
        /* one block: the header array, then the text the headers point into */
        size_t arr = h.n * sizeof(ew__header);
        char *blk = malloc(arr + h.text.len + 1);
        if (!blk) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        } else {
            char *text = blk + arr;
            memcpy(text, h.text.data, h.text.len);
            text[h.text.len] = '\0';
            ew__header *hs = (ew__header *)(void *)blk;
            for (size_t i = 0; i < h.n; i++)
                hs[i] = (ew__header){.name = text + h.at[i].name,
                                     .name_len = h.at[i].name_len,
                                     .kind = h.at[i].kind,
                                     .value = text + h.at[i].value,
                                     .value_len = h.at[i].value_len,
                                     .num = h.at[i].num};
            out->headers = hs;
            out->nheaders = h.n;
            *bytes = h.text.len;
        }
    }
    free(h.at);
    ew_buf_release(&h.text);
    return rc;
}

int ew__binding_encode(const ew_event *ev, ew__binding b, ew__content_mode mode, size_t max_bytes,
                       ew__wire_out *out, ew_error *err)
{
    *out = (ew__wire_out){.content_type = CE_JSON};
    int rc;
    size_t hbytes = 0;
    if (mode == EW__MODE_BINARY && (b == EW__BINDING_KAFKA || b == EW__BINDING_AMQP)) {
        out->content_type = DATA_JSON;
        rc = binary_headers(ev, b, b == EW__BINDING_KAFKA ? "ce_" : "cloudEvents_", out, &hbytes,
                            err);
        if (!rc) {
            ew_buf body;
            ew_buf_init(&body);
            if (ew__event_encode_data(ev, &body)) {
                ew_buf_release(&body);
                rc = ew_error_set(err, EW_ENOMEM, "out of memory");
            } else {
                out->body = ew_buf_steal(&body, &out->body_len);
            }
        }
    } else {
        rc = ew_event_encode(ev, &out->body, &out->body_len, err);
    }
    if (rc) {
        ew__wire_out_release(out);
        return rc;
    }
    size_t len = out->body_len + hbytes;
    if (max_bytes && len > max_bytes) {
        ew__wire_out_release(out);
        return ew_error_set(err, EW_ETOOBIG, "%s %s is %zu bytes, more than EVENT_MAX_BYTES=%zu",
                            ew_event_type(ev), ew_event_id(ev), len, max_bytes);
    }
    return 0;
}

int ew__content_mode_parse(const char *s, ew__content_mode *mode)
{
    if (s && strcmp(s, "binary") == 0) {
        *mode = EW__MODE_BINARY;
        return 0;
    }
    *mode = EW__MODE_STRUCTURED;
    return s && *s && strcmp(s, "structured") != 0 ? EW_ECONFIG : 0;
}

void ew__wire_out_release(ew__wire_out *out)
{
    free(out->body);
    free(out->headers);
    *out = (ew__wire_out){0};
}
