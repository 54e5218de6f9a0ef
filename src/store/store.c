/* eventwire — the event store's shared part: the URL and configuration, events into rows and rows
 * back into events, paged reads, the handle's mutex and its transactions, and the glue that makes
 * the store a dead letter sink, an inbox and an outbox. The SQL lives in one file per backend
 * (sqlite.c, postgres.c) behind struct ew_store_ops (store_impl.h). */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "catalog/event_internal.h"
#include "core/log.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "security/keyring.h"
#include "store/batch.h"
#include "store/handle.h"
#include "store/store_bus.h"

/* Reads go to the database a page at a time, and the rows of a page are decoded and handed to
 * the caller with the handle's mutex released: a slow reader does not hold up writers, and a
 * reader's callback may call the store. */
#define PAGE_ROWS 256
#define PAGE_BYTES (4u << 20)
#define DEFAULT_PURGE_BATCH 1000
#define DEFAULT_RELAY_BATCH 100

/* The backends, by URL scheme. keep: the backend gets the whole URL, not what follows it. */
static const struct backend {
    const char *prefix;
    int keep;
    const ew_store_ops *ops;
} backends[] = {
    {"sqlite:", 0, &ew__store_sqlite},
    {"postgresql://", 1, &ew__store_postgres},
    {"postgres://", 1, &ew__store_postgres},
};

const char *ew__store_url_arg(const char *url, const ew_store_ops **ops)
{
    for (size_t i = 0; url && i < sizeof backends / sizeof backends[0]; i++) {
        const struct backend *b = &backends[i];
        if (strncasecmp(url, b->prefix, strlen(b->prefix)) == 0) {
            *ops = b->ops;
            return b->keep ? url : url + strlen(b->prefix);
        }
    }
    return NULL;
}

/* ---- small things ---------------------------------------------------------------------- */

void ew__store_logf(const ew__store_log *log, ew_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ew__logv(log, level, "store", NULL, fmt, ap);
    va_end(ap);
}

static const char *const status_names[] = {"pending", "retried", "resolved", "discarded"};

const char *ew_dlq_status_name(ew_dlq_status st)
{
    return (unsigned)st < 4 ? status_names[st] : "unknown";
}

int ew__dlq_status_parse(const char *name)
{
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, status_names[i]) == 0) return i;
    return -1;
}

const char *ew_store_backend(const ew_store *s)
{
    return s ? s->ops->name : NULL;
}

/* ---- open and close --------------------------------------------------------------------- */

int ew_store_open(ew_store **out, const ew_store_options *opts, ew_error *err)
{
    if (!out) return ew_error_set(err, EW_EINVAL, "out is required");
    *out = NULL;
    ew_store_options none = {0};
    if (!opts) opts = &none;
    ew_config *defaults = NULL;
    const ew_config *cfg = opts->config;
    int rc;
    if (!cfg) {
        if ((rc = ew_config_new(&defaults, err))) return rc;
        cfg = defaults;
    }
    const char *url = opts->url ? opts->url : ew_config_get(cfg, "EVENT_STORE_URL");
    int64_t ttl_days = ew_config_get_int(cfg, "EVENT_STORE_TTL_DAYS");
    int64_t max_bytes = ew_config_get_int(cfg, "EVENT_MAX_BYTES");

    const ew_store_ops *ops = NULL;
    const char *arg = ew__store_url_arg(url, &ops);
    if (!arg) {
        rc = ew_error_set(err, EW_ECONFIG,
                          "EVENT_STORE_URL: '%.100s' is not sqlite:PATH or postgresql://...",
                          url ? url : "");
        goto fail_config;
    }
    ew_store *s = calloc(1, sizeof *s);
    if (!s) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto fail_config;
    }
    s->ops = ops;
    s->log.fn = opts->log;
    s->log.ud = opts->log_ud;
    s->ttl_us = ttl_days * 86400LL * 1000000LL;
    s->max_bytes = max_bytes > 0 ? (size_t)max_bytes : 1u << 20;
    ew__store_handle_init(s);
    pthread_mutex_init(&s->relay_mu, NULL);
    if ((rc = ew__keyring_new(&s->keys, cfg, url, err))) goto fail_store;
    if ((rc = s->ops->open(&s->conn, arg, &s->log, err))) goto fail_store;
    if (s->ops == &ew__store_sqlite) {
        struct stat st;
        if (strcmp(arg, ":memory:") != 0 && stat(arg, &st) == 0) {
            s->has_file = 1;
            s->dev = st.st_dev;
            s->ino = st.st_ino;
        }
    }
    ew__store_logf(&s->log, EW_LOG_DEBUG, "opened %s", s->ops->name);
    ew_config_free(defaults);
    *out = s;
    return 0;

fail_store:
    ew__keyring_free(s->keys);
    pthread_mutex_destroy(&s->relay_mu);
    ew__store_handle_free(s);
    free(s);
fail_config:
    ew_config_free(defaults);
    return rc;
}

void ew_store_close(ew_store *s)
{
    if (!s) return;
    ew__store_handle_end(s);
    s->ops->close(s->conn);
    ew__keyring_free(s->keys);
    pthread_mutex_destroy(&s->relay_mu);
    ew__store_handle_free(s);
    free(s);
}

/* ---- events into rows -------------------------------------------------------------------- */

struct ew__keyring *ew__store_keyring(const ew_store *s)
{
    return s->keys;
}

int ew_store_prepare_keys(ew_store *s, const char *const *subjects, size_t n, ew_error *err)
{
    if (!s || (n && !subjects))
        return ew_error_set(err, EW_EINVAL, "a store and the subjects are required");
    return s->keys ? ew__keyring_ready(s->keys, subjects, n, err) : 0;
}

int ew__store_unseal(const ew_store *s, ew_event **ev, ew_error *err)
{
    if (!s->keys || !ew_event_encrypted(*ev)) return 0;
    ew_event *plain;
    int rc = ew__keyring_unseal(s->keys, *ev, &plain, err);
    if (rc) return rc;
    ew_event_unref(*ev);
    *ev = plain;
    return 0;
}

int ew__store_decode(const ew_store *s, const char *json, size_t len, const ew_decode_opts *opts,
                     ew_event **out, ew_error *err)
{
    if (!s->keys) return ew_event_decode(out, json, len, opts, err);
    return ew__keyring_decode(s->keys, json, len, opts, out, err); /* opened as it is read */
}

