/* eventwire — CloudEvents protocol bindings (binding.h). */
#include "bus/binding.h"

#include <stdlib.h>
#include <strings.h>
#include <string.h>
#include "core/arena.h"
#include "core/json.h"

/* The last header of that name (Kafka keeps every one; the binding reads the last). */
static const ew__header *header(const ew__wire_msg *m, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = m->nheaders; i-- > 0;) {
        const ew__header *h = &m->headers[i];
        if (h->name_len == n && strncasecmp(h->name, name, n) == 0) return h;
    }
    return NULL;
}

static int has_prefix_ci(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(s, prefix, n) == 0;
}

int ew__binding_is_binary(const ew__wire_msg *m)
{
    if (m->binding != EW__BINDING_KAFKA) return 0;
    const ew__header *ct = header(m, "content-type");
    if (ct && ct->kind == EW__HV_BYTES &&
        has_prefix_ci(ct->value, ct->value_len, "application/cloudevents"))
        return 0;
    return header(m, "ce_specversion") != NULL;
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

/* A binary-mode Kafka record (attributes in ce_* headers, content-type the datacontenttype, the
 * value the data) as the structured JSON that ew_event_decode() reads. The JSON is built also
 * when the value is not JSON (then as data_base64, which decoding refuses), so that a dead
 * letter keeps the whole message in one readable document. */
static int kafka_binary_to_json(const ew__wire_msg *m, size_t max, ew_buf *b, ew_error *err)
{
    int rc = 0;
    if (m->body_len) {
        /* the value must be one JSON value and nothing else before it is spliced in */
        ew_arena a;
        ew_arena_init(&a, NULL, 0);
        ew_json *v;
        ew_error e = {0};
        rc = ew_json_parse(&v, m->body, m->body_len,
                           &(ew_json_limits){.max_bytes = max, .max_depth = 32}, &a, &e);
        ew_arena_release(&a);
        if (rc) ew_error_set(err, rc, "binary-mode value: %s", e.msg);
    }
    ew_buf_putc(b, '{');
    for (size_t i = 0; i < m->nheaders; i++) {
        const ew__header *h = &m->headers[i];
        const char *key;
        size_t klen;
        if (has_prefix_ci(h->name, h->name_len, "ce_")) {
            key = h->name + 3;
            klen = h->name_len - 3;
        } else if (h->name_len == 12 && strncasecmp(h->name, "content-type", 12) == 0) {
            key = "datacontenttype";
            klen = strlen(key);
        } else {
            continue;
        }
        ew_json_write_string(b, key, klen);
        ew_buf_putc(b, ':');
        ew_json_write_string(b, h->value ? h->value : "", h->value ? h->value_len : 0);
        ew_buf_putc(b, ',');
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

int ew__binding_decode(const ew__wire_msg *m, const ew_decode_opts *opts, ew_event **out,
                       ew_buf *as_json, ew_error *err)
{
    ew_decode_opts o = opts ? *opts : (ew_decode_opts){0};
    if (o.max_bytes && m->body_len > o.max_bytes)
        return ew_error_set(err, EW_ETOOBIG,
                            "the message is %zu bytes, more than EVENT_MAX_BYTES=%zu", m->body_len,
                            o.max_bytes);
    if (ew__binding_is_binary(m)) {
        ew_buf own;
        ew_buf_init(&own);
        ew_buf *json = as_json ? as_json : &own;
        int rc = kafka_binary_to_json(m, o.max_bytes, json, err);
        if (!rc) rc = ew_event_decode(out, json->data, json->len, &o, err);
        ew_buf_release(&own);
        return rc;
    }
    return ew_event_decode(out, m->body ? m->body : "", m->body_len, &o, err);
}

int ew__binding_encode(const ew_event *ev, ew__binding b, ew__content_mode mode, size_t max_bytes,
                       ew__wire_out *out, ew_error *err)
{
    (void)b;
    (void)mode; /* binary mode: not yet; structured on every binding */
    *out = (ew__wire_out){.content_type = "application/cloudevents+json"};
    int rc = ew_event_encode(ev, &out->body, &out->body_len, err);
    if (rc) return rc;
    if (max_bytes && out->body_len > max_bytes) {
        size_t len = out->body_len;
        ew__wire_out_release(out);
        return ew_error_set(err, EW_ETOOBIG, "%s %s is %zu bytes, more than EVENT_MAX_BYTES=%zu",
                            ew_event_type(ev), ew_event_id(ev), len, max_bytes);
    }
    return 0;
}

void ew__wire_out_release(ew__wire_out *out)
{
    free(out->body);
    free(out->headers);
    *out = (ew__wire_out){0};
}
