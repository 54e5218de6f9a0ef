/* export-service: the event handlers, each in the inbox's transaction, and the completion of an
 * export when all have answered (its failure at the deadline is store.c's).
 *
 *  user.data_collected         records an answer; the last expected one completes the export
 *
 * and the runtime answers the GDPR events from export_gdpr (svc.h):
 *  user.data_export_requested  opens the export when it came from elsewhere than POST /exports,
 *                              and answers for export-service itself
 *  user.deletion_requested     deletes the user's exports, their answers and files */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "core/files.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "export.h"

/* ---- the base of download links -------------------------------------------------------------- */

/* The port of this process's listening TCP socket (the HTTP server's: the only one), for
 * HTTP_PORT=0; 0 when there is none yet. svc.h does not say which port the server got. */
static int listening_port(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return 0;
    int port = 0;
    for (struct dirent *e; !port && (e = readdir(d));) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (*end || fd < 0 || fd == dirfd(d)) continue;
        int on = 0;
        socklen_t l = sizeof on;
        if (getsockopt((int)fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &l) || !on) continue;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname((int)fd, (struct sockaddr *)&ss, &sl)) continue;
        if (ss.ss_family == AF_INET)
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    closedir(d);
    return port;
}

/* The base of download links ("http://127.0.0.1:8005"), into out; -1 when the HTTP port is not
 * known yet. */
static int base_url(exporter *x, char *out, size_t n)
{
    if (x->public_url) {
        snprintf(out, n, "%s", x->public_url);
        return 0;
    }
    pthread_mutex_lock(&x->mu);
    if (!x->base_url[0]) {
        int port = x->http_port ? x->http_port : listening_port();
        if (port) {
            const char *a = x->http_addr;
            /* a wildcard address is no place to download from: this host's loopback is */
            if (!strcmp(a, "0.0.0.0"))
                a = "127.0.0.1";
            else if (!strcmp(a, "::"))
                a = "::1";
            bool v6 = strchr(a, ':') != NULL;
            snprintf(x->base_url, sizeof x->base_url, "http://%s%s%s:%d", v6 ? "[" : "", a,
                     v6 ? "]" : "", port);
        }
    }
    snprintf(out, n, "%s", x->base_url);
    pthread_mutex_unlock(&x->mu);
    return out[0] ? 0 : -1;
}

/* ---- completion ------------------------------------------------------------------------------ */

typedef struct doc_ctx {
    ew_buf *b;
    size_t n;
} doc_ctx;

static int doc_member(void *ud, const ew_row *r)
{
    doc_ctx *d = ud;
    if (!r->values[0] || !r->values[1]) return 0;
    if (d->n++) ew_buf_putc(d->b, ',');
    ew_json_write_string(d->b, r->values[0], strlen(r->values[0]));
    ew_buf_putc(d->b, ':');
    ew_buf_puts(d->b, r->values[1]); /* a JSON object: the catalog checked it */
    return 0;
}

/* When every expected service has answered export_id: writes the document, marks the export
 * completed and emits user.data_export_completed. */
