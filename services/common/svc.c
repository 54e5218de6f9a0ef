/* The service runtime (svc.h, docs/services.md): configuration, the service's database, the bus
 * with the database's inbox, the outbox relay, the HTTP server, signals and the orderly stop. */
#include "svc.h"
#include "core/mono.h"
#include "keeper.h"
#include "svc_auth.h"
#include "svc_settings.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/keys.h"
#include "eventwire/audit.h"
#include "eventwire/metrics.h"
#include "eventwire/otlp.h"
#include "eventwire/sagas.h"

#define RELAY_BATCH 100

struct svc {
    const svc_def *def;
    ew_config *cfg;
    char *db_url;
    ew_store *db;      /* the service's own database: tables, inbox, outbox */
    ew_store *events;  /* the event store (EVENT_STORE_URL): dead letters */
    ew_store *saga_db; /* svc_def.sagas: the engine's own handle on the event store */
    ew_saga_engine *sagas;
    ew_bus *bus;
    ew_http_server *http;
    ew_metrics *metrics; /* GET /metrics */
    ew_otlp *otlp;       /* OTEL_EXPORTER_OTLP_ENDPOINT: spans of handlers and requests */
    svc_keeper *keeper;  /* retention, on a timer */
    char **erase_tables; /* the keeper's: the tables an erasure deletes from */
    ew_audit *audit;     /* who did what: the service's chain (eventwire/audit.h) */
    ew_evauth *evauth;   /* the service's bus key and the bus policy; NULL with EVENT_AUTH=off */
    /* a key made or rotated while opening, before the chain was open: recorded once it is */
    ew_evauth_notice_kind early_kind;
    char early_kid[EW_KEY_ID_LEN + 1];
    ew_inbox inner; /* the database's inbox, which ours wraps */
    /* the relay */
    pthread_t relay;
    int relay_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wake, stop;
    int64_t poll_ms;
    int64_t outbox_max; /* OUTBOX_MAX_PENDING; 0: no bound */
    /* passes begun and ended, and what the last one published (under mu; svc_settle) */
    uint64_t passes_begun, passes_ended;
    size_t last_sent;
    pthread_cond_t passed; /* broadcast at the end of each pass */
    char relay_error[256]; /* the last pass's error; "" when it worked (under mu) */
    ew_logger *log;
    /* access tokens (svc_auth.h) */
    svc_authn *authn;
    char *key_dir;
    int64_t token_ttl_s;
    struct guard *guards; /* the routes that require a token */
    struct svc_sub *subs; /* svc_subscribe's wrappers, freed at the end */
    /* What the inbox's transactions did, for waking the relay after a commit that emitted (see
     * "the inbox" below). Under hmu. */
    pthread_mutex_t hmu;
    void **emitted; /* the open inbox transactions in which svc_ctx_emit() added an event */
    size_t nemitted, cap_emitted;
    bool holding;         /* a thread holds the database (ew_inbox_ops.hold): holder */
    pthread_t holder;     /* its commits happen at its release */
    bool wake_at_release; /* and one of them emitted */
};

/* ---- logging ------------------------------------------------------------------------------- */

/* The service's own lines and the library's go through one logger (eventwire/log.h): JSON lines
 * on stderr unless LOG_FORMAT says text. */
void svc_log(svc *s, ew_log_level lv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ew_logger_printf(s->log, lv, NULL, "%s", msg);
}

/* ---- accessors ----------------------------------------------------------------------------- */

const char *svc_name(const svc *s)
{
    return s->def->name;
}
const svc_def *svc_definition(const svc *s)
{
    return s->def;
}
const ew_config *svc_config(const svc *s)
{
    return s->cfg;
}
ew_store *svc_db(svc *s)
{
    return s->db;
}
ew_bus *svc_bus(svc *s)
{
    return s->bus;
}
const char *svc_db_url(const svc *s)
{
    return s->db_url;
}

/* ---- access tokens on every route (docs/security.md) ----------------------------------------- */

/* A route that requires a token: its handler and ud, behind guarded(). */
typedef struct guard {
    struct guard *next;
    svc *s;
    ew_http_handler fn;
    void *ud;
    char *method, *tmpl; /* "GET" and "/users/{id}": the route split at its space */
} guard;

/* The caller travels with the request: the guard attaches the token's claims to it
 * (ew_http_set_data), and every question about the caller is asked of the request. With them go
 * the service and the route, for the audit entry of a refusal (svc_audit_refusal). */
typedef struct caller {
    svc_claims c; /* first: svc_caller's answer is the caller's address */
    svc *s;
    const guard *route; /* set when the route's handler runs */
} caller;

const svc_claims *svc_caller(const ew_http_request *rq)
{
    return rq ? ew_http_data(rq) : NULL;
}

void svc_audit_refusal(const ew_http_request *rq, const char *subject, const char *reason)
{
    const caller *w = rq ? ew_http_data(rq) : NULL;
    if (!w || !w->s) return;
    ew_buf d;
    ew_buf_init(&d);
    ew_buf_puts(&d, "{\"route\":");
    if (w->route && w->route->method && w->route->tmpl)
        ew_buf_printf(&d, "\"%s %s\"", w->route->method, w->route->tmpl); /* ours: no quotes */
    else
        ew_buf_puts(&d, "null");
    ew_buf_puts(&d, ",\"reason\":");
    ew_json_write_string(&d, reason, strlen(reason));
    ew_buf_putc(&d, '}');
    /* a path parameter that is no id as the services hand them out may be anything: not kept */
    if (!d.oom)
        svc_audit(w->s, rq, NULL, "http.refused", svc_uuid_valid(subject) ? subject : NULL, d.data);
    ew_buf_release(&d);
}

bool svc_caller_admin(const ew_http_request *rq)
{
    const svc_claims *c = svc_caller(rq);
    return c && c->admin;
}

bool svc_caller_may(const ew_http_request *rq, const char *user_id)
{
    const svc_claims *c = svc_caller(rq);
    return c && (c->admin || (user_id && !strcmp(c->sub, user_id)));
}

int svc_allow_user(const ew_http_request *rq, ew_http_response *res, const char *user_id)
{
    if (svc_caller_may(rq, user_id)) return 0;
    svc_audit_refusal(rq, user_id, "neither the user nor an admin");
    ew_http_reply_error(res, 403, NULL, "forbidden: only the user themselves or an admin may");
    return -1;
}

int svc_require_admin(const ew_http_request *rq, ew_http_response *res)
{
    if (svc_caller_admin(rq)) return 0;
    svc_audit_refusal(rq, NULL, "not an admin");
    ew_http_reply_error(res, 403, NULL, "forbidden: only an admin may");
    return -1;
}

const char *svc_path_user(const ew_http_request *rq, ew_http_response *res, const char *param,
                          const char *what)
{
    const char *id = ew_http_param(rq, param);
    if (svc_allow_user(rq, res, id)) return NULL;
    if (svc_uuid_valid(id)) return id;
    if (what)
        ew_http_reply_error(res, 404, NULL, "no %s %.64s", what, id ? id : "");
    else
        svc_require_uuid(res, param, id);
    return NULL;
}

static void reply_401(ew_http_response *res, const char *error, const char *why)
{
    char h[200];
    if (error)
        snprintf(h, sizeof h, "Bearer realm=\"eventwire\", error=\"%s\", error_description=\"%s\"",
                 error, why);
    else
        snprintf(h, sizeof h, "Bearer realm=\"eventwire\"");
    ew_http_header_add(res, "WWW-Authenticate", h);
    ew_http_reply_error(res, 401, NULL, "%s", why);
}

