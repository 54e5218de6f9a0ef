/* eventwire — a small HTTP/JSON server over libmicrohttpd (docs/http.md).
 *
 * Routes are a method and a path template whose segments may be parameters:
 * "GET /auth/users/{id}". A handler gets the request — method, path parameters, query parameters,
 * headers, the body (read whole before the handler runs, never more than max_body_bytes) and,
 * for a route registered with EW_HTTP_JSON, the body parsed by the strict JSON parser — and fills
 * in the response: a status and a JSON body.
 *
 * Built in, every answer JSON:
 *  - 404 {"error": "no route for /x", "field": null} for a path no route matches;
 *  - 405 with an Allow header for a path some route matches with another method (HEAD is
 *    answered by GET routes);
 *  - 413 when the body is larger than max_body_bytes: at once when Content-Length says so,
 *    else as soon as the bytes received pass the limit (the rest is read and dropped);
 *  - 400 for a body that is not JSON on an EW_HTTP_JSON route, naming line and column, or that
 *    is not an object; 415 for a body on such a route whose Content-Type is not JSON;
 *  - 403 for a cross-origin request (an Origin header that is neither the server's own nor one
 *    of cors_origins), before anything else; CORS headers and preflights for the allowed ones;
 *  - GET /healthz: 200 {"status": "ok"}, or 503 {"status": "unhealthy", "error": "..."} when the
 *    health callback says so (unless a route of its own was registered for it);
 *  - 500 when a handler leaves the response empty.
 * Errors have one shape: {"error": "what is wrong", "field": "the member at fault" or null}.
 *
 * Threads: each connection has a thread of its own (libmicrohttpd's thread-per-connection mode),
 * so a handler may block (a database transaction, a password hash) without holding up other
 * clients. Handlers run concurrently. Routes are registered before ew_http_start(). A server
 * has no global state: several may run in one process.
 *
 * Stopping (ew_http_stop): the listening socket is closed at once, requests being read or
 * handled finish and get their answers (up to stop_timeout_ms), requests that arrive later on
 * kept-alive connections get 503 and "Connection: close", and then the daemon stops. */
#ifndef EVENTWIRE_HTTP_H
#define EVENTWIRE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "eventwire/error.h"
#include "eventwire/log.h"
#include "eventwire/trace.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ew_http_server ew_http_server;
typedef struct ew_http_request ew_http_request;
typedef struct ew_http_response ew_http_response;
typedef struct ew_json ew_json; /* a parsed JSON value (src/core/json.h) */

/* Health callback of GET /healthz: return 0 when healthy; otherwise write why into why (n bytes,
 * NUL-terminated) and return nonzero. Runs on a connection thread. */
typedef int (*ew_http_health_fn)(void *ud, char *why, size_t n);

/* Guard of the routes flagged EW_HTTP_GUARDED (ew_http_options.guard): runs when the request's
 * headers are in, before its body is read, on the connection's thread. Answering (any status set
 * in res) ends the request there -- the body is never read nor parsed; setting nothing lets it
 * go on to the handler. It may attach data to the request (ew_http_set_data) for the handler. */
typedef void (*ew_http_guard_fn)(ew_http_request *req, ew_http_response *res, void *ud);

typedef struct ew_http_options {
    const char *addr;         /* IPv4 or IPv6 literal to listen on; NULL: "127.0.0.1" */
    int port;                 /* 0: an ephemeral port (ew_http_port() tells which) */
    size_t max_body_bytes;    /* 0: 1 MiB */
    unsigned max_connections; /* 0: 256 */
    unsigned idle_timeout_s;  /* a silent connection is closed after this; 0: 60 */
    int stop_timeout_ms;      /* how long ew_http_stop() waits for requests in flight; 0: 10000 */
    ew_http_health_fn health; /* NULL: always healthy */
    void *health_ud;
    ew_log_fn log; /* NULL: silent */
    void *log_ud;
    ew_span_fn span; /* NULL: server spans are not reported (eventwire/trace.h) */
    void *span_ud;
    ew_http_guard_fn guard; /* runs first on EW_HTTP_GUARDED routes; NULL: none may be added */
    void *guard_ud;
    /* Connections one client address may hold at once; more are closed as soon as they are
     * accepted (libmicrohttpd's per-IP limit), so that one address cannot take every connection
     * of max_connections. 0: 64. */
    unsigned max_connections_per_addr;
    /* Origins ("https://app.example.com", comma-separated; "*" for any) whose cross-origin
     * requests are served, with CORS headers and preflights. NULL or "": none -- a request whose
     * Origin header is not the server's own (http:// + its Host) is answered 403. Borrowed
     * until ew_http_free. */
    const char *cors_origins;
} ew_http_options;