static ew_handler_result maybe_complete(exporter *x, ew_handler_ctx *ctx, const char *export_id,
                                        const char *user_id, const char *expected_csv,
                                        const char *created_at)
{
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    svc_names expected, answered;
    if (svc_names_parse(&expected, expected_csv)) expected.n = 0;
    if (export_answered(t, export_id, &answered, &e))
        return svc_retry(x->s, ctx, "reading an export's answers", &e);
    for (size_t i = 0; i < expected.n; i++)
        if (!svc_names_has(&answered, expected.name[i])) return EW_HANDLER_OK; /* not yet */

    char base[512], url[700], now[EW_TIME_LEN + 1], expires[EW_TIME_LEN + 1], file[64];
    if (base_url(x, base, sizeof base)) {
        ew_ctx_set_error(ctx, "the HTTP server's port is not known yet");
        return EW_HANDLER_RETRY;
    }
    /* the link carries a capability: 256 bits from the CSPRNG, asked for besides the owner's or
     * an admin's token (http.c) */
    char key[SVC_SECRET_LEN + 1];
    svc_secret_new(key);
    snprintf(url, sizeof url, "%s/exports/%s/download?key=%s", base, export_id, key);
    sodium_memzero(key, sizeof key);
    svc_time(0, now);
    svc_time(x->link_ttl_s, expires);
    snprintf(file, sizeof file, "%s.json", export_id);
    const char *pu[] = {export_id, now, url, expires, file};
    int64_t changes = 0;
    if (ew_txn_exec(t,
                    "UPDATE event_store.export_requests SET status = 'completed',"
                    " finished_at = $2, download_url = $3, expires_at = $4, file_name = $5"
                    " WHERE export_id = $1 AND status = 'pending'",
                    pu, 5, &changes, &e))
        return svc_retry(x->s, ctx, "completing an export", &e);
    if (changes != 1) return EW_HANDLER_OK; /* failed or completed meanwhile */

    /* the document: {export_id, user_id, created_at, completed_at, services: {name: data}} */
    ew_buf b;
    ew_buf_init(&b);
    ew_buf_puts(&b, "{\"export_id\":");
    ew_json_write_string(&b, export_id, strlen(export_id));
    ew_buf_puts(&b, ",\"user_id\":");
    ew_json_write_string(&b, user_id, strlen(user_id));
    ew_buf_puts(&b, ",\"created_at\":");
    ew_json_write_string(&b, created_at, strlen(created_at));
    ew_buf_printf(&b, ",\"completed_at\":\"%s\",\"services\":{", now);
    doc_ctx d = {&b, 0};
    const char *p[] = {export_id};
    if (ew_txn_query(t,
                     "SELECT service, data FROM event_store.export_answers WHERE export_id = $1"
                     " ORDER BY service",
                     p, 1, doc_member, &d, &e)) {
        ew_buf_release(&b);
        return svc_retry(x->s, ctx, "reading an export's answers", &e);
    }
    ew_buf_puts(&b, "}}\n");
    char path[4200], why[512];
    export_file_path(x, file, path, sizeof path);
    if (b.oom || ew_file_replace(path, b.data, b.len, 0600)) {
        if (b.oom)
            snprintf(why, sizeof why, "out of memory");
        else
            snprintf(why, sizeof why, "cannot write %.300s: %s", path, strerror(errno));
        ew_buf_release(&b);
        ew_ctx_set_error(ctx, "export %s: %s", export_id, why);
        svc_log(x->s, EW_LOG_ERROR, "export %s: %s (will retry)", export_id, why);
        return EW_HANDLER_RETRY;
    }
    ew_buf_release(&b);
    /* the copies now live in the document only, until its link expires */
    if (ew_txn_exec(t, "UPDATE event_store.export_answers SET data = '{}' WHERE export_id = $1", p,
                    1, NULL, &e))
        return svc_retry(x->s, ctx, "completing an export", &e);
    ew_user_data_export_completed c = {.export_id = export_id,
                                       .user_id = user_id,
                                       .download_url = url,
                                       .expires_at = expires,
                                       .services = {answered.name, answered.n}};
    ew_handler_result r =
        svc_ctx_emit_or_retry(x->s, ctx, EW_T_USER_DATA_EXPORT_COMPLETED, &c, user_id);
    if (r == EW_HANDLER_OK)
        svc_log(x->s, EW_LOG_INFO, "export %s completed: %zu services, %s", export_id, answered.n,
                path);
    return r;
}

/* ---- user.data_collected --------------------------------------------------------------------- */

