/* eventwire — the HTTP/JSON server over libmicrohttpd (include/eventwire/http.h, docs/http.md).
 *
 * One MHD daemon per server in thread-per-connection mode. A request's state (struct
 * ew_http_request) is made on the first call of the access handler, when the headers are in:
 * the route is chosen then, and 404, 405, 503 (stopping) and 413 (a Content-Length over the
 * limit) are answered at once without reading the body. Body chunks are appended up to the
 * limit; past it the request is answered 413 (or, if MHD refuses a response in the middle of a
 * body, the rest is dropped and 413 goes out at its end). On the last call the body is parsed
 * when the route wants JSON and the handler runs. The request-completed callback frees the state
 * and counts the request out of flight, which is what ew_http_stop() waits for. */
#include "core/log.h"
#include "core/mono.h"
#include "eventwire/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "http/http_internal.h"

#define MAX_PARAMS 8
#define MAX_SEGS 32
#define MAX_RESP_HEADERS 8
#define JSON_MAX_DEPTH 32

/* What one route answered: counts by status and by duration. Written by connection threads. */
typedef struct route_stats {
    atomic_uint_fast64_t by_status[500]; /* [status - 100] */
    atomic_uint_fast64_t duration[EW_HTTP_DURATION_BUCKETS + 1];
    atomic_uint_fast64_t duration_ns;
} route_stats;

const double ew_http_duration_bounds[EW_HTTP_DURATION_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10};

typedef struct route {
    char method[16];
    char *tmpl;           /* "/auth/users/{id}" as registered */
    char *segs[MAX_SEGS]; /* literal text, or the parameter's name */
    bool is_param[MAX_SEGS];
    size_t nsegs;
    unsigned flags;
    ew_http_handler fn;
    void *ud;
    route_stats *stats;
} route;

struct ew_http_server {
    ew_http_options o;
    char addr[INET6_ADDRSTRLEN];
    route *routes;
    size_t nroutes, cap;
    struct MHD_Daemon *d;
    union {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } sa;
    int port;
    int started, stopped;
    atomic_int stopping;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
    route_stats healthz, unmatched;      /* answers of the built-in /healthz, and of no route */
    char *cors;                          /* a copy of o.cors_origins; NULL: none */
    atomic_int_fast64_t limit_logged_ns; /* when a connection limit was last logged */
};

struct ew_http_request {
    ew_http_server *s;
    struct MHD_Connection *conn;
    const char *method;
    char *path;
    char *segbuf; /* the path split at its slashes: the parameters point into it */
    const route *rt;
    const char *pnames[MAX_PARAMS];
    char *pvals[MAX_PARAMS];
    size_t np;
    ew_buf body;
    int too_big;  /* past the limit: the rest of the body is dropped */
    int answered; /* a response is queued */
    ew_arena arena;
    ew_json *json;
    char client[INET6_ADDRSTRLEN];
    int64_t t0_ns;     /* when it arrived (monotonic) */
    int64_t t0_us;     /* and by the wall clock */
    ew_trace_ctx span; /* the server span answering it */
    bool has_parent;   /* a valid traceparent header came with it */
    uint8_t parent_span_id[8];
    char traceparent[EW_TRACEPARENT_LEN + 1];
    bool healthz; /* answered by the built-in /healthz */
    bool cors;    /* a cross-origin request from an allowed origin: CORS headers on the answer */
    void *data;   /* the guard's (ew_http_set_data) */
    void (*data_free)(void *);
    /* Without a connection (conn NULL: ew__http_handle), the request comes from in and the
     * answer goes to out. */
    const ew__http_input *in;
    ew__http_output *out;
};

struct ew_http_response {
    int status;
    ew_buf body;
    int has_body;
    char *hname[MAX_RESP_HEADERS], *hval[MAX_RESP_HEADERS];
    size_t nh;
    int obj_members;          /* -1: no object open; else members written */
    const char *content_type; /* static; NULL: application/json */
};

/* ---- logging ------------------------------------------------------------------------------- */

