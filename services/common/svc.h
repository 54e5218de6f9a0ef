/* The service runtime: what every service of the reference system shares (docs/services.md).
 *
 * A service is a process with its own database, an HTTP JSON API and event handlers. svc_main()
 * runs one from start to exit:
 *
 *  1. reads the configuration from the environment (ew_config_from_env); SERVICE_NAME is the
 *     service's own name whatever the environment says; HTTP_PORT, when the environment does not
 *     set it, is the service's own port (svc_def.default_port);
 *  2. opens the service's database, an ew_store on SERVICE_DB_URL ("{SERVICE_NAME}" in it becomes
 *     the name), and creates the service's tables there: svc_def.schema, statements of the form
 *     CREATE TABLE IF NOT EXISTS event_store.<table> (...) (and ALTER TABLE ... ADD COLUMN IF NOT
 *     EXISTS ... for a column added later), run in one transaction at every start;
 *  3. opens the bus (EVENT_BUS_TYPE, ...) with the database's inbox, so that a handler's writes
 *     (ew_txn_exec on ew_ctx_txn(ctx)) and the record that the event was processed commit
 *     together, and with the event store's dead letter queue (EVENT_STORE_URL) as its sink;
 *  4. calls svc_def.setup, then registers svc_def.routes (svc_route) and .handlers (svc_subscribe);
 *     with svc_def.gdpr, subscribes the answers to the GDPR events; with svc_def.sagas, starts the
 * saga engine (saga.h) on a handle of its own on the event store, with the three sagas of sagas.h;
 *  5. starts the outbox relay: a thread that publishes what transactions put in the database's
 *     outbox, woken after each commit of svc_commit() or of a handler that used svc_ctx_emit(),
 *     and every OUTBOX_POLL_MS anyway;
 *  6. starts the bus and the HTTP server (HTTP_ADDR, HTTP_PORT, HTTP_MAX_BODY_BYTES, with
 *     GET /healthz), and prints one line to stdout: "NAME listening on http://ADDR:PORT";
 *  7. on SIGTERM or SIGINT: stops accepting HTTP and lets the requests in flight finish
 *     (HTTP_DRAIN_TIMEOUT_MS), lets the events in flight be handled (EVENT_BUS_DRAIN_TIMEOUT_MS)
 *     while the relay keeps publishing, publishes what is left in the outbox, closes the bus, the
 *     relay and the databases, and returns 0.
 *
 * Writing and publishing from an HTTP handler, all or nothing:
 *
 *     ew_txn *t;
 *     if (svc_begin(s, &t, &err)) ...
 *     ew_txn_exec(t, "INSERT INTO event_store.auth_users ...", params, n, NULL, &err);
 *     svc_emit(s, rq, t, EW_T_USER_REGISTERED, &data, user_id, &err);
 *     svc_commit(s, t, &err);          (or ew_txn_rollback(t): neither rows nor events)
 *
 * and from an event handler, in the inbox's transaction:
 *
 *     ew_txn_exec(ew_ctx_txn(ctx), "UPDATE event_store.auth_users ...", ...);
 *     svc_ctx_emit(s, ctx, EW_T_USER_DATA_DELETED, &data, user_id, &err);
 *     return EW_HANDLER_OK;            (retry or fail: neither the writes nor the events happen)
 *
 * The SQLite store opens ":memory:" and attaches the file as schema event_store: a service's
 * tables are always named event_store.<table>, and the same SQL then runs on PostgreSQL. */
#ifndef EW_SVC_H
#define EW_SVC_H

#include <stdbool.h>
#include <stddef.h>
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/config.h"
#include "eventwire/http.h"
#include "eventwire/store.h"
#include "core/buf.h"
#include "svc_auth.h"

typedef struct svc svc;
typedef struct svc_gdpr svc_gdpr;

/* An HTTP route of a service: "METHOD /path/{param}", its flags (EW_HTTP_JSON, EW_HTTP_JSON_OPT,
 * SVC_PUBLIC) and its handler. */
typedef struct svc_http_route {
    const char *route;
    unsigned flags;
    ew_http_handler fn;
} svc_http_route;