int svc_authenticate(svc *s, const ew_http_request *rq, ew_http_response *res, svc_claims *c)
{
    const char *tok = ew_http_bearer(rq);
    if (!tok) {
        const char *h = ew_http_header(rq, "Authorization");
        if (h && !strncasecmp(h, "Bearer", 6))
            reply_401(res, "invalid_request", "the Authorization header holds no bearer token");
        else
            reply_401(res, NULL, "an Authorization: Bearer <token> header is required");
        return -1;
    }
    svc_token_status st = svc_authn_check(s->authn, tok, ew_now_us() / 1000000, c);
    if (st == SVC_TOKEN_OK) return 0;
    if (st == SVC_TOKEN_NO_KEY) {
        svc_log(s, EW_LOG_ERROR, "cannot check a token: no public key in %s", s->key_dir);
        ew_http_header_add(res, "Retry-After", "2");
        ew_http_reply_error(res, 503, NULL, "tokens cannot be checked yet; try again");
        return -1;
    }
    reply_401(res, "invalid_token", svc_token_status_text(st));
    return -1;
}

static void caller_free(void *p)
{
    sodium_memzero(p, sizeof(caller));
    free(p);
}

/* The HTTP server's guard (EW_HTTP_GUARDED routes): the token is checked when the headers are
 * in, so a request without a valid one is answered 401 before its body is read or parsed. */
static void http_guard(ew_http_request *rq, ew_http_response *res, void *ud)
{
    svc *s = ud;
    caller *w = calloc(1, sizeof *w);
    if (!w) {
        ew_http_reply_error(res, 503, NULL, "out of memory");
        return;
    }
    if (svc_authenticate(s, rq, res, &w->c)) {
        caller_free(w);
        return;
    }
    w->s = s;
    ew_http_set_data(rq, w, caller_free);
}

/* The handler of a guarded route, with the caller the guard found. */
static void guarded(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    guard *g = ud;
    caller *w = ew_http_data(rq);
    if (!w) { /* never: the guard answers every request it does not pass */
        ew_http_reply_error(res, 500, NULL, "internal error");
        return;
    }
    w->route = g;
    g->fn(rq, res, g->ud);
}