/* What one request may make the server hold, in proportion to what it sent (docs/http.md):
 * its request line and headers at most EW_HTTP_HEADER_BYTES (libmicrohttpd's memory for the
 * connection, which also holds its read buffer: past it, 431 or 414); its body at most
 * max_body_bytes, in a buffer of less than twice its size; on an EW_HTTP_JSON route, the parsed
 * body at most EW_JSON_MEM_FACTOR (16) bytes per body byte and 64 KiB (src/core/json.h). */
#define EW_HTTP_HEADER_BYTES (32u * 1024u)

/* A handler: reads req, fills res. Both are borrowed for the call. ud is the route's. */
typedef void (*ew_http_handler)(const ew_http_request *req, ew_http_response *res, void *ud);

/* Route flags. EW_HTTP_JSON: the body must be a JSON object, sent as application/json (or
 * application/...+json; else 415 before the body is read), parsed before the handler runs.
 * EW_HTTP_JSON_OPT: the same when there is a body; no body is fine (ew_http_json NULL).
 * EW_HTTP_GUARDED: ew_http_options.guard runs before the body is read (the bearer token is
 * checked, say): a request it refuses is never read nor parsed. */
#define EW_HTTP_JSON 1u
#define EW_HTTP_JSON_OPT 2u
#define EW_HTTP_GUARDED 4u

/* A server, not yet listening. opts may be NULL. Caller frees it with ew_http_free(). */
int ew_http_new(ew_http_server **out, const ew_http_options *opts, ew_error *err);

/* Registers "METHOD /path/{param}/..." (methods in capitals; segments literal or a whole
 * {name}). EW_EINVAL for a malformed route, EW_EEXIST when the same method and template are
 * registered already, EW_ESTATE after ew_http_start(). ud is borrowed. */
int ew_http_route(ew_http_server *s, const char *route, unsigned flags, ew_http_handler fn,
                  void *ud, ew_error *err);

/* Starts listening. EW_EINVAL for a bad address, EW_EIO when the address cannot be bound. */
int ew_http_start(ew_http_server *s, ew_error *err);

/* The port listened on (the ephemeral one when opts.port was 0); 0 before start. */
int ew_http_port(const ew_http_server *s);

/* Stops: closes the listening socket, lets requests in flight finish (up to stop_timeout_ms),
 * then stops the daemon and its threads. Returns 0, or EW_ETIMEDOUT when requests were still in
 * flight at the deadline (their connections are closed). A stopped server stays stopped. Must
 * not be called from a handler. */
int ew_http_stop(ew_http_server *s);

/* Stops the server when it runs, then frees it. NULL is ignored. */
void ew_http_free(ew_http_server *s);

/* ---- the request (valid during the handler call; strings borrowed) -------------------------- */