/* An event handler of a service: the pattern it subscribes and the function. */
typedef struct svc_handler {
    const char *pattern;
    ew_handler_fn fn;
} svc_handler;

typedef struct svc_def {
    const char *name; /* "auth-service": SERVICE_NAME, its events' source, its group */
    int default_port; /* HTTP_PORT when the environment does not set it */
    /* CREATE TABLE IF NOT EXISTS event_store.x (...) statements, NULL-terminated (may be NULL),
     * run in order at every start. A column added later is a statement of its own, "ALTER TABLE
     * event_store.x ADD COLUMN IF NOT EXISTS c ...", on SQLite too (the runtime looks first). */
    const char *const *schema;
    /* Its HTTP routes and event handlers (each may be NULL; the last entry is {0}), registered
     * with ud as their ud once setup has run. */
    const svc_http_route *routes;
    const svc_handler *handlers;
    /* Reads the service's settings into ud, and registers what routes and handlers do not say;
     * runs once, before the bus and the HTTP server start. A nonzero return stops the service
     * with err's message. */
    int (*setup)(svc *s, void *ud, ew_error *err);
    /* Runs once after everything is closed (may be NULL). */
    void (*teardown)(svc *s, void *ud);
    void *ud;
    /* Hosts the saga engine with the sagas of the reference system (sagas.h), on the event
     * store (EVENT_STORE_URL), unless ENABLE_SAGAS=false. One service of a system does. */
    bool sagas;
    /* The user's data the service holds (may be NULL): after setup the runtime subscribes
     * user.data_export_requested and user.deletion_requested and answers them from it (see
     * "the user's data" below). */
    const svc_gdpr *gdpr;
    /* The service's handlers also run for events about users it erased (its tombstones in
     * svc_erased_users, ew_event_erased events): for a service that keeps only anonymous
     * aggregates after an erasure and its own tombstones (analytics-service). false: such events
     * are acknowledged without running them, so nothing of the user comes back (svc.c). */
    bool runs_for_erased_users;
} svc_def;

/* Runs the service until SIGTERM or SIGINT; returns the process's exit status: 0 after a clean
 * stop, 1 when it could not start (the reason on stderr), 2 for a bad argument. argv may hold
 * --help. Initialises libsodium first. */
int svc_main(const svc_def *def, int argc, char **argv);

/* ---- in-process: tests and fuzz harnesses ---------------------------------------------------- */

/* Opens the service as svc_main() does -- its database and tables, the bus with its handlers
 * (started), the routes, the outbox relay, the keeper, the saga engine -- with settings instead
 * of the environment, and without the HTTP server listening or any signal handling: requests go
 * to svc_http() through ew__http_handle() (src/http/http_internal.h). settings: "NAME=value"
 * strings, NULL-terminated, set in order over the defaults as the environment's variables are:
 * a name the service does not read is ignored (several services may share one list), a bad
 * value is EW_ECONFIG naming it; SERVICE_NAME becomes the service's. def and its ud are
 * borrowed until svc_close(). Initialises libsodium. Caller closes it with svc_close(). */
int svc_open(svc **out, const svc_def *def, const char *const *settings, ew_error *err);

/* The service's HTTP server, its routes registered, not listening. Borrowed. */
ew_http_server *svc_http(svc *s);

/* Waits until the service is quiet: every event on its bus handled (or dead-lettered), and the
 * outbox relay has made a pass that found nothing to publish. 0, EW_ETIMEDOUT after timeout_ms,
 * or the relay's error. Not to be called from a handler. */
int svc_settle(svc *s, int timeout_ms, ew_error *err);

/* Stops and closes a service of svc_open() (the bus drains first), running def's teardown.
 * NULL is ignored. */
void svc_close(svc *s);

/* ---- in setup ------------------------------------------------------------------------------ */

/* ew_http_route on the service's server. */
int svc_route(svc *s, const char *route, unsigned flags, ew_http_handler fn, void *ud,
              ew_error *err);

/* Subscribes fn to pattern in the service's group (handler name: the pattern). The handler runs
 * in the inbox's transaction (ew_ctx_txn). */