static void logf_(ew_http_server *s, ew_log_level lv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void logf_(ew_http_server *s, ew_log_level lv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ew__logv(&(ew__log_sink){s->o.log, s->o.log_ud}, lv, "http", NULL, fmt, ap);
    va_end(ap);
}

__attribute__((format(printf, 2, 0))) static void mhd_logger(void *cls, const char *fm, va_list ap)
{
    ew_http_server *s = cls;
    if (!s->o.log) return;
    char msg[EW__LOG_MSG_MAX];
    vsnprintf(msg, sizeof msg, fm, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    /* A connection refused past a limit is what the limit is for: one line every 10 s says that
     * it happens, not one per connection (300 of them from a client would flood the log). */
    if (strstr(msg, "limit")) {
        int64_t now = ew_mono_ns(), last = atomic_load(&s->limit_logged_ns);
        if ((last && now - last < 10000000000LL) ||
            !atomic_compare_exchange_strong(&s->limit_logged_ns, &last, now)) {
            logf_(s, EW_LOG_DEBUG, "libmicrohttpd: %s", msg);
            return;
        }
        logf_(s, EW_LOG_WARN, "libmicrohttpd: %s (logged once every 10 s)", msg);
        return;
    }
    logf_(s, EW_LOG_WARN, "libmicrohttpd: %s", msg);
}

/* ---- routes -------------------------------------------------------------------------------- */

static void route_free(route *r)
{
    free(r->stats);
    free(r->tmpl);
    for (size_t i = 0; i < r->nsegs; i++)
        free(r->segs[i]);
}

static int name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Splits "/a/{b}/c" into segments; 0 or EW_EINVAL with the reason. */
static int parse_template(route *r, const char *path, ew_error *err)
{
    if (path[0] != '/')
        return ew_error_set(err, EW_EINVAL, "route path '%.100s' must start with '/'", path);
    if (path[1] == '\0') return 0; /* "/" has no segments */
    const char *p = path + 1;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0)
            return ew_error_set(err, EW_EINVAL, "route path '%.100s' has an empty segment", path);
        if (r->nsegs == MAX_SEGS)
            return ew_error_set(err, EW_EINVAL, "route path '%.100s' has more than %d segments",
                                path, MAX_SEGS);
        bool param = p[0] == '{';
        if (param) {
            if (n < 3 || p[n - 1] != '}')
                return ew_error_set(err, EW_EINVAL,
                                    "route path '%.100s': a parameter is a whole segment {name}",
                                    path);
            for (size_t i = 1; i + 1 < n; i++)
                if (!name_char(p[i]))
                    return ew_error_set(err, EW_EINVAL,
                                        "route path '%.100s': parameter names are [A-Za-z0-9_]",
                                        path);
            size_t np = 0;
            for (size_t i = 0; i < r->nsegs; i++)
                np += r->is_param[i];
            if (np == MAX_PARAMS)
                return ew_error_set(err, EW_EINVAL,
                                    "route path '%.100s' has more than %d parameters", path,
                                    MAX_PARAMS);
        } else {
            for (size_t i = 0; i < n; i++)
                if (p[i] == '{' || p[i] == '}')
                    return ew_error_set(
                        err, EW_EINVAL,
                        "route path '%.100s': a parameter is a whole segment {name}", path);
        }
        r->segs[r->nsegs] = param ? strndup(p + 1, n - 2) : strndup(p, n);
        if (!r->segs[r->nsegs]) return ew_error_set(err, EW_ENOMEM, "out of memory");
        r->is_param[r->nsegs++] = param;
        if (!slash) break;
        p = slash + 1;
    }
    return 0;
}

int ew_http_new(ew_http_server **out, const ew_http_options *opts, ew_error *err)
{
    if (!out) return ew_error_set(err, EW_EINVAL, "out is required");
    *out = NULL;
    ew_http_server *s = calloc(1, sizeof *s);
    if (!s) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (opts) s->o = *opts;
    const char *addr = s->o.addr ? s->o.addr : "127.0.0.1";
    if (strlen(addr) >= sizeof s->addr) {
        free(s);
        return ew_error_set(err, EW_EINVAL, "'%.64s' is not an IP address", addr);
    }
    strcpy(s->addr, addr);
    s->o.addr = s->addr;
    if (s->o.port < 0 || s->o.port > 65535) {
        int port = s->o.port;
        free(s);
        return ew_error_set(err, EW_EINVAL, "port %d is outside 0..65535", port);
    }
    if (!s->o.max_body_bytes) s->o.max_body_bytes = 1u << 20;
    if (!s->o.max_connections) s->o.max_connections = 256;
    if (!s->o.idle_timeout_s) s->o.idle_timeout_s = 60;
    if (!s->o.max_connections_per_addr) s->o.max_connections_per_addr = 64;
    if (s->o.cors_origins && *s->o.cors_origins && !(s->cors = strdup(s->o.cors_origins))) {
        free(s);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    s->o.cors_origins = s->cors;
    if (s->o.stop_timeout_ms <= 0) s->o.stop_timeout_ms = 10000;
    pthread_mutex_init(&s->mu, NULL);
    ew__cond_init_mono(&s->cv);
    *out = s;
    return 0;
}

int ew_http_route(ew_http_server *s, const char *spec, unsigned flags, ew_http_handler fn, void *ud,
                  ew_error *err)
{
    if (!s || !spec || !fn)
        return ew_error_set(err, EW_EINVAL, "server, route and handler are required");
    if (s->started)
        return ew_error_set(err, EW_ESTATE, "routes must be added before the server starts");
    if (flags & ~(EW_HTTP_JSON | EW_HTTP_JSON_OPT | EW_HTTP_GUARDED))
        return ew_error_set(err, EW_EINVAL, "unknown route flags %#x", flags);
    if ((flags & EW_HTTP_GUARDED) && !s->o.guard)
        return ew_error_set(err, EW_EINVAL,
                            "route '%.100s' is guarded, but the server has no guard", spec);
    const char *sp = strchr(spec, ' ');
    size_t ml = sp ? (size_t)(sp - spec) : 0;
    route r = {0};
    if (!sp || ml == 0 || ml >= sizeof r.method)
        return ew_error_set(err, EW_EINVAL, "route '%.100s' is not 'METHOD /path'", spec);
    for (size_t i = 0; i < ml; i++)
        if (spec[i] < 'A' || spec[i] > 'Z')
            return ew_error_set(err, EW_EINVAL, "route '%.100s': the method must be in capitals",
                                spec);
    memcpy(r.method, spec, ml);
    r.method[ml] = '\0';
    int rc = parse_template(&r, sp + 1, err);
    if (!rc && (!(r.tmpl = strdup(sp + 1)) || !(r.stats = calloc(1, sizeof *r.stats))))
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < s->nroutes; i++) {
        const route *o = &s->routes[i];
        if (strcmp(o->method, r.method) || o->nsegs != r.nsegs) continue;
        size_t j = 0;
        for (; j < r.nsegs; j++)
            if (o->is_param[j] != r.is_param[j] ||
                (!r.is_param[j] && strcmp(o->segs[j], r.segs[j])))
                break;
        if (j == r.nsegs)
            rc = ew_error_set(err, EW_EEXIST, "route '%.100s' conflicts with '%s %s'", spec,
                              o->method, o->tmpl);
    }
    if (!rc && s->nroutes == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        route *nr = realloc(s->routes, cap * sizeof *nr);
        if (!nr)
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        else {
            s->routes = nr;
            s->cap = cap;
        }
    }
    if (rc) {
        route_free(&r);
        return rc;
    }
    r.flags = flags;
    r.fn = fn;
    r.ud = ud;
    s->routes[s->nroutes++] = r;
    return 0;
}