int ew__store_encode(const ew_store *s, const ew_event *ev, char **out, size_t *len, ew_error *err)
{
    if (!s->keys) return ew_event_encode(ev, out, len, err);
    return ew__keyring_encode(s->keys, ev, out, len, err); /* sealed as it is written */
}

/* Encodes ev and splits the text in place into the envelope without data and data: the encoder
 * writes data last, and no envelope attribute can hold a bare `,"` (quotes in strings are
 * escaped), so the first `,"data":` is the member. *text is the buffer both point into. */
static int encode_rec(const ew_store *s, const ew_event *ev, char **text, ew__store_rec *r,
                      ew_error *err)
{
    size_t len;
    int rc = ew__store_encode(s, ev, text, &len, err);
    if (rc) return rc;
    if (len > s->max_bytes) {
        rc = ew_error_set(err, EW_ETOOBIG,
                          "event %s encodes to %zu bytes, more than EVENT_MAX_BYTES (%zu)",
                          ew_event_id(ev), len, s->max_bytes);
        goto fail;
    }
    char *d = strstr(*text, ",\"data\":");
    if (!d || len < 2 || (*text)[len - 1] != '}') {
        rc = ew_error_set(err, EW_EINVAL, "event %s: its encoding has no data member",
                          ew_event_id(ev));
        goto fail;
    }
    *d = '}';
    r->event_id = ew_event_id(ev);
    r->event_type = ew_event_type(ev);
    r->event_version = ew_event_version(ev);
    r->metadata = *text;
    r->metadata_len = (size_t)(d - *text) + 1;
    r->data = d + 8;
    r->data_len = len - 1 - (size_t)(d + 8 - *text);
    return 0;
fail:
    free(*text);
    *text = NULL;
    return rc;
}

static int cmp_rec_id(const void *a, const void *b)
{
    const ew__store_rec *const *x = a, *const *y = b;
    int c = strcmp((*x)->event_id, (*y)->event_id);
    return c ? c : (*x < *y ? -1 : *x > *y);
}

/* Removes from recs[0..n) every event whose id came earlier in the batch, keeping the order (and
 * the same from streams[0..n) when not NULL); returns how many are left. Backends then see each
 * id once. */
static size_t drop_repeats(ew__store_rec *recs, const char **streams, size_t n, ew_error *err,
                           int *rc)
{
    if (n < 2) return n;
    const ew__store_rec **by_id = malloc(n * sizeof *by_id);
    char *drop = calloc(n, 1);
    if (!by_id || !drop) {
        free(by_id);
        free(drop);
        *rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        by_id[i] = &recs[i];
    qsort(by_id, n, sizeof *by_id, cmp_rec_id);
    for (size_t i = 1; i < n; i++)
        if (strcmp(by_id[i]->event_id, by_id[i - 1]->event_id) == 0) drop[by_id[i] - recs] = 1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (drop[i]) continue;
        if (streams) streams[k] = streams[i];
        recs[k++] = recs[i];
    }
    free(by_id);
    free(drop);
    return k;
}

int ew_store_append(ew_store *s, const char *stream_id, int64_t expected_version,
                    const ew_event *const *evs, size_t n, ew_append_result *res, ew_error *err)
{
    if (!s || !stream_id || !*stream_id || (n && !evs))
        return ew_error_set(err, EW_EINVAL, "store, stream id and events are required");
    if (expected_version < EW_EXPECT_ANY)
        return ew_error_set(err, EW_EINVAL, "expected version %lld is not -1, 0 or a version",
                            (long long)expected_version);
    ew__store_rec one_rec;
    char *one_text = NULL;
    ew__store_rec *recs = n > 1 ? calloc(n, sizeof *recs) : &one_rec;
    char **texts = n > 1 ? calloc(n, sizeof *texts) : &one_text;
    int rc = 0;
    if (!recs || !texts) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (!evs[i]) {
            rc = ew_error_set(err, EW_EINVAL, "event %zu of %zu is NULL", i + 1, n);
            goto done;
        }
        if ((rc = encode_rec(s, evs[i], &texts[i], &recs[i], err))) goto done;
    }
    size_t unique = drop_repeats(recs, NULL, n, err, &rc);
    if (rc) goto done;
    ew__append_args a = {stream_id, expected_version, recs, unique, ew_now_us(), 0};
    if (s->ttl_us) a.expires_us = a.recorded_us + s->ttl_us;
    ew_append_result r = {0};
    if ((rc = ew__store_lock(s, err))) goto done;
    rc = s->ops->append(s->conn, &a, &r, err);
    ew__store_unlock(s);
    r.duplicates += n - unique;
    if (!rc && res) *res = r;
done:
    if (texts)
        for (size_t i = 0; i < n; i++)
            free(texts[i]);
    if (n > 1) {
        free(recs);
        free(texts);
    }
    return rc;
}

/* ---- rows back into events: paged reads ---------------------------------------------------- */

typedef struct page_row {
    int64_t position, version, recorded_us;
    char *stream_id; /* the stream id, event id, type, then the CloudEvent text, in one block */
    char *event_id, *event_type;
    char *json;
    size_t json_len;
} page_row;

typedef struct page {
    page_row *rows;
    size_t n, cap;
    size_t scanned, bytes;
    int full; /* stopped early on PAGE_BYTES */
    int oom;
    const char *pattern;         /* filter applied here; NULL: none */
    const char *const *patterns; /* or any of these (ew__store_scan); npatterns 0: none */
    size_t npatterns;
    int64_t last_position; /* of the last row scanned */
    int64_t last_version;
} page;

static void page_clear(page *p)
{
    for (size_t i = 0; i < p->n; i++)
        free(p->rows[i].stream_id);
    p->n = p->scanned = p->bytes = 0;
    p->full = p->oom = 0;
}

/* Copies a row into the page, as the CloudEvent it stores: the metadata object without its
 * closing brace, then ,"data": and the data, then the brace. */