int svc_subscribe(svc *s, const char *pattern, ew_handler_fn fn, void *ud, ew_error *err);

/* A route flag (with EW_HTTP_JSON, EW_HTTP_JSON_OPT): the route needs no token. Every other
 * route answers 401 (WWW-Authenticate: Bearer) unless the request carries a valid access token
 * (svc_auth.h), before its handler runs; the handler then finds the caller in svc_caller(rq). */
#define SVC_PUBLIC 0x100u

/* A table of routes, or of handlers: svc_route, or svc_subscribe, for each, with the same ud;
 * stops at the first failure. */
int svc_route_all(svc *s, const svc_http_route *routes, size_t n, void *ud, ew_error *err);
int svc_subscribe_all(svc *s, const svc_handler *subs, size_t n, void *ud, ew_error *err);

/* ---- the caller (docs/security.md) --------------------------------------------------------- */

/* What the token of rq says, on a route without SVC_PUBLIC (the guard attached it to the
 * request: borrowed until the handler returns); NULL on a public route. */
const svc_claims *svc_caller(const ew_http_request *rq);
/* Is the caller of rq an admin? Is it user_id, or an admin? */
bool svc_caller_admin(const ew_http_request *rq);
bool svc_caller_may(const ew_http_request *rq, const char *user_id);
/* 0 when svc_caller_may(rq, user_id) (svc_caller_admin(rq)); else -1 after answering 403. */
int svc_allow_user(const ew_http_request *rq, ew_http_response *res, const char *user_id);
int svc_require_admin(const ew_http_request *rq, ew_http_response *res);
/* The path parameter `param` of a route about one user: its value when the caller may reach that
 * user (else 403) and it is a UUID as the services hand them out; else, after answering, NULL:
 * 404 "no <what> <value>" with what, or 400 naming the parameter when what is NULL. */
const char *svc_path_user(const ew_http_request *rq, ew_http_response *res, const char *param,
                          const char *what);
/* Checks the request's bearer token: 0 and *c, or -1 after answering 401 (503 when the public
 * key cannot be read). What guarded routes do before their handler. */
int svc_authenticate(svc *s, const ew_http_request *rq, ew_http_response *res, svc_claims *c);
/* Refuses tokens of user_id (with session_id: of that session) issued before not_before_ms (Unix
 * milliseconds, svc_authn_revoke) in this process at once; user.tokens_revoked carries the same
 * to every service (auth-service calls this when it revokes, so that its own next request
 * already sees it). */
void svc_revoke(svc *s, const char *user_id, const char *session_id, int64_t not_before_ms);
/* The folder of auth-service's token keys (AUTH_KEY_DIR, or its default), and
 * AUTH_TOKEN_TTL_SECONDS. */
const char *svc_key_dir(const svc *s);
int64_t svc_token_ttl(const svc *s);
/* A random (version 4) UUID from libsodium's CSPRNG, for ids that must not be guessed. */
void svc_random_uuid(char out[37]);
/* A secret handed to a client (a password-reset or verification token, a download key): 43
 * characters of URL-safe base64 for 32 bytes of libsodium's CSPRNG. */
#define SVC_SECRET_LEN 43
void svc_secret_new(char out[SVC_SECRET_LEN + 1]);
/* What is stored instead of such a secret: 64 hex digits of its BLAKE2b-256. */
#define SVC_SECRET_HASH_LEN 64
void svc_secret_hash(const char *secret, char out[SVC_SECRET_HASH_LEN + 1]);

/* Appends to the service's audit chain (docs/audit.md): actor NULL means the caller of rq
 * ("user:ID", or "anonymous" on a public route or without a request); action ("auth.login", ...);
 * subject an id or NULL; details a JSON object or NULL. Ids only, never personal data in clear. A
 * failure is logged; the action it records has happened already. */
void svc_audit(svc *s, const ew_http_request *rq, const char *actor, const char *action,
               const char *subject, const char *details);
/* A request refused for who its caller is (a 403, or a 404 that hides another's resource):
 * "http.refused" by the caller, on subject (a user's id; anything that is no UUID is left out),
 * with the route and reason (a fixed text: no personal data). svc_allow_user and
 * svc_require_admin call it when they refuse. Nothing on a public route. */
