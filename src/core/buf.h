/* eventwire — a growable byte buffer, always NUL-terminated. Not thread-safe. */
#ifndef EW_CORE_BUF_H
#define EW_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct ew_buf {
    char *data; /* NUL-terminated when len > 0 or after any append; NULL before */
    size_t len, cap;
    int oom; /* set when a growth failed; further appends do nothing */
} ew_buf;

void ew_buf_init(ew_buf *b);
void ew_buf_release(ew_buf *b);
void ew_buf_reset(ew_buf *b); /* len = 0, keeps the memory */

/* Makes room for n more bytes; 0 or EW_ENOMEM. */
int ew_buf_reserve(ew_buf *b, size_t n);

void ew_buf_append(ew_buf *b, const void *p, size_t n);
void ew_buf_puts(ew_buf *b, const char *s);
void ew_buf_putc(ew_buf *b, char c);
void ew_buf_printf(ew_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ew_buf_vprintf(ew_buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Hands the data to the caller (free() it) and empties b. NULL when b ran out of memory. */
char *ew_buf_steal(ew_buf *b, size_t *len);

#endif