static int page_add(void *ud, const ew__event_row *r)
{
    page *p = ud;
    p->scanned++;
    p->last_position = r->position;
    p->last_version = r->version;
    if (p->pattern && !ew_pattern_match(p->pattern, r->event_type)) return 0;
    if (p->npatterns) {
        size_t i = 0;
        while (i < p->npatterns && !ew_pattern_match(p->patterns[i], r->event_type))
            i++;
        if (i == p->npatterns) return 0;
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        page_row *rows = realloc(p->rows, cap * sizeof *rows);
        if (!rows) goto oom;
        p->rows = rows;
        p->cap = cap;
    }
    const char *id = r->event_id ? r->event_id : "";
    size_t sl = strlen(r->stream_id), il = strlen(id), tl = strlen(r->event_type);
    size_t ml = r->metadata_len ? r->metadata_len - 1 : 0;
    size_t jl = ml + 8 + r->data_len + 1;
    char *block = malloc(sl + 1 + il + 1 + tl + 1 + jl + 1);
    if (!block) goto oom;
    memcpy(block, r->stream_id, sl + 1);
    memcpy(block + sl + 1, id, il + 1);
    memcpy(block + sl + 1 + il + 1, r->event_type, tl + 1);
    char *j = block + sl + 1 + il + 1 + tl + 1;
    memcpy(j, r->metadata, ml);
    memcpy(j + ml, ",\"data\":", 8);
    memcpy(j + ml + 8, r->data, r->data_len);
    j[jl - 1] = '}';
    j[jl] = '\0';
    page_row *pr = &p->rows[p->n++];
    pr->position = r->position;
    pr->version = r->version;
    pr->recorded_us = r->recorded_us;
    pr->stream_id = block;
    pr->event_id = block + sl + 1;
    pr->event_type = block + sl + 1 + il + 1;
    pr->json = j;
    pr->json_len = jl;
    p->bytes += jl;
    if (p->bytes >= PAGE_BYTES) {
        p->full = 1;
        return 1;
    }
    return 0;
oom:
    p->oom = 1;
    return 1;
}

/* Decodes the page's rows and hands them to fn, without the mutex. 1: fn said stop, or max
 * events were delivered. */
static int page_deliver(page *p, ew_store_read_fn fn, void *ud, size_t max, size_t *delivered,
                        int *rc, ew_error *err)
{
    for (size_t i = 0; i < p->n; i++) {
        page_row *r = &p->rows[i];
        ew_event *ev;
        ew_decode_opts o = {r->json_len + 1, 0}; /* stored events are read whatever the limit */
        ew_error e = {0};
        if ((*rc = ew_event_decode(&ev, r->json, r->json_len, &o, &e))) {
            ew_error_set(err, *rc, "event at position %lld: %s", (long long)r->position, e.msg);
            return 1;
        }
        ew_stored_event se = {r->position, r->stream_id, r->version, r->recorded_us, ev};
        int stop = fn(ud, &se);
        ew_event_unref(ev);
        (*delivered)++;
        if (stop || (max && *delivered >= max)) return 1;
    }
    return 0;
}

/* A pattern that is one exact type can be given to the database as a filter. */
static int pattern_is_exact(const char *p)
{
    return strcmp(p, "*") != 0 && !strchr(p, '*') && !strchr(p, '#');
}

static int read_pages(ew_store *s, int by_stream, const char *stream_id, int64_t from,
                      const char *pattern, size_t max, ew_store_read_fn fn, void *ud, ew_error *err)
{
    const char *type = NULL;
    page p = {0};
    if (pattern && strcmp(pattern, "*") == 0) pattern = NULL;
    if (pattern && pattern_is_exact(pattern))
        type = pattern;
    else
        p.pattern = pattern;
    size_t delivered = 0;
    int rc = 0;
    for (;;) {
        size_t limit = PAGE_ROWS;
        if (max && !p.pattern && max - delivered < limit) limit = max - delivered;
        page_clear(&p);
        if ((rc = ew__store_lock(s, err))) break;
        if (by_stream)
            rc = s->ops->read_stream(s->conn, stream_id, from, limit, page_add, &p, err);
        else
            rc = s->ops->read_all(s->conn, from, type, limit, page_add, &p, err);
        ew__store_unlock(s);
        if (rc) break;
        if (p.oom) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
            break;
        }
        if (page_deliver(&p, fn, ud, max, &delivered, &rc, err)) break;
        if (p.scanned < limit && !p.full) break; /* the end */
        from = by_stream ? p.last_version + 1 : p.last_position;
    }
    page_clear(&p);
    free(p.rows);
    return rc;
}

int ew_store_read_stream(ew_store *s, const char *stream_id, int64_t from_version, size_t max,
                         ew_store_read_fn fn, void *ud, ew_error *err)
{
    if (!s || !stream_id || !fn)
        return ew_error_set(err, EW_EINVAL, "store, stream id and callback are required");
    return read_pages(s, 1, stream_id, from_version < 1 ? 1 : from_version, NULL, max, fn, ud, err);
}

int ew_store_read_all(ew_store *s, int64_t from_position, const char *pattern, size_t max,
                      ew_store_read_fn fn, void *ud, ew_error *err)
{
    if (!s || !fn) return ew_error_set(err, EW_EINVAL, "store and callback are required");
    if (pattern && !ew_pattern_valid(pattern))
        return ew_error_set(err, EW_EINVAL, "'%.80s' is not a valid pattern", pattern);
    return read_pages(s, 0, NULL, from_position < 0 ? 0 : from_position, pattern, max, fn, ud, err);
}

int ew_store_head(ew_store *s, int64_t *position, ew_error *err)
{
    if (!s || !position) return ew_error_set(err, EW_EINVAL, "store and position are required");
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    rc = s->ops->head(s->conn, position, err);
    ew__store_unlock(s);
    return rc;
}

int ew_store_stream_version(ew_store *s, const char *stream_id, int64_t *version, ew_error *err)
{
    if (!s || !stream_id || !version)
        return ew_error_set(err, EW_EINVAL, "store, stream id and version are required");
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    rc = s->ops->stream_version(s->conn, stream_id, version, err);
    ew__store_unlock(s);
    return rc;
}

int ew_store_purge_batch(ew_store *s, int64_t now_us, size_t batch, size_t *purged, ew_error *err)
{
    *purged = 0;
    if (!s) return ew_error_set(err, EW_EINVAL, "store is required");
    if (!s->ttl_us) return 0;
    if (!batch) batch = DEFAULT_PURGE_BATCH;
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    rc = s->ops->purge(s->conn, now_us, batch, purged, err);
    ew__store_unlock(s);
    return rc;
}