const char *ew_http_method(const ew_http_request *r); /* "GET" */
const char *ew_http_path(const ew_http_request *r);   /* decoded, without the query */
/* The path parameter {name}; NULL when the route has none of that name. */
const char *ew_http_param(const ew_http_request *r, const char *name);
/* A query parameter (decoded); NULL when absent. */
const char *ew_http_query(const ew_http_request *r, const char *name);
/* A request header, by case-insensitive name; NULL when absent. */
const char *ew_http_header(const ew_http_request *r, const char *name);
/* The body as received (NUL-terminated; "" when there was none); *len (may be NULL) its size. */
const char *ew_http_body(const ew_http_request *r, size_t *len);
/* The parsed body of an EW_HTTP_JSON route (an object), else NULL. Use src/core/json.h. */
const ew_json *ew_http_json(const ew_http_request *r);
/* The client's address as text ("127.0.0.1", "::1"); "" when unknown. */
const char *ew_http_client_addr(const ew_http_request *r);
/* The token of "Authorization: Bearer TOKEN"; NULL when there is none. */
const char *ew_http_bearer(const ew_http_request *r);
/* The span answering this request as a traceparent: a child of the request's traceparent
 * header, or the root of a new trace when it has none (or a malformed one). Events published
 * while serving the request carry it; the response's traceparent header says it. */
const char *ew_http_traceparent(const ew_http_request *r);
/* Data the guard attached to the request (NULL: none). Borrowed until the request ends, when
 * free_fn (may be NULL) gets it; a second call replaces (and frees) the first. */
void ew_http_set_data(ew_http_request *r, void *data, void (*free_fn)(void *));
void *ew_http_data(const ew_http_request *r);

/* ---- the response --------------------------------------------------------------------------- */

/* Sets the status (100..599). */
void ew_http_status(ew_http_response *res, int status);

/* Adds a response header (copied). Content-Type and Content-Length are the server's. */
void ew_http_header_add(ew_http_response *res, const char *name, const char *value);

/* Sets status and a body of JSON text (copied as is; the caller vouches for it). */
void ew_http_reply_raw(ew_http_response *res, int status, const char *json, size_t len);

/* Sets status and a body of another type (copied), e.g. "text/plain; version=0.0.4".
 * content_type must be static. */
void ew_http_reply_body(ew_http_response *res, int status, const char *content_type,
                        const char *body, size_t len);

/* The standard error: status, {"error": message, "field": field or null}. */
void ew_http_reply_error(ew_http_response *res, int status, const char *field, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* A flat JSON object built member by member: ew_http_obj_begin(res, 200), then the members, then
 * ew_http_obj_end(res). Strings are escaped, bytes in them that are not UTF-8 written as U+FFFD
 * (so a path or header echoed is still JSON); NULL strings become null. */
void ew_http_obj_begin(ew_http_response *res, int status);
void ew_http_obj_str(ew_http_response *res, const char *key, const char *value);
void ew_http_obj_int(ew_http_response *res, const char *key, int64_t value);
void ew_http_obj_bool(ew_http_response *res, const char *key, bool value);
void ew_http_obj_strlist(ew_http_response *res, const char *key, const char *const *items,
                         size_t n);
/* A member whose value is JSON text written by the caller (an array, an object). */
void ew_http_obj_raw(ew_http_response *res, const char *key, const char *json);
void ew_http_obj_end(ew_http_response *res);

/* ---- what the server answered ---------------------------------------------------------------- */

#define EW_HTTP_DURATION_BUCKETS 12

/* Upper bounds, in seconds, of the request duration buckets (one more bucket holds the rest). */
extern const double ew_http_duration_bounds[EW_HTTP_DURATION_BUCKETS];

/* The answers of one route, from the request's arrival to its response being queued. */
typedef struct ew_http_stats {
    const char *method;      /* "GET"; "" for answers no route gave */
    const char *route;       /* the template, "/auth/users/{id}"; "/healthz" (built in) or
                                "(unmatched)" (404, 405, ...): borrowed until the server is freed */
    uint64_t by_status[500]; /* answers by status: [status - 100] */
    uint64_t duration[EW_HTTP_DURATION_BUCKETS + 1]; /* by ew_http_duration_bounds; not summed */
    uint64_t count;
    double duration_sum_s;
} ew_http_stats;

/* How many rows ew_http_route_stats() has: every route, then /healthz, then the unmatched. */
size_t ew_http_route_count(const ew_http_server *s);

/* Row i (0 .. ew_http_route_count()-1); EW_ENOTFOUND past the end. Any thread, any time. */
int ew_http_route_stats(const ew_http_server *s, size_t i, ew_http_stats *out);

#ifdef __cplusplus
}
#endif
#endif
