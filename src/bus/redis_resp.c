/* eventwire — the Redis backend, RESP replies read in place: whether a reply received so far is
 * complete (looked at once per chunk that arrives), and its items walked without copying. The
 * consumer reads its XREADGROUP answers this way: hiredis's reader makes an object for each of
 * their ~6 items per entry and frees them all again, some 9,500 instructions an entry (callgrind),
 * more than decoding the event. Every other reply still goes through hiredis. */
#ifdef EW_HAVE_REDIS

#include <string.h>
#include "bus/redis.h"

/* The header line at buf[p, len): its type, its number (for *, $, :) and where the line ends
 * (after its \r\n). 1, 0 (not all there yet) or -1 (not RESP). */
static int header(const char *buf, size_t len, size_t p, char *type, long long *n, size_t *next)
{
    if (p >= len) return 0;
    const char *cr = memchr(buf + p, '\r', len - p);
    bool line = buf[p] == '+' || buf[p] == '-';     /* a status or error: text of any length */
    if (!cr) return !line && len - p > 32 ? -1 : 0; /* a number is not that long */
    size_t e = (size_t)(cr - buf);
    if (e + 1 >= len) return 0;
    if (buf[e + 1] != '\n') return -1;
    *type = buf[p];
    *next = e + 2;
    *n = 0;
    if (*type == '+' || *type == '-') return 1;
    if (*type != '*' && *type != '$' && *type != ':') return -1;
    size_t i = p + 1;
    bool neg = i < e && buf[i] == '-';
    if (neg) i++;
    if (i == e || e - i > 18) return -1;
    long long v = 0;
    for (; i < e; i++) {
        if (buf[i] < '0' || buf[i] > '9') return -1;
        v = v * 10 + (buf[i] - '0');
    }
    *n = neg ? -v : v;
    if ((*type == '*' || *type == '$') && *n < -1) return -1;
    return 1;
}

int ew__resp_complete(ew__resp_scan *s, const char *buf, size_t len, size_t *end)
{
    for (;;) {
        while (s->depth > 0 && s->left[s->depth - 1] == 0)
            s->depth--;
        if (s->depth == 0 && s->started) {
            *end = s->pos;
            return 1;
        }
        char type;
        long long n;
        size_t next;
        int h = header(buf, len, s->pos, &type, &n, &next);
        if (h <= 0) return h;
        if (type == '$' && n >= 0) {
            if (next + (size_t)n + 2 > len) return 0; /* the header is read again then */
            if (buf[next + n] != '\r' || buf[next + n + 1] != '\n') return -1;
            next += (size_t)n + 2;
        }
        s->pos = next;
        s->started = true;
        if (s->depth > 0) s->left[s->depth - 1]--;
        if (type == '*' && n > 0) {
            if (s->depth == EW__RESP_DEPTH) return -1;
            s->left[s->depth++] = n;
        }
    }
}

bool ew__resp_next(const char *buf, size_t end, size_t *pos, ew__resp_item *it)
{
    size_t next;
    if (header(buf, end, *pos, &it->type, &it->n, &next) != 1) return false;
    it->str = buf + *pos + 1;
    it->len = next - *pos - 3;
    if (it->type == '$' && it->n >= 0) {
        if (next + (size_t)it->n + 2 > end) return false;
        it->str = buf + next;
        it->len = (size_t)it->n;
        next += (size_t)it->n + 2;
    }
    *pos = next;
    return true;
}

bool ew__resp_skip(const char *buf, size_t end, size_t *pos)
{
    long long left = 1; /* items still to pass, nested ones included */
    while (left > 0) {
        ew__resp_item it;
        if (!ew__resp_next(buf, end, pos, &it)) return false;
        left--;
        if (it.type == '*' && it.n > 0) left += it.n;
    }
    return true;
}

#else
typedef int ew__redis_resp_unused;
#endif