int svc_route(svc *s, const char *route, unsigned flags, ew_http_handler fn, void *ud,
              ew_error *err)
{
    if (flags & SVC_PUBLIC) return ew_http_route(s->http, route, flags & ~SVC_PUBLIC, fn, ud, err);
    guard *g = calloc(1, sizeof *g);
    if (!g) return ew_error_set(err, EW_ENOMEM, "out of memory");
    const char *sp = strchr(route, ' ');
    *g = (guard){s->guards, s, fn, ud, NULL, NULL};
    if (sp &&
        (!(g->method = strndup(route, (size_t)(sp - route))) || !(g->tmpl = strdup(sp + 1)))) {
        free(g->method);
        free(g);
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    s->guards = g;
    return ew_http_route(s->http, route, flags | EW_HTTP_GUARDED, guarded, g, err);
}

const char *svc_key_dir(const svc *s)
{
    return s->key_dir;
}

int64_t svc_token_ttl(const svc *s)
{
    return s->token_ttl_s;
}

void svc_random_uuid(char out[37])
{
    unsigned char b[16];
    randombytes_buf(b, sizeof b);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant */
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
    sodium_memzero(b, sizeof b);
}

void svc_secret_new(char out[SVC_SECRET_LEN + 1])
{
    unsigned char raw[32];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(out, SVC_SECRET_LEN + 1, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
}

void svc_secret_hash(const char *secret, char out[SVC_SECRET_HASH_LEN + 1])
{
    unsigned char h[32];
    crypto_generichash(h, sizeof h, (const unsigned char *)secret, strlen(secret), NULL, 0);
    sodium_bin2hex(out, SVC_SECRET_HASH_LEN + 1, h, sizeof h);
}

void svc_revoke(svc *s, const char *user_id, const char *session_id, int64_t not_before_ms)
{
    svc_authn_revoke(s->authn, user_id, session_id, not_before_ms,
                     s->token_ttl_s + SVC_TOKEN_LEEWAY_S);
}

/* user.tokens_revoked: remembered in memory, where every request looks, and in the service's
 * database, so that a restart within a token's lifetime remembers it too. Of two revocations of
 * one key the later not_before_ms stays, whichever arrives last (a redelivered or retried old one
 * must not make tokens valid again). */
static ew_handler_result on_tokens_revoked(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    svc *s = ud;
    const ew_user_tokens_revoked *d = ew_user_tokens_revoked_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    svc_authn_revoke(s->authn, d->user_id, d->session_id, d->not_before_ms,
                     s->token_ttl_s + SVC_TOKEN_LEEWAY_S);
    char key[80], nb[24], nb_ms[24], cutoff[24];
    snprintf(key, sizeof key, "%s/%s", d->user_id, d->session_id ? d->session_id : "");
    /* not_before: the second after not_before_ms, for the clean-up below */
    snprintf(nb, sizeof nb, "%lld", (long long)(d->not_before_ms / 1000 + 1));
    snprintf(nb_ms, sizeof nb_ms, "%lld", (long long)d->not_before_ms);
    /* what can refuse nothing any more (every token it could refuse has expired) goes */
    snprintf(cutoff, sizeof cutoff, "%lld",
             (long long)(ew_now_us() / 1000000 - s->token_ttl_s - SVC_TOKEN_LEEWAY_S));
    const char *p[] = {key, d->user_id, d->session_id, nb, nb_ms}, *old[] = {cutoff};
    ew_error e = {0};
    ew_txn *t = ew_ctx_txn(ctx);
    if (ew_txn_exec(t, "DELETE FROM event_store.svc_token_revocations WHERE not_before < $1", old,
                    1, NULL, &e) ||
        ew_txn_exec(t,
                    "INSERT INTO event_store.svc_token_revocations AS r (rkey, user_id, "
                    "session_id, not_before, not_before_ms) VALUES ($1, $2, $3, $4, $5) "
                    "ON CONFLICT (rkey) DO UPDATE SET not_before = excluded.not_before, "
                    "not_before_ms = excluded.not_before_ms "
                    "WHERE COALESCE(r.not_before_ms, r.not_before * 1000) < excluded.not_before_ms",
                    p, 5, NULL, &e))
        return svc_retry(s, ctx, "recording a token revocation", &e);
    return EW_HANDLER_OK;
}

static int keep_revocation(void *ud, const ew_row *r)
{
    svc *s = ud;
    if (r->ncols < 3 || !r->values[0] || !r->values[2]) return 0;
    svc_authn_revoke(s->authn, r->values[0], r->values[1], strtoll(r->values[2], NULL, 10),
                     s->token_ttl_s + SVC_TOKEN_LEEWAY_S);
    return 0;
}

/* ---- the audit chain ----------------------------------------------------------------------- */

static void audit_evauth(svc *s, ew_evauth_notice_kind kind, const ew_event *ev,
                         const char *detail);

/* The chain in the service's database, signed with KEY_DIR/NAME.audit.key (made at first
 * start, 0600). */
static int audit_open(svc *s, ew_error *err)
{
    ew_buf path;
    ew_buf_init(&path);
    ew_buf_printf(&path, "%s/%s.audit.key", s->key_dir, s->def->name);
    int rc = path.oom ? ew_error_set(err, EW_ENOMEM, "out of memory")
                      : ew_audit_open(&s->audit, s->db, s->def->name, path.data, err);
    ew_buf_release(&path);
    if (!rc && s->early_kind) audit_evauth(s, s->early_kind, NULL, s->early_kid);
    return rc;
}

/* What the bus's authentication tells (eventwire/evauth.h) goes to the chain: keys made and
 * rotated, publishes, subscriptions and received events refused (with the reason; an event by
 * its id, type and claimed source, never its data). */
static void audit_evauth(svc *s, ew_evauth_notice_kind kind, const ew_event *ev, const char *detail)
{
    const char *action = kind == EW_EVAUTH_KEY_MADE          ? "bus.key_made"
                         : kind == EW_EVAUTH_KEY_ROTATED     ? "bus.key_rotated"
                         : kind == EW_EVAUTH_PUBLISH_REFUSED ? "bus.publish_refused"
                         : kind == EW_EVAUTH_RECEIVE_REFUSED ? "bus.event_refused"
                                                             : "bus.subscribe_refused";
    if (kind == EW_EVAUTH_KEY_MADE || kind == EW_EVAUTH_KEY_ROTATED)
        svc_log(s, EW_LOG_INFO, "%s: bus key %s", action + 4, detail);
    if (!s->audit) {
        if (kind == EW_EVAUTH_KEY_MADE || kind == EW_EVAUTH_KEY_ROTATED) {
            s->early_kind = kind;
            snprintf(s->early_kid, sizeof s->early_kid, "%s", detail);
        }
        return;
    }
    char actor[160];
    ew_buf d;
    ew_buf_init(&d);
    if (kind == EW_EVAUTH_KEY_MADE || kind == EW_EVAUTH_KEY_ROTATED) {
        snprintf(actor, sizeof actor, "service:%s", s->def->name);
        ew_buf_puts(&d, "{\"kid\":");
        ew_json_write_string(&d, detail, strlen(detail));
    } else {
        if (kind == EW_EVAUTH_RECEIVE_REFUSED && ev)
            snprintf(actor, sizeof actor, "unverified:%.100s", ew_event_source(ev));
        else
            snprintf(actor, sizeof actor, "service:%s", s->def->name);
        ew_buf_puts(&d, "{\"reason\":");
        ew_json_write_string(&d, detail, strlen(detail));
        if (ev) {
            ew_buf_puts(&d, ",\"type\":");
            ew_json_write_string(&d, ew_event_type(ev), strlen(ew_event_type(ev)));
        }
    }
    ew_buf_putc(&d, '}');
    if (!d.oom) svc_audit(s, NULL, actor, action, ev ? ew_event_id(ev) : NULL, d.data);
    ew_buf_release(&d);
}

static void on_evauth(void *ud, ew_evauth_notice_kind kind, const ew_event *ev, const char *detail)
{
    audit_evauth(ud, kind, ev, detail);
}

void svc_audit(svc *s, const ew_http_request *rq, const char *actor, const char *action,
               const char *subject, const char *details)
{
    char who[64];
    if (!actor) {
        const svc_claims *c = svc_caller(rq);
        if (c)
            snprintf(who, sizeof who, "user:%s", c->sub);
        else
            snprintf(who, sizeof who, "anonymous");
        actor = who;
    }
    ew_error e = {0};
    if (ew_audit_append(s->audit, actor, action, subject, details, NULL, &e))
        svc_log(s, EW_LOG_ERROR, "audit: %s by %s not recorded: %s", action, actor, e.msg);
}

int svc_audit_in(svc *s, ew_txn *t, const char *actor, const char *action, const char *subject,
                 const char *details, ew_error *err)
{
    char who[160];
    if (!actor) {
        snprintf(who, sizeof who, "service:%s", s->def->name);
        actor = who;
    }
    return ew_audit_append_in(s->audit, t, actor, action, subject, details, NULL, err);
}

/* The token checker, the revocations still in force, and their handler. */
static int authn_start(svc *s, ew_error *err)
{
    const ew_config *c = s->cfg;
    s->token_ttl_s = ew_config_get_int(c, "AUTH_TOKEN_TTL_SECONDS");
    const char *dir = ew_config_get(c, "AUTH_KEY_DIR");
    const char *store = ew_config_get(c, "EVENT_STORE_URL");
    if (dir && *dir) {
        s->key_dir = strdup(dir);
    } else if (!strncmp(store, "sqlite:", 7)) {
        const char *path = store + 7, *slash = strrchr(path, '/');
        ew_buf b;
        ew_buf_init(&b);
        if (slash) ew_buf_append(&b, path, (size_t)(slash - path) + 1);
        ew_buf_puts(&b, "keys");
        s->key_dir = ew_buf_steal(&b, NULL);
    } else {
        s->key_dir = strdup("var/keys");
    }
    if (!s->key_dir) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = svc_authn_new(&s->authn, s->key_dir,
                           (size_t)ew_config_get_int(c, "AUTH_TOKEN_CACHE_SIZE"), err);
    if (rc) return rc;
    char cutoff[24];
    snprintf(cutoff, sizeof cutoff, "%lld",
             (long long)(ew_now_us() / 1000000 - s->token_ttl_s - SVC_TOKEN_LEEWAY_S));
    const char *p[] = {cutoff};
    ew_txn *t;
    if ((rc = ew_store_begin(s->db, &t, err))) return rc;
    rc = ew_txn_exec(t, "DELETE FROM event_store.svc_token_revocations WHERE not_before < $1", p, 1,
                     NULL, err);
    if (!rc)
        rc = ew_txn_query(t,
                          "SELECT user_id, session_id, COALESCE(not_before_ms, not_before * 1000) "
                          "FROM event_store.svc_token_revocations",
                          NULL, 0, keep_revocation, s, err);
    if (rc)
        ew_txn_rollback(t);
    else
        rc = ew_txn_commit(t, err);
    if (!rc) rc = svc_subscribe(s, "user.tokens_revoked", on_tokens_revoked, s, err);
    return rc;
}

static void authn_stop(svc *s)
{
    svc_authn_free(s->authn);
    s->authn = NULL;
    free(s->key_dir);
    s->key_dir = NULL;
    while (s->guards) {
        guard *g = s->guards;
        s->guards = g->next;
        free(g->method);
        free(g->tmpl);
        free(g);
    }
}

/* ---- erased users ----------------------------------------------------------------------------
 *
 * Every handler a service subscribes runs behind a check: an event about a user whose data the
 * service erased (its tombstone in svc_erased_users, written by the deletion in svc_gdpr.c), or
 * one whose personal fields could not be decrypted because the user's key is destroyed
 * (ew_event_erased), is acknowledged without running the handler, so that a replay or a dead
 * letter retry of the user's old events re-creates nothing. The GDPR machinery itself and token
 * revocations still run for them. */

typedef struct svc_sub {
    svc *s;
    ew_handler_fn fn;
    void *ud;
    struct svc_sub *next;
} svc_sub;

static bool runs_for_erased(ew_type_id t)
{
    return t == EW_T_USER_DELETION_REQUESTED || t == EW_T_USER_DATA_DELETED ||
           t == EW_T_USER_DELETION_COMPLETED || t == EW_T_USER_DELETION_FAILED ||
           t == EW_T_USER_TOKENS_REVOKED;
}

const char *svc_event_user(const ew_event *ev)
{
    const ew_type_info *ti = ew_event_info(ev);
    const ew_field_info *f = ti ? ew_type_field(ti, "user_id") : NULL;
    if (!f || f->kind != EW_FIELD_UUID) return NULL;
    const char *data = ew_event_data_as(ev, ti->id);
    if (!data) return NULL;
    const char *v;
    memcpy(&v, data + f->offset, sizeof v);
    return v && *v ? v : NULL;
}

static int found_row(void *ud, const ew_row *row)
{
    (void)row;
    *(bool *)ud = true;
    return 1;
}

static ew_handler_result erasure_guard(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    svc_sub *w = ud;
    if (w->s->def->runs_for_erased_users || runs_for_erased(ew_event_type_id(ev)))
        return w->fn(ev, ctx, w->ud);
    const char *user = svc_event_user(ev);
    bool erased = ew_event_erased(ev);
    ew_txn *t = ew_ctx_txn(ctx);
    if (!erased && user && t) {
        const char *p[] = {user};
        ew_error e = {0};
        if (ew_txn_query(t, "SELECT 1 FROM event_store.svc_erased_users WHERE user_id = $1", p, 1,
                         found_row, &erased, &e))
            return svc_retry(w->s, ctx, "looking for the user's tombstone", &e);
    }
    if (erased) {
        svc_log(w->s, EW_LOG_INFO, "%s %s: user %s was erased: nothing done", ew_event_type(ev),
                ew_event_id(ev), user ? user : "-");
        return EW_HANDLER_OK;
    }
    return w->fn(ev, ctx, w->ud);
}

int svc_subscribe(svc *s, const char *pattern, ew_handler_fn fn, void *ud, ew_error *err)
{
    svc_sub *w = malloc(sizeof *w);
    if (!w) return ew_error_set(err, EW_ENOMEM, "out of memory");
    *w = (svc_sub){s, fn, ud, s->subs};
    s->subs = w;
    ew_subscribe_opts o = {.group = s->def->name, .name = pattern};
    return ew_bus_subscribe(s->bus, pattern, erasure_guard, w, &o, err);
}

int svc_route_all(svc *s, const svc_http_route *routes, size_t n, void *ud, ew_error *err)
{
    for (size_t i = 0; i < n; i++) {
        int rc = svc_route(s, routes[i].route, routes[i].flags, routes[i].fn, ud, err);
        if (rc) return rc;
    }
    return 0;
}

int svc_subscribe_all(svc *s, const svc_handler *subs, size_t n, void *ud, ew_error *err)
{
    for (size_t i = 0; i < n; i++) {
        int rc = svc_subscribe(s, subs[i].pattern, subs[i].fn, ud, err);
        if (rc) return rc;
    }
    return 0;
}

/* ---- the relay ----------------------------------------------------------------------------- */

static void relay_wake(svc *s)
{
    pthread_mutex_lock(&s->mu);
    s->wake = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static int relay_publish(void *ud, const ew_event *const *evs, size_t n, ew_error *err)
{
    svc *s = ud;
    return ew_bus_publish_batch(s->bus, evs, n, err);
}

/* Publishes everything unsent; 0, or the error of the pass that failed. *total: how many. */
static int relay_pass(svc *s, size_t *total, ew_error *err)
{
    *total = 0;
    for (;;) {
        size_t sent = 0;
        int rc = ew_store_outbox_relay(s->db, RELAY_BATCH, relay_publish, s, &sent, err);
        *total += sent;
        if (rc) return rc;
        if (sent < RELAY_BATCH) return 0;
    }
}

static void *relay_main(void *p)
{
    svc *s = p;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (!s->wake && !s->stop) {
            struct timespec dl = ew__mono_deadline(s->poll_ms);
            while (!s->wake && !s->stop)
                if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) == ETIMEDOUT) break;
        }
        int stopping = s->stop;
        s->wake = 0;
        s->passes_begun++;
        pthread_mutex_unlock(&s->mu);
        ew_error e = {0};
        size_t sent = 0;
        int rc = relay_pass(s, &sent, &e);
        pthread_mutex_lock(&s->mu);
        s->passes_ended++;
        s->last_sent = sent;
        pthread_cond_broadcast(&s->passed);
        if (rc) {
            if (strcmp(s->relay_error, e.msg))
                svc_log(s, EW_LOG_WARN, "outbox relay: %s (trying again every %lld ms)", e.msg,
                        (long long)s->poll_ms);
            snprintf(s->relay_error, sizeof s->relay_error, "%s", e.msg);
        } else if (s->relay_error[0]) {
            svc_log(s, EW_LOG_INFO, "outbox relay: publishing again");
            s->relay_error[0] = '\0';
        }
        if (stopping) break;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Wakes the relay and waits for a pass that began after the call: 0 and *sent, EW_ETIMEDOUT at
 * the deadline, or the pass's error (EW_ESTATE when the relay does not run). */
static int relay_kick(svc *s, struct timespec deadline, size_t *sent, ew_error *err)
{
    pthread_mutex_lock(&s->mu);
    if (!s->relay_started || s->stop) {
        pthread_mutex_unlock(&s->mu);
        return ew_error_set(err, EW_ESTATE, "the outbox relay does not run");
    }
    uint64_t want = s->passes_begun + 1;
    s->wake = 1;
    pthread_cond_signal(&s->cv);
    int rc = 0;
    while (s->passes_ended < want && rc == 0)
        rc = pthread_cond_timedwait(&s->passed, &s->mu, &deadline);
    if (s->passes_ended >= want) {
        *sent = s->last_sent;
        rc = s->relay_error[0] ? ew_error_set(err, EW_EIO, "outbox relay: %s", s->relay_error) : 0;
    } else {
        rc = ew_error_set(err, EW_ETIMEDOUT, "the outbox relay did not finish a pass in time");
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int relay_start(svc *s, ew_error *err)
{
    int rc = pthread_create(&s->relay, NULL, relay_main, s);
    if (rc) return ew_error_set(err, EW_ENOMEM, "cannot start the outbox relay: %s", strerror(rc));
    s->relay_started = 1;
    return 0;
}

/* Makes the relay do one last pass and end. */
static void relay_stop(svc *s)
{
    if (!s->relay_started) return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->relay, NULL);
    s->relay_started = 0;
}

/* ---- the inbox: the database's, and a wake-up of the relay after commits that emitted -----
 *
 * The dispatcher hands the inbox's transaction to the handler (ew_ctx_txn) and then to commit()
 * or rollback(): the transaction is what links an emit to its commit. svc_ctx_emit() notes it in
 * s->emitted; commit() takes it out and wakes the relay once the commit is done -- at the release
 * when the committing thread holds the database (a batch of deliveries, ew_inbox_ops.hold): its
 * commit happens there, and a relay woken earlier would only commit it early. */

static bool emitted_find(svc *s, void *txn, size_t *at)
{
    for (size_t i = 0; i < s->nemitted; i++)
        if (s->emitted[i] == txn) {
            *at = i;
            return true;
        }
    return false;
}

static int emitted_add(svc *s, void *txn, ew_error *err)
{
    pthread_mutex_lock(&s->hmu);
    size_t at;
    int rc = 0;
    if (!emitted_find(s, txn, &at)) {
        if (s->nemitted == s->cap_emitted) {
            size_t cap = s->cap_emitted ? s->cap_emitted * 2 : 8;
            void **p = realloc(s->emitted, cap * sizeof *p);
            if (p) {
                s->emitted = p;
                s->cap_emitted = cap;
            }
        }
        if (s->nemitted < s->cap_emitted)
            s->emitted[s->nemitted++] = txn;
        else
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    pthread_mutex_unlock(&s->hmu);
    return rc;
}

/* Whether an event was emitted in txn; forgets it. */
static bool emitted_take(svc *s, void *txn)
{
    pthread_mutex_lock(&s->hmu);
    size_t at;
    bool found = emitted_find(s, txn, &at);
    if (found) s->emitted[at] = s->emitted[--s->nemitted];
    pthread_mutex_unlock(&s->hmu);
    return found;
}

static int ib_begin(void *self, const char *handler, const char *event_id, void **txn,
                    ew_error *err)
{
    svc *s = self;
    return s->inner.ops->begin(s->inner.self, handler, event_id, txn, err);
}

static int ib_commit(void *self, const char *handler, const char *event_id, void *txn,
                     ew_error *err)
{
    svc *s = self;
    bool emitted = emitted_take(s, txn);
    int rc = s->inner.ops->commit(s->inner.self, handler, event_id, txn, err);
    if (rc || !emitted) return rc;
    pthread_mutex_lock(&s->hmu);
    bool later = s->holding && pthread_equal(s->holder, pthread_self());
    if (later) s->wake_at_release = true; /* committed at the release */
    pthread_mutex_unlock(&s->hmu);
    if (!later) relay_wake(s);
    return 0;
}

static void ib_rollback(void *self, void *txn)
{
    svc *s = self;
    emitted_take(s, txn);
    s->inner.ops->rollback(s->inner.self, txn);
}

static int ib_hold(void *self, ew_error *err)
{
    svc *s = self;
    int rc = s->inner.ops->hold(s->inner.self, err);
    if (rc == 0) { /* one holder per handle: the store refuses a second */
        pthread_mutex_lock(&s->hmu);
        s->holding = true;
        s->holder = pthread_self();
        s->wake_at_release = false;
        pthread_mutex_unlock(&s->hmu);
    }
    return rc;
}

static int ib_release(void *self, ew_error *err)
{
    svc *s = self;
    int rc = s->inner.ops->release(s->inner.self, err);
    pthread_mutex_lock(&s->hmu);
    bool mine = s->holding && pthread_equal(s->holder, pthread_self());
    bool wake = mine && s->wake_at_release;
    if (mine) s->holding = s->wake_at_release = false;
    pthread_mutex_unlock(&s->hmu);
    if (wake) relay_wake(s); /* also after a failure: what did commit is worth sending */
    return rc;
}

static const ew_inbox_ops svc_inbox_ops = {2,           ib_begin, ib_commit,
                                           ib_rollback, ib_hold,  ib_release};

/* ---- the outbox ---------------------------------------------------------------------------- */

int svc_begin(svc *s, ew_txn **t, ew_error *err)
{
    return ew_store_begin(s->db, t, err);
}

static int emit(ew_txn *t, ew_type_id type, const void *data, const ew_event_attrs *a,
                ew_error *err)
{
    ew_event *ev;
    int rc = ew_event_new(&ev, type, data, a, err);
    if (rc) return rc;
    rc = ew_outbox_add(t, ev, err);
    ew_event_unref(ev);
    return rc;
}

static int count_row(void *ud, const ew_row *row)
{
    *(long long *)ud = row->ncols && row->values[0] ? atoll(row->values[0]) : 0;
    return 0;
}

int svc_outbox_room(svc *s, ew_txn *t, ew_error *err)
{
    if (s->outbox_max <= 0) return 0;
    /* counts no further than the bound: the unsent rows have an index of their own */
    char sql[200];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM (SELECT 1 FROM event_store.outbox WHERE sent_at IS NULL "
             "LIMIT %lld) AS pending",
             (long long)s->outbox_max);
    long long n = 0;
    int rc = ew_txn_query(t, sql, NULL, 0, count_row, &n, err);
    if (rc) return rc;
    if (n < s->outbox_max) return 0;
    return ew_error_set(err, EW_EAGAIN,
                        "the outbox holds %lld events not yet published (OUTBOX_MAX_PENDING): "
                        "the bus is down or slow",
                        n);
}

int svc_emit(svc *s, const ew_http_request *rq, ew_txn *t, ew_type_id type, const void *data,
             const char *subject, ew_error *err)
{
    if (rq) {
        int rc = svc_outbox_room(s, t, err);
        if (rc) return rc;
    }
    ew_event_attrs a = {.source = s->def->name,
                        .subject = subject,
                        .traceparent = rq ? ew_http_traceparent(rq) : NULL};
    return emit(t, type, data, &a, err);
}

int svc_commit(svc *s, ew_txn *t, ew_error *err)
{
    int rc = ew_txn_commit(t, err);
    if (!rc) relay_wake(s);
    return rc;
}

int svc_finish(svc *s, ew_txn *t, int rc, ew_error *err)
{
    if (!rc) return svc_commit(s, t, err);
    ew_txn_rollback(t);
    return rc;
}

int svc_ctx_emit(svc *s, ew_handler_ctx *ctx, ew_type_id type, const void *data,
                 const char *subject, ew_error *err)
{
    ew_txn *t = ew_ctx_txn(ctx);
    if (!t) return ew_error_set(err, EW_ESTATE, "the handler has no inbox transaction");
    ew_event_attrs a;
    ew_ctx_follow_up_attrs(ctx, &a);
    a.source = s->def->name;
    a.subject = subject;
    int rc = emit(t, type, data, &a, err);
    if (!rc) rc = emitted_add(s, t, err);
    return rc;
}

/* ---- in event handlers --------------------------------------------------------------------- */

ew_handler_result svc_retry(svc *s, ew_handler_ctx *ctx, const char *what, const ew_error *err)
{
    ew_ctx_set_error(ctx, "%s: %s", what, err->msg[0] ? err->msg : ew_strerror(err->code));
    svc_log(s, EW_LOG_WARN, "%s: %s (will retry)", what, err->msg);
    return EW_HANDLER_RETRY;
}

ew_handler_result svc_failed(svc *s, ew_handler_ctx *ctx, const char *what, const ew_error *err)
{
    (void)s;
    ew_ctx_set_error(ctx, "%s: %s", what, err->msg);
    return ew_err_retriable(err->code) ? EW_HANDLER_RETRY : EW_HANDLER_FAIL;
}

ew_handler_result svc_not_mine(ew_handler_ctx *ctx, const ew_event *ev)
{
    ew_ctx_set_error(ctx, "unexpected event type %s", ew_event_type(ev));
    return EW_HANDLER_FAIL;
}

ew_handler_result svc_ctx_emit_or_retry(svc *s, ew_handler_ctx *ctx, ew_type_id type,
                                        const void *data, const char *subject)
{
    ew_error e = {0};
    if (svc_ctx_emit(s, ctx, type, data, subject, &e))
        return svc_retry(s, ctx, "emitting an event", &e);
    return EW_HANDLER_OK;
}

/* ---- rows ---------------------------------------------------------------------------------- */

static int keep_first_row(void *ud, const ew_row *r)
{
    svc_row *row = ud;
    row->found = true;
    row->n = r->ncols < SVC_ROW_MAX ? r->ncols : SVC_ROW_MAX;
    for (size_t i = 0; i < row->n; i++)
        if (r->values[i] && !(row->v[i] = strdup(r->values[i]))) return -1;
    return 1;
}

int svc_query_row(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                  svc_row *row, ew_error *err)
{
    memset(row, 0, sizeof *row);
    int rc = ew_txn_query(t, sql, params, nparams, keep_first_row, row, err);
    if (rc) svc_row_free(row);
    return rc;
}

void svc_row_free(svc_row *row)
{
    for (size_t i = 0; i < SVC_ROW_MAX; i++) {
        free(row->v[i]);
        row->v[i] = NULL;
    }
    row->found = false;
    row->n = 0;
}

void svc_reply_failure(svc *s, ew_http_response *res, const char *what, const ew_error *err)
{
    int code = err ? err->code : 0;
    svc_log(s, EW_LOG_ERROR, "%s: %s", what, err && err->msg[0] ? err->msg : ew_strerror(code));
    if (code == EW_ECONNECT || code == EW_ETIMEDOUT || code == EW_EAGAIN) {
        ew_http_header_add(res, "Retry-After", SVC_RETRY_AFTER_S);
        ew_http_reply_error(res, 503, NULL, "%s: the service is unavailable; try again later",
                            what);
    } else
        ew_http_reply_error(res, 500, NULL, "%s: internal error (see the service's log)", what);
}

void svc_reply_too_many(ew_http_response *res, int64_t wait_s, const char *what)
{
    char v[24];
    snprintf(v, sizeof v, "%lld", (long long)(wait_s > 0 ? wait_s : 1));
    ew_http_header_add(res, "Retry-After", v);
    ew_http_reply_error(res, 429, NULL, "too many %s; try again in %s s", what, v);
}

/* ---- health -------------------------------------------------------------------------------- */

static int health(void *ud, char *why, size_t n)
{
    svc *s = ud;
    pthread_mutex_lock(&s->mu);
    int bad = s->relay_error[0] != '\0';
    if (bad) snprintf(why, n, "outbox relay: %s", s->relay_error);
    pthread_mutex_unlock(&s->mu);
    return bad;
}

/* ---- start and stop ------------------------------------------------------------------------ */

static char *expand_name(const char *url, const char *name)
{
    ew_buf b;
    ew_buf_init(&b);
    static const char key[] = "{SERVICE_NAME}";
    for (const char *p = url; *p;) {
        const char *k = strstr(p, key);
        if (!k) {
            ew_buf_puts(&b, p);
            break;
        }
        ew_buf_append(&b, p, (size_t)(k - p));
        ew_buf_puts(&b, name);
        p = k + sizeof key - 1;
    }
    return ew_buf_steal(&b, NULL);
}

static int count_of(void *ud, const ew_row *r)
{
    *(long long *)ud = r->ncols && r->values[0] ? strtoll(r->values[0], NULL, 10) : 0;
    return 0;
}

/* Runs a statement of a schema (svc_def.schema). "ALTER TABLE event_store.T ADD COLUMN IF NOT
 * EXISTS C ..." runs as it is on PostgreSQL; SQLite has no such guard, so the column is looked up
 * first and added without it when missing. */
static int schema_exec(svc *s, ew_txn *t, const char *sql, ew_error *err)
{
    static const char alter[] = "ALTER TABLE event_store.", add[] = " ADD COLUMN IF NOT EXISTS ";
    const char *tab = sql + sizeof alter - 1, *tab_end = strchr(tab, ' ');
    if (strncmp(sql, alter, sizeof alter - 1) || !tab_end ||
        strncmp(tab_end, add, sizeof add - 1) || strcmp(ew_store_backend(s->db), "sqlite"))
        return ew_txn_exec(t, sql, NULL, 0, NULL, err);
    const char *col = tab_end + sizeof add - 1, *col_end = strchr(col, ' ');
    char table[64], column[64];
    snprintf(table, sizeof table, "%.*s", (int)(tab_end - tab), tab);
    snprintf(column, sizeof column, "%.*s", col_end ? (int)(col_end - col) : (int)strlen(col), col);
    const char *p[] = {table, column};
    long long n = 0;
    int rc = ew_txn_query(t,
                          "SELECT count(*) FROM pragma_table_info($1, 'event_store') "
                          "WHERE name = $2",
                          p, 2, count_of, &n, err);
    if (rc || n) return rc;
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_append(&b, sql, (size_t)(tab_end - sql));
    ew_buf_puts(&b, " ADD COLUMN ");
    ew_buf_puts(&b, col);
    rc = b.oom ? ew_error_set(err, EW_ENOMEM, "out of memory")
               : ew_txn_exec(t, b.data, NULL, 0, NULL, err);
    ew_buf_release(&b);
    return rc;
}

static int create_schema(svc *s, ew_error *err)
{
    ew_txn *t;
    int rc = ew_store_begin(s->db, &t, err);
    if (rc) return rc;
    /* the runtime's own: the token revocations this service was told of (not_before_ms: added
     * when revocations became milliseconds; not_before, the second after it, is kept for the
     * clean-up), and the users whose data it erased (their tombstones: only the id, and when) */
    static const char *const own[] = {
        "CREATE TABLE IF NOT EXISTS event_store.svc_token_revocations ("
        " rkey TEXT PRIMARY KEY, user_id TEXT NOT NULL, session_id TEXT,"
        " not_before BIGINT NOT NULL)",
        "ALTER TABLE event_store.svc_token_revocations ADD COLUMN IF NOT EXISTS not_before_ms "
        "BIGINT",
        "CREATE TABLE IF NOT EXISTS event_store.svc_erased_users ("
        " user_id TEXT PRIMARY KEY, erased_at BIGINT NOT NULL)",
        NULL,
    };
    for (const char *const *sql = own; !rc && *sql; sql++)
        rc = schema_exec(s, t, *sql, err);
    for (const char *const *sql = s->def->schema; !rc && sql && *sql; sql++)
        rc = schema_exec(s, t, *sql, err);
    if (rc) {
        ew_txn_rollback(t);
        return rc;
    }
    return ew_txn_commit(t, err);
}

/* Whether cfg knows the setting name. */
static bool known_setting(const ew_config *cfg, const char *name)
{
    for (int i = 0; ew_config_setting(cfg, i); i++)
        if (!strcmp(ew_config_setting(cfg, i)->name, name)) return true;
    return false;
}

/* Sets the "NAME=value" entries of settings that cfg knows, in order, as ew_config_from_env()
 * sets those the environment holds. */
static int set_given(ew_config *cfg, const char *const *settings, ew_error *err)
{
    for (size_t i = 0; settings[i]; i++) {
        const char *eq = strchr(settings[i], '=');
        char name[128];
        if (!eq || eq == settings[i] || (size_t)(eq - settings[i]) >= sizeof name)
            return ew_error_set(err, EW_EINVAL, "'%.64s' is not NAME=value", settings[i]);
        memcpy(name, settings[i], (size_t)(eq - settings[i]));
        name[eq - settings[i]] = '\0';
        if (!known_setting(cfg, name)) continue;
        int rc = ew_config_set(cfg, name, eq + 1, err);
        if (rc) return rc;
    }
    return 0;
}

/* HTTP_CORS_ORIGINS: "*", or origins as a browser sends them: scheme://host[:port], no path. */
static int check_origins(const char *list, ew_error *err)
{
    if (!list) return 0;
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && p[m - 1] == ' ')
            m--;
        if (m && !(m == 1 && *p == '*')) {
            size_t scheme = !strncmp(p, "https://", 8) ? 8 : !strncmp(p, "http://", 7) ? 7 : 0;
            if (!scheme || m == scheme || memchr(p + scheme, '/', m - scheme))
                return ew_error_set(err, EW_ECONFIG,
                                    "HTTP_CORS_ORIGINS: '%.*s' is not an origin "
                                    "(scheme://host[:port], as in https://app.example.com, or *)",
                                    (int)(m > 100 ? 100 : m), p);
        }
        p += n;
    }
    return 0;
}

/* The settings: the library's, every service's and this one's, from the environment, or (settings
 * not NULL) from settings instead. */
/* Every store the service opens (its own database, the event store, the saga engine's) keeps its
 * data keys in the deployment's one key store, and under its one key-encryption key: both are
 * fixed here, beside EVENT_STORE_URL's file, unless set. Left to each store, a database
 * elsewhere (PostgreSQL, another folder) would make keys nobody else reads. */
static int pin_key_store(ew_config *cfg, ew_error *err)
{
    char url[4096];
    const char *ks = ew_config_get(cfg, "KEY_STORE_URL");
    int rc = 0;
    if (!ks || !*ks) {
        if (!ew_keys_default_url(cfg, url, sizeof url))
            return ew_error_set(err, EW_ECONFIG, "KEY_STORE_URL: the path is too long");
        if ((rc = ew_config_set(cfg, "KEY_STORE_URL", url, err))) return rc;
        ks = ew_config_get(cfg, "KEY_STORE_URL");
    }
    const char *kf = ew_config_get(cfg, "EVENT_ENCRYPTION_KEY_FILE");
    if ((!kf || !*kf) && !strncmp(ks, "sqlite:", 7)) {
        const char *path = ks + 7, *slash = strrchr(path, '/');
        snprintf(url, sizeof url, "%.*seventwire.kek", slash ? (int)(slash - path + 1) : 0, path);
        rc = ew_config_set(cfg, "EVENT_ENCRYPTION_KEY_FILE", url, err);
    }
    return rc;
}

static int configure(svc *s, const char *const *settings, ew_error *err)
{
    int rc = ew_config_new(&s->cfg, err);
    if (!rc) rc = svc_settings_define(s->cfg, s->def->name, err);
    if (!rc) rc = settings ? set_given(s->cfg, settings, err) : ew_config_from_env(s->cfg, err);
    if (!rc) rc = ew_config_set(s->cfg, "SERVICE_NAME", s->def->name, err);
    if (!rc) ew_logger_configure(s->log, s->cfg);
    if (!rc && !settings && !getenv("HTTP_PORT") && s->def->default_port > 0) {
        char port[16];
        snprintf(port, sizeof port, "%d", s->def->default_port);
        rc = ew_config_set(s->cfg, "HTTP_PORT", port, err);
    }
    if (!rc) rc = pin_key_store(s->cfg, err);
    if (rc) return rc;
    if ((rc = check_origins(ew_config_get(s->cfg, "HTTP_CORS_ORIGINS"), err))) return rc;
    s->poll_ms = ew_config_get_int(s->cfg, "OUTBOX_POLL_MS");
    s->outbox_max = ew_config_get_int(s->cfg, "OUTBOX_MAX_PENDING");
    s->db_url = expand_name(ew_config_get(s->cfg, "SERVICE_DB_URL"), s->def->name);
    if (!s->db_url) return ew_error_set(err, EW_ENOMEM, "out of memory");
    return 0;
}

/* A store at url (NULL: EVENT_STORE_URL); a failure names the setting and its URL, without
 * the password. */
static int open_store(svc *s, ew_store **out, const char *setting, const char *url, ew_error *err)
{
    ew_store_options o = {.config = s->cfg, .url = url, .log = ew_logger_sink, .log_ud = s->log};
    int rc = ew_store_open(out, &o, err);
    if (rc) {
        char m[sizeof err->msg], shown[256];
        snprintf(m, sizeof m, "%s", err->msg);
        ew_url_redact(url ? url : ew_config_get(s->cfg, setting), shown, sizeof shown);
        return ew_error_set(err, rc, "%s %s: %s", setting, shown, m);
    }
    return 0;
}

static int open_all(svc *s, const char *const *settings, ew_error *err)
{
    int rc = configure(s, settings, err);
    if (rc) return rc;
    if ((rc = open_store(s, &s->db, "SERVICE_DB_URL", s->db_url, err))) return rc;
    if ((rc = create_schema(s, err))) return rc;
    if ((rc = open_store(s, &s->events, "EVENT_STORE_URL", NULL, err))) return rc;
    s->inner = ew_store_inbox(s->db);
    const char *otlp = ew_config_get(s->cfg, "OTEL_EXPORTER_OTLP_ENDPOINT");
    if (otlp && *otlp &&
        (rc = ew_otlp_new(&s->otlp,
                          &(ew_otlp_options){.endpoint = otlp,
                                             .service_name = s->def->name,
                                             .log = ew_logger_sink,
                                             .log_ud = s->log},
                          err)))
        return rc;
    if (strcmp(ew_config_get(s->cfg, "EVENT_AUTH"), "off") != 0) {
        ew_evauth_options ao = {
            .config = s->cfg, .service = s->def->name, .notice = on_evauth, .notice_ud = s};
        if ((rc = ew_evauth_open(&s->evauth, &ao, err))) return rc;
    }
    ew_bus_options bo = {.auth = s->evauth,
                         .config = s->cfg,
                         .span = s->otlp ? ew_otlp_span : NULL,
                         .span_ud = s->otlp,
                         .log = ew_logger_sink,
                         .log_ud = s->log,
                         .dlq = ew_store_dlq_sink(s->events),
                         .inbox = {&svc_inbox_ops, s}};
    if ((rc = ew_bus_open(&s->bus, &bo, err))) return rc;
    if ((rc = authn_start(s, err))) return rc;
    if ((rc = audit_open(s, err))) return rc;
    ew_http_options ho = {
        .addr = ew_config_get(s->cfg, "HTTP_ADDR"),
        .port = (int)ew_config_get_int(s->cfg, "HTTP_PORT"),
        .max_body_bytes = (size_t)ew_config_get_int(s->cfg, "HTTP_MAX_BODY_BYTES"),
        .max_connections = (unsigned)ew_config_get_int(s->cfg, "HTTP_MAX_CONNECTIONS"),
        .max_connections_per_addr =
            (unsigned)ew_config_get_int(s->cfg, "HTTP_MAX_CONNECTIONS_PER_ADDRESS"),
        .idle_timeout_s = (unsigned)ew_config_get_int(s->cfg, "HTTP_IDLE_TIMEOUT_SECONDS"),
        .cors_origins = ew_config_get(s->cfg, "HTTP_CORS_ORIGINS"),
        .stop_timeout_ms = (int)ew_config_get_int(s->cfg, "HTTP_DRAIN_TIMEOUT_MS"),
        .health = health,
        .health_ud = s,
        .guard = http_guard,
        .guard_ud = s,
        .log = ew_logger_sink,
        .log_ud = s->log,
        .span = s->otlp ? ew_otlp_span : NULL,
        .span_ud = s->otlp,
    };
    if ((rc = ew_http_new(&s->http, &ho, err))) return rc;
    /* GET /metrics: the bus, the HTTP server, the outbox and the event store of this process */
    if ((rc = ew_metrics_new(&s->metrics, err))) return rc;
    ew_metrics_set_bus(s->metrics, s->bus);
    ew_metrics_set_http(s->metrics, s->http);
    ew_metrics_set_outbox(s->metrics, s->db);
    ew_metrics_set_event_store(s->metrics, s->events);
    return ew_http_route(s->http, "GET /metrics", 0, ew_metrics_http_handler, s->metrics, err);
}

/* The saga engine (svc_def.sagas): its state and the events its transitions issue live in the
 * event store, whose outbox the engine relays itself. */
static int sagas_start(svc *s, ew_error *err)
{
    int rc = open_store(s, &s->saga_db, "EVENT_STORE_URL", NULL, err);
    ew_saga_engine_options eo = {.bus = s->bus,
                                 .store = s->saga_db,
                                 .config = s->cfg,
                                 .log = ew_logger_sink,
                                 .log_ud = s->log,
                                 .audit = s->audit};
    if (rc) return rc;
    /* the deletion waits for every service holding user data */
    svc_names l;
    if ((rc = svc_user_data_services(s->cfg, &l, err))) return rc;
    ew_user_deletion_opts del = {.services = l.name, .nservices = l.n};
    rc = ew_saga_engine_open(&s->sagas, &eo, err);
    if (!rc) rc = ew_saga_add_reference_sagas(s->sagas, &del, err);
    if (!rc) rc = ew_saga_engine_start(s->sagas, err);
    if (!rc && !ew_saga_engine_enabled(s->sagas))
        svc_log(s, EW_LOG_INFO, "ENABLE_SAGAS=false: the saga engine does not run");
    return rc;
}

static void close_all(svc *s)
{
    ew_http_free(s->http);
    s->http = NULL;
    ew_metrics_free(s->metrics);
    s->metrics = NULL;
    relay_stop(s);
    svc_keeper_stop(s->keeper);
    s->keeper = NULL;
    svc_gdpr_tables_free(s->erase_tables);
    s->erase_tables = NULL;
    /* the engine stops first, the bus calls its handlers until it is closed, then it goes */
    if (s->sagas) ew_saga_engine_stop(s->sagas);
    if (s->bus && ew_bus_close(s->bus) == EW_ETIMEDOUT)
        svc_log(s, EW_LOG_WARN, "the bus closed with events still pending");
    s->bus = NULL;
    ew_saga_engine_close(s->sagas);
    ew_evauth_close(s->evauth); /* after the bus and the engine, which publish with it */
    s->evauth = NULL;
    s->sagas = NULL;
    ew_otlp_free(s->otlp); /* after the bus and the HTTP server: nothing reports spans now */
    s->otlp = NULL;
    ew_store_close(s->saga_db);
    s->saga_db = NULL;
    ew_store_close(s->events);
    ew_audit_close(s->audit); /* signs the chain's head */
    s->audit = NULL;
    ew_store_close(s->db);
    s->events = s->db = NULL;
    while (s->subs) { /* the bus that called them is closed */
        svc_sub *w = s->subs;
        s->subs = w->next;
        free(w);
    }
    ew_config_free(s->cfg);
    s->cfg = NULL;
    free(s->db_url);
    s->db_url = NULL;
    authn_stop(s);
}

/* Everything svc_main() and svc_open() do before the HTTP server listens, from settings (NULL:
 * the environment); with routes_only, up to the routes and handlers registered (--routes). On
 * failure, finish() still has to run. */
static int start(svc *s, const svc_def *def, const char *const *settings, bool routes_only,
                 ew_error *err)
{
    memset(s, 0, sizeof *s);
    s->def = def;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->hmu, NULL);
    ew__cond_init_mono(&s->cv);
    ew__cond_init_mono(&s->passed);
    if (ew_logger_new(&s->log, def->name, EW_LOG_FORMAT_JSON, EW_LOG_INFO, STDERR_FILENO, NULL))
        return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = open_all(s, settings, err);
    if (!rc && def->setup) rc = def->setup(s, def->ud, err);
    for (const svc_http_route *r = def->routes; !rc && r && r->route; r++)
        rc = svc_route(s, r->route, r->flags, r->fn, def->ud, err);
    for (const svc_handler *h = def->handlers; !rc && h && h->pattern; h++)
        rc = svc_subscribe(s, h->pattern, h->fn, def->ud, err);
    if (!rc && def->gdpr) rc = svc_gdpr_subscribe(s, err);
    if (rc || routes_only) return rc; /* --routes: the routes are registered */
    if (def->sagas) rc = sagas_start(s, err);
    if (!rc) rc = relay_start(s, err);
    if (!rc) rc = svc_gdpr_tables(def->gdpr, &s->erase_tables, err);
    if (!rc)
        rc = svc_keeper_start(&s->keeper, s->cfg, s->db, s->events,
                              (const char *const *)s->erase_tables, s->log, err);
    if (!rc) rc = ew_bus_start(s->bus, err);
    return rc;
}

/* Closes what start() opened (s->def NULL: the service was torn down already). */
static void finish(svc *s)
{
    if (s->def) {
        close_all(s);
        if (s->def->teardown) s->def->teardown(s, s->def->ud);
    }
    ew_logger_free(s->log);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->hmu);
    free(s->emitted);
    pthread_cond_destroy(&s->cv);
    pthread_cond_destroy(&s->passed);
}

