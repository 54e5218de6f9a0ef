/* Rows as JSON (svc.h): the answers of the services' HTTP APIs and of GDPR exports are the rows
 * of their tables, one JSON object per row. */
#include <string.h>
#include "core/json.h"
#include "svc.h"

static bool named(const char *const *names, const char *name)
{
    for (const char *const *k = names; k && *k; k++)
        if (!strcmp(*k, name)) return true;
    return false;
}

static bool is_int_text(const char *v)
{
    if (*v == '-') v++;
    if (!*v) return false;
    for (; *v; v++)
        if (*v < '0' || *v > '9') return false;
    return true;
}

void svc_row_json(ew_buf *b, const ew_row *r, const svc_cols *cols)
{
    static const svc_cols plain = {0};
    if (!cols) cols = &plain;
    ew_buf_putc(b, '{');
    for (size_t i = 0; i < r->ncols; i++) {
        const char *name = r->names[i], *v = r->values[i];
        if (i) ew_buf_putc(b, ',');
        ew_json_write_string(b, name, strlen(name));
        ew_buf_putc(b, ':');
        if (!v)
            ew_buf_puts(b, "null");
        else if (named(cols->ints, name) && is_int_text(v))
            ew_buf_puts(b, v);
        else if (named(cols->bools, name))
            ew_buf_puts(b, strcmp(v, "0") ? "true" : "false");
        else if (named(cols->json, name) && (v[0] == '[' || v[0] == '{'))
            ew_buf_puts(b, v); /* the service's own JSON text */
        else
            ew_json_write_string(b, v, strlen(v));
    }
    ew_buf_putc(b, '}');
}

typedef struct rows_ctx {
    ew_buf *b;
    const svc_cols *cols;
    size_t n;
} rows_ctx;

static int row_cb(void *ud, const ew_row *r)
{
    rows_ctx *c = ud;
    if (c->n++) ew_buf_putc(c->b, ',');
    svc_row_json(c->b, r, c->cols);
    return 0;
}

int svc_rows_json(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                  const svc_cols *cols, ew_buf *b, size_t *count, ew_error *err)
{
    rows_ctx c = {b, cols, 0};
    ew_buf_putc(b, '[');
    int rc = ew_txn_query(t, sql, params, nparams, row_cb, &c, err);
    ew_buf_putc(b, ']');
    if (count) *count = c.n;
    if (!rc && b->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    return rc;
}
