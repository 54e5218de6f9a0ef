/* eventwire — a bump allocator.
 *
 * Memory that lives and dies together (one event, one parsed document) comes from an arena:
 * allocation is a pointer bump, and freeing is one call for all of it. Not thread-safe. */
#ifndef EW_CORE_ARENA_H
#define EW_CORE_ARENA_H

#include <stddef.h>

typedef struct ew__arena_chunk ew__arena_chunk;

typedef struct ew_arena {
    ew__arena_chunk *head; /* the chunk being filled; older chunks follow */
    char *inline_buf;      /* optional caller-provided first block */
    size_t inline_size, inline_used;
    size_t next_size; /* size of the next chunk to allocate */
} ew_arena;

/* An empty arena. With buf, the first allocations come from that caller-owned block. */
void ew_arena_init(ew_arena *a, void *buf, size_t size);

/* Frees every chunk; the arena is empty and usable again. */
void ew_arena_release(ew_arena *a);

/* n bytes aligned for any type, or NULL when out of memory. */
void *ew_arena_alloc(ew_arena *a, size_t n);

/* A NUL-terminated copy of s[0..n), or NULL. */
char *ew_arena_strndup(ew_arena *a, const char *s, size_t n);
char *ew_arena_strdup(ew_arena *a, const char *s);

#endif