static void usage(const svc_def *def, FILE *f)
{
    fprintf(f,
            "usage: %s [--settings | --routes]\n\n"
            "Runs %s until SIGTERM or SIGINT. Every setting comes from the environment:\n"
            "the library's (`ewctl config`), those of every service and this one's own\n"
            "(`%s --settings`): HTTP_ADDR, HTTP_PORT (default %d here), SERVICE_DB_URL,\n"
            "EVENT_BUS_TYPE, EVENT_STORE_URL, ... When ready it prints\n"
            "`%s listening on http://ADDR:PORT`.\n\n"
            "--settings  lists the service's settings (those of every service, then its own):\n"
            "            name, value in force here, default, allowed values and meaning,\n"
            "            tab-separated; exit status 1 when the environment holds a bad value.\n"
            "--routes    prints its HTTP routes instead of starting, `METHOD /path public|token`\n"
            "            each (it opens its database and the bus to get them, as a start would).\n",
            def->name, def->name, def->name, def->default_port, def->name);
}

/* --settings: the services' settings this one reads, as `ewctl config` prints the library's. */
static int print_settings(const svc_def *def)
{
    ew_config *cfg = NULL;
    ew_error err = {0};
    int rc = ew_config_new(&cfg, &err);
    if (!rc) rc = svc_settings_define(cfg, def->name, &err);
    if (rc) {
        fprintf(stderr, "%s: %s\n", def->name, err.msg);
        ew_config_free(cfg);
        return 1;
    }
    int bad = ew_config_from_env(cfg, &err);
    for (int i = 0; ew_config_setting(cfg, i); i++) {
        const ew_setting *e = ew_config_setting(cfg, i);
        if (ew_config_describe(i)) continue; /* the library's: `ewctl config` */
        char shown[4096];
        printf("%s\t%s\t%s\t%s\t%s\n", e->name, ew_config_shown(cfg, e->name, shown, sizeof shown),
               e->def, e->allowed, e->doc);
    }
    ew_config_free(cfg);
    if (bad) fprintf(stderr, "%s: %s\n", def->name, err.msg);
    return bad ? 1 : 0;
}

