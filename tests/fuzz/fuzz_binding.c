/* eventwire — fuzzes the CloudEvents protocol bindings (src/bus/binding.c): a message as each
 * broker hands it over — Kafka headers and value, AMQP typed application properties, content
 * type and body, a structured body alone — decoded by ew__binding_decode().
 *
 * The input is text: its first byte picks the binding ('k' Kafka, 'a' AMQP, anything else
 * structured); then header lines up to an empty line, each "name=value" (bytes), or for AMQP's
 * typed values "name:i=123", "name:b=1", "name:t=1700000000" (a timestamp), "name:x=" (a type
 * the binding does not map), and "content-type=…" on AMQP sets the message's own content type;
 * the rest is the body. Properties: a refusal has its code and message, and a binary-mode
 * message rebuilt for its dead letter is one JSON document; an event that decodes encodes again
 * in both content modes, within the size limit it was decoded under or refused for it, and
 * decodes from that to an equal event. */
#include "bus/binding.h"
#include "core/arena.h"
#include "core/json.h"
#include "fuzz.h"
#include <errno.h>
#include <stdbool.h>

#define MAX_HEADERS 64
#define MAX_BYTES 65536

static void check_err(int rc, const ew_error *err)
{
    FUZZ_CHECK(rc < 0 && err->code == rc && err->msg[0] != '\0');
}

/* Decodes what ew__binding_encode made, as the same broker would hand it over. */
static int decode_out(const ew__wire_out *o, ew__binding b, ew_event **ev, ew_error *err)
{
    ew__header hs[MAX_HEADERS + 2];
    size_t n = 0;
    for (size_t i = 0; i < o->nheaders && n < MAX_HEADERS; i++)
        hs[n++] = o->headers[i];
    ew__wire_msg m = {.binding = b, .body = o->body, .body_len = o->body_len};
    if (b == EW__BINDING_AMQP) {
        m.content_type = o->content_type;
        m.content_type_len = o->content_type ? strlen(o->content_type) : 0;
    } else if (b == EW__BINDING_KAFKA && o->content_type) {
        hs[n++] = (ew__header){.name = "content-type",
                               .name_len = 12,
                               .value = o->content_type,
                               .value_len = strlen(o->content_type)};
    }
    m.headers = hs;
    m.nheaders = n;
    return ew__binding_decode(&m, &(ew_decode_opts){.max_bytes = 4 * MAX_BYTES}, ev, NULL, err);
}

/* Do the extension attributes' types survive binary mode on b? Kafka headers are strings, so a
 * number or boolean comes back as a string; AMQP carries integers and booleans typed, but not
 * fractions. */
static bool types_survive(const ew_event *ev, ew__binding b)
{
    for (size_t i = 0; i < ew_event_extension_count(ev); i++) {
        const ew_event_ext *x = ew_event_extension_at(ev, i);
        if (x->kind == EW_EXT_STRING) continue;
        if (b == EW__BINDING_KAFKA) return false;
        if (b == EW__BINDING_AMQP && x->kind == EW_EXT_NUMBER) {
            char *end;
            errno = 0;
            strtoll(x->value, &end, 10);
            if (*end || errno) return false; /* a fraction, or past a long: a string */
        }
    }
    return true;
}

/* The same event but for the types of its extension attributes: every attribute, and each
 * extension's value as text. */