/* Does the route's template match path? Fills the request's parameters when it does. Literal
 * segments beat parameters: the caller tries every route and prefers fewer parameters. */
static int route_match(const route *r, char *const *segs, size_t nsegs, ew_http_request *req)
{
    if (r->nsegs != nsegs) return 0;
    for (size_t i = 0; i < nsegs; i++)
        if (!r->is_param[i] && strcmp(r->segs[i], segs[i])) return 0;
    if (req) {
        req->np = 0;
        for (size_t i = 0; i < nsegs; i++)
            if (r->is_param[i]) {
                req->pnames[req->np] = r->segs[i];
                req->pvals[req->np++] = segs[i];
            }
    }
    return 1;
}

static size_t route_params(const route *r)
{
    size_t n = 0;
    for (size_t i = 0; i < r->nsegs; i++)
        n += r->is_param[i];
    return n;
}

/* Splits a copy of the path into segments in place. -1 when it cannot be routed. */
static int split_path(char *path, char **segs, size_t *nsegs)
{
    *nsegs = 0;
    if (path[0] != '/') return -1;
    if (path[1] == '\0') return 0;
    char *p = path + 1;
    for (;;) {
        char *slash = strchr(p, '/');
        if (slash) *slash = '\0';
        if (!*p || *nsegs == MAX_SEGS) return -1;
        segs[(*nsegs)++] = p;
        if (!slash) return 0;
        p = slash + 1;
    }
}

/* ---- responses ----------------------------------------------------------------------------- */

static void res_init(ew_http_response *res)
{
    memset(res, 0, sizeof *res);
    ew_buf_init(&res->body);
    res->obj_members = -1;
}

static void res_release(ew_http_response *res)
{
    ew_buf_release(&res->body);
    for (size_t i = 0; i < res->nh; i++) {
        free(res->hname[i]);
        free(res->hval[i]);
    }
}

void ew_http_status(ew_http_response *res, int status)
{
    if (res && status >= 100 && status <= 599) res->status = status;
}

void ew_http_header_add(ew_http_response *res, const char *name, const char *value)
{
    if (!res || !name || !value || res->nh == MAX_RESP_HEADERS) return;
    if (!strcasecmp(name, "Content-Type") || !strcasecmp(name, "Content-Length")) return;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v) {
        free(n);
        free(v);
        return;
    }
    res->hname[res->nh] = n;
    res->hval[res->nh++] = v;
}

void ew_http_reply_body(ew_http_response *res, int status, const char *content_type,
                        const char *body, size_t len)
{
    if (!res) return;
    ew_http_reply_raw(res, status, body, len);
    res->content_type = content_type;
}

void ew_http_reply_raw(ew_http_response *res, int status, const char *json, size_t len)
{
    if (!res) return;
    ew_http_status(res, status);
    ew_buf_reset(&res->body);
    ew_buf_append(&res->body, json ? json : "", json ? len : 0);
    res->has_body = 1;
    res->obj_members = -1;
}

static void reply_error_v(ew_http_response *res, int status, const char *field, const char *fmt,
                          va_list ap) __attribute__((format(printf, 4, 0)));
static void reply_error_v(ew_http_response *res, int status, const char *field, const char *fmt,
                          va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    ew_http_status(res, status);
    ew_buf_reset(&res->body);
    ew_buf_puts(&res->body, "{\"error\":");
    ew_json_write_string_lossy(&res->body, msg, strlen(msg));
    ew_buf_puts(&res->body, ",\"field\":");
    if (field)
        ew_json_write_string_lossy(&res->body, field, strlen(field));
    else
        ew_buf_puts(&res->body, "null");
    ew_buf_putc(&res->body, '}');
    res->has_body = 1;
    res->obj_members = -1;
}

void ew_http_reply_error(ew_http_response *res, int status, const char *field, const char *fmt, ...)
{
    if (!res) return;
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(res, status, field, fmt, ap);
    va_end(ap);
}

void ew_http_obj_begin(ew_http_response *res, int status)
{
    if (!res) return;
    ew_http_status(res, status);
    ew_buf_reset(&res->body);
    ew_buf_putc(&res->body, '{');
    res->has_body = 1;
    res->obj_members = 0;
}

static int obj_key(ew_http_response *res, const char *key)
{
    if (!res || !key || res->obj_members < 0) return -1;
    if (res->obj_members++) ew_buf_putc(&res->body, ',');
    ew_json_write_string_lossy(&res->body, key, strlen(key));
    ew_buf_putc(&res->body, ':');
    return 0;
}

