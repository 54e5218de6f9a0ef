/* A small libcurl client for the HTTP tests (tests/http, tests/services): one request, its status,
 * body and headers. Header-only; include after <cmocka.h>'s helpers (support/ew_test.h). */
#ifndef EW_TEST_HTTP_CLIENT_H
#define EW_TEST_HTTP_CLIENT_H

#include <curl/curl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"

typedef struct http_result {
    long status; /* 0 when the request failed */
    char *body;  /* NUL-terminated, malloc'ed */
    size_t len;
    char *headers; /* the raw response header lines */
    size_t hlen;
    char error[CURL_ERROR_SIZE];
    double seconds; /* total time */
} http_result;

typedef struct http_req {
    const char *method;         /* NULL: GET, or POST with a body */
    const char *body;           /* NULL: none */
    size_t body_len;            /* 0 with body: strlen(body) */
    int chunked;                /* send the body with Transfer-Encoding: chunked */
    const char *const *headers; /* NULL-terminated "Name: value" lines */
    long timeout_ms;            /* 0: 15000 */
} http_req;

static inline size_t http__append(char **p, size_t *n, const char *data, size_t len)
{
    char *q = realloc(*p, *n + len + 1);
    if (!q) return 0;
    memcpy(q + *n, data, len);
    *n += len;
    q[*n] = '\0';
    *p = q;
    return len;
}

static inline size_t http__body_cb(char *data, size_t sz, size_t nm, void *ud)
{
    http_result *r = ud;
    return http__append(&r->body, &r->len, data, sz * nm);
}

static inline size_t http__hdr_cb(char *data, size_t sz, size_t nm, void *ud)
{
    http_result *r = ud;
    return http__append(&r->headers, &r->hlen, data, sz * nm);
}

typedef struct http__upload {
    const char *p;
    size_t left;
} http__upload;

static inline size_t http__read_cb(char *buf, size_t sz, size_t nm, void *ud)
{
    http__upload *u = ud;
    size_t n = sz * nm;
    if (n > 1000) n = 1000; /* many small chunks */
    if (n > u->left) n = u->left;
    memcpy(buf, u->p, n);
    u->p += n;
    u->left -= n;
    return n;
}

/* Runs one request to url; the result's strings are freed with http_result_free(). */
static inline http_result http_do(const char *url, const http_req *rq)
{
    http_result r;
    memset(&r, 0, sizeof r);
    r.body = calloc(1, 1);
    r.headers = calloc(1, 1);
    http_req def;
    memset(&def, 0, sizeof def);
    if (!rq) rq = &def;
    CURL *c = curl_easy_init();
    struct curl_slist *hl = NULL;
    for (const char *const *h = rq->headers; h && *h; h++)
        hl = curl_slist_append(hl, *h);
    http__upload up = {rq->body, rq->body ? (rq->body_len ? rq->body_len : strlen(rq->body)) : 0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, rq->timeout_ms ? rq->timeout_ms : 15000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, http__body_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, http__hdr_cb);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r.error);
    if (rq->body && rq->chunked) {
        hl = curl_slist_append(hl, "Transfer-Encoding: chunked");
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, http__read_cb);
        curl_easy_setopt(c, CURLOPT_READDATA, &up);
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, rq->method ? rq->method : "POST");
    } else if (rq->body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, rq->body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)up.left);
        if (rq->method) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, rq->method);
    } else if (rq->method && !strcmp(rq->method, "HEAD")) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (rq->method) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, rq->method);
    }
    int typed = 0; /* the caller's own Content-Type ("Content-Type:" alone: none at all) */
    for (const char *const *h = rq->headers; h && *h; h++)
        typed |= !strncasecmp(*h, "Content-Type:", 13);
    if (rq->body && !typed) hl = curl_slist_append(hl, "Content-Type: application/json");
    hl = curl_slist_append(hl, "Expect:");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_getinfo(c, CURLINFO_TOTAL_TIME, &r.seconds);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    return r;
}

static inline void http_result_free(http_result *r)
{
    free(r->body);
    free(r->headers);
    r->body = r->headers = NULL;
}

/* The value of a response header (case-insensitive name) into buf; NULL when absent. */
static inline const char *http_header_value(const http_result *r, const char *name, char *buf,
                                            size_t n)
{
    size_t nl = strlen(name);
    for (const char *p = r->headers; p && *p;) {
        const char *eol = strchr(p, '\n');
        size_t ll = eol ? (size_t)(eol - p) : strlen(p);
        if (ll > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t vl = (size_t)(p + ll - v);
            while (vl && (v[vl - 1] == '\r' || v[vl - 1] == ' '))
                vl--;
            if (vl >= n) vl = n - 1;
            memcpy(buf, v, vl);
            buf[vl] = '\0';
            return buf;
        }
        p = eol ? eol + 1 : p + ll;
    }
    return NULL;
}

/* Member key of the JSON object in r's body, as text in a static buffer: a string's value, "(null)"
 * for null, compact JSON for anything else; NULL when the body is not an object or lacks key. */
static inline const char *http_member(const http_result *r, const char *key)
{
    static char out[4096];
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *j;
    const char *res = NULL;
    if (r->body && ew_json_parse(&j, r->body, r->len, NULL, &a, NULL) == 0) {
        const ew_json *m = ew_json_get(j, key);
        if (m && m->kind == EW_JSON_STRING) {
            snprintf(out, sizeof out, "%s", m->str);
            res = out;
        } else if (m && m->kind == EW_JSON_NULL) {
            res = "(null)";
        } else if (m) {
            ew_buf b;
            ew_buf_init(&b);
            ew_json_write(&b, m);
            snprintf(out, sizeof out, "%s", b.data ? b.data : "");
            ew_buf_release(&b);
            res = out;
        }
    }
    ew_arena_release(&a);
    return res;
}

#endif
