/* eventwire — saga instances in the store (003_sagas.sql): loading an instance, writing it back
 * with its transitions, consumed event and issued events in the caller's transaction, parked
 * events, the timer's queries, and the read API of saga.h that `ewctl saga` uses.
 *
 * The same SQL runs on SQLite and PostgreSQL: parameters are text, times are RFC 3339 text going
 * in (PostgreSQL casts them to timestamptz) and are parsed from either dialect's text coming out.
 * An instance changes only through UPDATE ... WHERE id = $1 AND version = $2: a writer that read
 * an older version changes no row, and the engine loads the instance again and retries. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/arena.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "saga/saga_impl.h"
#include "store/handle.h"

#define SAGA_COLUMNS                                                                               \
    "id, saga_type, correlation_key, correlation_id, subject, status, step, step_index, "          \
    "step_attempts, steps_done, data, reason, version, last_seq, started_at, updated_at, "         \
    "finished_at, deadline_at, step_deadline_at, wake_at"
enum {
    C_ID,
    C_TYPE,
    C_KEY,
    C_CORRELATION_ID,
    C_SUBJECT,
    C_STATUS,
    C_STEP,
    C_STEP_INDEX,
    C_ATTEMPTS,
    C_STEPS_DONE,
    C_DATA,
    C_REASON,
    C_VERSION,
    C_LAST_SEQ,
    C_STARTED,
    C_UPDATED,
    C_FINISHED,
    C_DEADLINE,
    C_STEP_DEADLINE,
    C_WAKE,
    C__COUNT
};

/* ---- statuses and times ---------------------------------------------------------------------- */

static const char *const status_names[] = {"running",     "completed", "compensating",
                                           "compensated", "failed",    "timed_out"};

const char *ew_saga_status_name(ew_saga_status st)
{
    return (unsigned)st < sizeof status_names / sizeof status_names[0] ? status_names[st]
                                                                       : "unknown";
}

int ew_saga_status_parse(const char *name)
{
    for (size_t i = 0; name && i < sizeof status_names / sizeof status_names[0]; i++)
        if (strcmp(status_names[i], name) == 0) return (int)i;
    return -1;
}

int ew__saga_time_parse(const char *s, int64_t *us)
{
    char buf[64];
    size_t n = s ? strlen(s) : 0;
    if (n < 19 || n + 4 > sizeof buf) return EW_ETIME;
    memcpy(buf, s, n + 1);
    if (buf[10] == ' ') buf[10] = 'T'; /* PostgreSQL: "2026-11-27 02:24:45.123456+00" */
    char *off = strpbrk(buf + 19, "+-");
    if (off && strlen(off) == 3) strcat(buf, ":00");
    return ew_time_parse(buf, us);
}

static int64_t time_or_zero(const char *s)
{
    int64_t us = 0;
    if (s && ew__saga_time_parse(s, &us)) us = 0;
    return us;
}

/* t as RFC 3339 in buf, or NULL (SQL NULL) for 0. */
static const char *fmt_time(char buf[EW_TIME_LEN + 1], int64_t t)
{
    if (!t || ew_time_format(t, buf)) return NULL;
    return buf;
}

/* ---- rows ------------------------------------------------------------------------------------ */

/* One row of sagas, copied out of the callback. */
typedef struct row_copy {
    char *v[C__COUNT];
    int found, oom;
} row_copy;

static void row_copy_release(row_copy *r)
{
    for (int i = 0; i < C__COUNT; i++)
        free(r->v[i]);
    memset(r, 0, sizeof *r);
}

static int copy_row(void *ud, const ew_row *row)
{
    row_copy *r = ud;
    if (row->ncols < C__COUNT) return 1;
    for (int i = 0; i < C__COUNT; i++)
        if (row->values[i] && !(r->v[i] = strdup(row->values[i]))) r->oom = 1;
    r->found = 1;
    return 1; /* one row */
}

static int64_t to_i64(const char *s)
{
    return s ? strtoll(s, NULL, 10) : 0;
}

/* steps_done (a JSON array of names) into the bitmask of t's steps; unknown names (a step a
 * newer declaration removed) are dropped. */