void ew_http_obj_str(ew_http_response *res, const char *key, const char *value)
{
    if (obj_key(res, key)) return;
    if (value)
        ew_json_write_string_lossy(&res->body, value, strlen(value));
    else
        ew_buf_puts(&res->body, "null");
}

void ew_http_obj_int(ew_http_response *res, const char *key, int64_t value)
{
    if (obj_key(res, key)) return;
    ew_buf_printf(&res->body, "%lld", (long long)value);
}

void ew_http_obj_bool(ew_http_response *res, const char *key, bool value)
{
    if (obj_key(res, key)) return;
    ew_buf_puts(&res->body, value ? "true" : "false");
}

void ew_http_obj_strlist(ew_http_response *res, const char *key, const char *const *items, size_t n)
{
    if (obj_key(res, key)) return;
    ew_buf_putc(&res->body, '[');
    for (size_t i = 0; i < n; i++) {
        if (i) ew_buf_putc(&res->body, ',');
        if (items[i])
            ew_json_write_string_lossy(&res->body, items[i], strlen(items[i]));
        else
            ew_buf_puts(&res->body, "null");
    }
    ew_buf_putc(&res->body, ']');
}

void ew_http_obj_raw(ew_http_response *res, const char *key, const char *json)
{
    if (obj_key(res, key)) return;
    ew_buf_puts(&res->body, json && *json ? json : "null");
}

void ew_http_obj_end(ew_http_response *res)
{
    if (!res || res->obj_members < 0) return;
    ew_buf_putc(&res->body, '}');
    res->obj_members = -1;
}

/* Queues res on the connection. MHD_NO when MHD would not take it. */
/* The server span: a child of the request's traceparent, or a new trace. */
static void trace_request(ew_http_request *r)
{
    ew_trace_ctx parent;
    const char *h = ew_http_header(r, "traceparent");
    r->has_parent = h && ew_trace_parse(h, &parent);
    ew_trace_child(r->has_parent ? &parent : NULL, &r->span);
    if (r->has_parent) memcpy(r->parent_span_id, parent.span_id, sizeof r->parent_span_id);
    ew_trace_format(&r->span, r->traceparent);
}

static void report_span(const ew_http_request *r, int status)
{
    ew_http_server *s = r->s;
    const char *tmpl = r->rt ? r->rt->tmpl : r->healthz ? "/healthz" : NULL;
    char name[160];
    snprintf(name, sizeof name, "%s %s", r->method, tmpl ? tmpl : "(unmatched)");
    ew_span sp = {.ctx = r->span,
                  .name = name,
                  .kind = EW_SPAN_SERVER,
                  .start_us = r->t0_us,
                  .end_us = r->t0_us + (ew_mono_ns() - r->t0_ns) / 1000,
                  .error = status >= 500,
                  .http_method = r->method,
                  .http_route = tmpl,
                  .http_status = status};
    if (r->has_parent) memcpy(sp.parent_span_id, r->parent_span_id, sizeof sp.parent_span_id);
    s->o.span(s->o.span_ud, &sp);
}

/* Counts an answer under its route (or /healthz, or no route), by status and duration. */
static void count_answer(const ew_http_request *r, int status)
{
    ew_http_server *s = r->s;
    route_stats *st = r->rt ? r->rt->stats : r->healthz ? &s->healthz : &s->unmatched;
    if (status >= 100 && status <= 599)
        atomic_fetch_add_explicit(&st->by_status[status - 100], 1, memory_order_relaxed);
    int64_t ns = ew_mono_ns() - r->t0_ns;
    double sec = (double)ns / 1e9;
    int b = 0;
    while (b < EW_HTTP_DURATION_BUCKETS && sec > ew_http_duration_bounds[b])
        b++;
    atomic_fetch_add_explicit(&st->duration[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->duration_ns, (uint_fast64_t)(ns > 0 ? ns : 0),
                              memory_order_relaxed);
}

static enum MHD_Result send_response(ew_http_request *r, ew_http_response *res)
{
    ew_http_server *s = r->s;
    if (res->obj_members >= 0) ew_http_obj_end(res);
    if (res->status == 0 || res->body.oom) {
        const char *why =
            res->body.oom ? "out of memory building the response" : "the handler gave no response";
        logf_(s, EW_LOG_ERROR, "http: %s %s: %s", r->method, r->path, why);
        ew_http_reply_error(res, 500, NULL, "internal error: %s", why);
    }
    int no_body = res->status == 204 || res->status == 304 || res->status < 200;
    size_t len = no_body || !res->has_body ? 0 : res->body.len;
    struct MHD_Response *mr = MHD_create_response_from_buffer(
        len, len ? res->body.data : (void *)"", MHD_RESPMEM_MUST_COPY);
    if (!mr) return MHD_NO;
    if (len || (!no_body && res->has_body))
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE,
                                res->content_type ? res->content_type : "application/json");
    for (size_t i = 0; i < res->nh; i++)
        MHD_add_response_header(mr, res->hname[i], res->hval[i]);
    MHD_add_response_header(mr, "traceparent", r->traceparent);
    if (r->cors) {
        MHD_add_response_header(mr, "Access-Control-Allow-Origin",
                                ew_http_header(r, MHD_HTTP_HEADER_ORIGIN));
        MHD_add_response_header(mr, "Access-Control-Expose-Headers",
                                "Location, Retry-After, WWW-Authenticate, traceparent");
        MHD_add_response_header(mr, "Vary", "Origin");
    }
    if (atomic_load(&s->stopping)) MHD_add_response_header(mr, MHD_HTTP_HEADER_CONNECTION, "close");
    /* counted before it is queued: the client may read the answer before queueing returns,
     * and what it reads next (GET /metrics) must include it */
    count_answer(r, res->status);
    if (s->o.span) report_span(r, res->status);
    if (!r->conn) { /* ew__http_handle: the answer goes to out */
        MHD_destroy_response(mr);
        r->out->status = res->status;
        ew_buf_append(&r->out->body, len ? res->body.data : "", len);
        for (size_t i = 0; i < res->nh; i++)
            if (!strcasecmp(res->hname[i], "Allow"))
                snprintf(r->out->allow, sizeof r->out->allow, "%s", res->hval[i]);
        r->answered = 1;
        return MHD_YES;
    }
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)res->status, mr);
    MHD_destroy_response(mr);
    if (ok != MHD_YES) return ok;
    r->answered = 1;
    if (res->status >= 500)
        logf_(s, EW_LOG_WARN, "http: %s %s -> %d", r->method, r->path, res->status);
    else
        logf_(s, EW_LOG_DEBUG, "http: %s %s -> %d", r->method, r->path, res->status);
    return ok;
}