int ew_store_purge(ew_store *s, size_t batch, size_t *purged, ew_error *err)
{
    if (purged) *purged = 0;
    if (!s) return ew_error_set(err, EW_EINVAL, "store is required");
    if (!s->ttl_us) return 0;
    if (!batch) batch = DEFAULT_PURGE_BATCH;
    const int64_t now = ew_now_us(); /* fixed: the purge ends even while events keep expiring */
    size_t total = 0;
    int rc;
    for (;;) {
        size_t n = 0;
        rc = ew_store_purge_batch(s, now, batch, &n, err);
        total += n;
        if (rc || n < batch) break;
    }
    if (total) ew__store_logf(&s->log, EW_LOG_INFO, "purged %zu expired events", total);
    if (purged) *purged = total;
    return rc;
}

/* ---- retention ------------------------------------------------------------------------------- */

/* One batch of `DELETE ... WHERE id IN (SELECT id ... WHERE <col> < $1 ... LIMIT batch)`: the
 * same SQL on both databases (SQLite keeps RFC 3339 text, which sorts as time; PostgreSQL reads
 * the text as timestamptz). */
static int delete_before(ew_store *s, const char *table, const char *cond, int64_t before_us,
                         size_t batch, size_t *n, ew_error *err)
{
    *n = 0;
    if (!s) return ew_error_set(err, EW_EINVAL, "store is required");
    if (!batch) batch = DEFAULT_PURGE_BATCH;
    char t[EW_TIME_LEN + 1], sql[512];
    if (ew_time_format(before_us, t)) return ew_error_set(err, EW_EINVAL, "time out of range");
    snprintf(sql, sizeof sql,
             "DELETE FROM event_store.%s WHERE id IN (SELECT id FROM event_store.%s WHERE %s"
             " ORDER BY id LIMIT %zu)",
             table, table, cond, batch);
    ew_txn *tx;
    int rc = ew_store_begin(s, &tx, err);
    if (rc) return rc;
    const char *p[] = {t};
    int64_t changes = 0;
    rc = ew_txn_exec(tx, sql, p, 1, &changes, err);
    if (rc) {
        ew_txn_rollback(tx);
        return rc;
    }
    if (!(rc = ew_txn_commit(tx, err))) *n = (size_t)changes;
    return rc;
}

int ew_store_outbox_prune(ew_store *s, int64_t sent_before_us, size_t batch, size_t *n,
                          ew_error *err)
{
    return delete_before(s, "outbox", "sent_at IS NOT NULL AND sent_at < $1", sent_before_us, batch,
                         n, err);
}

int ew_store_dlq_purge(ew_store *s, int64_t before_us, size_t batch, size_t *n, ew_error *err)
{
    return delete_before(s, "dead_letter_queue", "last_failed_at < $1", before_us, batch, n, err);
}

/* ---- dead letters ---------------------------------------------------------------------------- */

/* Text the database takes: valid UTF-8 without NUL. A byte that is not part of a valid
 * sequence is written \xNN. Returns a malloc'ed string, or NULL when out of memory. */
static char *utf8_text(const char *s, size_t n)
{
    char *out = malloc(n * 4 + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        if (c != 0 && i + k <= n && ew_utf8_valid(s + i, k)) {
            memcpy(o, s + i, k);
            o += k;
            i += k;
        } else {
            o += sprintf(o, "\\x%02X", c);
            i++;
        }
    }
    *o = '\0';
    return out;
}

/* s itself when it is valid text, else a cleaned copy in *own. */
static const char *text_of(const char *s, char **own)
{
    if (!s) return NULL;
    size_t n = strlen(s);
    if (ew_utf8_valid(s, n)) return s;
    return *own = utf8_text(s, n);
}

static int dlq_put(void *self, const ew_dead_letter *dl, ew_error *err)
{
    ew_store *s = self;
    if (!s || !dl) return ew_error_set(err, EW_EINVAL, "store and dead letter are required");
    char *own[7] = {0};
    int rc = 0;
    ew__dlq_put p = {0};
    if (dl->event) {
        /* as it was received (at its version, its ciphertext as it came): a retry of it
         * verifies as the first delivery did */
        if ((rc = ew__store_encode(s, ew__event_received(dl->event), &own[0], NULL, err)))
            return rc;
        p.event = own[0];
    } else {
        p.event = own[0] =
            utf8_text(dl->payload ? dl->payload : "", dl->payload ? dl->payload_len : 0);
    }
    const char *id = dl->event_id, *type = dl->event_type;
    if (!id && dl->event) id = ew_event_id(dl->event);
    if (!type && dl->event) type = ew_event_type(dl->event);
    p.event_id = text_of(id, &own[1]);
    p.event_name = text_of(type, &own[2]);
    p.handler = text_of(dl->handler ? dl->handler : "", &own[3]);
    p.group = text_of(dl->group ? dl->group : "", &own[4]);
    p.error = text_of(dl->error ? dl->error : "", &own[5]);
    p.transport = text_of(dl->transport, &own[6]);
    if (!p.event || (id && !p.event_id) || (type && !p.event_name) || !p.handler || !p.group ||
        !p.error || (dl->transport && !p.transport)) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto done;
    }
    p.attempts = dl->attempts > 0 ? dl->attempts : 1;
    p.now_us = ew_now_us();
    p.last_failed_us = dl->last_failed_us ? dl->last_failed_us : p.now_us;
    p.first_failed_us = dl->first_failed_us ? dl->first_failed_us : p.last_failed_us;
    if ((rc = ew__store_lock(s, err))) goto done;
    rc = s->ops->dlq_put(s->conn, &p, err);
    ew__store_unlock(s);
    if (!rc)
        ew__store_logf(&s->log, EW_LOG_WARN, "dead letter %s (%s) for %s/%s: %s",
                       p.event_id ? p.event_id : "-", p.event_name ? p.event_name : "-", p.group,
                       p.handler, p.error);
done:
    for (int i = 0; i < 7; i++)
        free(own[i]);
    return rc;
}

/* A retried dead letter was handled: retried → resolved. A row that is not "retried" any more
 * (failed again and pending, or discarded meanwhile) keeps its status. */
