/* Reading request bodies: each helper checks one member of the parsed body and, when it is not
 * what the endpoint needs, answers 400 {"error": "...", "field": "<member>"} itself. */
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "svc.h"

/* The member of the parsed body; NULL when it is absent or there is no body (a route whose body
 * is optional, EW_HTTP_JSON_OPT, and none was sent). */
static const ew_json *member(const ew_http_request *rq, const char *field)
{
    const ew_json *j = ew_http_json(rq);
    return j ? ew_json_get(j, field) : NULL;
}

static int missing(ew_http_response *res, const char *field)
{
    ew_http_reply_error(res, 400, field, "%s is required", field);
    return -1;
}

int svc_json_only(const ew_http_request *rq, ew_http_response *res, const char *const *names)
{
    const ew_json *j = ew_http_json(rq);
    if (!j) return 0;
    for (const ew_json *m = j->child; m; m = m->next) {
        int known = 0;
        for (const char *const *n = names; *n && !known; n++)
            known = !strcmp(*n, m->key);
        if (!known) {
            ew_http_reply_error(res, 400, m->key, "unknown field %.64s", m->key);
            return -1;
        }
    }
    return 0;
}

int svc_json_str(const ew_http_request *rq, ew_http_response *res, const char *field, int required,
                 size_t max_len, const char **out)
{
    *out = NULL;
    const ew_json *m = member(rq, field);
    if (!m || (m->kind == EW_JSON_NULL && !required)) return required ? missing(res, field) : 0;
    if (m->kind != EW_JSON_STRING) {
        ew_http_reply_error(res, 400, field, "%s must be a string", field);
        return -1;
    }
    if (required && m->len == 0) {
        ew_http_reply_error(res, 400, field, "%s must not be empty", field);
        return -1;
    }
    if (m->len > max_len) {
        ew_http_reply_error(res, 400, field, "%s is longer than %zu bytes", field, max_len);
        return -1;
    }
    *out = m->str;
    return 0;
}

int svc_json_strlist(const ew_http_request *rq, ew_http_response *res, const char *field,
                     int required, size_t max_items, size_t max_len, const char **items, size_t *n)
{
    *n = 0;
    const ew_json *m = member(rq, field);
    if (!m || (m->kind == EW_JSON_NULL && !required)) return required ? missing(res, field) : 0;
    if (m->kind != EW_JSON_ARRAY) {
        ew_http_reply_error(res, 400, field, "%s must be an array of strings", field);
        return -1;
    }
    if (m->count > max_items) {
        ew_http_reply_error(res, 400, field, "%s has more than %zu items", field, max_items);
        return -1;
    }
    size_t i = 0;
    for (const ew_json *e = m->child; e; e = e->next, i++) {
        if (e->kind != EW_JSON_STRING || e->len == 0) {
            ew_http_reply_error(res, 400, field, "%s[%zu] must be a non-empty string", field, i);
            return -1;
        }
        if (e->len > max_len) {
            ew_http_reply_error(res, 400, field, "%s[%zu] is longer than %zu bytes", field, i,
                                max_len);
            return -1;
        }
        for (size_t k = 0; k < *n; k++)
            if (!strcmp(items[k], e->str)) {
                ew_http_reply_error(res, 400, field, "%s holds '%.64s' twice", field, e->str);
                return -1;
            }
        items[(*n)++] = e->str;
    }
    return 0;
}

int svc_json_bool(const ew_http_request *rq, ew_http_response *res, const char *field, int required,
                  bool *out, bool *present)
{
    if (present) *present = false;
    const ew_json *m = member(rq, field);
    if (!m || (m->kind == EW_JSON_NULL && !required)) return required ? missing(res, field) : 0;
    if (m->kind != EW_JSON_TRUE && m->kind != EW_JSON_FALSE) {
        ew_http_reply_error(res, 400, field, "%s must be true or false", field);
        return -1;
    }
    *out = m->kind == EW_JSON_TRUE;
    if (present) *present = true;
    return 0;
}

int svc_json_object(const ew_http_request *rq, ew_http_response *res, const char *field,
                    int required, char **out)
{
    *out = NULL;
    const ew_json *m = member(rq, field);
    if (!m || (m->kind == EW_JSON_NULL && !required)) return required ? missing(res, field) : 0;
    if (m->kind != EW_JSON_OBJECT) {
        ew_http_reply_error(res, 400, field, "%s must be an object", field);
        return -1;
    }
    ew_buf b;
    ew_buf_init(&b);
    ew_json_write(&b, m);
    *out = ew_buf_steal(&b, NULL);
    if (!*out) {
        ew_http_reply_error(res, 500, NULL, "internal error: out of memory");
        return -1;
    }
    return 0;
}

bool svc_uuid_valid(const char *s)
{
    if (!s || !ew_uuid_valid(s)) return false;
    for (const char *p = s; *p; p++)
        if (*p >= 'A' && *p <= 'F') return false;
    return true;
}

int svc_require_uuid(ew_http_response *res, const char *field, const char *id)
{
    if (svc_uuid_valid(id)) return 0;
    ew_http_reply_error(res, 400, field, "%s must be a UUID (lower-case 8-4-4-4-12)", field);
    return -1;
}

int svc_require_email(ew_http_response *res, const char *field, const char *email)
{
    if (ew_field_valid(EW_FIELD_EMAIL, email)) return 0;
    ew_http_reply_error(res, 400, field, "'%.64s' is not a valid email address", email);
    return -1;
}

void svc_time(int64_t offset_s, char out[EW_TIME_LEN + 1])
{
    ew_time_format(ew_now_us() + offset_s * 1000000, out);
}

char *svc_text_utf8(char *out, size_t cap, const char *in)
{
    size_t o = 0;
    for (const char *p = in; *p;) {
        size_t k = 1;
        if ((unsigned char)*p >= 0x80) {
            k = 0;
            for (size_t n = 2; n <= 4 && !k; n++) {
                if (strnlen(p, n) < n) break;
                if (ew_utf8_valid(p, n)) k = n;
            }
        }
        const char *from = k ? p : "\xEF\xBF\xBD"; /* U+FFFD */
        size_t len = k ? k : 3;
        if (o + len >= cap) break;
        memcpy(out + o, from, len);
        o += len;
        p += k ? k : 1;
    }
    out[o] = '\0';
    return out;
}
