/* The user's data (svc.h): every service answers the GDPR machinery the same way, from a
 * description of the tables it holds (svc_def.gdpr).
 *
 *  user.data_export_requested  user.data_collected with the user's data (svc_user_data)
 *  user.deletion_requested     the deletes and the service's hooks, the tombstone and the audit
 *                              entry user.data_erased, in the inbox's transaction;
 *                              user.data_deleted with the number of rows deleted */
#include <stdlib.h>
#include <string.h>
#include "core/json.h"
#include "eventwire/clock.h"
#include "svc.h"

static ew_handler_result failure(const svc_gdpr *g, svc *s, ew_handler_ctx *ctx, const char *what,
                                 const ew_error *e)
{
    return (g->failure ? g->failure : svc_retry)(s, ctx, what, e);
}

/* ---- collecting ------------------------------------------------------------------------------ */

typedef struct first_row {
    ew_buf *b;
    const svc_gdpr_part *part;
    bool found;
} first_row;

static int write_first(void *ud, const ew_row *r)
{
    first_row *f = ud;
    f->found = true;
    if (f->part->kind == SVC_GDPR_ROW)
        svc_row_json(f->b, r, &f->part->cols);
    else if (r->ncols && r->values[0])
        ew_json_write_string(f->b, r->values[0], strlen(r->values[0]));
    else
        ew_buf_puts(f->b, "null");
    return 1;
}

int svc_user_data(ew_txn *t, const svc_gdpr *g, const char *user_id, ew_buf *b, bool *found,
                  ew_error *err)
{
    const char *p[] = {user_id};
    ew_buf out;
    ew_buf_init(&out);
    *found = false;
    int rc = 0;
    ew_buf_putc(&out, '{');
    for (const svc_gdpr_part *part = g->parts; !rc && part->key; part++) {
        if (part != g->parts) ew_buf_putc(&out, ',');
        ew_json_write_string(&out, part->key, strlen(part->key));
        ew_buf_putc(&out, ':');
        if (part->kind == SVC_GDPR_ROWS) {
            size_t n = 0;
            rc = svc_rows_json(t, part->sql, p, 1, &part->cols, &out, &n, err);
            if (n) *found = true;
        } else {
            first_row f = {&out, part, false};
            rc = ew_txn_query(t, part->sql, p, 1, write_first, &f, err);
            if (f.found)
                *found = true;
            else
                ew_buf_puts(&out, "null");
        }
    }
    ew_buf_putc(&out, '}');
    if (!rc) {
        if (*found || !g->empty_is_nothing)
            ew_buf_append(b, out.data, out.len);
        else
            ew_buf_puts(b, "{}");
        if (out.oom || b->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    }
    ew_buf_release(&out);
    return rc;
}

static ew_handler_result on_export_requested(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    svc *s = ud;
    const svc_def *def = svc_definition(s);
    const svc_gdpr *g = def->gdpr;
    const ew_user_data_export_requested *d = ew_user_data_export_requested_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    if (g->before_export) {
        ew_handler_result r = g->before_export(s, def->ud, ev, ctx);
        if (r != EW_HANDLER_OK) return r;
    }
    ew_buf b;
    ew_buf_init(&b);
    bool found;
    ew_error e = {0};
    ew_handler_result r = EW_HANDLER_OK;
    if (svc_user_data(ew_ctx_txn(ctx), g, d->user_id, &b, &found, &e)) {
        r = failure(g, s, ctx, "collecting the user's data", &e);
    } else {
        ew_user_data_collected c = {.export_id = d->export_id,
                                    .user_id = d->user_id,
                                    .service = svc_name(s),
                                    .data = b.data};
        if (svc_ctx_emit(s, ctx, EW_T_USER_DATA_COLLECTED, &c, d->user_id, &e))
            r = failure(g, s, ctx, "publishing user.data_collected", &e);
    }
    ew_buf_release(&b);
    return r;
}

/* ---- deleting -------------------------------------------------------------------------------- */

typedef struct names {
    char **v;
    size_t n, cap;
    bool oom;
} names;

static int add_name(void *ud, const ew_row *r)
{
    names *l = ud;
    if (!r->ncols || !r->values[0]) return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        char **p = realloc(l->v, cap * sizeof *p);
        if (!p) {
            l->oom = true;
            return 1;
        }
        l->v = p;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strdup(r->values[0]))) {
        l->oom = true;
        return 1;
    }
    l->n++;
    return 0;
}