static int dlq_resolved(void *self, int64_t id, ew_error *err)
{
    ew_store *s = self;
    int changed = 0;
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    rc = s->ops->dlq_set_status(s->conn, id, EW_DLQ_RETRIED, EW_DLQ_RESOLVED, ew_now_us(), &changed,
                                err);
    ew__store_unlock(s);
    if (!rc && changed)
        ew__store_logf(&s->log, EW_LOG_INFO, "dead letter %lld resolved", (long long)id);
    return rc;
}

static const ew_dlq_sink_ops dlq_sink_ops = {2, dlq_put, dlq_resolved};

ew_dlq_sink ew_store_dlq_sink(ew_store *s)
{
    ew_dlq_sink k = {&dlq_sink_ops, s};
    return k;
}

void ew_dlq_row_release(ew_dlq_row *row)
{
    if (!row) return;
    free(row->event_id);
    free(row->event_name);
    free(row->handler);
    free(row->subscriber_group);
    free(row->event);
    free(row->error);
    free(row->transport);
    memset(row, 0, sizeof *row);
}

static char *dup_or_null(const char *s, int *oom)
{
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = 1;
    return d;
}

typedef struct dlq_rows {
    ew_dlq_row *rows;
    size_t n, cap;
    int oom;
} dlq_rows;

static int dlq_collect(void *ud, const ew_dlq_row *r)
{
    dlq_rows *l = ud;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        ew_dlq_row *rows = realloc(l->rows, cap * sizeof *rows);
        if (!rows) {
            l->oom = 1;
            return 1;
        }
        l->rows = rows;
        l->cap = cap;
    }
    ew_dlq_row *c = &l->rows[l->n++];
    *c = *r;
    c->event_id = dup_or_null(r->event_id, &l->oom);
    c->event_name = dup_or_null(r->event_name, &l->oom);
    c->handler = dup_or_null(r->handler, &l->oom);
    c->subscriber_group = dup_or_null(r->subscriber_group, &l->oom);
    c->event = dup_or_null(r->event, &l->oom);
    c->error = dup_or_null(r->error, &l->oom);
    c->transport = dup_or_null(r->transport, &l->oom);
    return l->oom;
}

static int dlq_query(ew_store *s, const ew_dlq_filter *f, int64_t id, dlq_rows *l, ew_error *err)
{
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    rc = s->ops->dlq_list(s->conn, f, id, dlq_collect, l, err);
    ew__store_unlock(s);
    if (!rc && l->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    return rc;
}

static void dlq_rows_release(dlq_rows *l)
{
    for (size_t i = 0; i < l->n; i++)
        ew_dlq_row_release(&l->rows[i]);
    free(l->rows);
}

int ew_store_dlq_list(ew_store *s, const ew_dlq_filter *f, ew_dlq_list_fn fn, void *ud,
                      ew_error *err)
{
    if (!s || !fn) return ew_error_set(err, EW_EINVAL, "store and callback are required");
    ew_dlq_filter any = {NULL, NULL, NULL, -1, 0};
    if (!f) f = &any;
    if (f->status < -1 || f->status > EW_DLQ_DISCARDED)
        return ew_error_set(err, EW_EINVAL, "status %d is not a dead letter status", f->status);
    dlq_rows l = {0};
    int rc = dlq_query(s, f, 0, &l, err);
    for (size_t i = 0; !rc && i < l.n; i++)
        if (fn(ud, &l.rows[i])) break;
    dlq_rows_release(&l);
    return rc;
}

int ew_store_dlq_get(ew_store *s, int64_t id, ew_dlq_row *row, ew_error *err)
{
    if (!s || !row) return ew_error_set(err, EW_EINVAL, "store and row are required");
    memset(row, 0, sizeof *row);
    ew_dlq_filter any = {NULL, NULL, NULL, -1, 1};
    dlq_rows l = {0};
    int rc = id > 0 ? dlq_query(s, &any, id, &l, err) : 0;
    if (!rc && l.n == 0) rc = ew_error_set(err, EW_ENOTFOUND, "no dead letter %lld", (long long)id);
    if (!rc) {
        *row = l.rows[0];
        l.n = 0;
    }
    dlq_rows_release(&l);
    return rc;
}

int ew_store_dlq_set_status(ew_store *s, int64_t id, ew_dlq_status st, ew_error *err)
{
    if (!s) return ew_error_set(err, EW_EINVAL, "store is required");
    if ((unsigned)st > EW_DLQ_DISCARDED)
        return ew_error_set(err, EW_EINVAL, "status %d is not a dead letter status", (int)st);
    int changed = 0;
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    rc = s->ops->dlq_set_status(s->conn, id, -1, st, ew_now_us(), &changed, err);
    ew__store_unlock(s);
    if (!rc && !changed) rc = ew_error_set(err, EW_ENOTFOUND, "no dead letter %lld", (long long)id);
    return rc;
}

/* ---- the inbox ------------------------------------------------------------------------------- */

static int inbox_begin(void *self, const char *handler, const char *event_id, void **txn,
                       ew_error *err)
{
    ew_store *s = self;
    *txn = NULL;
    if (!s || !handler || !event_id)
        return ew_error_set(err, EW_EINVAL, "handler and event id are required");
    int seen = 0;
    int rc = ew__txn_open(s, err);
    if (rc) return rc;
    if ((rc = s->ops->inbox_seen(s->conn, handler, event_id, &seen, err)) || seen) {
        ew__txn_undo(s);
        return rc ? rc : 1;
    }
    *txn = &s->txn;
    return 0;
}

static int inbox_commit(void *self, const char *handler, const char *event_id, void *txn,
                        ew_error *err)
{
    ew_store *s = self;
    ew_txn *t = txn;
    if (!t || t != &s->txn || !t->active)
        return ew_error_set(err, EW_ESTATE, "no inbox transaction is open");
    int rc = ew__txn_check(t, err);
    if (!rc) rc = s->ops->inbox_record(s->conn, handler, event_id, ew_now_us(), err);
    if (rc) {
        ew__txn_undo(s);
        return rc;
    }
    return ew__txn_keep(s, err);
}

static void inbox_rollback(void *self, void *txn)
{
    (void)self;
    ew_txn_rollback(txn);
}

static int inbox_hold(void *self, ew_error *err)
{
    return ew__store_hold(self, err);
}

static int inbox_release(void *self, ew_error *err)
{
    return ew__store_release(self, err);
}

static const ew_inbox_ops inbox_ops = {.version = 2,
                                       .begin = inbox_begin,
                                       .commit = inbox_commit,
                                       .rollback = inbox_rollback,
                                       .hold = inbox_hold,
                                       .release = inbox_release};

ew_inbox ew_store_inbox(ew_store *s)
{
    ew_inbox ib = {&inbox_ops, s};
    return ib;
}

ew_store *ew__inbox_store(ew_inbox ib)
{
    return ib.ops == &inbox_ops ? ib.self : NULL;
}

ew_txn *ew__inbox_txn(ew_inbox ib, void *txn)
{
    return ib.ops == &inbox_ops ? txn : NULL;
}

int ew_store_inbox_purge(ew_store *s, int64_t max_age_s, size_t *purged, ew_error *err)
{
    if (purged) *purged = 0;
    if (!s || max_age_s < 0)
        return ew_error_set(err, EW_EINVAL, "store and a max age >= 0 are required");
    const int64_t before = ew_now_us() - max_age_s * 1000000;
    size_t total = 0;
    int rc;
    for (;;) {
        size_t n = 0;
        if ((rc = ew__store_lock(s, err))) break;
        rc = s->ops->inbox_purge(s->conn, before, DEFAULT_PURGE_BATCH, &n, err);
        ew__store_unlock(s);
        total += n;
        if (rc || n < DEFAULT_PURGE_BATCH) break;
    }
    if (purged) *purged = total;
    return rc;
}

int ew_store_compact(ew_store *s, const char *const *tables, size_t n, ew_error *err)
{
    if (!s || (n && !tables)) return ew_error_set(err, EW_EINVAL, "store and tables are required");
    for (size_t i = 0; i < n; i++) {
        size_t l = tables[i] ? strlen(tables[i]) : 0;
        if (l == 0 || l > 63 || strspn(tables[i], "abcdefghijklmnopqrstuvwxyz0123456789_") != l)
            return ew_error_set(err, EW_EINVAL, "'%.80s' is not a table name ([a-z0-9_]{1,63})",
                                tables[i] ? tables[i] : "(null)");
    }
    /* SQLite's secure_delete has overwritten every deleted row already */
    if (strcmp(s->ops->name, "postgresql") != 0) return 0;
    int rc = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        char sql[128];
        snprintf(sql, sizeof sql, "VACUUM FULL event_store.%s", tables[i]);
        /* one table at a time, each a statement of its own (VACUUM runs in no transaction) */
        if (!(rc = ew__store_lock(s, err))) {
            rc = s->ops->script(s->conn, sql, err);
            ew__store_unlock(s);
        }
    }
    return rc;
}