static enum MHD_Result send_error(ew_http_request *r, int status, const char *allow,
                                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result send_error(ew_http_request *r, int status, const char *allow,
                                  const char *fmt, ...)
{
    ew_http_response res;
    res_init(&res);
    va_list ap;
    va_start(ap, fmt);
    reply_error_v(&res, status, NULL, fmt, ap);
    va_end(ap);
    if (allow) ew_http_header_add(&res, "Allow", allow);
    enum MHD_Result ok = send_response(r, &res);
    res_release(&res);
    return ok;
}

/* ---- requests ------------------------------------------------------------------------------ */

const char *ew_http_method(const ew_http_request *r)
{
    return r ? r->method : NULL;
}
const char *ew_http_path(const ew_http_request *r)
{
    return r ? r->path : NULL;
}

const char *ew_http_param(const ew_http_request *r, const char *name)
{
    if (!r || !name) return NULL;
    for (size_t i = 0; i < r->np; i++)
        if (!strcmp(r->pnames[i], name)) return r->pvals[i];
    return NULL;
}

const char *ew_http_query(const ew_http_request *r, const char *name)
{
    if (!r || !name) return NULL;
    const char *v = NULL;
    size_t vlen = 0;
    if (!r->conn) {
        for (size_t i = 0; i < r->in->nquery; i++)
            if (!strcmp(r->in->query[2 * i], name))
                return r->in->query[2 * i + 1] ? r->in->query[2 * i + 1] : "";
        return NULL;
    }
    if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, name, strlen(name), &v,
                                      &vlen) != MHD_YES)
        return NULL;
    return v ? v : "";
}

const char *ew_http_header(const ew_http_request *r, const char *name)
{
    if (!r || !name) return NULL;
    if (!r->conn) {
        for (size_t i = 0; i < r->in->nheaders; i++)
            if (!strcasecmp(r->in->headers[2 * i], name)) return r->in->headers[2 * i + 1];
        return NULL;
    }
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *ew_http_body(const ew_http_request *r, size_t *len)
{
    if (len) *len = r && r->body.data ? r->body.len : 0;
    return r && r->body.data ? r->body.data : "";
}

const ew_json *ew_http_json(const ew_http_request *r)
{
    return r ? r->json : NULL;
}

const char *ew_http_client_addr(const ew_http_request *r)
{
    return r ? r->client : "";
}

const char *ew_http_traceparent(const ew_http_request *r)
{
    return r ? r->traceparent : NULL;
}

const char *ew_http_bearer(const ew_http_request *r)
{
    const char *h = ew_http_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7)) return NULL;
    h += 7;
    while (*h == ' ')
        h++;
    return *h ? h : NULL;
}

static void client_addr(ew_http_request *r)
{
    if (!r->conn) {
        snprintf(r->client, sizeof r->client, "127.0.0.1");
        return;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, r->client,
                  sizeof r->client);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, r->client,
                  sizeof r->client);
}

void ew_http_set_data(ew_http_request *r, void *data, void (*free_fn)(void *))
{
    if (r->data_free && r->data) r->data_free(r->data);
    r->data = data;
    r->data_free = free_fn;
}

void *ew_http_data(const ew_http_request *r)
{
    return r->data;
}

static void request_free(ew_http_request *r)
{
    if (!r) return;
    if (r->data_free && r->data) r->data_free(r->data);
    free(r->path);
    free(r->segbuf);
    ew_buf_release(&r->body);
    ew_arena_release(&r->arena);
    free(r);
}

static int health_ok(ew_http_server *s, char *why, size_t n)
{
    why[0] = '\0';
    if (!s->o.health) return 1;
    int rc = s->o.health(s->o.health_ud, why, n);
    why[n - 1] = '\0';
    if (rc && !why[0]) snprintf(why, n, "unhealthy");
    return rc == 0;
}

/* ---- content types and origins ------------------------------------------------------------- */

/* Is the request's Content-Type JSON: application/json or application/<x>+json, parameters
 * (charset) aside? */