static void names_release(names *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* The table a "DELETE FROM event_store.TABLE ..." statement deletes from, and *len its name's
 * length; NULL for a statement of another form (svc_gdpr_tables refuses those at start). */
static const char *table_of(const char *sql, size_t *len)
{
    static const char head[] = "DELETE FROM event_store.";
    if (strncmp(sql, head, sizeof head - 1) != 0) return NULL;
    const char *name = sql + sizeof head - 1;
    size_t l = strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_");
    if (l == 0 || (name[l] != ' ' && name[l] != '\0')) return NULL;
    *len = l;
    return name;
}

/* The erasure's audit entry (docs/audit.md): by ids and figures only, what each table lost. */
static void erased_details(ew_buf *b, const svc_gdpr *g, const ew_event *ev,
                           const ew_user_deletion_requested *d, const int64_t *counts,
                           int64_t records, size_t files)
{
    const char *corr = ew_event_correlation_id(ev);
    ew_buf_puts(b, "{\"request_id\":");
    ew_json_write_string(b, d->request_id, strlen(d->request_id));
    ew_buf_puts(b, ",\"correlation_id\":");
    ew_json_write_string(b, corr, strlen(corr));
    ew_buf_puts(b, ",\"event_id\":");
    ew_json_write_string(b, ew_event_id(ev), strlen(ew_event_id(ev)));
    ew_buf_printf(b, ",\"records\":%lld,\"tables\":{", (long long)records);
    for (size_t i = 0; g->deletes[i]; i++) {
        size_t l = 0;
        const char *name = table_of(g->deletes[i], &l);
        if (i) ew_buf_putc(b, ',');
        ew_json_write_string(b, name ? name : "?", name ? l : 1);
        ew_buf_printf(b, ":%lld", (long long)counts[i]);
    }
    ew_buf_putc(b, '}');
    if (g->leftovers) ew_buf_printf(b, ",\"files\":%zu", files);
    ew_buf_puts(b, ",\"tombstone\":true}");
}

static ew_handler_result on_deletion_requested(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    svc *s = ud;
    const svc_def *def = svc_definition(s);
    const svc_gdpr *g = def->gdpr;
    const ew_user_deletion_requested *d = ew_user_deletion_requested_data(ev);
    if (!d) return svc_not_mine(ctx, ev);
    ew_txn *t = ew_ctx_txn(ctx);
    const char *p[] = {d->user_id};
    names left = {0};
    int64_t records = 0;
    ew_error e = {0};
    int rc = 0;
    if (g->leftovers) {
        rc = ew_txn_query(t, g->leftovers, p, 1, add_name, &left, &e);
        if (!rc && left.oom) rc = ew_error_set(&e, EW_ENOMEM, "out of memory");
    }
    size_t ndeletes = 0;
    while (g->deletes[ndeletes])
        ndeletes++;
    int64_t *counts = calloc(ndeletes + 1, sizeof *counts);
    if (!rc && !counts) rc = ew_error_set(&e, EW_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < ndeletes; i++) {
        rc = ew_txn_exec(t, g->deletes[i], p, 1, &counts[i], &e);
        records += counts[i];
    }
    if (!rc && g->after_delete) rc = g->after_delete(s, def->ud, t, d->user_id, &e);
    /* The tombstone: the user's old events, replayed or retried, re-create nothing (svc.c). */
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)(ew_now_us() / 1000000));
    const char *tp[] = {d->user_id, now};
    if (!rc)
        rc = ew_txn_exec(t,
                         "INSERT INTO event_store.svc_erased_users (user_id, erased_at) VALUES "
                         "($1, $2) ON CONFLICT (user_id) DO NOTHING",
                         tp, 2, NULL, &e);
    /* Who erased what, in the same transaction: the entry is there exactly when the rows are
     * gone (a retried delivery rolled back writes none). */
    if (!rc) {
        ew_buf det;
        ew_buf_init(&det);
        erased_details(&det, g, ev, d, counts, records, left.n);
        rc = det.oom ? ew_error_set(&e, EW_ENOMEM, "out of memory")
                     : svc_audit_in(s, t, NULL, "user.data_erased", d->user_id, det.data, &e);
        ew_buf_release(&det);
    }
    free(counts);
    if (!rc && g->forget)
        for (size_t i = 0; i < left.n; i++)
            g->forget(s, def->ud, left.v[i]);
    names_release(&left);
    if (rc) return failure(g, s, ctx, "deleting the user's data", &e);
    ew_user_data_deleted dd = {.request_id = d->request_id,
                               .user_id = d->user_id,
                               .service = svc_name(s),
                               .records = records};
    if (svc_ctx_emit(s, ctx, EW_T_USER_DATA_DELETED, &dd, d->user_id, &e))
        return failure(g, s, ctx, "publishing user.data_deleted", &e);
    svc_log(s, EW_LOG_INFO, "deleted user %s: %lld records (request %s)", d->user_id,
            (long long)records, d->request_id);
    return EW_HANDLER_OK;
}