/* ---- the outbox ------------------------------------------------------------------------------ */

int ew_outbox_add(ew_txn *t, const ew_event *ev, ew_error *err)
{
    int rc = ew__txn_check(t, err);
    if (rc) return rc;
    if (!ev) return ew_error_set(err, EW_EINVAL, "event is required");
    char *text;
    size_t len;
    if ((rc = ew__store_encode(t->s, ev, &text, &len, err))) return rc;
    if (len > t->s->max_bytes)
        rc = ew_error_set(err, EW_ETOOBIG,
                          "event %s encodes to %zu bytes, more than EVENT_MAX_BYTES (%zu)",
                          ew_event_id(ev), len, t->s->max_bytes);
    else if ((rc = t->s->ops->outbox_add(t->s->conn, ew_event_id(ev), text, len, ew_now_us(), err)))
        t->failed = 1;
    free(text);
    return rc;
}

typedef struct outbox_rows {
    int64_t *ids;
    char **texts;
    size_t *lens;
    size_t n, cap;
    int oom;
} outbox_rows;

static int outbox_collect(void *ud, const ew__outbox_row *r)
{
    outbox_rows *l = ud;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        int64_t *ids = realloc(l->ids, cap * sizeof *ids);
        if (ids) l->ids = ids;
        char **texts = ids ? realloc(l->texts, cap * sizeof *texts) : NULL;
        if (texts) l->texts = texts;
        size_t *lens = texts ? realloc(l->lens, cap * sizeof *lens) : NULL;
        if (!lens) {
            l->oom = 1;
            return 1;
        }
        l->lens = lens;
        l->cap = cap;
    }
    char *t = malloc(r->len + 1);
    if (!t) {
        l->oom = 1;
        return 1;
    }
    memcpy(t, r->event, r->len);
    t[r->len] = '\0';
    l->ids[l->n] = r->id;
    l->texts[l->n] = t;
    l->lens[l->n++] = r->len;
    return 0;
}

/* Ends a claim: mark (sent) or give the rows back. release() touches only what claim() set up,
 * so it runs even when the mutex cannot be had. */
static int outbox_end(ew_store *s, outbox_rows *l, int mark, ew_error *err)
{
    ew_error e = {0};
    int rc = ew__store_lock(s, mark ? err : &e);
    if (rc) {
        s->ops->outbox_release(s->conn);
        return rc;
    }
    if (mark)
        rc = s->ops->outbox_mark(s->conn, l->ids, l->n, ew_now_us(), err);
    else
        s->ops->outbox_release(s->conn);
    ew__store_unlock(s);
    return rc;
}