void svc_audit_refusal(const ew_http_request *rq, const char *subject, const char *reason);
/* The same in t, a transaction on the service's database (svc_begin, or ew_ctx_txn in a
 * handler): the entry commits or rolls back with t (ew_audit_append_in). actor NULL means the
 * service itself ("service:NAME"). A failure is returned, and leaves t only to roll back. */
int svc_audit_in(svc *s, ew_txn *t, const char *actor, const char *action, const char *subject,
                 const char *details, ew_error *err);

/* ---- anywhere ------------------------------------------------------------------------------ */

const char *svc_name(const svc *s);
const svc_def *svc_definition(const svc *s);
const ew_config *svc_config(const svc *s);
ew_store *svc_db(svc *s);
ew_bus *svc_bus(svc *s);
/* SERVICE_DB_URL with {SERVICE_NAME} replaced: the database the runtime opened. */
const char *svc_db_url(const svc *s);

/* Logs to stderr as "NAME: level: message" (debug is not printed). */
void svc_log(svc *s, ew_log_level lv, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- the outbox ---------------------------------------------------------------------------- */

/* Begins a transaction on the service's database (ew_store_begin). */
int svc_begin(svc *s, ew_txn **t, ew_error *err);

/* Whether the outbox in t has room for another event: 0, or EW_EAGAIN with the reason when it
 * holds OUTBOX_MAX_PENDING events not yet published (the bus down or slow), which
 * svc_reply_failure() answers 503 with Retry-After; or the database's error. */
int svc_outbox_room(svc *s, ew_txn *t, ew_error *err);

/* Builds an event (source: the service; subject) and adds it to the outbox in t. rq: the HTTP
 * request being served, whose span (ew_http_traceparent) the event carries; NULL for none. With
 * rq, the outbox's bound is checked first (svc_outbox_room): a request past it writes nothing.
 * Handlers' follow-ups (rq NULL, svc_ctx_emit) are never refused for it: the event they answer
 * is already in. */
int svc_emit(svc *s, const ew_http_request *rq, ew_txn *t, ew_type_id type, const void *data,
             const char *subject, ew_error *err);

/* Commits t and wakes the relay. On failure t is rolled back. */
int svc_commit(svc *s, ew_txn *t, ew_error *err);

/* Ends t as rc says: svc_commit when rc is 0, else a rollback. Returns rc, or the commit's. */
int svc_finish(svc *s, ew_txn *t, int rc, ew_error *err);

/* In an event handler: adds a follow-up event (ew_ctx_follow_up_attrs: correlation and
 * causation from the handled event) to the outbox in the inbox's transaction; it is published
 * when the handler returned ok and the transaction committed. */
int svc_ctx_emit(svc *s, ew_handler_ctx *ctx, ew_type_id type, const void *data,
                 const char *subject, ew_error *err);

/* ---- in event handlers --------------------------------------------------------------------- */

/* What a handler answers for a failure (of the database, of the outbox): "what: message" as the
 * delivery's error, and
 *   svc_retry:  retry, after a warning in the log;
 *   svc_failed: retry when err's code is retriable (ew_err_retriable), else fail. */
typedef ew_handler_result (*svc_failure_fn)(svc *s, ew_handler_ctx *ctx, const char *what,
                                            const ew_error *err);
ew_handler_result svc_retry(svc *s, ew_handler_ctx *ctx, const char *what, const ew_error *err);
ew_handler_result svc_failed(svc *s, ew_handler_ctx *ctx, const char *what, const ew_error *err);

/* The user an event is about: its data's user_id field, when its type has one (a UUID) and it
 * is set; else NULL. Borrowed from ev. */
const char *svc_event_user(const ew_event *ev);

/* An event whose data is not of the type the handler was subscribed to: fail. */
ew_handler_result svc_not_mine(ew_handler_ctx *ctx, const ew_event *ev);

/* svc_ctx_emit; on failure svc_retry(..., "emitting an event", ...). */
ew_handler_result svc_ctx_emit_or_retry(svc *s, ew_handler_ctx *ctx, ew_type_id type,
                                        const void *data, const char *subject);

/* ---- reading rows -------------------------------------------------------------------------- */

#define SVC_ROW_MAX 16

/* One result row, its values copied (NULL for SQL NULL). */
typedef struct svc_row {
    bool found;
    size_t n;
    char *v[SVC_ROW_MAX];
} svc_row;

/* Runs a query in t and keeps its first row in *row (row->found false when there is none).
 * Release with svc_row_free(). */
int svc_query_row(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                  svc_row *row, ew_error *err);
void svc_row_free(svc_row *row);

/* ---- rows as JSON (svc_rows.c) ------------------------------------------------------------- */

/* How a row is written as a JSON object: one member per column, its value a string (null for
 * SQL NULL), except for the columns named in (NULL-terminated lists, each may be NULL)
 *   ints:  a number, when the text is an integer;
 *   bools: true or false ("0" is false);
 *   json:  as it is, when the text is a JSON array or object. */
typedef struct svc_cols {
    const char *const *ints;
    const char *const *bools;
    const char *const *json;
} svc_cols;

/* Appends r to b as a JSON object; cols may be NULL (every value a string). */
void svc_row_json(ew_buf *b, const ew_row *r, const svc_cols *cols);

/* Runs a query in t and appends its rows to b as a JSON array of objects (svc_row_json). *count
 * (may be NULL) gets the number of rows. */
int svc_rows_json(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                  const svc_cols *cols, ew_buf *b, size_t *count, ew_error *err);

/* ---- the user's data: GDPR exports and deletions (svc_gdpr.c) ------------------------------ */
/* A service describes the data it holds about a user as data (svc_def.gdpr); the runtime then
 * answers
 *   user.data_export_requested  with user.data_collected: the parts, as one JSON object;
 *   user.deletion_requested     by running the deletes (and the service's hooks) in the inbox's
 *                               transaction, with user.data_deleted: the rows deleted. */

enum {
    SVC_GDPR_ROWS,  /* every row: an array of objects */
    SVC_GDPR_ROW,   /* the first row: an object, or null */
    SVC_GDPR_VALUE, /* the first row's first column: a string, or null */
};

typedef struct svc_gdpr_part {
    const char *key; /* its member of the user's data */
    int kind;        /* SVC_GDPR_ROWS, _ROW or _VALUE */
    const char *sql; /* $1: the user id */
    svc_cols cols;
} svc_gdpr_part;

/* The hooks get svc_def.ud as ud. */
struct svc_gdpr {
    /* The members of the user's data, in order; the last part is {0}. */
    const svc_gdpr_part *parts;
    /* The data is {} when no part has a row (else every member is there, null or []). */
    bool empty_is_nothing;
    /* DELETE statements ($1: the user id), NULL-terminated, run in order; the rows they delete
     * are the records of user.data_deleted. */
    const char *const *deletes;
    /* What lives outside the database (may be NULL): a query ($1: the user id) for its names,
     * run before the deletes; once they worked, forget() gets each name. */
    const char *leftovers;
    void (*forget)(svc *s, void *ud, const char *name);
    /* Runs after the deletes, in their transaction (may be NULL). */
    int (*after_delete)(svc *s, void *ud, ew_txn *t, const char *user_id, ew_error *err);
    /* Runs before the data is collected for an export, in the handler's transaction (may be
     * NULL); anything but ok is the handler's result. */
    ew_handler_result (*before_export)(svc *s, void *ud, const ew_event *ev, ew_handler_ctx *ctx);
    /* What a failure answers: svc_retry (also when NULL) or svc_failed. */
    svc_failure_fn failure;
};

/* Subscribes the two handlers for svc_def.gdpr (svc_main does, after setup). */
int svc_gdpr_subscribe(svc *s, ew_error *err);

/* The tables g->deletes delete from ("DELETE FROM event_store.NAME ..."), NULL-terminated, for
 * the compaction after an erasure (keeper.h); *out NULL when g is NULL. EW_EINVAL for a statement
 * of another form. Caller frees with svc_gdpr_tables_free(). */
int svc_gdpr_tables(const svc_gdpr *g, char ***out, ew_error *err);
void svc_gdpr_tables_free(char **tables);

/* The user's data as the service holds it, appended to b (the object described above); *found
 * says whether any part has a row. */
int svc_user_data(ew_txn *t, const svc_gdpr *g, const char *user_id, ew_buf *b, bool *found,
                  ew_error *err);

/* An HTTP handler's whole answer for the service's data about the path's {user_id}: 400 when it
 * is not a UUID, 404 when the service holds nothing, else 200 {"user_id": ..., <the data's
 * members>}; what names the request in failures. */
void svc_reply_user_data(svc *s, const ew_http_request *rq, ew_http_response *res,
                         const char *what);

/* ---- answering ----------------------------------------------------------------------------- */

#define SVC_RETRY_AFTER_S "5" /* seconds, in the Retry-After of svc_reply_failure's 503s */

/* Logs err and answers 503 with Retry-After: SVC_RETRY_AFTER_S (a database or broker that cannot
 * be reached, a time-out, EW_EAGAIN: the outbox full) or 500 (anything else) with a JSON error
 * that names no internals. */
void svc_reply_failure(svc *s, ew_http_response *res, const char *what, const ew_error *err);

/* Answers 429 with Retry-After: wait_s (at least 1), "too many <what>; try again in N s": what a
 * route answers past one of its limits (svc_limit.h). */
void svc_reply_too_many(ew_http_response *res, int64_t wait_s, const char *what);

/* ---- reading request bodies ---------------------------------------------------------------- */
/* Each returns 0 when the value is good, or -1 after answering 400 with the field's name and what
 * is wrong with it. On a route whose body is optional (EW_HTTP_JSON_OPT) and a request without
 * one, every member is absent. */

#define SVC_OPTIONAL 0
#define SVC_REQUIRED 1

/* Refuses members of the body not in names (NULL-terminated). */
int svc_json_only(const ew_http_request *rq, ew_http_response *res, const char *const *names);

/* A string member: *out is NULL when it is absent and optional. Required strings must not be
 * empty. max_len counts bytes. */
int svc_json_str(const ew_http_request *rq, ew_http_response *res, const char *field, int required,
                 size_t max_len, const char **out);

/* An array of strings, at most max_items of at most max_len bytes each, none empty, no two the
 * same; items[] (cap max_items) gets them and *n their count. */
int svc_json_strlist(const ew_http_request *rq, ew_http_response *res, const char *field,
                     int required, size_t max_items, size_t max_len, const char **items, size_t *n);

/* A boolean member: *out unchanged when it is absent and optional; *present (may be NULL) says. */
int svc_json_bool(const ew_http_request *rq, ew_http_response *res, const char *field, int required,
                  bool *out, bool *present);

/* An object member: *out (JSON text, malloc'ed, caller frees) NULL when absent and optional. */
int svc_json_object(const ew_http_request *rq, ew_http_response *res, const char *field,
                    int required, char **out);

/* Is s a UUID in canonical lower-case 8-4-4-4-12 form (what the services hand out)? */
bool svc_uuid_valid(const char *s);

/* 0 when id is such a UUID; else -1 after answering 400 "<field> must be a UUID ...". */
int svc_require_uuid(ew_http_response *res, const char *field, const char *id);

/* An email address of a request: 0 when the catalog takes it (ew_field_valid, EW_FIELD_EMAIL: the
 * rule every event with an address is checked by), else -1 after answering 400 for field. */
int svc_require_email(ew_http_response *res, const char *field, const char *email);

/* The time now + offset_s seconds, RFC 3339 UTC (ew_time_format), into out. */
void svc_time(int64_t offset_s, char out[EW_TIME_LEN + 1]);

/* Copies text a client chose freely and nobody checks (a User-Agent header) into out (cap
 * bytes, cap >= 4) as UTF-8 that events and JSON accept: each byte that is not part of
 * well-formed UTF-8 becomes U+FFFD, and the copy ends before a character that does not fit,
 * never inside one. Returns out. */
char *svc_text_utf8(char *out, size_t cap, const char *in);

#endif