void svc_gdpr_tables_free(char **tables)
{
    for (size_t i = 0; tables && tables[i]; i++)
        free(tables[i]);
    free(tables);
}

int svc_gdpr_tables(const svc_gdpr *g, char ***out, ew_error *err)
{
    *out = NULL;
    if (!g || !g->deletes) return 0;
    size_t n = 0;
    while (g->deletes[n])
        n++;
    char **t = calloc(n + 1, sizeof *t);
    if (!t) return ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        size_t l;
        const char *name = table_of(g->deletes[i], &l);
        if (!name) {
            svc_gdpr_tables_free(t);
            return ew_error_set(err, EW_EINVAL,
                                "an erasure's statement must be DELETE FROM event_store.TABLE ...: "
                                "%.80s",
                                g->deletes[i]);
        }
        if (!(t[i] = strndup(name, l))) {
            svc_gdpr_tables_free(t);
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
    }
    *out = t;
    return 0;
}

int svc_gdpr_subscribe(svc *s, ew_error *err)
{
    static const svc_handler subs[] = {
        {"user.deletion_requested", on_deletion_requested},
        {"user.data_export_requested", on_export_requested},
    };
    return svc_subscribe_all(s, subs, sizeof subs / sizeof subs[0], s, err);
}

/* ---- over HTTP ------------------------------------------------------------------------------- */

void svc_reply_user_data(svc *s, const ew_http_request *rq, ew_http_response *res, const char *what)
{
    const char *id = svc_path_user(rq, res, "user_id", NULL); /* the user themselves or an admin */
    if (!id) return;
    ew_txn *t;
    ew_error e = {0};
    if (svc_begin(s, &t, &e)) {
        svc_reply_failure(s, res, what, &e);
        return;
    }
    ew_buf data;
    ew_buf_init(&data);
    bool found = false;
    int rc = svc_user_data(t, svc_definition(s)->gdpr, id, &data, &found, &e);
    ew_txn_rollback(t);
    if (rc) {
        svc_reply_failure(s, res, what, &e);
    } else if (!found) {
        ew_http_reply_error(res, 404, "user_id", "%s holds nothing about user %s", svc_name(s), id);
    } else {
        ew_buf b;
        ew_buf_init(&b);
        ew_buf_puts(&b, "{\"user_id\":");
        ew_json_write_string(&b, id, strlen(id));
        ew_buf_putc(&b, ',');
        ew_buf_append(&b, data.data + 1, data.len - 1); /* the members of data, and its '}' */
        if (b.oom)
            ew_http_reply_error(res, 500, NULL, "out of memory");
        else
            ew_http_reply_raw(res, 200, b.data, b.len);
        ew_buf_release(&b);
    }
    ew_buf_release(&data);
}