static bool same_but_types(const ew_event *a, const ew_event *b)
{
    if (strcmp(ew_event_id(a), ew_event_id(b)) || strcmp(ew_event_type(a), ew_event_type(b)) ||
        strcmp(ew_event_source(a), ew_event_source(b)) ||
        ew_event_time_us(a) != ew_event_time_us(b) ||
        ew_event_extension_count(a) != ew_event_extension_count(b))
        return false;
    for (size_t i = 0; i < ew_event_extension_count(a); i++) {
        const ew_event_ext *x = ew_event_extension_at(a, i);
        const ew_event_ext *y = ew_event_extension(b, x->name);
        if (!y || strcmp(x->value, y->value)) return false;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > MAX_BYTES) return 0;
    char *text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = '\0';
    ew__binding b = text[0] == 'k'   ? EW__BINDING_KAFKA
                    : text[0] == 'a' ? EW__BINDING_AMQP
                                     : EW__BINDING_STRUCTURED;
    ew__header hs[MAX_HEADERS];
    size_t nh = 0;
    ew__wire_msg m = {.binding = b};
    char *p = text + 1, *end = text + size;
    /* header lines up to an empty line (or the end) */
    while (p < end && *p != '\n' && nh < MAX_HEADERS) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line_end = nl ? nl : end;
        char *eq = memchr(p, '=', (size_t)(line_end - p));
        if (eq) {
            ew__header h = {.name = p, .name_len = (size_t)(eq - p)};
            char *colon = memchr(p, ':', (size_t)(eq - p));
            const char *v = eq + 1;
            size_t vlen = (size_t)(line_end - v);
            if (b == EW__BINDING_AMQP && colon && eq - colon == 2) {
                h.name_len = (size_t)(colon - p);
                char kind = colon[1];
                h.num = strtoll(v, NULL, 10);
                h.kind = kind == 'i'   ? EW__HV_INT
                         : kind == 'b' ? EW__HV_BOOL
                         : kind == 't' ? EW__HV_TIME_S
                                       : EW__HV_OTHER;
                if (kind == 'b') h.num = h.num != 0;
            } else {
                h.kind = EW__HV_BYTES;
                h.value = v;
                h.value_len = vlen;
            }
            if (b == EW__BINDING_AMQP && h.name_len == 12 && !memcmp(p, "content-type", 12)) {
                m.content_type = v;
                m.content_type_len = vlen;
            } else {
                hs[nh++] = h;
            }
        }
        p = nl ? nl + 1 : end;
    }
    if (p < end && *p == '\n') p++;
    m.body = p < end ? p : NULL;
    m.body_len = (size_t)(end - p);
    m.headers = hs;
    m.nheaders = nh;

    ew_event *ev = NULL;
    ew_error err = {0};
    ew_buf as_json;
    ew_buf_init(&as_json);
    int rc = ew__binding_decode(&m, &(ew_decode_opts){.max_bytes = MAX_BYTES}, &ev, &as_json, &err);
    if (rc) {
        check_err(rc, &err);
        if (as_json.len && !as_json.oom) { /* what a dead letter keeps: one JSON document */
            ew_arena a;
            ew_arena_init(&a, NULL, 0);
            ew_json *j;
            FUZZ_CHECK(ew_json_parse(&j, as_json.data, as_json.len,
                                     &(ew_json_limits){.max_bytes = 4 * MAX_BYTES}, &a, NULL) == 0);
            ew_arena_release(&a);
        }
    } else {
        FUZZ_CHECK(ev != NULL);
        /* encodes again, both modes, and reads back as the same event */
        for (int mode = EW__MODE_STRUCTURED; mode <= EW__MODE_BINARY; mode++) {
            ew__wire_out o;
            ew_error e2 = {0};
            int rc2 = ew__binding_encode(ev, b, (ew__content_mode)mode, 4 * MAX_BYTES, &o, &e2);
            if (rc2) {
                check_err(rc2, &e2);
                FUZZ_CHECK(rc2 == EW_ETOOBIG);
                continue;
            }
            ew_event *again = NULL;
            ew_error e3 = {0};
            int rc3 = decode_out(&o, b, &again, &e3);
            if (rc3) fprintf(stderr, "re-decoding failed: %s\n", e3.msg);
            FUZZ_CHECK(rc3 == 0);
            if (mode == EW__MODE_STRUCTURED || types_survive(ev, b))
                FUZZ_CHECK(ew_event_equal(ev, again));
            else
                FUZZ_CHECK(same_but_types(ev, again));
            ew_event_unref(again);
            ew__wire_out_release(&o);
        }
        ew_event_unref(ev);
    }
    ew_buf_release(&as_json);
    free(text);
    return 0;
}
