/* eventwire — the saga state machine: what an event or a passed deadline does to one instance.
 *
 * Everything here works on the instance in memory (struct ew_saga), inside the transaction the
 * engine holds: the callbacks of the declaration decide, this file moves the instance (steps
 * done, the current step, status, deadlines), collects the events to issue and records the
 * transitions with a sentence each. Nothing here touches the store or the bus; persist.c
 * writes the result and engine.c publishes it, so a transition is all or nothing.
 *
 * One application (an event, a deadline) records one transition, except when the saga fails:
 * then the failure, each compensation (in reverse order of the steps) and the end are rows of
 * their own, so that `ewctl saga show` tells the order they ran in. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/clock.h"
#include "saga/saga_impl.h"
#include "eventwire/trace.h"

/* ---- the instance ---------------------------------------------------------------------------- */

void ew__saga_init(ew_saga *s, ew__saga_type *t)
{
    memset(s, 0, sizeof *s);
    s->t = t;
    ew_buf_init(&s->note);
}

void ew__saga_release(ew_saga *s)
{
    free(s->key);
    free(s->correlation_id);
    free(s->subject);
    free(s->reason);
    ew__kv_release(&s->data);
    for (size_t i = 0; i < s->nout; i++)
        ew_event_unref(s->out[i]);
    free(s->out);
    for (size_t i = 0; i < s->ntr; i++) {
        free(s->tr[i].from_step);
        free(s->tr[i].to_step);
        free(s->tr[i].note);
    }
    free(s->tr);
    ew_buf_release(&s->note);
    memset(s, 0, sizeof *s);
}

int64_t ew__saga_wake_us(const ew_saga *s)
{
    if (s->status != EW_SAGA_RUNNING) return 0;
    int64_t a = s->deadline_us, b = s->step_deadline_us;
    if (!a) return b;
    if (!b) return a;
    return a < b ? a : b;
}

static const char *step_name(const ew_saga *s, size_t i)
{
    return i < s->t->nsteps ? s->t->steps[i].name : NULL;
}

static bool is_done(const ew_saga *s, size_t i)
{
    return (s->done >> i) & 1u;
}

/* ---- accessors (saga.h) ---------------------------------------------------------------------- */

const char *ew_saga_id(const ew_saga *s)
{
    return s->id;
}

const char *ew_saga_type(const ew_saga *s)
{
    return s->t->name;
}

const char *ew_saga_key(const ew_saga *s)
{
    return s->key;
}

const char *ew_saga_correlation_id(const ew_saga *s)
{
    return s->correlation_id;
}

const char *ew_saga_subject(const ew_saga *s)
{
    return s->subject;
}

ew_saga_status ew_saga_state(const ew_saga *s)
{
    return s->status;
}

const char *ew_saga_step_name(const ew_saga *s)
{
    return step_name(s, s->step);
}

int ew_saga_step_attempts(const ew_saga *s)
{
    return s->attempts;
}

bool ew_saga_step_done(const ew_saga *s, const char *step)
{
    for (size_t i = 0; step && i < s->t->nsteps; i++)
        if (strcmp(s->t->steps[i].name, step) == 0) return is_done(s, i);
    return false;
}

const char *ew_saga_reason(const ew_saga *s)
{
    return s->reason ? s->reason : "";
}

const ew_event *ew_saga_cause(const ew_saga *s)
{
    return s->cause;
}

void ew_saga_set_deadline(ew_saga *s, int64_t at_us)
{
    if (s->deadline_us == at_us) return;
    s->deadline_us = at_us > 0 ? at_us : 0;
    s->changed = true;
}

void ew_saga_note(ew_saga *s, const char *fmt, ...)
{
    if (s->note.len) ew_buf_putc(&s->note, ' ');
    va_list ap;
    va_start(ap, fmt);
    ew_buf_vprintf(&s->note, fmt, ap);
    va_end(ap);
}