static ew_handler_result on_collected(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    exporter *x = ud;
    const ew_user_data_collected *d = ew_user_data_collected_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    ew_txn *t = ew_ctx_txn(ctx);
    ew_error e = {0};
    const char *p[] = {d->export_id};
    svc_row r;
    if (svc_query_row(t,
                      "SELECT user_id, status, expected, created_at"
                      " FROM event_store.export_requests WHERE export_id = $1",
                      p, 1, &r, &e))
        return svc_retry(x->s, ctx, "reading an export", &e);
    ew_handler_result res = EW_HANDLER_OK;
    if (!r.found) {
        svc_log(x->s, EW_LOG_INFO, "answer of %s for unknown export %s: ignored", d->service,
                d->export_id);
    } else if (strcmp(r.v[0], d->user_id)) {
        svc_log(x->s, EW_LOG_WARN, "answer of %s for export %s names another user: ignored",
                d->service, d->export_id);
    } else if (strcmp(r.v[1], "pending")) {
        svc_log(x->s, EW_LOG_INFO, "answer of %s for export %s, %s already: ignored", d->service,
                d->export_id, r.v[1]);
    } else {
        char now[EW_TIME_LEN + 1];
        svc_time(0, now);
        const char *pa[] = {d->export_id, d->service, d->data, now};
        if (ew_txn_exec(t,
                        "INSERT INTO event_store.export_answers"
                        " (export_id, service, data, received_at) VALUES ($1, $2, $3, $4)"
                        " ON CONFLICT (export_id, service) DO NOTHING",
                        pa, 4, NULL, &e))
            res = svc_retry(x->s, ctx, "recording an answer", &e);
        else
            res = maybe_complete(x, ctx, d->export_id, r.v[0], r.v[2], r.v[3]);
    }
    svc_row_free(&r);
    return res;
}

/* ---- GDPR: the runtime answers from this ---------------------------------------------------- */

/* user.data_export_requested, before export-service's own share is collected: POST /exports made
 * the row already; an export requested by another service starts here. */
static ew_handler_result open_export(svc *s, void *ud, const ew_event *ev, ew_handler_ctx *ctx)
{
    exporter *x = ud;
    const ew_user_data_export_requested *d = ew_user_data_export_requested_data(ev);
    ew_error e = {0};
    char now[EW_TIME_LEN + 1], deadline[EW_TIME_LEN + 1];
    svc_time(0, now);
    svc_time(x->timeout_s, deadline);
    const char *pi[] = {d->export_id,
                        d->user_id,
                        d->requested_by,
                        x->services_csv,
                        now,
                        deadline,
                        ew_event_correlation_id(ev)};
    if (ew_txn_exec(ew_ctx_txn(ctx),
                    "INSERT INTO event_store.export_requests (export_id, user_id, requested_by,"
                    " status, expected, created_at, deadline_at, correlation_id)"
                    " VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7)"
                    " ON CONFLICT (export_id) DO NOTHING",
                    pi, 7, NULL, &e))
        return svc_retry(s, ctx, "opening an export", &e);
    return EW_HANDLER_OK;
}

/* user.deletion_requested, once the rows are gone: the documents go too. */
static void remove_document(svc *s, void *ud, const char *file_name)
{
    char path[4200];
    export_file_path(ud, file_name, path, sizeof path);
    if (unlink(path) && errno != ENOENT)
        svc_log(s, EW_LOG_WARN, "cannot remove %s: %s", path, strerror(errno));
}

const svc_gdpr export_gdpr = {
    .parts =
        (const svc_gdpr_part[]){
            {.key = "exports",
             .kind = SVC_GDPR_ROWS,
             .sql = "SELECT export_id, status, requested_by, created_at, finished_at,"
                    " expires_at FROM event_store.export_requests WHERE user_id = $1"
                    " ORDER BY created_at, export_id"},
            {0},
        },
    .empty_is_nothing = true,
    .deletes =
        (const char *const[]){
            "DELETE FROM event_store.export_answers WHERE export_id IN"
            " (SELECT export_id FROM event_store.export_requests WHERE user_id = $1)",
            "DELETE FROM event_store.export_requests WHERE user_id = $1",
            NULL,
        },
    .leftovers = "SELECT file_name FROM event_store.export_requests"
                 " WHERE user_id = $1 AND file_name IS NOT NULL",
    .forget = remove_document,
    .before_export = open_export,
    .failure = svc_retry,
};

const svc_handler export_handlers[] = {
    {"user.data_collected", on_collected},
    {0},
};
