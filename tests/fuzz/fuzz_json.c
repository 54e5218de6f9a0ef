/* eventwire — fuzzes the strict JSON parser (src/core/json.c) and its writer.
 *
 * Every input is parsed with the default limits (memory capped per input byte). A refusal must
 * come with its code and a message; an accepted document must survive the writer: its compact
 * form parses to the same tree and writes back byte for byte, and so does its pretty form. */
#include <stdint.h>
#include "core/json.h"
#include "fuzz.h"

static int same_tree(const ew_json *x, const ew_json *y)
{
    if (x->kind != y->kind || x->count != y->count) return 0;
    if ((x->key == NULL) != (y->key == NULL)) return 0;
    if (x->key && (x->key_len != y->key_len || memcmp(x->key, y->key, x->key_len) != 0)) return 0;
    switch (x->kind) {
    case EW_JSON_STRING:
    case EW_JSON_NUMBER:
        return x->len == y->len && memcmp(x->str, y->str, x->len) == 0;
    case EW_JSON_ARRAY:
    case EW_JSON_OBJECT:
        for (x = x->child, y = y->child; x && y; x = x->next, y = y->next)
            if (!same_tree(x, y)) return 0;
        return x == NULL && y == NULL;
    default:
        return 1;
    }
}

/* Parses text (the writer's output) with no memory cap: its tree is the first parse's. */
static ew_json *reparse(ew_arena *a, const ew_buf *text)
{
    ew_json_limits lim = {.max_mem = SIZE_MAX / 2};
    ew_json *v = NULL;
    ew_error err = {0};
    int rc = ew_json_parse(&v, text->data, text->len, &lim, a, &err);
    if (rc) fprintf(stderr, "reparse: %s: %s\n", ew_err_name(rc), err.msg);
    FUZZ_CHECK(rc == 0);
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    ew_arena a;
    ew_json *v = (ew_json *)&a;
    ew_error err = {0};
    ew_arena_init(&a, NULL, 0);
    int rc = ew_json_parse(&v, text, size, NULL, &a, &err);
    (void)ew_utf8_valid(text, size);
    /* Again under a memory limit of 1 to 16 bytes per input byte (the first byte says): the
     * same result, or EW_ETOOBIG, cleanly (the default limit is never reached by the small
     * inputs of fuzzing). */
    ew_arena small;
    ew_json *sv = NULL;
    ew_json_limits lim = {.max_mem = size ? (size_t)(data[0] % 16 + 1) * size : 1};
    ew_error serr = {0};
    ew_arena_init(&small, NULL, 0);
    int src = ew_json_parse(&sv, text, size, &lim, &small, &serr);
    FUZZ_CHECK(src == rc || src == EW_ETOOBIG);
    if (src == EW_ETOOBIG) FUZZ_CHECK(sv == NULL && strstr(serr.msg, "bytes of memory"));
    ew_arena_release(&small);
    if (rc != 0) {
        FUZZ_CHECK(rc < 0 && err.code == rc && err.msg[0] != '\0' && v == NULL);
        FUZZ_CHECK(strlen(err.msg) < sizeof err.msg);
        ew_arena_release(&a);
        return 0;
    }
    FUZZ_CHECK(v != NULL);
    ew_buf compact, again, pretty;
    ew_buf_init(&compact);
    ew_buf_init(&again);
    ew_buf_init(&pretty);
    ew_json_write(&compact, v);
    ew_json *w = reparse(&a, &compact);
    FUZZ_CHECK(same_tree(v, w));
    ew_json_write(&again, w);
    FUZZ_CHECK(again.len == compact.len && memcmp(again.data, compact.data, compact.len) == 0);
    ew_json_write_pretty(&pretty, v, 2);
    FUZZ_CHECK(same_tree(v, reparse(&a, &pretty)));
    ew_buf_release(&compact);
    ew_buf_release(&again);
    ew_buf_release(&pretty);
    ew_arena_release(&a);
    return 0;
}
