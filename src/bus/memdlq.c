/* eventwire — the memory dead letter sink: the dead letters of a process, kept in an array in
 * arrival order under one mutex. Every entry is the sink's own copy; readers get copies too, so
 * nothing they hold changes under them. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "eventwire/dlq.h"

struct ew_memdlq {
    pthread_mutex_t mu;
    ew_memdlq_entry *e; /* sorted by seq, since seq only grows */
    size_t n, cap;
    uint64_t next_seq;
};

int ew_memdlq_new(ew_memdlq **out, ew_error *err)
{
    ew_memdlq *q = calloc(1, sizeof *q);
    if (!q) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (pthread_mutex_init(&q->mu, NULL)) {
        free(q);
        return ew_error_set(err, EW_ENOMEM, "cannot create a mutex");
    }
    q->next_seq = 1;
    *out = q;
    return 0;
}

void ew_memdlq_entry_release(ew_memdlq_entry *e)
{
    if (!e) return;
    ew_event_unref(e->event);
    free(e->payload);
    free(e->event_id);
    free(e->event_type);
    free(e->group);
    free(e->handler);
    free(e->error);
    free(e->transport);
    memset(e, 0, sizeof *e);
}

void ew_memdlq_free(ew_memdlq *q)
{
    if (!q) return;
    for (size_t i = 0; i < q->n; i++)
        ew_memdlq_entry_release(&q->e[i]);
    free(q->e);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

static int dup_str(char **dst, const char *s)
{
    *dst = NULL;
    if (!s) return 0;
    return (*dst = strdup(s)) ? 0 : -1;
}

static int dup_mem(char **dst, const char *p, size_t n)
{
    *dst = NULL;
    if (!p) return 0;
    if (!(*dst = malloc(n + 1))) return -1;
    memcpy(*dst, p, n);
    (*dst)[n] = '\0';
    return 0;
}

/* A deep copy of src into *dst (which owns nothing yet). */
static int copy_entry(ew_memdlq_entry *dst, const ew_memdlq_entry *src)
{
    memset(dst, 0, sizeof *dst);
    dst->seq = src->seq;
    dst->payload_len = src->payload_len;
    dst->attempts = src->attempts;
    dst->first_failed_us = src->first_failed_us;
    dst->last_failed_us = src->last_failed_us;
    if (dup_mem(&dst->payload, src->payload, src->payload_len) ||
        dup_str(&dst->event_id, src->event_id) || dup_str(&dst->event_type, src->event_type) ||
        dup_str(&dst->group, src->group) || dup_str(&dst->handler, src->handler) ||
        dup_str(&dst->error, src->error) || dup_str(&dst->transport, src->transport)) {
        ew_memdlq_entry_release(dst);
        return EW_ENOMEM;
    }
    dst->event = src->event ? ew_event_ref(src->event) : NULL;
    return 0;
}

static int put(void *self, const ew_dead_letter *dl, ew_error *err)
{
    ew_memdlq *q = self;
    const char *id = dl->event_id, *type = dl->event_type;
    if (dl->event) {
        if (!id) id = ew_event_id(dl->event);
        if (!type) type = ew_event_type(dl->event);
    }
    ew_memdlq_entry src = {
        .event = (ew_event *)dl->event, /* only read by copy_entry, which takes a reference */
        .payload = dl->event ? NULL : (char *)dl->payload,
        .payload_len = dl->event ? 0 : dl->payload_len,
        .event_id = (char *)id,
        .event_type = (char *)type,
        .group = (char *)dl->group,
        .handler = (char *)dl->handler,
        .error = (char *)dl->error,
        .attempts = dl->attempts,
        .first_failed_us = dl->first_failed_us,
        .last_failed_us = dl->last_failed_us,
        .transport = (char *)dl->transport,
    };
    ew_memdlq_entry e;
    if (copy_entry(&e, &src)) return ew_error_set(err, EW_ENOMEM, "out of memory");
    pthread_mutex_lock(&q->mu);
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 16;
        ew_memdlq_entry *ne = realloc(q->e, cap * sizeof *ne);
        if (!ne) {
            pthread_mutex_unlock(&q->mu);
            ew_memdlq_entry_release(&e);
            return ew_error_set(err, EW_ENOMEM, "out of memory");
        }
        q->e = ne;
        q->cap = cap;
    }
    e.seq = q->next_seq++;
    q->e[q->n++] = e;
    pthread_mutex_unlock(&q->mu);
    return 0;
}

ew_dlq_sink ew_memdlq_sink(ew_memdlq *q)
{
    static const ew_dlq_sink_ops ops = {.version = 1, .put = put};
    return (ew_dlq_sink){.ops = &ops, .self = q};
}

size_t ew_memdlq_count(ew_memdlq *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->n;
    pthread_mutex_unlock(&q->mu);
    return n;
}

int ew_memdlq_get(ew_memdlq *q, size_t i, ew_memdlq_entry *out)
{
    int rc = EW_ENOTFOUND;
    pthread_mutex_lock(&q->mu);
    if (i < q->n) rc = copy_entry(out, &q->e[i]);
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* Binary search: seq grows with the index. */
static size_t find_seq(const ew_memdlq *q, uint64_t seq)
{
    size_t lo = 0, hi = q->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (q->e[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < q->n && q->e[lo].seq == seq ? lo : SIZE_MAX;
}

int ew_memdlq_take(ew_memdlq *q, uint64_t seq, ew_memdlq_entry *out)
{
    pthread_mutex_lock(&q->mu);
    size_t i = find_seq(q, seq);
    if (i == SIZE_MAX) {
        pthread_mutex_unlock(&q->mu);
        return EW_ENOTFOUND;
    }
    ew_memdlq_entry e = q->e[i];
    memmove(&q->e[i], &q->e[i + 1], (q->n - i - 1) * sizeof *q->e);
    q->n--;
    pthread_mutex_unlock(&q->mu);
    if (out)
        *out = e;
    else
        ew_memdlq_entry_release(&e);
    return 0;
}
