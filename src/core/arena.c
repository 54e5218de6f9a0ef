/* eventwire — the bump allocator of arena.h.
 *
 * An allocation is a rounding and a compare in the common case. Memory comes first from the
 * caller's inline block, then from malloc'ed chunks that double from 1 KiB to 64 KiB: an event
 * parsed into a few KiB of inline block costs no malloc, a big document a logarithmic number. */
#include <stdalign.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/arena.h"

#define ARENA_ALIGN alignof(max_align_t)
#define FIRST_CHUNK 1024
#define MAX_CHUNK (64 * 1024)

struct ew__arena_chunk {
    ew__arena_chunk *next;
    size_t size, used;  /* bytes in data[] */
    max_align_t data[]; /* max_align_t so that data starts aligned for any type */
};

#define CHUNK_HEADER offsetof(ew__arena_chunk, data)

void ew_arena_init(ew_arena *a, void *buf, size_t size)
{
    a->head = NULL;
    a->inline_buf = NULL;
    a->inline_size = a->inline_used = 0;
    a->next_size = FIRST_CHUNK;
    if (buf) {
        /* Align the start once here, so that the fast path only has to round sizes. */
        size_t skip = (size_t)(-(uintptr_t)buf & (ARENA_ALIGN - 1));
        if (size > skip) {
            a->inline_buf = (char *)buf + skip;
            a->inline_size = size - skip;
        }
    }
}

void ew_arena_release(ew_arena *a)
{
    ew__arena_chunk *c = a->head;
    while (c) {
        ew__arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->inline_used = 0;
    a->next_size = FIRST_CHUNK;
}

/* need is already rounded. A request too big for the next chunk gets a chunk of its own, linked
 * behind the head so that the head's free space keeps being used by later small requests.
 * Not inlined: its registers would make every fast-path call pay a prologue. */
__attribute__((noinline)) static void *alloc_slow(ew_arena *a, size_t need)
{
    size_t cap = a->next_size - CHUNK_HEADER;
    int dedicated = need > cap;
    if (dedicated) {
        if (need > SIZE_MAX - CHUNK_HEADER) return NULL;
        cap = need;
    }
    ew__arena_chunk *c = malloc(CHUNK_HEADER + cap);
    if (!c) return NULL;
    c->size = cap;
    c->used = need;
    if (dedicated && a->head) {
        c->next = a->head->next;
        a->head->next = c;
    } else {
        c->next = a->head;
        a->head = c;
        if (!dedicated && a->next_size < MAX_CHUNK) a->next_size *= 2;
    }
    return c->data;
}

void *ew_arena_alloc(ew_arena *a, size_t n)
{
    /* n == 0 still gets a distinct pointer; n near SIZE_MAX would wrap when rounded. */
    if (n == 0 || n > SIZE_MAX - ARENA_ALIGN) {
        if (n) return NULL;
        n = 1;
    }
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    ew__arena_chunk *c = a->head;
    if (c) {
        if (c->size - c->used >= need) {
            void *p = (char *)c->data + c->used;
            c->used += need;
            return p;
        }
    } else if (a->inline_size - a->inline_used >= need) {
        void *p = a->inline_buf + a->inline_used;
        a->inline_used += need;
        return p;
    }
    return alloc_slow(a, need);
}

char *ew_arena_strndup(ew_arena *a, const char *s, size_t n)
{
    if (n == SIZE_MAX) return NULL;
    char *d = ew_arena_alloc(a, n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *ew_arena_strdup(ew_arena *a, const char *s)
{
    return ew_arena_strndup(a, s, strlen(s));
}