/* Puts a sentence before those the callbacks wrote (the engine's own comes first). */
static void note_first(ew_saga *s, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void note_first(ew_saga *s, const char *fmt, ...)
{
    ew_buf rest = s->note;
    ew_buf_init(&s->note);
    va_list ap;
    va_start(ap, fmt);
    ew_buf_vprintf(&s->note, fmt, ap);
    va_end(ap);
    if (rest.len) {
        ew_buf_putc(&s->note, ' ');
        ew_buf_append(&s->note, rest.data, rest.len);
    }
    ew_buf_release(&rest);
}

void ew_saga_set_reason(ew_saga *s, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char *r = strdup(buf);
    if (!r) {
        s->oom = 1;
        return;
    }
    free(s->reason);
    s->reason = r;
    s->changed = true;
}

int ew_saga_issue(ew_saga *s, ew_type_id type, const void *data, const char *subject, ew_error *err)
{
    if (s->nout == s->outcap) {
        size_t cap = s->outcap ? s->outcap * 2 : 4;
        ew_event **out = realloc(s->out, cap * sizeof *out);
        if (!out) return ew_error_set(err, EW_ENOMEM, "out of memory");
        s->out = out;
        s->outcap = cap;
    }
    /* The step's own span, a child of the event that caused it (of nothing, for a deadline) */
    ew_trace_ctx cause, step;
    char tp[EW_TRACEPARENT_LEN + 1];
    bool traced = s->cause && ew_trace_parse(ew_event_traceparent(s->cause), &cause);
    ew_trace_child(traced ? &cause : NULL, &step);
    ew_event_attrs a = {
        .source = ew__saga_engine_source(s->t->e),
        .subject = subject ? subject : s->subject,
        .correlation_id = s->correlation_id,
        .causation_id = s->cause ? ew_event_id(s->cause) : NULL,
        .traceparent = ew_trace_format(&step, tp),
    };
    ew_event *ev = NULL;
    ew_error e = {0};
    int rc = ew_event_new(&ev, type, data, &a, &e);
    if (rc) {
        const ew_type_info *ti = ew_catalog_get(type);
        return ew_error_set(err, rc, "saga %s: issuing %s: %s", s->t->name,
                            ti ? ti->type : "an unknown type", e.msg);
    }
    s->out[s->nout++] = ev;
    s->changed = true;
    ew_saga_note(s, "Issued %s.", ew_event_type(ev));
    return 0;
}

/* ---- transitions ----------------------------------------------------------------------------- */

/* Where the last recorded transition left the instance: the next one goes from there. */
typedef struct mark {
    int status; /* -1: nothing recorded yet (a new instance) */
    size_t step;
} mark;

static char *dup_or_null(const char *s, int *oom)
{
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = 1;
    return d;
}

/* Records a transition from *m to where the instance is now, with the sentences collected. */
static void record(ew_saga *s, mark *m)
{
    if (s->ntr == s->trcap) {
        size_t cap = s->trcap ? s->trcap * 2 : 4;
        ew__saga_trans *tr = realloc(s->tr, cap * sizeof *tr);
        if (!tr) {
            s->oom = 1;
            return;
        }
        s->tr = tr;
        s->trcap = cap;
    }
    ew__saga_trans *r = &s->tr[s->ntr++];
    r->from_status = m->status;
    r->to_status = (int)s->status;
    r->from_step = m->status < 0 ? NULL : dup_or_null(step_name(s, m->step), &s->oom);
    r->to_step = dup_or_null(step_name(s, s->step), &s->oom);
    r->at_us = s->now_us;
    r->note = dup_or_null(s->note.data ? s->note.data : "", &s->oom);
    ew_buf_reset(&s->note);
    if (s->note.data) s->note.data[0] = '\0';
    s->changed = true;
    m->status = (int)s->status;
    m->step = s->step;
}

/* Records what happened since *m, when anything did. */
static void record_if_any(ew_saga *s, mark *m)
{
    if (s->note.len || m->status != (int)s->status || m->step != s->step) record(s, m);
}

static mark mark_now(const ew_saga *s)
{
    return (mark){(int)s->status, s->step};
}

/* ---- the end --------------------------------------------------------------------------------- */

static int issue_end_event(ew_saga *s, ew_error *err)
{
    const char *step = step_name(s, s->step);
    if (s->status == EW_SAGA_COMPLETED) {
        ew_saga_completed d = {.saga_id = s->id, .saga_type = s->t->name};
        return ew_saga_issue(s, EW_T_SAGA_COMPLETED, &d, s->id, err);
    }
    if (s->status == EW_SAGA_TIMED_OUT) {
        const char *pending[EW__SAGA_MAX_STEPS];
        size_t n = 0;
        for (size_t i = 0; i < s->t->nsteps; i++)
            if (!is_done(s, i)) pending[n++] = s->t->steps[i].name;
        ew_saga_timed_out d = {.saga_id = s->id,
                               .saga_type = s->t->name,
                               .step = step ? step : "-",
                               .pending = {pending, n}};
        return ew_saga_issue(s, EW_T_SAGA_TIMED_OUT, &d, s->id, err);
    }
    ew_saga_failed d = {.saga_id = s->id,
                        .saga_type = s->t->name,
                        .step = step ? step : "-",
                        .reason = ew_saga_reason(s)[0] ? s->reason : "failed"};
    return ew_saga_issue(s, EW_T_SAGA_FAILED, &d, s->id, err);
}

/* The instance reaches its end: the declaration's on_end, then saga.<end>, recorded. */
static int finish(ew_saga *s, ew_saga_status final, mark *m, ew_error *err)
{
    s->status = final;
    s->finished_us = s->now_us;
    s->changed = true;
    int rc = 0;
    if (s->t->on_end) rc = s->t->on_end(s, s->t->ud, err);
    if (!rc) rc = issue_end_event(s, err);
    if (!rc) record(s, m);
    return rc;
}

/* Step i failed (kind FAILED) or a deadline passed (kind TIMED_OUT): the compensations of the
 * completed steps, last step first, each recorded; then the end. */
static int fail(ew_saga *s, size_t i, ew_saga_status kind, mark *m, ew_error *err)
{
    const ew__saga_type *t = s->t;
    bool any = false;
    for (size_t j = 0; j < t->nsteps && !any; j++)
        any = is_done(s, j) && t->steps[j].compensation;
    s->step = i;
    if (any) {
        s->status = EW_SAGA_COMPENSATING;
        ew_saga_note(s, "%s", ew_saga_reason(s));
        record(s, m);
        for (size_t j = t->nsteps; j-- > 0;) {
            if (!is_done(s, j) || !t->steps[j].compensation) continue;
            s->step = j;
            ew_saga_note(s, "Compensating step %s.", t->steps[j].name);
            int rc = t->steps[j].compensation(s, t->ud, err);
            if (rc) return rc;
            record(s, m);
        }
        s->step = i;
    } else {
        ew_saga_note(s, "%s", ew_saga_reason(s));
    }
    if (kind != EW_SAGA_TIMED_OUT) kind = any ? EW_SAGA_COMPENSATED : EW_SAGA_FAILED;
    return finish(s, kind, m, err);
}

/* ---- steps ----------------------------------------------------------------------------------- */

static int begin_step(ew_saga *s, ew_error *err)
{
    const ew__saga_step *st = &s->t->steps[s->step];
    s->attempts = 0;
    s->step_deadline_us = st->timeout_ms ? s->now_us + st->timeout_ms * 1000 : 0;
    s->changed = true;
    ew_saga_note(s, "Step %s begins.", st->name);
    return st->action ? st->action(s, s->t->ud, err) : 0;
}

/* The current step is done, perhaps more after it (their events came early): moves to the
 * first one that is not, and begins it; or completes the saga. */
static int advance(ew_saga *s, mark *m, ew_error *err)
{
    size_t from = s->step;
    while (s->step < s->t->nsteps && is_done(s, s->step))
        s->step++;
    if (s->step == from) return 0;
    if (s->step < s->t->nsteps) return begin_step(s, err);
    s->step_deadline_us = 0;
    ew_saga_note(s, "Every step is done.");
    return finish(s, EW_SAGA_COMPLETED, m, err);
}

static bool listed(char *const *types, const char *type)
{
    for (; types && *types; types++)
        if (strcmp(*types, type) == 0) return true;
    return false;
}

/* The reason a failing event gives: its "reason" field when its type has a string one. */
static void reason_of(ew_saga *s, const ew__saga_step *st, const ew_event *ev)
{
    if (s->reason) return;
    const ew_type_info *ti = ew_event_info(ev);
    const ew_field_info *f = ti ? ew_type_field(ti, "reason") : NULL;
    const char *why = NULL;
    if (f && f->kind == EW_FIELD_STRING)
        why = *(const char *const *)((const char *)ew_event_data_as(ev, ti->id) + f->offset);
    if (why)
        ew_saga_set_reason(s, "Step %s failed (%s): %s", st->name, ew_event_type(ev), why);
    else
        ew_saga_set_reason(s, "Step %s failed (%s).", st->name, ew_event_type(ev));
}

/* Offers ev to the steps not yet done, the current one first: the first that takes it decides. */
static int match(ew_saga *s, const ew_event *ev, mark *m, ew_error *err)
{
    const ew__saga_type *t = s->t;
    const char *type = ew_event_type(ev);
    for (size_t i = s->step; i < t->nsteps; i++) {
        const ew__saga_step *st = &t->steps[i];
        if (is_done(s, i)) continue;
        bool completes = listed(st->completed_by, type), fails = listed(st->failed_by, type);
        if (!completes && !fails) continue;
        ew_saga_verdict v =
            st->on_event ? st->on_event(s, ev, t->ud) : (completes ? EW_SAGA_DONE : EW_SAGA_FAIL);
        switch (v) {
        case EW_SAGA_PROGRESS:
            s->changed = true;
            if (!s->note.len) ew_saga_note(s, "Step %s: %s counted.", st->name, type);
            return 0;
        case EW_SAGA_DONE:
            s->done |= (uint64_t)1 << i;
            s->changed = true;
            ew_saga_note(s, "Step %s done (%s).", st->name, type);
            return i == s->step ? advance(s, m, err) : 0;
        case EW_SAGA_FAIL:
            reason_of(s, st, ev);
            return fail(s, i, EW_SAGA_FAILED, m, err);
        default: /* IGNORE, or a verdict only on_timeout gives */
            continue;
        }
    }
    return 0;
}

/* ---- what the engine calls ------------------------------------------------------------------- */

int ew__saga_start(ew_saga *s, const ew_event *ev, const char *key, ew_error *err)
{
    ew__saga_type *t = s->t;
    int oom = 0;
    ew_uuid7(s->id);
    s->is_new = true;
    s->key = dup_or_null(key, &oom);
    s->correlation_id = dup_or_null(ew_event_correlation_id(ev), &oom);
    s->subject = dup_or_null(ew_event_subject(ev), &oom);
    if (oom) return ew_error_set(err, EW_ENOMEM, "out of memory");
    s->cause = ev;
    s->now_us = ew_now_us();
    s->status = EW_SAGA_RUNNING;
    s->started_us = s->now_us;
    s->deadline_us = s->now_us + t->timeout_ms * 1000;
    s->changed = true;
    mark m = {-1, 0};
    ew_saga_note(s, "Started by %s.", ew_event_type(ev));
    int rc = t->on_start ? t->on_start(s, t->ud, err) : 0;
    if (!rc) rc = begin_step(s, err);
    if (!rc) rc = match(s, ev, &m, err);
    if (!rc) record_if_any(s, &m);
    if (!rc && s->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    return rc;
}

int ew__saga_apply(ew_saga *s, const ew_event *ev, ew_error *err)
{
    s->cause = ev;
    s->now_us = ew_now_us();
    if (s->status != EW_SAGA_RUNNING) return 0;
    mark m = mark_now(s);
    int rc = match(s, ev, &m, err);
    if (!rc && s->changed) record_if_any(s, &m);
    if (!rc && s->changed && s->ntr == 0) record(s, &m); /* data changed, nothing else */
    if (!rc && s->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    return rc;
}

int ew__saga_deadline(ew_saga *s, ew_error *err)
{
    const ew__saga_type *t = s->t;
    s->cause = NULL;
    s->now_us = ew_now_us();
    if (s->status != EW_SAGA_RUNNING) return 0;
    mark m = mark_now(s);
    int rc = 0;
    if (s->step_deadline_us && s->now_us >= s->step_deadline_us && s->step < t->nsteps) {
        const ew__saga_step *st = &t->steps[s->step];
        ew_saga_verdict v = st->on_timeout ? st->on_timeout(s, t->ud) : EW_SAGA_TIMEOUT;
        if (v == EW_SAGA_RETRY && st->timeout_ms > 0) {
            s->attempts++;
            s->step_deadline_us = s->now_us + st->timeout_ms * 1000;
            s->changed = true;
            note_first(s, "Step %s passed its deadline: attempt %d.", st->name, s->attempts + 1);
            record(s, &m);
        } else if (v == EW_SAGA_DONE) {
            s->done |= (uint64_t)1 << s->step;
            ew_saga_note(s, "Step %s done at its deadline.", st->name);
            rc = advance(s, &m, err);
            if (!rc) record_if_any(s, &m);
        } else if (v == EW_SAGA_FAIL) {
            if (!s->reason) ew_saga_set_reason(s, "Step %s did not finish in time.", st->name);
            rc = fail(s, s->step, EW_SAGA_FAILED, &m, err);
        } else {
            if (!s->reason) ew_saga_set_reason(s, "Step %s passed its deadline.", st->name);
            rc = fail(s, s->step, EW_SAGA_TIMED_OUT, &m, err);
        }
    } else if (s->deadline_us && s->now_us >= s->deadline_us) {
        if (!s->reason) ew_saga_set_reason(s, "The saga passed its deadline.");
        rc = fail(s, s->step < t->nsteps ? s->step : t->nsteps - 1, EW_SAGA_TIMED_OUT, &m, err);
    }
    if (!rc && s->oom) rc = ew_error_set(err, EW_ENOMEM, "out of memory");
    return rc;
}