static uint64_t done_mask(const ew__saga_type *t, const char *json)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *root = NULL;
    uint64_t mask = 0;
    if (json && ew_json_parse(&root, json, strlen(json), NULL, &a, NULL) == 0 &&
        root->kind == EW_JSON_ARRAY)
        for (const ew_json *x = root->child; x; x = x->next)
            for (size_t i = 0; x->kind == EW_JSON_STRING && i < t->nsteps; i++)
                if (strcmp(t->steps[i].name, x->str) == 0) mask |= (uint64_t)1 << i;
    ew_arena_release(&a);
    return mask;
}

static void write_done(const ew_saga *s, ew_buf *b)
{
    ew_buf_putc(b, '[');
    int first = 1;
    for (size_t i = 0; i < s->t->nsteps; i++) {
        if (!((s->done >> i) & 1u)) continue;
        if (!first) ew_buf_putc(b, ',');
        first = 0;
        ew_json_write_string(b, s->t->steps[i].name, strlen(s->t->steps[i].name));
    }
    ew_buf_putc(b, ']');
}

static int fill_saga(ew_saga *s, row_copy *r, ew_error *err)
{
    char **v = r->v;
    if (!v[C_ID] || strlen(v[C_ID]) > EW_UUID_LEN)
        return ew_error_set(err, EW_EDATA, "a saga row has no valid id");
    strcpy(s->id, v[C_ID]);
    s->key = v[C_KEY], v[C_KEY] = NULL;
    s->correlation_id = v[C_CORRELATION_ID], v[C_CORRELATION_ID] = NULL;
    s->subject = v[C_SUBJECT], v[C_SUBJECT] = NULL;
    s->reason = v[C_REASON], v[C_REASON] = NULL;
    int st = ew_saga_status_parse(v[C_STATUS]);
    if (st < 0)
        return ew_error_set(err, EW_EDATA, "saga %s has an unknown status '%.32s'", s->id,
                            v[C_STATUS] ? v[C_STATUS] : "");
    s->status = (ew_saga_status)st;
    int64_t step = to_i64(v[C_STEP_INDEX]);
    s->step = step < 0 ? 0 : (size_t)step > s->t->nsteps ? s->t->nsteps : (size_t)step;
    s->attempts = (int)to_i64(v[C_ATTEMPTS]);
    s->done = done_mask(s->t, v[C_STEPS_DONE]);
    s->version = to_i64(v[C_VERSION]);
    s->last_seq = to_i64(v[C_LAST_SEQ]);
    s->started_us = time_or_zero(v[C_STARTED]);
    s->updated_us = time_or_zero(v[C_UPDATED]);
    s->finished_us = time_or_zero(v[C_FINISHED]);
    s->deadline_us = time_or_zero(v[C_DEADLINE]);
    s->step_deadline_us = time_or_zero(v[C_STEP_DEADLINE]);
    if (!s->key || !s->correlation_id)
        return ew_error_set(err, EW_EDATA, "saga %s lacks its correlation", s->id);
    return ew__kv_parse(&s->data, v[C_DATA] ? v[C_DATA] : "{}", err);
}