static int json_type(const ew_http_request *r)
{
    const char *ct = ew_http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ct) return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    if (n < 12 || strncasecmp(ct, "application/", 12)) return 0;
    if (n == 16 && !strncasecmp(ct + 12, "json", 4)) return 1;
    return n > 17 && !strncasecmp(ct + n - 5, "+json", 5);
}

static enum MHD_Result send_unsupported_type(ew_http_request *r)
{
    const char *ct = ew_http_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ct)
        return send_error(r, 415, NULL,
                          "the request body is %.100s: this route takes application/json", ct);
    return send_error(r, 415, NULL,
                      "the request body has no Content-Type: this route takes application/json");
}

/* Is origin the server's own, http:// and the request's Host? (A browser sends Origin on some
 * same-origin requests too, those of a page the server itself serves.) */
static int same_origin(const ew_http_request *r, const char *origin)
{
    const char *host = ew_http_header(r, MHD_HTTP_HEADER_HOST);
    return host && !strncasecmp(origin, "http://", 7) && !strcasecmp(origin + 7, host);
}

/* Is origin one of cors_origins (or is that "*")? */
static int origin_allowed(const ew_http_server *s, const char *origin)
{
    if (!s->cors) return 0;
    size_t ol = strlen(origin);
    for (const char *p = s->cors; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && p[m - 1] == ' ')
            m--;
        if (m == 1 && *p == '*') return 1;
        if (m && m == ol && !strncasecmp(p, origin, m)) return 1;
        p += n;
    }
    return 0;
}

/* The answer to a CORS preflight (OPTIONS with Access-Control-Request-Method) from an allowed
 * origin: what the routes may be called with; the route itself answers the real request. */
static enum MHD_Result send_preflight(ew_http_request *r)
{
    ew_http_response res;
    res_init(&res);
    ew_http_status(&res, 204);
    ew_http_header_add(&res, "Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE");
    ew_http_header_add(&res, "Access-Control-Allow-Headers",
                       "Authorization, Content-Type, traceparent");
    ew_http_header_add(&res, "Access-Control-Max-Age", "600");
    enum MHD_Result ok = send_response(r, &res);
    res_release(&res);
    return ok;
}

/* Routes the request when its headers are in: sets r->rt, or answers 404/405. */
static enum MHD_Result route_request(ew_http_request *r)
{
    ew_http_server *s = r->s;
    char *copy = strdup(r->path);
    if (!copy) return MHD_NO;
    char *segs[MAX_SEGS];
    size_t nsegs = 0;
    int routable = split_path(copy, segs, &nsegs) == 0;
    const char *m = r->method;
    int head = !strcmp(m, "HEAD");
    const route *best = NULL;
    char allow[128] = "";
    for (size_t i = 0; routable && i < s->nroutes; i++) {
        const route *rt = &s->routes[i];
        if (!route_match(rt, segs, nsegs, NULL)) continue;
        if (!strcmp(rt->method, m) || (head && !strcmp(rt->method, "GET"))) {
            if (!best || route_params(rt) < route_params(best)) best = rt;
        }
        if (!strstr(allow, rt->method)) {
            size_t al = strlen(allow);
            snprintf(allow + al, sizeof allow - al, "%s%s%s", al ? ", " : "", rt->method,
                     strcmp(rt->method, "GET") ? "" : ", HEAD");
        }
    }
    enum MHD_Result ok;
    if (best) {
        /* the parameters point into copy, which the request keeps */
        r->segbuf = copy;
        route_match(best, segs, nsegs, r);
        r->rt = best;
        return MHD_YES;
    }
    if (!allow[0] && routable && nsegs == 1 && !strcmp(segs[0], "healthz")) {
        free(copy);
        r->healthz = true;
        if (strcmp(m, "GET") && !head)
            return send_error(r, 405, "GET, HEAD",
                              "method %s is not allowed on /healthz; allowed: GET, HEAD", m);
        char why[256];
        ew_http_response res;
        res_init(&res);
        if (health_ok(s, why, sizeof why)) {
            ew_http_obj_begin(&res, 200);
            ew_http_obj_str(&res, "status", "ok");
        } else {
            ew_http_obj_begin(&res, 503);
            ew_http_obj_str(&res, "status", "unhealthy");
            ew_http_obj_str(&res, "error", why);
        }
        ok = send_response(r, &res);
        res_release(&res);
        return ok;
    }
    free(copy);
    if (allow[0])
        return send_error(r, 405, allow, "method %s is not allowed on %s; allowed: %s", m, r->path,
                          allow);
    return send_error(r, 404, NULL, "no route for %s", r->path);
}

/* The body is in: parse it when the route wants JSON, run the handler, answer. */
static enum MHD_Result run_handler(ew_http_request *r)
{
    const route *rt = r->rt;
    if ((rt->flags & (EW_HTTP_JSON | EW_HTTP_JSON_OPT)) && r->body.len && !json_type(r))
        return send_unsupported_type(r);
    if ((rt->flags & EW_HTTP_JSON) || ((rt->flags & EW_HTTP_JSON_OPT) && r->body.len)) {
        if (!r->body.len)
            return send_error(r, 400, NULL, "the request body is empty: a JSON object is expected");
        ew_error e = {0};
        ew_json_limits lim = {.max_bytes = r->s->o.max_body_bytes, .max_depth = JSON_MAX_DEPTH};
        if (ew_json_parse(&r->json, r->body.data, r->body.len, &lim, &r->arena, &e)) {
            r->json = NULL;
            if (e.code == EW_ENOMEM)
                return send_error(r, 500, NULL, "internal error: out of memory");
            /* within max_body_bytes, so over the parser's memory cap (docs/http.md) */
            if (e.code == EW_ETOOBIG) return send_error(r, 413, NULL, "%s", e.msg);
            return send_error(r, 400, NULL, "malformed JSON: %s", e.msg);
        }
        if (r->json->kind != EW_JSON_OBJECT) {
            r->json = NULL;
            return send_error(r, 400, NULL, "the body must be a JSON object");
        }
    }
    ew_http_response res;
    res_init(&res);
    rt->fn(r, &res, rt->ud);
    enum MHD_Result ok = send_response(r, &res);
    res_release(&res);
    return ok;
}