/* --routes: every route the service answers (the built-in GET /healthz too), and whether it
 * needs a token. */
static void print_routes(svc *s)
{
    size_t n = ew_http_route_count(s->http);
    ew_http_stats *st = malloc(sizeof *st);
    for (size_t i = 0; st && i < n; i++) {
        if (ew_http_route_stats(s->http, i, st) || !st->method[0]) continue;
        bool token = false;
        for (const guard *g = s->guards; g && !token; g = g->next)
            token = g->method && !strcmp(g->method, st->method) && !strcmp(g->tmpl, st->route);
        printf("%s %s %s\n", st->method, st->route, token ? "token" : "public");
    }
    free(st);
    fflush(stdout);
}

int svc_main(const svc_def *def, int argc, char **argv)
{
    bool list_routes = false;
    if (argc > 1) {
        if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
            usage(def, stdout);
            return 0;
        }
        if (!strcmp(argv[1], "--settings") && argc == 2) return print_settings(def);
        list_routes = argc == 2 && !strcmp(argv[1], "--routes");
    }
    if (argc > 1 && !list_routes) {
        fprintf(stderr, "%s: unknown argument '%s'\n", def->name, argv[1]);
        usage(def, stderr);
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "%s: libsodium cannot be initialised\n", def->name);
        return 1;
    }
    /* Every thread started from here on inherits the blocked signals: only sigwait() below
     * sees SIGTERM and SIGINT. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    svc sv;
    svc *s = &sv;
    ew_error err = {0};
    int rc = start(s, def, NULL, list_routes, &err);
    if (!rc && list_routes) {
        print_routes(s);
        finish(s);
        return 0;
    }
    if (!rc) rc = ew_http_start(s->http, &err);
    if (rc) {
        fprintf(stderr, "%s: cannot start: %s\n", def->name,
                err.msg[0] ? err.msg : ew_strerror(rc));
        finish(s);
        return 1;
    }
    const char *addr = ew_config_get(s->cfg, "HTTP_ADDR");
    int v6 = strchr(addr, ':') != NULL;
    printf("%s listening on http://%s%s%s:%d\n", def->name, v6 ? "[" : "", addr, v6 ? "]" : "",
           ew_http_port(s->http));
    fflush(stdout);
    char shown[512];
    svc_log(s, EW_LOG_INFO, "bus %s, database %s", ew_bus_backend(s->bus),
            ew_url_redact(s->db_url, shown, sizeof shown));

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    svc_log(s, EW_LOG_INFO, "%s: stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");

    int status = 0;
    int64_t t0 = ew_mono_ns();
    /* 1. no new requests; those in flight finish (and may commit to the outbox) */
    if (ew_http_stop(s->http)) status = 1;
    int64_t t1 = ew_mono_ns();
    /* 2. events in flight are handled while the relay still publishes what they emit */
    int64_t drain = ew_config_get_int(s->cfg, "EVENT_BUS_DRAIN_TIMEOUT_MS");
    if (ew_bus_wait_for_events(s->bus, (int)drain, &err))
        svc_log(s, EW_LOG_WARN, "events still in flight at the deadline: %s", err.msg);
    int64_t t2 = ew_mono_ns();
    /* 3. the relay's last pass, then the bus, then the rest */
    relay_stop(s);
    int64_t t3 = ew_mono_ns();
    close_all(s);
    if (def->teardown) def->teardown(s, def->ud);
    s->def = NULL; /* finish() below: torn down already */
    int64_t t4 = ew_mono_ns();
    svc_log(s, EW_LOG_INFO,
            "stopped in %lld ms (HTTP %lld, events %lld, outbox %lld, closing %lld)",
            (long long)((t4 - t0) / 1000000), (long long)((t1 - t0) / 1000000),
            (long long)((t2 - t1) / 1000000), (long long)((t3 - t2) / 1000000),
            (long long)((t4 - t3) / 1000000));
    finish(s);
    return status;
}

