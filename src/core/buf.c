/* eventwire — the growable byte buffer of buf.h.
 *
 * A failed growth sets oom and turns every later append into a no-op, so a writer can append a
 * whole document and check once at the end (ew_buf_steal returns NULL) instead of after each call.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"
#include "eventwire/error.h"

#define MIN_CAP 64

void ew_buf_init(ew_buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

void ew_buf_release(ew_buf *b)
{
    free(b->data);
    ew_buf_init(b);
}

/* Also forgets an earlier out-of-memory: the content it spoiled is gone. */
void ew_buf_reset(ew_buf *b)
{
    b->len = 0;
    b->oom = 0;
    if (b->data) b->data[0] = '\0';
}

static int grow(ew_buf *b, size_t n)
{
    if (n > SIZE_MAX - 1 - b->len) goto oom;
    size_t want = b->len + n + 1; /* + 1 for the NUL */
    size_t cap = b->cap ? b->cap : MIN_CAP;
    while (cap < want) {
        if (cap > SIZE_MAX / 2) {
            cap = want;
            break;
        }
        cap *= 2;
    }
    char *d = realloc(b->data, cap);
    if (!d) goto oom;
    if (!b->data) d[0] = '\0';
    b->data = d;
    b->cap = cap;
    return 0;
oom:
    b->oom = 1;
    return EW_ENOMEM;
}

int ew_buf_reserve(ew_buf *b, size_t n)
{
    if (b->oom) return EW_ENOMEM;
    if (b->cap - b->len > n) return 0; /* cap == 0 fails this: the first call allocates */
    return grow(b, n);
}

void ew_buf_append(ew_buf *b, const void *p, size_t n)
{
    if (b->oom) return;
    if (b->cap - b->len <= n && grow(b, n) != 0) return;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void ew_buf_puts(ew_buf *b, const char *s)
{
    ew_buf_append(b, s, strlen(s));
}

void ew_buf_putc(ew_buf *b, char c)
{
    if (b->oom) return;
    if (b->cap - b->len <= 1 && grow(b, 1) != 0) return;
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
}

__attribute__((format(printf, 2, 0))) void ew_buf_vprintf(ew_buf *b, const char *fmt, va_list ap)
{
    if (b->oom) return;
    if (b->cap - b->len < 2 && grow(b, MIN_CAP) != 0) return;
    /* Format straight into the free space; only when it does not fit, grow and format again. */
    va_list ap2;
    va_copy(ap2, ap);
    size_t room = b->cap - b->len;
    int n = vsnprintf(b->data + b->len, room, fmt, ap);
    if (n < 0) {
        b->data[b->len] = '\0';
        goto done;
    }
    if ((size_t)n >= room) {
        if (grow(b, (size_t)n) != 0) {
            b->data[b->len] = '\0';
            goto done;
        }
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap2);
    }
    b->len += (size_t)n;
done:
    va_end(ap2);
}

void ew_buf_printf(ew_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ew_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

char *ew_buf_steal(ew_buf *b, size_t *len)
{
    char *d = b->data;
    size_t n = b->len;
    if (b->oom) {
        free(d);
        d = NULL;
        n = 0;
    } else if (!d) {
        d = malloc(1); /* the caller always gets something to free() */
        if (d) d[0] = '\0';
    }
    ew_buf_init(b);
    if (len) *len = n;
    return d;
}