int ew__saga_load(ew_txn *txn, ew__saga_type *t, const char *id, const char *key,
                  const char *correlation_id, ew_saga *s, int *found, ew_error *err)
{
    const char *sql;
    const char *p[2] = {t->name, NULL};
    size_t np = 2;
    if (id) {
        sql = "SELECT " SAGA_COLUMNS " FROM event_store.sagas WHERE id = $1";
        p[0] = id;
        np = 1;
    } else if (key) {
        sql = "SELECT " SAGA_COLUMNS " FROM event_store.sagas "
              "WHERE saga_type = $1 AND correlation_key = $2";
        p[1] = key;
    } else {
        sql = "SELECT " SAGA_COLUMNS " FROM event_store.sagas "
              "WHERE saga_type = $1 AND correlation_id = $2 ORDER BY started_at DESC LIMIT 1";
        p[1] = correlation_id;
    }
    row_copy r = {0};
    *found = 0;
    int rc = ew_txn_query(txn, sql, p, np, copy_row, &r, err);
    if (!rc && r.oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    if (!rc && r.found && id && (!r.v[C_TYPE] || strcmp(r.v[C_TYPE], t->name) != 0))
        r.found = 0; /* another type's instance */
    if (!rc && r.found) {
        rc = fill_saga(s, &r, err);
        *found = rc == 0;
    }
    row_copy_release(&r);
    return rc;
}

/* ---- writing an instance --------------------------------------------------------------------- */

static int write_row(ew_txn *txn, ew_saga *s, int64_t now_us, int *written, ew_error *err)
{
    char t_start[EW_TIME_LEN + 1], t_now[EW_TIME_LEN + 1], t_fin[EW_TIME_LEN + 1],
        t_dl[EW_TIME_LEN + 1], t_sdl[EW_TIME_LEN + 1], t_wake[EW_TIME_LEN + 1];
    char step_index[24], attempts[24], version[24], old_version[24], last_seq[24];
    ew_buf done, data;
    ew_buf_init(&done);
    ew_buf_init(&data);
    write_done(s, &done);
    ew__kv_write(&s->data, &data);
    int rc = 0;
    if (done.oom || data.oom) {
        rc = ew_error_set(err, EW_ENOMEM, "out of memory");
        goto out;
    }
    snprintf(step_index, sizeof step_index, "%zu", s->step);
    snprintf(attempts, sizeof attempts, "%d", s->attempts);
    snprintf(old_version, sizeof old_version, "%" PRId64, s->version);
    snprintf(version, sizeof version, "%" PRId64, s->version + 1);
    snprintf(last_seq, sizeof last_seq, "%" PRId64, s->last_seq + (int64_t)s->ntr);
    const char *step = s->step < s->t->nsteps ? s->t->steps[s->step].name : NULL;
    const char *p[20] = {s->id,
                         s->t->name,
                         s->key,
                         s->correlation_id,
                         s->subject,
                         ew_saga_status_name(s->status),
                         step,
                         step_index,
                         attempts,
                         done.data,
                         data.data,
                         s->reason,
                         version,
                         last_seq,
                         fmt_time(t_start, s->started_us),
                         fmt_time(t_now, now_us),
                         fmt_time(t_fin, s->finished_us),
                         fmt_time(t_dl, s->deadline_us),
                         fmt_time(t_sdl, s->step_deadline_us),
                         fmt_time(t_wake, ew__saga_wake_us(s))};
    int64_t changes = 0;
    if (s->is_new) {
        rc = ew_txn_exec(txn,
                         "INSERT INTO event_store.sagas (" SAGA_COLUMNS ") VALUES ($1, $2, $3, "
                         "$4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, "
                         "$19, $20) ON CONFLICT (saga_type, correlation_key) DO NOTHING",
                         p, 20, &changes, err);
    } else {
        /* $2 is the version it was read at: no row changes when another writer got there first */
        const char *u[16] = {s->id, old_version, p[5],  p[6],  p[7],  p[8],  p[9],  p[10],
                             p[11], p[12],       p[13], p[15], p[16], p[17], p[18], p[19]};
        rc = ew_txn_exec(txn,
                         "UPDATE event_store.sagas SET status = $3, step = $4, step_index = $5, "
                         "step_attempts = $6, steps_done = $7, data = $8, reason = $9, "
                         "version = $10, last_seq = $11, updated_at = $12, finished_at = $13, "
                         "deadline_at = $14, step_deadline_at = $15, wake_at = $16 "
                         "WHERE id = $1 AND version = $2",
                         u, 16, &changes, err);
    }
    *written = changes > 0;
out:
    ew_buf_release(&done);
    ew_buf_release(&data);
    return rc;
}

static const char *status_or_null(int st)
{
    return st < 0 ? NULL : ew_saga_status_name((ew_saga_status)st);
}

static int write_transitions(ew_txn *txn, const ew_saga *s, ew_error *err)
{
    const ew_event *c = s->cause;
    for (size_t i = 0; i < s->ntr; i++) {
        const ew__saga_trans *tr = &s->tr[i];
        char seq[24], at[EW_TIME_LEN + 1];
        snprintf(seq, sizeof seq, "%" PRId64, s->last_seq + (int64_t)i + 1);
        const char *p[10] = {s->id,
                             seq,
                             status_or_null(tr->from_status),
                             ew_saga_status_name((ew_saga_status)tr->to_status),
                             tr->from_step,
                             tr->to_step,
                             c ? ew_event_id(c) : NULL,
                             c ? ew_event_type(c) : NULL,
                             fmt_time(at, tr->at_us),
                             tr->note ? tr->note : ""};
        int rc = ew_txn_exec(txn,
                             "INSERT INTO event_store.saga_transitions (saga_id, seq, "
                             "from_status, to_status, from_step, to_step, event_id, event_type, "
                             "recorded_at, note) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                             p, 10, NULL, err);
        if (rc) return rc;
    }
    return 0;
}

int ew__saga_save(ew_txn *txn, ew_saga *s, int *written, ew_error *err)
{
    int64_t now = s->now_us ? s->now_us : ew_now_us();
    int rc = write_row(txn, s, now, written, err);
    if (rc || !*written) return rc;
    if ((rc = write_transitions(txn, s, err))) return rc;
    if (s->cause) {
        char at[EW_TIME_LEN + 1];
        const char *p[4] = {s->id, ew_event_id(s->cause), ew_event_type(s->cause),
                            fmt_time(at, now)};
        rc = ew_txn_exec(txn,
                         "INSERT INTO event_store.saga_consumed (saga_id, event_id, event_type, "
                         "consumed_at) VALUES ($1, $2, $3, $4)",
                         p, 4, NULL, err);
        if (rc) return rc;
    }
    for (size_t i = 0; i < s->nout && !rc; i++)
        rc = ew_outbox_add(txn, s->out[i], err);
    return rc;
}

static int seen_row(void *ud, const ew_row *row)
{
    (void)row;
    *(int *)ud = 1;
    return 1;
}

int ew__saga_consumed(ew_txn *txn, const char *saga_id, const char *event_id, int *seen,
                      ew_error *err)
{
    const char *p[2] = {saga_id, event_id};
    *seen = 0;
    return ew_txn_query(txn,
                        "SELECT 1 FROM event_store.saga_consumed WHERE saga_id = $1 AND "
                        "event_id = $2",
                        p, 2, seen_row, seen, err);
}

/* ---- parked events --------------------------------------------------------------------------- */

int ew__saga_park(ew_txn *txn, const ew__saga_type *t, const ew_event *ev, const char *key,
                  ew_error *err)
{
    char *json = NULL, at[EW_TIME_LEN + 1];
    int rc = ew__store_encode(txn->s, ev, &json, NULL, err); /* personal fields encrypted */
    if (rc) return rc;
    const char *p[5] = {t->name, ew_event_id(ev), key, json, fmt_time(at, ew_now_us())};
    rc = ew_txn_exec(txn,
                     "INSERT INTO event_store.saga_parked (saga_type, event_id, correlation_key, "
                     "event, parked_at) VALUES ($1, $2, $3, $4, $5) "
                     "ON CONFLICT (saga_type, event_id) DO NOTHING",
                     p, 5, NULL, err);
    free(json);
    return rc;
}

int ew__saga_unpark(ew_txn *txn, const ew__saga_type *t, const char *event_id, ew_error *err)
{
    const char *p[2] = {t->name, event_id};
    return ew_txn_exec(txn,
                       "DELETE FROM event_store.saga_parked WHERE saga_type = $1 AND event_id = $2",
                       p, 2, NULL, err);
}

void ew__parked_release(ew__parked *p)
{
    for (size_t i = 0; i < p->n; i++)
        ew_event_unref(p->evs[i]);
    free(p->evs);
    memset(p, 0, sizeof *p);
}

typedef struct parked_rows {
    const ew_store *s;
    ew__parked *out;
    size_t cap;
    int oom;
} parked_rows;

static int parked_row(void *ud, const ew_row *row)
{
    parked_rows *l = ud;
    const char *json = row->values[0];
    ew_event *ev = NULL;
    /* A row that does not decode (a type this build lacks, ciphertext that does not
     * authenticate) stays until the purge. */
    if (!json || ew__store_decode(l->s, json, strlen(json), NULL, &ev, NULL)) return 0;
    if (l->out->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        ew_event **evs = realloc(l->out->evs, cap * sizeof *evs);
        if (!evs) {
            ew_event_unref(ev);
            l->oom = 1;
            return 1;
        }
        l->out->evs = evs;
        l->cap = cap;
    }
    l->out->evs[l->out->n++] = ev;
    return 0;
}

int ew__saga_parked(ew_txn *txn, const ew__saga_type *t, const char *key,
                    const char *correlation_id, size_t limit, ew__parked *out, ew_error *err)
{
    char sql[640];
    const char *p[3] = {t->name, key, correlation_id};
    size_t np = 3;
    if (key || correlation_id)
        snprintf(sql, sizeof sql,
                 "SELECT event FROM event_store.saga_parked WHERE saga_type = $1 AND "
                 "correlation_key IN ($2, $3) ORDER BY parked_at, event_id LIMIT %zu",
                 limit);
    else {
        /* Left behind by a process that died between creating an instance and applying them. */
        snprintf(sql, sizeof sql,
                 "SELECT p.event FROM event_store.saga_parked p WHERE p.saga_type = $1 AND "
                 "EXISTS (SELECT 1 FROM event_store.sagas s WHERE s.saga_type = p.saga_type AND "
                 "(s.correlation_key = p.correlation_key OR s.correlation_id = "
                 "p.correlation_key)) ORDER BY p.parked_at, p.event_id LIMIT %zu",
                 limit);
        np = 1;
    }
    parked_rows l = {txn->s, out, 0, 0};
    memset(out, 0, sizeof *out);
    int rc = ew_txn_query(txn, sql, p, np, parked_row, &l, err);
    if (!rc && l.oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    if (rc) ew__parked_release(out);
    return rc;
}

int ew__saga_parked_purge(ew_txn *txn, const ew__saga_type *t, int64_t before_us, ew_error *err)
{
    char at[EW_TIME_LEN + 1];
    const char *p[2] = {t->name, fmt_time(at, before_us)};
    if (!p[1]) return 0;
    return ew_txn_exec(
        txn, "DELETE FROM event_store.saga_parked WHERE saga_type = $1 AND parked_at < $2", p, 2,
        NULL, err);
}

/* ---- the timer's queries --------------------------------------------------------------------- */

typedef struct due_rows {
    char (*ids)[EW_UUID_LEN + 1];
    size_t n, max;
} due_rows;

static int due_row(void *ud, const ew_row *row)
{
    due_rows *d = ud;
    const char *id = row->values[0];
    if (id && strlen(id) <= EW_UUID_LEN && d->n < d->max) strcpy(d->ids[d->n++], id);
    return d->n >= d->max;
}

int ew__saga_due(ew_txn *txn, const ew__saga_type *t, int64_t now_us, size_t limit,
                 char (*ids)[EW_UUID_LEN + 1], size_t *n, ew_error *err)
{
    char sql[256], at[EW_TIME_LEN + 1];
    snprintf(sql, sizeof sql,
             "SELECT id FROM event_store.sagas WHERE saga_type = $1 AND wake_at <= $2 "
             "ORDER BY wake_at LIMIT %zu",
             limit);
    const char *p[2] = {t->name, fmt_time(at, now_us)};
    due_rows d = {ids, 0, limit};
    int rc = ew_txn_query(txn, sql, p, 2, due_row, &d, err);
    *n = d.n;
    return rc;
}

static int wake_row(void *ud, const ew_row *row)
{
    int64_t *at = ud;
    *at = time_or_zero(row->values[0]);
    return 1;
}

int ew__saga_next_wake(ew_txn *txn, const ew__saga_type *t, int64_t *at_us, ew_error *err)
{
    const char *p[1] = {t->name};
    *at_us = 0;
    return ew_txn_query(txn,
                        "SELECT min(wake_at) FROM event_store.sagas WHERE saga_type = $1 AND "
                        "wake_at IS NOT NULL",
                        p, 1, wake_row, at_us, err);
}

/* ---- the read API (saga.h)
 * ------------------------------------------------------------------------ */

void ew_saga_info_release(ew_saga_info *info)
{
    if (!info) return;
    free(info->id);
    free(info->type);
    free(info->correlation_key);
    free(info->correlation_id);
    free(info->subject);
    free(info->step);
    free(info->steps_done);
    free(info->data);
    free(info->reason);
    memset(info, 0, sizeof *info);
}

/* Moves the strings of a copied row into an info. */
static void info_from(ew_saga_info *in, row_copy *r)
{
    char **v = r->v;
    memset(in, 0, sizeof *in);
    in->id = v[C_ID], v[C_ID] = NULL;
    in->type = v[C_TYPE], v[C_TYPE] = NULL;
    in->correlation_key = v[C_KEY], v[C_KEY] = NULL;
    in->correlation_id = v[C_CORRELATION_ID], v[C_CORRELATION_ID] = NULL;
    in->subject = v[C_SUBJECT], v[C_SUBJECT] = NULL;
    int st = ew_saga_status_parse(v[C_STATUS]);
    in->status = st < 0 ? EW_SAGA_RUNNING : (ew_saga_status)st;
    in->step = v[C_STEP], v[C_STEP] = NULL;
    in->step_index = (int)to_i64(v[C_STEP_INDEX]);
    in->step_attempts = (int)to_i64(v[C_ATTEMPTS]);
    in->steps_done = v[C_STEPS_DONE], v[C_STEPS_DONE] = NULL;
    in->data = v[C_DATA], v[C_DATA] = NULL;
    in->reason = v[C_REASON], v[C_REASON] = NULL;
    in->version = to_i64(v[C_VERSION]);
    in->started_us = time_or_zero(v[C_STARTED]);
    in->updated_us = time_or_zero(v[C_UPDATED]);
    in->finished_us = time_or_zero(v[C_FINISHED]);
    in->deadline_us = time_or_zero(v[C_DEADLINE]);
    in->step_deadline_us = time_or_zero(v[C_STEP_DEADLINE]);
}

typedef struct info_list {
    ew_saga_info *items;
    size_t n, cap;
    int oom;
} info_list;

static int collect_info(void *ud, const ew_row *row)
{
    info_list *l = ud;
    if (row->ncols < C__COUNT) return 1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        ew_saga_info *items = realloc(l->items, cap * sizeof *items);
        if (!items) {
            l->oom = 1;
            return 1;
        }
        l->items = items;
        l->cap = cap;
    }
    row_copy r = {0};
    copy_row(&r, row);
    info_from(&l->items[l->n++], &r);
    if (r.oom) l->oom = 1;
    row_copy_release(&r);
    return l->oom;
}

static void info_list_release(info_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        ew_saga_info_release(&l->items[i]);
    free(l->items);
}

/* Runs a read in a transaction of its own, collecting the rows (callbacks then run with the
 * store free, so they may use it). */
static int read_query(ew_store *st, const char *sql, const char *const *p, size_t np, ew_row_fn fn,
                      void *ud, ew_error *err)
{
    if (!st) return ew_error_set(err, EW_EINVAL, "a store is required");
    ew_txn *txn;
    int rc = ew_store_begin(st, &txn, err);
    if (rc) return rc;
    rc = ew_txn_query(txn, sql, p, np, fn, ud, err);
    ew_txn_rollback(txn);
    return rc;
}

int ew_saga_list(ew_store *st, const ew_saga_filter *f, ew_saga_list_fn fn, void *ud, ew_error *err)
{
    ew_saga_filter none = {.status = -1};
    if (!f) f = &none;
    if (!fn) return ew_error_set(err, EW_EINVAL, "a callback is required");
    if (f->status >= 0 && ew_saga_status_parse(ew_saga_status_name((ew_saga_status)f->status)) < 0)
        return ew_error_set(err, EW_EINVAL, "unknown saga status %d", f->status);
    char sql[512], limit[48] = "";
    if (f->limit) snprintf(limit, sizeof limit, " LIMIT %zu", f->limit);
    snprintf(sql, sizeof sql,
             "SELECT " SAGA_COLUMNS " FROM event_store.sagas WHERE (CAST($1 AS TEXT) IS NULL OR "
             "saga_type = $1) AND (CAST($2 AS TEXT) IS NULL OR status = $2) "
             "ORDER BY updated_at DESC, id DESC%s",
             limit);
    const char *p[2] = {f->type,
                        f->status >= 0 ? ew_saga_status_name((ew_saga_status)f->status) : NULL};
    info_list l = {0};
    int rc = read_query(st, sql, p, 2, collect_info, &l, err);
    if (!rc && l.oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < l.n; i++)
        if (fn(ud, &l.items[i])) break;
    info_list_release(&l);
    return rc;
}

static int get_one(ew_store *st, const char *sql, const char *const *p, size_t np,
                   ew_saga_info *info, const char *what, ew_error *err)
{
    info_list l = {0};
    memset(info, 0, sizeof *info);
    int rc = read_query(st, sql, p, np, collect_info, &l, err);
    if (!rc && l.oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    if (!rc && l.n == 0) rc = ew_error_set(err, EW_ENOTFOUND, "no saga %s", what);
    if (!rc) {
        *info = l.items[0];
        l.items[0] = (ew_saga_info){0};
    }
    info_list_release(&l);
    return rc;
}

int ew_saga_get_info(ew_store *st, const char *id, ew_saga_info *info, ew_error *err)
{
    if (!id || !info) return ew_error_set(err, EW_EINVAL, "an id and an info are required");
    char what[96];
    snprintf(what, sizeof what, "with id %.64s", id);
    const char *p[1] = {id};
    return get_one(st, "SELECT " SAGA_COLUMNS " FROM event_store.sagas WHERE id = $1", p, 1, info,
                   what, err);
}

int ew_saga_find(ew_store *st, const char *type, const char *key, ew_saga_info *info, ew_error *err)
{
    if (!type || !key || !info)
        return ew_error_set(err, EW_EINVAL, "a type, a key and an info are required");
    char what[160];
    snprintf(what, sizeof what, "%.64s with key %.64s", type, key);
    const char *p[2] = {type, key};
    return get_one(st,
                   "SELECT " SAGA_COLUMNS " FROM event_store.sagas WHERE saga_type = $1 AND "
                   "correlation_key = $2",
                   p, 2, info, what, err);
}

/* Transitions, copied out as rows of strings (the callback gets them after the read). */
typedef struct trans_rows {
    char **cells; /* 9 per row */
    size_t n, cap;
    int oom;
} trans_rows;

#define TRANS_COLS 9

static int collect_trans(void *ud, const ew_row *row)
{
    trans_rows *l = ud;
    if (row->ncols < TRANS_COLS) return 1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        char **cells = realloc(l->cells, cap * TRANS_COLS * sizeof *cells);
        if (!cells) {
            l->oom = 1;
            return 1;
        }
        l->cells = cells;
        l->cap = cap;
    }
    char **c = &l->cells[l->n++ * TRANS_COLS];
    for (int i = 0; i < TRANS_COLS; i++) {
        c[i] = row->values[i] ? strdup(row->values[i]) : NULL;
        if (row->values[i] && !c[i]) l->oom = 1;
    }
    return l->oom;
}

int ew_saga_transitions(ew_store *st, const char *id, ew_saga_transition_fn fn, void *ud,
                        ew_error *err)
{
    if (!id || !fn) return ew_error_set(err, EW_EINVAL, "an id and a callback are required");
    const char *p[1] = {id};
    trans_rows l = {0};
    int rc = read_query(st,
                        "SELECT seq, from_status, to_status, from_step, to_step, event_id, "
                        "event_type, recorded_at, note FROM event_store.saga_transitions "
                        "WHERE saga_id = $1 ORDER BY seq",
                        p, 1, collect_trans, &l, err);
    if (!rc && l.oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < l.n; i++) {
        char **c = &l.cells[i * TRANS_COLS];
        ew_saga_transition t = {.seq = to_i64(c[0]),
                                .from_status = c[1],
                                .to_status = c[2],
                                .from_step = c[3],
                                .to_step = c[4],
                                .event_id = c[5],
                                .event_type = c[6],
                                .at_us = time_or_zero(c[7]),
                                .note = c[8] ? c[8] : ""};
        if (fn(ud, &t)) break;
    }
    for (size_t i = 0; i < l.n * TRANS_COLS; i++)
        free(l.cells[i]);
    free(l.cells);
    return rc;
}
