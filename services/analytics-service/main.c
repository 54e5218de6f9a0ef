/* analytics-service: the process. Its tables and the runtime (services/common). */
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include "analytics.h"
#include "core/json.h"

/* The service's tables. Created at every start, in one transaction; a later change of a table is
 * a new statement here, never an edit of these. */
static const char *const schema[] = {
    "CREATE TABLE IF NOT EXISTS event_store.analytics_event_counts ("
    " event_type TEXT PRIMARY KEY,"
    " total BIGINT NOT NULL,"
    " first_at TEXT NOT NULL,"
    " last_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.analytics_users ("
    " user_id TEXT PRIMARY KEY,"
    " registered_at TEXT NOT NULL,"
    " tracked_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_store.analytics_user_events ("
    " user_id TEXT NOT NULL,"
    " event_type TEXT NOT NULL,"
    " total BIGINT NOT NULL,"
    " first_at TEXT NOT NULL,"
    " last_at TEXT NOT NULL,"
    " PRIMARY KEY (user_id, event_type))",
    "CREATE TABLE IF NOT EXISTS event_store.analytics_erased ("
    " user_hash TEXT PRIMARY KEY,"
    " erased_at TEXT NOT NULL)",
};

void analytics_user_hash(const char *user_id, char out[65])
{
    unsigned char h[32];
    crypto_generichash(h, sizeof h, (const unsigned char *)user_id, strlen(user_id),
                       (const unsigned char *)"eventwire-analytics-erased", 26);
    sodium_bin2hex(out, 65, h, sizeof h);
}

/* ---- rows as JSON ---------------------------------------------------------------------------- */

typedef struct rows_ctx {
    ew_buf *b;
    const char *const *ints;
    size_t n;
} rows_ctx;

static int is_int_text(const char *v)
{
    if (*v == '-') v++;
    if (!*v) return 0;
    for (; *v; v++)
        if (*v < '0' || *v > '9') return 0;
    return 1;
}

static int row_cb(void *ud, const ew_row *r)
{
    rows_ctx *c = ud;
    ew_buf_puts(c->b, c->n++ ? ",{" : "{");
    for (size_t i = 0; i < r->ncols; i++) {
        if (i) ew_buf_putc(c->b, ',');
        ew_json_write_string(c->b, r->names[i], strlen(r->names[i]));
        ew_buf_putc(c->b, ':');
        const char *v = r->values[i];
        int as_int = 0;
        for (const char *const *k = c->ints; k && *k && !as_int; k++)
            as_int = !strcmp(*k, r->names[i]);
        if (!v)
            ew_buf_puts(c->b, "null");
        else if (as_int && is_int_text(v))
            ew_buf_puts(c->b, v);
        else
            ew_json_write_string(c->b, v, strlen(v));
    }
    ew_buf_putc(c->b, '}');
    return 0;
}

int analytics_rows_json(ew_txn *t, const char *sql, const char *const *params, size_t nparams,
                        const char *const *ints, ew_buf *b, size_t *count, ew_error *err)
{
    rows_ctx c = {b, ints, 0};
    ew_buf_putc(b, '[');
    int rc = ew_txn_query(t, sql, params, nparams, row_cb, &c, err);
    ew_buf_putc(b, ']');
    if (count) *count = c.n;
    if (!rc && b->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    return rc;
}

/* ---- the process ----------------------------------------------------------------------------- */

static int setup(svc *s, void *ud, ew_error *err)
{
    analytics *a = ud;
    a->s = s;
    int rc = analytics_routes(a, err);
    if (!rc) rc = analytics_handlers(a, err);
    return rc;
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0) {
        fprintf(stderr, "%s: libsodium cannot be initialised\n", ANALYTICS_SERVICE);
        return 1;
    }
    static analytics a;
    svc_def def = {
        .name = ANALYTICS_SERVICE,
        .default_port = ANALYTICS_PORT,
        .schema = schema,
        .nschema = sizeof schema / sizeof schema[0],
        .setup = setup,
        .ud = &a,
    };
    return svc_main(&def, argc, argv);
}