int ew_store_outbox_relay(ew_store *s, size_t batch, ew_outbox_publish_fn publish, void *ud,
                          size_t *sent, ew_error *err)
{
    if (sent) *sent = 0;
    if (!s || !publish) return ew_error_set(err, EW_EINVAL, "store and publish are required");
    if (!batch) batch = DEFAULT_RELAY_BATCH;
    outbox_rows l = {0};
    ew_event **evs = NULL;
    size_t nev = 0;
    pthread_mutex_lock(&s->relay_mu);
    int rc = ew__store_lock(s, err);
    if (rc) goto done;
    rc = s->ops->outbox_claim(s->conn, batch, outbox_collect, &l, err);
    ew__store_unlock(s);
    if (rc) goto done;
    if (l.oom || !(evs = calloc(l.n ? l.n : 1, sizeof *evs))) {
        outbox_end(s, &l, 0, NULL);
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto done;
    }
    for (; nev < l.n; nev++) {
        ew_decode_opts o = {l.lens[nev] + 1, 0};
        ew_error e = {0};
        if ((rc = ew_event_decode(&evs[nev], l.texts[nev], l.lens[nev], &o, &e))) {
            outbox_end(s, &l, 0, NULL);
            ew_error_set(err, rc, "outbox row %lld: %s", (long long)l.ids[nev], e.msg);
            goto done;
        }
    }
    if (l.n == 0) {
        outbox_end(s, &l, 0, NULL);
        goto done;
    }
    if ((rc = publish(ud, (const ew_event *const *)evs, l.n, err))) {
        outbox_end(s, &l, 0, NULL);
        goto done;
    }
    /* A crash here publishes the batch again on the next run: at least once. */
    if ((rc = outbox_end(s, &l, 1, err))) goto done;
    if (sent) *sent = l.n;
done:
    pthread_mutex_unlock(&s->relay_mu);
    for (size_t i = 0; i < nev; i++)
        ew_event_unref(evs[i]);
    free(evs);
    for (size_t i = 0; i < l.n; i++)
        free(l.texts[i]);
    free(l.ids);
    free(l.texts);
    free(l.lens);
    return rc;
}

/* ---- the log as a bus: record, scan, data version, groups ---------------------------------- */

/* The events of a record, encoded, each with its stream, repeats dropped. */
typedef struct record_set {
    ew__store_rec *recs;
    const char **streams;
    char **texts;
    size_t n, unique;
} record_set;

static void record_set_release(record_set *r)
{
    if (r->texts)
        for (size_t i = 0; i < r->n; i++)
            free(r->texts[i]);
    free(r->texts);
    free(r->recs);
    free(r->streams);
}

static int record_set_init(record_set *r, const ew_store *s, const ew_event *const *evs, size_t n,
                           ew_error *err)
{
    memset(r, 0, sizeof *r);
    if (n && !evs) return ew_error_set(err, EW_EINVAL, "events are required");
    r->n = n;
    size_t k = n ? n : 1;
    r->recs = calloc(k, sizeof *r->recs);
    r->streams = calloc(k, sizeof *r->streams);
    r->texts = calloc(k, sizeof *r->texts);
    if (!r->recs || !r->streams || !r->texts) return ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (!evs[i]) return ew_error_set(err, EW_EINVAL, "event %zu of %zu is NULL", i, n);
        ew_error e = {0};
        int rc = encode_rec(s, evs[i], &r->texts[i], &r->recs[i], &e);
        if (rc) return ew_error_set(err, rc, "event %zu of %zu: %s", i, n, e.msg);
        const char *subject = ew_event_subject(evs[i]);
        r->streams[i] = subject && *subject ? subject : ew_event_type(evs[i]);
    }
    int rc = 0;
    r->unique = drop_repeats(r->recs, r->streams, n, err, &rc);
    return rc;
}

/* Runs the record op on an open transaction of s. */
static int record_in_txn(ew_store *s, record_set *r, ew_append_result *res, ew_error *err)
{
    ew__record_args a = {r->recs, r->streams, r->unique, ew_now_us(), 0};
    if (s->ttl_us) a.expires_us = a.recorded_us + s->ttl_us;
    ew_append_result out = {0};
    int rc = s->ops->record(s->conn, &a, &out, err);
    out.duplicates += r->n - r->unique;
    if (!rc && res) *res = out;
    return rc;
}

int ew__store_record(ew_store *s, const ew_event *const *evs, size_t n, ew_append_result *res,
                     ew_error *err)
{
    if (!s) return ew_error_set(err, EW_EINVAL, "store is required");
    int rc;
    record_set r;
    if ((rc = record_set_init(&r, s, evs, n, err))) goto done;
    if (r.unique == 0) {
        if (res) *res = (ew_append_result){.duplicates = n};
        goto done;
    }
    if ((rc = ew__store_lock(s, err))) goto done;
    if (!(rc = s->ops->begin(s->conn, err))) {
        if ((rc = record_in_txn(s, &r, res, err)))
            s->ops->rollback(s->conn);
        else
            rc = s->ops->commit(s->conn, err);
    }
    ew__store_unlock(s);
done:
    record_set_release(&r);
    return rc;
}

int ew__txn_record(ew_txn *t, const ew_event *const *evs, size_t n, ew_append_result *res,
                   ew_error *err)
{
    int rc = ew__txn_check(t, err);
    if (rc) return rc;
    record_set r;
    if (!(rc = record_set_init(&r, t->s, evs, n, err))) {
        if (r.unique == 0) {
            if (res) *res = (ew_append_result){.duplicates = n};
        } else if ((rc = record_in_txn(t->s, &r, res, err))) {
            t->failed = 1;
        }
    }
    record_set_release(&r);
    return rc;
}

int ew__store_data_version(ew_store *s, int64_t *version, ew_error *err)
{
    if (!s || !version) return ew_error_set(err, EW_EINVAL, "store and version are required");
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    rc = s->ops->data_version(s->conn, version, err);
    ew__store_unlock(s);
    return rc;
}

int ew__store_sync_commits(ew_store *s, int on, ew_error *err)
{
    if (!s) return ew_error_set(err, EW_EINVAL, "store is required");
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    rc = s->ops->sync_commits(s->conn, on != 0, err);
    ew__store_unlock(s);
    return rc;
}

/* Hands the page's rows to fn, decoded where they decode. 1: fn said stop. */
static int scan_deliver(page *p, size_t max_bytes, ew__store_scan_fn fn, void *ud, int64_t *last)
{
    for (size_t i = 0; i < p->n; i++) {
        page_row *r = &p->rows[i];
        ew_event *ev = NULL;
        ew_error e = {0};
        int code = 0;
        if (max_bytes && r->json_len > max_bytes) {
            code =
                ew_error_set(&e, EW_ETOOBIG, "event at position %lld is %zu bytes, more than %zu",
                             (long long)r->position, r->json_len, max_bytes);
        } else {
            ew_decode_opts o = {r->json_len + 1, 0};
            code = ew_event_decode(&ev, r->json, r->json_len, &o, &e);
        }
        ew__store_entry en = {
            .position = r->position,
            .event_id = r->event_id,
            .event_type = r->event_type,
            .stream_id = r->stream_id,
            .version = r->version,
            .recorded_us = r->recorded_us,
            .event = code ? NULL : ev,
            .json = r->json,
            .json_len = r->json_len,
            .error = code,
            .error_msg = code ? e.msg : "",
        };
        int stop = fn(ud, &en);
        ew_event_unref(ev);
        if (stop) {
            *last = r->position;
            return 1;
        }
    }
    return 0;
}

