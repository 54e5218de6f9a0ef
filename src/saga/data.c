/* eventwire — a saga instance's data: a small map of strings and lists of strings, stored as a
 * JSON object in event_store.sagas.data. Flat on purpose: it is what a saga remembers between
 * events (a user id, the services that confirmed), read and written by its callbacks, and shown
 * as is by `ewctl saga show`. */
#include <stdlib.h>
#include <string.h>
#include "core/arena.h"
#include "core/json.h"
#include "saga/saga_impl.h"

static void item_release(ew__kv_item *it)
{
    free(it->key);
    free(it->value);
    for (size_t i = 0; i < it->n; i++)
        free(it->items[i]);
    free(it->items);
}

void ew__kv_release(ew__kv *kv)
{
    for (size_t i = 0; i < kv->n; i++)
        item_release(&kv->items[i]);
    free(kv->items);
    memset(kv, 0, sizeof *kv);
}

static ew__kv_item *kv_find(const ew__kv *kv, const char *key)
{
    for (size_t i = 0; i < kv->n; i++)
        if (strcmp(kv->items[i].key, key) == 0) return &kv->items[i];
    return NULL;
}

/* The item named key, created empty when missing; NULL when out of memory. */
static ew__kv_item *kv_slot(ew__kv *kv, const char *key)
{
    ew__kv_item *it = kv_find(kv, key);
    if (it) return it;
    if (kv->n == kv->cap) {
        size_t cap = kv->cap ? kv->cap * 2 : 8;
        ew__kv_item *items = realloc(kv->items, cap * sizeof *items);
        if (!items) return NULL;
        kv->items = items;
        kv->cap = cap;
    }
    it = &kv->items[kv->n];
    memset(it, 0, sizeof *it);
    if (!(it->key = strdup(key))) return NULL;
    kv->n++;
    return it;
}

static int item_push(ew__kv_item *it, const char *s)
{
    if (it->n == it->cap) {
        size_t cap = it->cap ? it->cap * 2 : 8;
        char **items = realloc(it->items, cap * sizeof *items);
        if (!items) return EW_ENOMEM;
        it->items = items;
        it->cap = cap;
    }
    if (!(it->items[it->n] = strdup(s))) return EW_ENOMEM;
    it->n++;
    return 0;
}

/* Turns it into a string (dropping a list it held) with a copy of value. */
static int item_set_string(ew__kv_item *it, const char *value)
{
    char *v = strdup(value);
    if (!v) return EW_ENOMEM;
    for (size_t i = 0; i < it->n; i++)
        free(it->items[i]);
    it->n = 0;
    it->is_list = false;
    free(it->value);
    it->value = v;
    return 0;
}

static int kv_set_json(ew__kv *kv, const ew_json *m)
{
    ew__kv_item *it = kv_slot(kv, m->key);
    if (!it) return EW_ENOMEM;
    if (m->kind == EW_JSON_STRING) return item_set_string(it, m->str);
    if (m->kind == EW_JSON_ARRAY) {
        it->is_list = true;
        for (const ew_json *x = m->child; x; x = x->next) {
            if (x->kind != EW_JSON_STRING) continue; /* the engine writes only strings */
            int rc = item_push(it, x->str);
            if (rc) return rc;
        }
        return 0;
    }
    /* Someone's hand-edited value: kept as its JSON text. */
    ew_buf b;
    ew_buf_init(&b);
    ew_json_write(&b, m);
    int rc = b.oom ? EW_ENOMEM : item_set_string(it, b.data ? b.data : "");
    ew_buf_release(&b);
    return rc;
}

int ew__kv_parse(ew__kv *kv, const char *json, ew_error *err)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *root = NULL;
    int rc = ew_json_parse(&root, json, strlen(json), NULL, &a, err);
    if (!rc && root->kind != EW_JSON_OBJECT)
        rc = ew_error_set(err, EW_EDATA, "saga data is not a JSON object");
    for (const ew_json *m = rc ? NULL : root->child; m && !rc; m = m->next)
        if ((rc = kv_set_json(kv, m))) ew_error_set(err, rc, "out of memory");
    ew_arena_release(&a);
    return rc;
}

void ew__kv_write(const ew__kv *kv, ew_buf *b)
{
    ew_buf_putc(b, '{');
    for (size_t i = 0; i < kv->n; i++) {
        const ew__kv_item *it = &kv->items[i];
        if (i) ew_buf_putc(b, ',');
        ew_json_write_string(b, it->key, strlen(it->key));
        ew_buf_putc(b, ':');
        if (!it->is_list) {
            const char *v = it->value ? it->value : "";
            ew_json_write_string(b, v, strlen(v));
            continue;
        }
        ew_buf_putc(b, '[');
        for (size_t j = 0; j < it->n; j++) {
            if (j) ew_buf_putc(b, ',');
            ew_json_write_string(b, it->items[j], strlen(it->items[j]));
        }
        ew_buf_putc(b, ']');
    }
    ew_buf_putc(b, '}');
}

/* ---- the public accessors (saga.h) ----------------------------------------------------------- */

static int bad_key(const char *key, ew_error *err)
{
    if (!key || !*key) return ew_error_set(err, EW_EINVAL, "saga data: a key is required");
    return 0;
}

const char *ew_saga_get(const ew_saga *s, const char *key)
{
    const ew__kv_item *it = s && key ? kv_find(&s->data, key) : NULL;
    return it && !it->is_list ? it->value : NULL;
}

int ew_saga_set(ew_saga *s, const char *key, const char *value, ew_error *err)
{
    int rc = bad_key(key, err);
    if (rc) return rc;
    if (!s || !value) return ew_error_set(err, EW_EINVAL, "saga data: a value is required");
    const char *old = ew_saga_get(s, key);
    if (old && strcmp(old, value) == 0) return 0;
    ew__kv_item *it = kv_slot(&s->data, key);
    if (!it || item_set_string(it, value)) return ew_error_set(err, EW_ENOMEM, "out of memory");
    s->changed = true;
    return 0;
}

size_t ew_saga_list_len(const ew_saga *s, const char *key)
{
    const ew__kv_item *it = s && key ? kv_find(&s->data, key) : NULL;
    return it && it->is_list ? it->n : 0;
}

const char *ew_saga_list_at(const ew_saga *s, const char *key, size_t i)
{
    const ew__kv_item *it = s && key ? kv_find(&s->data, key) : NULL;
    return it && it->is_list && i < it->n ? it->items[i] : NULL;
}

bool ew_saga_list_has(const ew_saga *s, const char *key, const char *item)
{
    size_t n = ew_saga_list_len(s, key);
    for (size_t i = 0; item && i < n; i++)
        if (strcmp(ew_saga_list_at(s, key, i), item) == 0) return true;
    return false;
}

int ew_saga_list_add(ew_saga *s, const char *key, const char *item, ew_error *err)
{
    int rc = bad_key(key, err);
    if (rc) return rc;
    if (!s || !item) return ew_error_set(err, EW_EINVAL, "saga data: an item is required");
    if (ew_saga_list_has(s, key, item)) return 0;
    ew__kv_item *it = kv_slot(&s->data, key);
    if (!it) return ew_error_set(err, EW_ENOMEM, "out of memory");
    if (!it->is_list) {
        free(it->value);
        it->value = NULL;
        it->is_list = true;
    }
    if (item_push(it, item)) return ew_error_set(err, EW_ENOMEM, "out of memory");
    s->changed = true;
    return 1;
}