/* The headers are in: the request's state, routed (or answered: 404, 405, 503, 413). *out_r is
 * set whenever the state was made, also when the result is MHD_NO. */
static enum MHD_Result request_begin(ew_http_server *s, struct MHD_Connection *conn,
                                     const ew__http_input *in, ew__http_output *out,
                                     const char *url, const char *method, ew_http_request **out_r)
{
    ew_http_request *r = calloc(1, sizeof *r);
    if (!r) return MHD_NO;
    r->s = s;
    r->conn = conn;
    r->in = in;
    r->out = out;
    r->method = method;
    r->t0_ns = ew_mono_ns();
    r->t0_us = ew_now_us();
    trace_request(r);
    ew_buf_init(&r->body);
    ew_arena_init(&r->arena, NULL, 0);
    if (!(r->path = strdup(url))) {
        free(r);
        return MHD_NO;
    }
    *out_r = r;
    pthread_mutex_lock(&s->mu);
    s->inflight++;
    pthread_mutex_unlock(&s->mu);
    client_addr(r);
    if (atomic_load(&s->stopping)) return send_error(r, 503, NULL, "the server is shutting down");
    const char *origin = ew_http_header(r, MHD_HTTP_HEADER_ORIGIN);
    if (origin && !same_origin(r, origin)) {
        if (!origin_allowed(s, origin))
            return send_error(
                r, 403, NULL,
                "cross-origin requests from %.200s are not allowed (HTTP_CORS_ORIGINS)", origin);
        r->cors = true;
        if (!strcmp(method, "OPTIONS") && ew_http_header(r, "Access-Control-Request-Method"))
            return send_preflight(r);
    }
    enum MHD_Result ok = route_request(r);
    if (r->answered || ok != MHD_YES) return ok;
    /* the guard, before a byte of the body is read */
    if ((r->rt->flags & EW_HTTP_GUARDED) && s->o.guard) {
        ew_http_response res;
        res_init(&res);
        s->o.guard(r, &res, s->o.guard_ud);
        if (res.status) {
            ok = send_response(r, &res);
            res_release(&res);
            return ok;
        }
        res_release(&res);
    }
    /* a body of another type than JSON on a JSON route, and a declared body over the limit,
     * are refused before they are read */
    const char *cl = ew_http_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    int has_body =
        (cl && strtoull(cl, NULL, 10) > 0) || ew_http_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (has_body && (r->rt->flags & (EW_HTTP_JSON | EW_HTTP_JSON_OPT)) && !json_type(r))
        return send_unsupported_type(r);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (!errno && end != cl && n > s->o.max_body_bytes)
            return send_error(r, 413, NULL,
                              "the request body (%llu bytes) is larger than the limit of %zu bytes",
                              n, s->o.max_body_bytes);
    }
    return MHD_YES;
}

/* A piece of the body. */
static enum MHD_Result request_data(ew_http_request *r, const char *data, size_t n)
{
    ew_http_server *s = r->s;
    if (r->answered || r->too_big) return MHD_YES;
    if (r->body.len + n > s->o.max_body_bytes) {
        r->too_big = 1;
        ew_buf_release(&r->body);
        ew_buf_init(&r->body);
        /* MHD may refuse a response in the middle of a body: then the rest is dropped and
         * the answer goes out at its end */
        send_error(r, 413, NULL, "the request body is larger than the limit of %zu bytes",
                   s->o.max_body_bytes);
        return MHD_YES;
    }
    ew_buf_append(&r->body, data, n);
    if (r->body.oom) return MHD_NO;
    return MHD_YES;
}

/* The body is complete: answer. */
static enum MHD_Result request_end(ew_http_request *r)
{
    if (r->answered) return MHD_YES;
    if (r->too_big)
        return send_error(r, 413, NULL, "the request body is larger than the limit of %zu bytes",
                          r->s->o.max_body_bytes);
    return run_handler(r);
}

/* The request is over (answered or not): frees it and counts it out of flight. */
static void request_done(ew_http_server *s, ew_http_request *r)
{
    request_free(r);
    pthread_mutex_lock(&s->mu);
    if (--s->inflight == 0) pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    ew_http_server *s = cls;
    ew_http_request *r = *con_cls;
    if (!r) {
        enum MHD_Result ok = request_begin(s, conn, NULL, NULL, url, method, &r);
        if (r) *con_cls = r;
        return ok;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        return request_data(r, upload_data, n);
    }
    return request_end(r);
}