int ew__store_scan(ew_store *s, int64_t from_position, const char *const *patterns,
                   size_t npatterns, size_t max, size_t max_bytes, ew__store_scan_fn fn, void *ud,
                   int64_t *last_position, ew_error *err)
{
    if (last_position) *last_position = from_position;
    if (!s || !fn || (npatterns && !patterns))
        return ew_error_set(err, EW_EINVAL, "store, callback and patterns are required");
    for (size_t i = 0; i < npatterns; i++)
        if (!patterns[i] || !ew_pattern_valid(patterns[i]))
            return ew_error_set(err, EW_EINVAL, "'%.80s' is not a valid pattern",
                                patterns[i] ? patterns[i] : "(null)");
    page p = {0};
    p.patterns = patterns;
    p.npatterns = npatterns;
    for (size_t i = 0; i < npatterns; i++)
        if (strcmp(patterns[i], "*") == 0) p.npatterns = 0; /* matches every type */
    int64_t from = from_position < 0 ? 0 : from_position, last = from;
    size_t looked = 0;
    int rc = 0;
    for (;;) {
        size_t limit = PAGE_ROWS;
        if (max && max - looked < limit) limit = max - looked;
        page_clear(&p);
        if ((rc = ew__store_lock(s, err))) break;
        rc = s->ops->read_all(s->conn, from, NULL, limit, page_add, &p, err);
        ew__store_unlock(s);
        if (rc) break;
        if (p.oom) {
            rc = ew_error_set(err, EW_ENOMEM, "out of memory");
            break;
        }
        if (scan_deliver(&p, max_bytes, fn, ud, &last)) break;
        if (p.scanned) last = p.last_position;
        looked += p.scanned;
        if ((p.scanned < limit && !p.full) || (max && looked >= max)) break; /* the end */
        from = p.last_position;
    }
    page_clear(&p);
    free(p.rows);
    if (last_position && !rc) *last_position = last;
    return rc;
}

/* ---- subscriber groups ---- */

/* 1 to 200 of a-z, A-Z, 0-9, '.', '_', '-': what the bus allows. */
static int group_name_ok(const char *g)
{
    size_t n = 0;
    for (; g && g[n]; n++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", g[n]))
            return 0;
    return n > 0 && n <= 200;
}

static int owner_ok(const char *o)
{
    return o && *o && strlen(o) < EW__STORE_OWNER_MAX;
}

static int group_copy(void *ud, const ew__group_row *row)
{
    ew__store_group *g = ud;
    memset(g, 0, sizeof *g);
    g->position = row->position;
    snprintf(g->owner, sizeof g->owner, "%s", row->owner ? row->owner : "");
    g->lease_until_us = row->lease_until_us;
    g->updated_us = row->updated_us;
    return 0;
}

static int group_read(ew_store *s, const char *group, ew__store_group *g, ew_error *err)
{
    ew__store_group tmp;
    int found = 0;
    int rc = s->ops->group_get(s->conn, group, group_copy, g ? g : &tmp, &found, err);
    if (!rc && !found) rc = ew_error_set(err, EW_ENOTFOUND, "no subscriber group %s", group);
    return rc;
}

int ew__store_group_open(ew_store *s, const char *group, int from_beginning, ew__store_group *g,
                         ew_error *err)
{
    if (!s) return ew_error_set(err, EW_EINVAL, "store is required");
    if (!group_name_ok(group))
        return ew_error_set(err, EW_EINVAL,
                            "group '%.100s' must be 1 to 200 of a-z, A-Z, 0-9, '.', '_' and '-'",
                            group ? group : "(null)");
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    if (!(rc = s->ops->group_create(s->conn, group, from_beginning != 0, ew_now_us(), err)))
        rc = group_read(s, group, g, err);
    ew__store_unlock(s);
    return rc;
}

int ew__store_group_get(ew_store *s, const char *group, ew__store_group *g, ew_error *err)
{
    if (!s || !group || !g) return ew_error_set(err, EW_EINVAL, "store, group and g are required");
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    rc = group_read(s, group, g, err);
    ew__store_unlock(s);
    return rc;
}

int ew__store_group_lease(ew_store *s, const char *group, const char *owner, const char *from,
                          int64_t lease_ms, int *held, ew_error *err)
{
    if (held) *held = 0;
    if (!s || !group || !held || lease_ms <= 0)
        return ew_error_set(err, EW_EINVAL, "store, group, held and a lease time are required");
    if (!owner_ok(owner) || (from && !owner_ok(from)))
        return ew_error_set(err, EW_EINVAL, "an owner is 1 to %d bytes", EW__STORE_OWNER_MAX - 1);
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    int64_t now = ew_now_us();
    rc = s->ops->group_lease(s->conn, group, owner, from, now, now + lease_ms * 1000, held, err);
    if (!rc && !*held) rc = group_read(s, group, NULL, err); /* EW_ENOTFOUND, or held by another */
    ew__store_unlock(s);
    return rc;
}

int ew__store_group_commit(ew_store *s, const char *group, const char *owner, int64_t position,
                           int64_t lease_ms, int *held, ew_error *err)
{
    if (held) *held = 0;
    if (!s || !group || !held || lease_ms < 0 || position < 0)
        return ew_error_set(err, EW_EINVAL,
                            "store, group, held, a position and a lease time are required");
    if (!owner_ok(owner))
        return ew_error_set(err, EW_EINVAL, "an owner is 1 to %d bytes", EW__STORE_OWNER_MAX - 1);
    int rc = ew__store_lock(s, err);
    if (rc) return rc;
    int64_t now = ew_now_us();
    rc = s->ops->group_commit(s->conn, group, owner, position, now,
                              lease_ms ? now + lease_ms * 1000 : 0, held, err);
    ew__store_unlock(s);
    return rc;
}