/* ---- in-process ---------------------------------------------------------------------------- */

int svc_open(svc **out, const svc_def *def, const char *const *settings, ew_error *err)
{
    *out = NULL;
    if (!def || !settings)
        return ew_error_set(err, EW_EINVAL, "a service and its settings are required");
    if (sodium_init() < 0) return ew_error_set(err, EW_EIO, "libsodium cannot be initialised");
    svc *s = malloc(sizeof *s);
    if (!s) return ew_error_set(err, EW_ENOMEM, "out of memory");
    int rc = start(s, def, settings, false, err);
    if (rc) {
        finish(s);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

ew_http_server *svc_http(svc *s)
{
    return s->http;
}

int svc_settle(svc *s, int timeout_ms, ew_error *err)
{
    struct timespec deadline = ew__mono_deadline(timeout_ms);
    int64_t end = ew_mono_ns() + (int64_t)timeout_ms * 1000000;
    for (;;) {
        int64_t left_ms = (end - ew_mono_ns()) / 1000000;
        if (left_ms <= 0) return ew_error_set(err, EW_ETIMEDOUT, "events still in flight");
        int rc = ew_bus_wait_for_events(s->bus, (int)left_ms, err);
        size_t sent = 0;
        if (!rc) rc = relay_kick(s, deadline, &sent, err);
        if (rc || sent == 0) return rc;
    }
}

void svc_close(svc *s)
{
    if (!s) return;
    finish(s);
    free(s);
}