int ew__http_handle(ew_http_server *s, const ew__http_input *in, ew__http_output *out)
{
    ew_buf_init(&out->body);
    out->status = 0;
    out->allow[0] = '\0';
    ew_http_request *r = NULL;
    enum MHD_Result ok = request_begin(s, NULL, in, out, in->path, in->method, &r);
    size_t step = in->chunk ? in->chunk : in->body_len;
    for (size_t off = 0; ok == MHD_YES && off < in->body_len; off += step)
        ok = request_data(r, in->body + off, in->body_len - off < step ? in->body_len - off : step);
    if (ok == MHD_YES) ok = request_end(r);
    if (r) request_done(s, r);
    if (out->body.oom) return EW_ENOMEM;
    return ok == MHD_YES ? 0 : EW_EIO;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    ew_http_server *s = cls;
    ew_http_request *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        logf_(s, EW_LOG_DEBUG, "http: %s %s ended early (%d)", r->method, r->path ? r->path : "",
              (int)toe);
    request_done(s, r);
}

/* ---- start and stop ------------------------------------------------------------------------ */

int ew_http_start(ew_http_server *s, ew_error *err)
{
    if (!s) return ew_error_set(err, EW_EINVAL, "server is required");
    if (s->started) return ew_error_set(err, EW_ESTATE, "the server was started already");
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG | MHD_USE_AUTO;
    socklen_t salen;
    memset(&s->sa, 0, sizeof s->sa);
    if (strchr(s->addr, ':')) {
        s->sa.v6.sin6_family = AF_INET6;
        s->sa.v6.sin6_port = htons((uint16_t)s->o.port);
        if (inet_pton(AF_INET6, s->addr, &s->sa.v6.sin6_addr) != 1)
            return ew_error_set(err, EW_EINVAL, "'%s' is not an IPv6 address", s->addr);
        flags |= MHD_USE_IPv6;
        salen = sizeof s->sa.v6;
    } else {
        s->sa.v4.sin_family = AF_INET;
        s->sa.v4.sin_port = htons((uint16_t)s->o.port);
        if (inet_pton(AF_INET, s->addr, &s->sa.v4.sin_addr) != 1)
            return ew_error_set(err, EW_EINVAL, "'%s' is not an IPv4 address", s->addr);
        salen = sizeof s->sa.v4;
    }
    (void)salen;
    s->d = MHD_start_daemon(
        flags, (uint16_t)s->o.port, NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_logger, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&s->sa, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, s, MHD_OPTION_CONNECTION_LIMIT, s->o.max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, s->o.max_connections_per_addr,
        MHD_OPTION_CONNECTION_TIMEOUT, s->o.idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)EW_HTTP_HEADER_BYTES, MHD_OPTION_END);
    if (!s->d)
        return ew_error_set(err, EW_EIO,
                            "cannot listen on %s port %d (in use, or not an address "
                            "of this machine?)",
                            s->addr, s->o.port);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di && di->port ? di->port : s->o.port;
    s->started = 1;
    logf_(s, EW_LOG_INFO, "http: listening on %s port %d", s->addr, s->port);
    return 0;
}

size_t ew_http_route_count(const ew_http_server *s)
{
    return s ? s->nroutes + 2 : 0;
}

int ew_http_route_stats(const ew_http_server *s, size_t i, ew_http_stats *out)
{
    if (!s || i >= s->nroutes + 2) return EW_ENOTFOUND;
    const route_stats *st;
    memset(out, 0, sizeof *out);
    if (i < s->nroutes) {
        out->method = s->routes[i].method;
        out->route = s->routes[i].tmpl;
        st = s->routes[i].stats;
    } else if (i == s->nroutes) {
        out->method = "GET";
        out->route = "/healthz";
        st = &s->healthz;
    } else {
        out->method = "";
        out->route = "(unmatched)";
        st = &s->unmatched;
    }
    for (int k = 0; k < 500; k++)
        out->by_status[k] = atomic_load_explicit(&st->by_status[k], memory_order_relaxed);
    for (int b = 0; b <= EW_HTTP_DURATION_BUCKETS; b++) {
        out->duration[b] = atomic_load_explicit(&st->duration[b], memory_order_relaxed);
        out->count += out->duration[b];
    }
    out->duration_sum_s =
        (double)atomic_load_explicit(&st->duration_ns, memory_order_relaxed) / 1e9;
    return 0;
}

int ew_http_port(const ew_http_server *s)
{
    return s && s->started ? s->port : 0;
}

int ew_http_stop(ew_http_server *s)
{
    if (!s || !s->started || s->stopped) return 0;
    atomic_store(&s->stopping, 1);
    MHD_socket ls = MHD_quiesce_daemon(s->d);
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += s->o.stop_timeout_ms / 1000;
    dl.tv_nsec += (long)(s->o.stop_timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    while (s->inflight > 0)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT) {
            rc = EW_ETIMEDOUT;
            break;
        }
    int left = s->inflight;
    pthread_mutex_unlock(&s->mu);
    if (rc) logf_(s, EW_LOG_WARN, "http: stopping with %d requests still in flight", left);
    MHD_stop_daemon(s->d);
    if (ls != MHD_INVALID_SOCKET) close(ls);
    s->d = NULL;
    s->stopped = 1;
    logf_(s, EW_LOG_INFO, "http: stopped");
    return rc;
}

void ew_http_free(ew_http_server *s)
{
    if (!s) return;
    ew_http_stop(s);
    for (size_t i = 0; i < s->nroutes; i++)
        route_free(&s->routes[i]);
    free(s->routes);
    free(s->cors);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
