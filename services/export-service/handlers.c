/* export-service: the event handlers, each in the inbox's transaction, and the two ends of an
 * export: completion (all answered) and failure (deadline passed).
 *
 *  user.data_collected         records an answer; the last expected one completes the export
 *
 * and the runtime answers the GDPR events from export_gdpr (svc.h):
 *  user.data_export_requested  opens the export when it came from elsewhere than POST /exports,
 *                              and answers for export-service itself
 *  user.deletion_requested     deletes the user's exports, their answers and files */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "export.h"

static void time_text(int64_t offset_s, char out[EW_TIME_LEN + 1])
{
    ew_time_format(ew_now_us() + offset_s * 1000000, out);
}

/* ---- answers --------------------------------------------------------------------------------- */

static int add_name(void *ud, const ew_row *r)
{
    svc_names *l = ud;
    const char *v = r->values[0];
    if (!v || l->n == SVC_MAX_SERVICES) return 0;
    size_t used = 0;
    if (l->n) used = (size_t)(l->name[l->n - 1] - l->buf) + strlen(l->name[l->n - 1]) + 1;
    size_t len = strlen(v);
    if (used + len + 1 > sizeof l->buf) return 1;
    memcpy(l->buf + used, v, len + 1);
    l->name[l->n++] = l->buf + used;
    return 0;
}

int export_answered(ew_txn *t, const char *export_id, svc_names *l, ew_error *err)
{
    l->n = 0;
    const char *p[] = {export_id};
    return ew_txn_query(t,
                        "SELECT service FROM event_store.export_answers WHERE export_id = $1"
                        " ORDER BY service",
                        p, 1, add_name, l, err);
}

/* ---- failure at the deadline ----------------------------------------------------------------- */

int export_fail_due(exporter *x, ew_txn *t, const char *export_id, const char *now, bool *failed,
                    ew_error *err)
{
    *failed = false;
    const char *p[] = {export_id};
    svc_row r;
    int rc = svc_query_row(t,
                           "SELECT user_id, status, expected, deadline_at, correlation_id,"
                           " created_at FROM event_store.export_requests WHERE export_id = $1",
                           p, 1, &r, err);
    if (rc) return rc;
    if (!r.found || strcmp(r.v[1], "pending") || strcmp(r.v[3], now) > 0) goto done;
    svc_names expected, answered;
    if (svc_names_parse(&expected, r.v[2])) expected.n = 0;
    if ((rc = export_answered(t, export_id, &answered, err))) goto done;
    const char *missing[SVC_MAX_SERVICES];
    size_t nm = 0;
    ew_buf why;
    ew_buf_init(&why);
    ew_buf_printf(&why, "no answer by the deadline (%s) from:", r.v[3]);
    for (size_t i = 0; i < expected.n; i++)
        if (!svc_names_has(&answered, expected.name[i])) {
            ew_buf_printf(&why, "%s %s", nm ? "," : "", expected.name[i]);
            missing[nm++] = expected.name[i];
        }
    if (why.oom) {
        ew_buf_release(&why);
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto done;
    }
    const char *pu[] = {export_id, now, why.data};
    int64_t changes = 0;
    rc = ew_txn_exec(t,
                     "UPDATE event_store.export_requests SET status = 'failed', finished_at = $2,"
                     " reason = $3 WHERE export_id = $1 AND status = 'pending'",
                     pu, 3, &changes, err);
    /* the answers that did come are not needed any more */
    if (!rc && changes == 1)
        rc = ew_txn_exec(t,
                         "UPDATE event_store.export_answers SET data = '{}'"
                         " WHERE export_id = $1",
                         p, 1, NULL, err);
    if (!rc && changes == 1) {
        ew_user_data_export_failed f = {.export_id = export_id,
                                        .user_id = r.v[0],
                                        .reason = why.data,
                                        .missing = {missing, nm}};
        ew_event_attrs a = {.source = svc_name(x->s), .subject = r.v[0], .correlation_id = r.v[4]};
        ew_event *ev = NULL;
        rc = ew_event_new(&ev, EW_T_USER_DATA_EXPORT_FAILED, &f, &a, err);
        if (!rc) rc = ew_outbox_add(t, ev, err);
        ew_event_unref(ev);
        if (!rc) {
            *failed = true;
            svc_log(x->s, EW_LOG_WARN, "export %s failed: %s", export_id, why.data);
        }
    }
    ew_buf_release(&why);
done:
    svc_row_free(&r);
    return rc;
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

static int write_file(const char *path, const char *data, size_t len, char *why, size_t why_len)
{
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0 && fchmod(fd, 0600)) { /* 0600 whatever the umask, or a leftover's mode */
        close(fd);
        fd = -1;
    }
    if (fd < 0) {
        snprintf(why, why_len, "cannot write %.300s: %s", tmp, strerror(errno));
        return -1;
    }
    const char *p = data;
    size_t left = len;
    int bad = 0;
    while (left && !bad) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            bad = 1;
        else {
            p += w;
            left -= (size_t)w;
        }
    }
    int e = errno;
    if (!bad && fsync(fd)) {
        bad = 1;
        e = errno;
    }
    if (close(fd) && !bad) {
        bad = 1;
        e = errno;
    }
    if (!bad && rename(tmp, path)) {
        bad = 1;
        e = errno;
    }
    if (bad) {
        snprintf(why, why_len, "cannot write %.300s: %s", path, strerror(e));
        unlink(tmp);
        return -1;
    }
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
    if (export_base_url(x, base, sizeof base)) {
        ew_ctx_set_error(ctx, "the HTTP server's port is not known yet");
        return EW_HANDLER_RETRY;
    }
    /* the link carries a capability: 256 bits from the CSPRNG, asked for besides the owner's or
     * an admin's token (http.c) */
    unsigned char cap[32];
    char key[64];
    randombytes_buf(cap, sizeof cap);
    sodium_bin2base64(key, sizeof key, cap, sizeof cap, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(cap, sizeof cap);
    snprintf(url, sizeof url, "%s/exports/%s/download?key=%s", base, export_id, key);
    sodium_memzero(key, sizeof key);
    time_text(0, now);
    time_text(x->link_ttl_s, expires);
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
    if (b.oom || write_file(path, b.data, b.len, why, sizeof why)) {
        if (b.oom) snprintf(why, sizeof why, "out of memory");
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
        time_text(0, now);
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
    time_text(0, now);
    time_text(x->timeout_s, deadline);
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

int export_handlers(exporter *x, ew_error *err)
{
    static const svc_handler subs[] = {
        {"user.data_collected", on_collected},
    };
    return svc_subscribe_all(x->s, subs, sizeof subs / sizeof subs[0], x, err);
}
