/* eventwire — the text form of an HTTP request that fuzz_http and fuzz_service read, as
 * libmicrohttpd would hand the request over once parsed (src/http/http_internal.h):
 *
 *     METHOD PATH[?QUERY]\n
 *     Name: value\n            (header lines; a line without ':' is skipped)
 *     \n
 *     BODY
 *
 * Query arguments are split at '&' and '=' (an argument without '=' has a NULL value); lines may
 * end in "\r\n". */
#ifndef EW_TESTS_FUZZ_REQUEST_H
#define EW_TESTS_FUZZ_REQUEST_H

#include <string.h>
#include <strings.h>
#include "http/http_internal.h"

#define FUZZ_MAX_HEADERS 16
#define FUZZ_MAX_QUERY 16

typedef struct fuzz_request {
    ew__http_input in;
    const char *headers[2 * FUZZ_MAX_HEADERS];
    const char *query[2 * FUZZ_MAX_QUERY];
} fuzz_request;

/* The next line of [*p, end) without its '\n' (and '\r'), NUL-terminated in place. */
static inline char *fuzz_next_line(char **p, char *end)
{
    if (*p >= end) return NULL;
    char *s = *p, *nl = memchr(s, '\n', (size_t)(end - s));
    char *e = nl ? nl : end;
    *p = nl ? nl + 1 : end;
    if (e > s && e[-1] == '\r') e--;
    *e = '\0';
    return s;
}

/* Parses buf[0..size) (with buf[size] == '\0': the caller allocates one byte more) in place into
 * r, whose strings point into buf. The body arrives in pieces of size % 97 + 1 bytes. */
static inline void fuzz_request_parse(fuzz_request *r, char *buf, size_t size)
{
    char *p = buf, *end = buf + size;
    char *line = fuzz_next_line(&p, end);
    if (!line) line = buf + size;
    char *sp = strchr(line, ' ');
    const char *method = line, *path = "/";
    if (sp) {
        *sp = '\0';
        path = sp + 1;
    }
    size_t nq = 0;
    char *q = strchr(path, '?');
    if (q) {
        *q++ = '\0';
        char *save = NULL;
        for (char *arg = strtok_r(q, "&", &save); arg && nq < FUZZ_MAX_QUERY;
             arg = strtok_r(NULL, "&", &save)) {
            char *eq = strchr(arg, '=');
            if (eq) *eq++ = '\0';
            r->query[2 * nq] = arg;
            r->query[2 * nq++ + 1] = eq;
        }
    }
    size_t nh = 0;
    char *h;
    while ((h = fuzz_next_line(&p, end)) != NULL && *h) {
        char *colon = strchr(h, ':');
        if (!colon || nh == FUZZ_MAX_HEADERS) continue;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ')
            v++;
        r->headers[2 * nh] = h;
        r->headers[2 * nh++ + 1] = v;
    }
    r->in = (ew__http_input){.method = method,
                             .path = path,
                             .headers = r->headers,
                             .nheaders = nh,
                             .query = r->query,
                             .nquery = nq,
                             .body = p,
                             .body_len = (size_t)(end - p),
                             .chunk = (size_t)(end - p) % 97 + 1};
}

/* The value of header name in r (case-insensitive), or NULL. */
static inline const char *fuzz_request_header(const fuzz_request *r, const char *name)
{
    for (size_t i = 0; i < r->in.nheaders; i++)
        if (!strcasecmp(r->headers[2 * i], name)) return r->headers[2 * i + 1];
    return NULL;
}

#endif
