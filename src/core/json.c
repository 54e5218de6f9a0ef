/* eventwire — strict JSON (json.h): a recursive-descent parser into an arena tree, and a writer.
 *
 * The parser reads its input once, left to right, and refuses at the first problem; line and
 * column are only computed then, so the success path never counts newlines. Strings are scanned
 * eight bytes at a time and copied with one memcpy when they hold no escape. */
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/json.h"
#include "core/rand.h"

#define SMALL_OBJECT 16 /* members compared one by one up to this many, then a hash set */
#define KEY_IN_MSG 64   /* bytes of a member name quoted in a message */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HAVE_SWAR 1
#else
#define HAVE_SWAR 0
#endif

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* x86-64 always has SSE2: strings are scanned sixteen bytes at a time there, eight elsewhere. */
#if defined(__SSE2__) && HAVE_SWAR
#include <emmintrin.h>
#define HAVE_SSE2 1
#else
#define HAVE_SSE2 0
#endif

typedef struct parser {
    const char *text, *end;
    ew_arena *arena;
    ew_error *err;
    int max_depth;
    int code;         /* what the first failure was */
    size_t used, mem; /* bytes taken so far, and the most allowed (EW_JSON_MEM_FACTOR) */
    size_t len;       /* of the input, for the message */
} parser;

static const char *parse_value(parser *ps, const char *p, ew_json *v, int depth);

/* ---- errors --------------------------------------------------------------------------------- */

static void position(const char *text, const char *at, size_t *line, size_t *col)
{
    const char *ls = text, *nl;
    size_t l = 1;
    while (ls < at && (nl = memchr(ls, '\n', (size_t)(at - ls))) != NULL) {
        l++;
        ls = nl + 1;
    }
    *line = l;
    *col = (size_t)(at - ls) + 1;
}

/* Records code and "line L, column C: <what>"; returns NULL so that callers can return it. */
__attribute__((format(printf, 4, 5))) static const char *fail(parser *ps, const char *at, int code,
                                                              const char *fmt, ...)
{
    ps->code = code;
    if (ps->err) {
        char what[160];
        size_t line, col;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        position(ps->text, at, &line, &col);
        ew_error_set(ps->err, code, "line %zu, column %zu: %s", line, col, what);
    }
    return NULL;
}

static const char *oom(parser *ps)
{
    if (ps->code == EW_ETOOBIG) return NULL; /* over the memory limit: said already */
    ps->code = EW_ENOMEM;
    ew_error_set(ps->err, EW_ENOMEM, "out of memory while parsing JSON");
    return NULL;
}

/* Charges n bytes (as the arena rounds them) to the parse; EW_ETOOBIG past its limit. */
static int charge(parser *ps, size_t n)
{
    size_t need = (n + 15) & ~(size_t)15;
    if (need < n || need > ps->mem - ps->used) {
        ps->code = EW_ETOOBIG;
        ew_error_set(ps->err, EW_ETOOBIG,
                     "JSON text of %zu bytes needs more than %zu bytes of memory to parse (the "
                     "limit is %d bytes per input byte and %d KiB)",
                     ps->len, ps->mem, EW_JSON_MEM_FACTOR, EW_JSON_MEM_BASE / 1024);
        return EW_ETOOBIG;
    }
    ps->used += need;
    return 0;
}

/* n bytes of the arena, charged; NULL when over the limit or out of memory (ps->code says). */
static inline void *palloc(parser *ps, size_t n)
{
    if (charge(ps, n)) return NULL;
    return ew_arena_alloc(ps->arena, n);
}

/* "'x'" for a visible ASCII character, "byte 0xNN" for anything else. */
static const char *show_char(char *buf, size_t size, unsigned char c)
{
    if (c > 0x20 && c < 0x7f)
        snprintf(buf, size, "'%c'", c);
    else if (c == ' ')
        snprintf(buf, size, "space");
    else
        snprintf(buf, size, "byte 0x%02X", c);
    return buf;
}

/* A byte that cannot start a value. Common mistakes get a sentence of their own. */
static const char *bad_value(parser *ps, const char *p)
{
    const char *end = ps->end;
    unsigned char c = (unsigned char)*p;
    char shown[16];
    switch (c) {
    case '/':
        return fail(ps, p, EW_EJSON, "comments are not allowed");
    case '\'':
        return fail(ps, p, EW_EJSON, "single-quoted strings are not allowed");
    case '+':
        return fail(ps, p, EW_EJSON, "a number must not start with '+'");
    case '.':
        return fail(ps, p, EW_EJSON, "a number must not start with '.'");
    case 'N':
        if (end - p >= 3 && memcmp(p, "NaN", 3) == 0)
            return fail(ps, p, EW_EJSON, "NaN is not allowed");
        break;
    case 'I':
        if (end - p >= 8 && memcmp(p, "Infinity", 8) == 0)
            return fail(ps, p, EW_EJSON, "Infinity is not allowed");
        break;
    case ']':
    case '}':
    case ',':
    case ':':
        return fail(ps, p, EW_EJSON, "unexpected '%c', expected a value", c);
    }
    if (c >= 0x80) return fail(ps, p, EW_EJSON, "unexpected byte 0x%02X outside a string", c);
    if (c > 0x20 && c < 0x7f) return fail(ps, p, EW_EJSON, "unexpected character '%c'", c);
    return fail(ps, p, EW_EJSON, "unexpected %s", show_char(shown, sizeof shown, c));
}

/* After a value inside a container: '/' gets its own sentence, anything else `expected`. */
static const char *bad_separator(parser *ps, const char *p, const char *expected)
{
    char shown[16];
    if (p == ps->end) return fail(ps, p, EW_EJSON, "unexpected end of input, %s", expected);
    if (*p == '/') return fail(ps, p, EW_EJSON, "comments are not allowed");
    return fail(ps, p, EW_EJSON, "%s, found %s", expected,
                show_char(shown, sizeof shown, (unsigned char)*p));
}

/* ---- UTF-8 ---------------------------------------------------------------------------------- */

enum { U8_LEAD, U8_CONT, U8_OVERLONG, U8_SURROGATE, U8_RANGE, U8_TRUNC };

/* Length of the well-formed sequence at s (s[0] >= 0x80) per Unicode table 3-7, or 0 and why. */
static inline size_t utf8_seq(const unsigned char *s, const unsigned char *end, int *fault)
{
    unsigned c = s[0], lo = 0x80, hi = 0xBF, bad = U8_CONT;
    size_t need;
    if (c < 0xC2) {
        *fault = c < 0xC0 ? U8_LEAD : U8_OVERLONG;
        return 0;
    }
    if (c < 0xE0) {
        need = 1;
    } else if (c < 0xF0) {
        need = 2;
        if (c == 0xE0) lo = 0xA0, bad = U8_OVERLONG;
        if (c == 0xED) hi = 0x9F, bad = U8_SURROGATE;
    } else if (c < 0xF5) {
        need = 3;
        if (c == 0xF0) lo = 0x90, bad = U8_OVERLONG;
        if (c == 0xF4) hi = 0x8F, bad = U8_RANGE;
    } else {
        *fault = c < 0xF8 ? U8_RANGE : U8_LEAD;
        return 0;
    }
    size_t have = (size_t)(end - s) - 1;
    if (have >= 1 && (s[1] < lo || s[1] > hi)) {
        /* A continuation byte outside the narrowed range is the special fault of this lead. */
        *fault = (s[1] & 0xC0) == 0x80 ? (int)bad : U8_CONT;
        return 0;
    }
    for (size_t i = 2; i <= need && i <= have; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *fault = U8_CONT;
            return 0;
        }
    }
    if (have < need) {
        *fault = U8_TRUNC;
        return 0;
    }
    return need + 1;
}

static const char *utf8_fail(parser *ps, const char *p, int fault)
{
    unsigned c = (unsigned char)p[0];
    switch (fault) {
    case U8_OVERLONG:
        return fail(ps, p, EW_EUTF8, "invalid UTF-8: overlong encoding starting with 0x%02X", c);
    case U8_SURROGATE:
        return fail(ps, p, EW_EUTF8, "invalid UTF-8: encoded surrogate (0xED 0x%02X)",
                    (unsigned char)p[1]);
    case U8_RANGE:
        return fail(ps, p, EW_EUTF8, "invalid UTF-8: code point above U+10FFFF");
    case U8_TRUNC:
        return fail(ps, p, EW_EUTF8, "invalid UTF-8: sequence truncated by the end of input");
    case U8_CONT:
        return fail(ps, p, EW_EUTF8, "invalid UTF-8: bad continuation byte after 0x%02X", c);
    default:
        return fail(ps, p, EW_EUTF8, "invalid UTF-8: unexpected byte 0x%02X", c);
    }
}

bool ew_utf8_valid(const char *s, size_t n)
{
    if (n == 0) return true;
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        if (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            if (!(x & HIGHS)) {
                p += 8;
                continue;
            }
        }
        if (*p < 0x80) {
            p++;
            continue;
        }
        int fault;
        size_t k = utf8_seq(p, end, &fault);
        if (!k) return false;
        p += k;
    }
    return true;
}

static char *put_utf8(char *d, unsigned cp)
{
    if (cp < 0x80) {
        *d++ = (char)cp;
    } else if (cp < 0x800) {
        *d++ = (char)(0xC0 | (cp >> 6));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *d++ = (char)(0xE0 | (cp >> 12));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *d++ = (char)(0xF0 | (cp >> 18));
        *d++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *d++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *d++ = (char)(0x80 | (cp & 0x3F));
    }
    return d;
}

/* memcpy for the short strings of a typical event, without a call: two overlapping loads. */
static inline void copy_short(char *d, const char *s, size_t n)
{
    if (n > 16) {
        memcpy(d, s, n);
    } else if (n >= 8) {
        uint64_t a, b;
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, s + n - 4, 4);
        memcpy(d, &a, 4);
        memcpy(d + n - 4, &b, 4);
    } else if (n > 0) {
        d[0] = s[0];
        d[n / 2] = s[n / 2];
        d[n - 1] = s[n - 1];
    }
}

/* ---- strings -------------------------------------------------------------------------------- */

/* 0x80 in each byte of x that is '"', '\\', a control character or non-ASCII; the lowest marked
 * byte is exact (borrows only run upwards from a byte that is itself marked). */
static inline uint64_t string_special(uint64_t x)
{
    uint64_t q = x ^ (ONES * '"'), b = x ^ (ONES * '\\');
    return (((q - ONES) | (b - ONES) | (x - ONES * 0x20)) & ~x & HIGHS) | (x & HIGHS);
}

static bool hex4(const char *p, const char *end, unsigned *out)
{
    if (end - p < 4) return false;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = (unsigned char)p[i], h;
        if (c - '0' < 10)
            h = c - '0';
        else if ((c | 0x20) - 'a' < 6)
            h = (c | 0x20) - 'a' + 10;
        else
            return false;
        v = v << 4 | h;
    }
    *out = v;
    return true;
}

/* Checks the escape at p (a backslash) completely, surrogate pairing included, so that
 * unescape() can trust it. Returns the byte after it. */
static const char *check_escape(parser *ps, const char *p)
{
    const char *end = ps->end;
    char shown[16];
    if (end - p < 2) return fail(ps, p, EW_EJSON, "unterminated string");
    switch (p[1]) {
    case '"':
    case '\\':
    case '/':
    case 'b':
    case 'f':
    case 'n':
    case 'r':
    case 't':
        return p + 2;
    case 'u':
        break;
    default:
        return fail(ps, p, EW_EJSON, "invalid escape: %s after '\\'",
                    show_char(shown, sizeof shown, (unsigned char)p[1]));
    }
    unsigned cp, lo;
    if (!hex4(p + 2, end, &cp))
        return fail(ps, p, EW_EJSON, "invalid \\u escape, expected four hex digits");
    if (cp == 0) return fail(ps, p, EW_EJSON, "\\u0000 is not allowed in strings");
    if (cp < 0xD800 || cp > 0xDFFF) return p + 6;
    if (cp <= 0xDBFF && end - p >= 12 && p[6] == '\\' && p[7] == 'u' && hex4(p + 8, end, &lo) &&
        lo >= 0xDC00 && lo <= 0xDFFF)
        return p + 12;
    return fail(ps, p, EW_EUTF8, "unpaired surrogate \\u%04X", cp);
}

/* Decodes p[0..end), whose escapes check_escape() accepted, into d; returns the end of what it
 * wrote. The output is never longer than the input. */
static char *unescape(const char *p, const char *end, char *d)
{
    while (p < end) {
        const char *bs = memchr(p, '\\', (size_t)(end - p));
        if (!bs) bs = end;
        memcpy(d, p, (size_t)(bs - p));
        d += bs - p;
        p = bs;
        if (p == end) break;
        unsigned cp = 0, lo = 0;
        switch (p[1]) {
        case 'b':
            *d++ = '\b';
            break;
        case 'f':
            *d++ = '\f';
            break;
        case 'n':
            *d++ = '\n';
            break;
        case 'r':
            *d++ = '\r';
            break;
        case 't':
            *d++ = '\t';
            break;
        case 'u':
            hex4(p + 2, end, &cp);
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                hex4(p + 8, end, &lo);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                p += 6;
            }
            d = put_utf8(d, cp);
            p += 4;
            break;
        default: /* '"', '\\', '/' */
            *d++ = p[1];
        }
        p += 2;
    }
    return d;
}

/* p is at the opening quote. Sets *out to an unescaped, NUL-terminated arena copy. */
#if HAVE_SSE2
/* Bit i set for each byte p[i] (of 16) that is '"', '\\', a control character or non-ASCII: a
 * signed comparison with 0x20 takes the last two at once. */
static inline unsigned string_special16(const char *p)
{
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m128i m =
        _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')), _mm_cmpeq_epi8(x, _mm_set1_epi8('\\')));
    m = _mm_or_si128(m, _mm_cmplt_epi8(x, _mm_set1_epi8(0x20)));
    return (unsigned)_mm_movemask_epi8(m);
}
#endif

static const char *parse_string(parser *ps, const char *p, const char **out, size_t *out_len)
{
    const char *open = p, *end = ps->end, *esc = NULL, *body = p + 1;
    p = body;
    for (;;) {
#if HAVE_SSE2
        for (unsigned m; end - p >= 16; p += 16)
            if ((m = string_special16(p)) != 0) {
                p += __builtin_ctz(m);
                goto special;
            }
#endif
#if HAVE_SWAR
        while (end - p >= 8) {
            uint64_t x, m;
            memcpy(&x, p, 8);
            if ((m = string_special(x)) != 0) {
                p += __builtin_ctzll(m) >> 3;
                break;
            }
            p += 8;
        }
#endif
#if HAVE_SSE2
    special:
#endif
        if (p >= end) return fail(ps, open, EW_EJSON, "unterminated string");
        unsigned char c = (unsigned char)*p;
        if (c == '"') break;
        if (c == '\\') {
            if (!esc) esc = p;
            if (!(p = check_escape(ps, p))) return NULL;
        } else if (c >= 0x80) {
            int fault;
            size_t k = utf8_seq((const unsigned char *)p, (const unsigned char *)end, &fault);
            if (!k) return utf8_fail(ps, p, fault);
            p += k;
        } else if (c < 0x20) {
            return fail(ps, p, EW_EJSON, "control character 0x%02X in string (must be escaped)", c);
        } else {
            p++;
        }
    }
    size_t raw = (size_t)(p - body);
    char *d = palloc(ps, raw + 1);
    if (!d) return oom(ps);
    if (!esc) {
        copy_short(d, body, raw);
        *out_len = raw;
    } else {
        size_t plain = (size_t)(esc - body);
        memcpy(d, body, plain);
        *out_len = (size_t)(unescape(esc, p, d + plain) - d);
    }
    d[*out_len] = '\0';
    *out = d;
    return p + 1;
}

/* ---- numbers -------------------------------------------------------------------------------- */

static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static locale_t c_locale;

static void c_locale_init(void)
{
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
}

/* strtod in the C locale: the application's setlocale() must not turn "1.5" into 1. */
static double strtod_c(const char *s)
{
    pthread_once(&c_locale_once, c_locale_init);
    return c_locale ? strtod_l(s, NULL, c_locale) : strtod(s, NULL);
}

static const double pow10_exact[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static inline bool is_digit(char c)
{
    return (unsigned)(c - '0') < 10;
}

/* RFC 8259 numbers. The value comes from the digits already in hand when that is exact (an
 * integer, or at most 19 significant digits times an exact power of ten: Clinger's fast path);
 * only other numbers pay for strtod. */
__attribute__((noinline)) static const char *parse_number(parser *ps, const char *p, ew_json *v)
{
    const char *s = p, *end = ps->end;
    bool neg = false, integral = true, truncated = false;
    uint64_t mant = 0;
    int sig = 0, frac = 0, exp10 = 0;
    char shown[16];

    if (*p == '-') {
        neg = true;
        if (++p == end || !is_digit(*p)) {
            if (end - p >= 8 && memcmp(p, "Infinity", 8) == 0)
                return fail(ps, s, EW_EJSON, "Infinity is not allowed");
            return fail(ps, p, EW_EJSON, "expected a digit after '-'");
        }
    }
    if (*p == '0') {
        if (++p < end && is_digit(*p))
            return fail(ps, s, EW_EJSON, "leading zeros are not allowed in numbers");
    } else {
        for (; p < end && is_digit(*p); p++) {
            if (sig < 19)
                mant = mant * 10 + (uint64_t)(*p - '0'), sig++;
            else
                truncated = true;
        }
    }
    if (p < end && *p == '.') {
        integral = false;
        if (++p == end || !is_digit(*p)) return fail(ps, p, EW_EJSON, "expected a digit after '.'");
        for (; p < end && is_digit(*p); p++) {
            if (mant == 0 && *p == '0') {
                frac++; /* leading zeros of a fraction are not significant */
            } else if (sig < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0'), sig++, frac++;
            } else {
                truncated = true;
            }
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        integral = false;
        bool eneg = false;
        if (++p < end && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p == end || !is_digit(*p))
            return fail(ps, p, EW_EJSON, "expected a digit in the exponent");
        for (; p < end && is_digit(*p); p++)
            if (exp10 < 100000) exp10 = exp10 * 10 + (*p - '0');
        if (eneg) exp10 = -exp10;
    }
    if (p < end && (is_digit(*p) || ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z') || *p == '.' ||
                    *p == '+' || *p == '-'))
        return fail(ps, p, EW_EJSON, "invalid character %s in number",
                    show_char(shown, sizeof shown, (unsigned char)*p));

    size_t n = (size_t)(p - s);
    char *text = palloc(ps, n + 1);
    if (!text) return oom(ps);
    copy_short(text, s, n);
    text[n] = '\0';
    v->kind = EW_JSON_NUMBER;
    v->str = text;
    v->len = n;

    if (integral && !truncated && mant <= (uint64_t)INT64_MAX + neg) {
        v->is_int = true;
        v->i64 = neg ? (int64_t)(0 - mant) : (int64_t)mant; /* two's complement: INT64_MIN too */
        v->num = neg ? (mant ? (double)v->i64 : -0.0) : (double)mant;
        return p;
    }
    int e = exp10 - frac;
    if (!truncated && mant <= (1ULL << 53) && e >= -22 && e <= 22) {
        double d = (double)mant;
        d = e >= 0 ? d * pow10_exact[e] : d / pow10_exact[-e];
        v->num = neg ? -d : d;
    } else {
        v->num = strtod_c(text);
    }
    return p;
}

/* ---- member-name set for big objects -------------------------------------------------------- */

/* SipHash-1-3 with a random key per set, so that nobody can prepare names that all collide. */
static inline uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1, v1 = rotl(v1, 13), v1 ^= v0, v0 = rotl(v0, 32);                                  \
        v2 += v3, v3 = rotl(v3, 16), v3 ^= v2;                                                     \
        v0 += v3, v3 = rotl(v3, 21), v3 ^= v0;                                                     \
        v2 += v1, v1 = rotl(v1, 17), v1 ^= v2, v2 = rotl(v2, 32);                                  \
    } while (0)

static uint64_t siphash13(const char *s, size_t n, uint64_t k0, uint64_t k1)
{
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t m, last = (uint64_t)n << 56;
    const char *end = s + (n & ~(size_t)7);
    for (; s < end; s += 8) {
        memcpy(&m, s, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t i = 0; i < (n & 7); i++)
        last |= (uint64_t)(unsigned char)s[i] << (8 * i);
    v3 ^= last;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

typedef struct keyslot {
    const ew_json *m;
    uint64_t h;
} keyslot;

typedef struct keyset {
    keyslot *slot; /* malloc'ed; open addressing, linear probing, at most half full */
    size_t mask, n;
    uint64_t k0, k1;
} keyset;

/* The set's memory is charged to the parse while it lives (set_free gives it back). */
static int keyset_grow(parser *ps, keyset *s)
{
    size_t cap = s->slot ? (s->mask + 1) * 2 : 64;
    if (charge(ps, cap * sizeof(keyslot))) return EW_ETOOBIG;
    keyslot *t = calloc(cap, sizeof *t);
    if (!t) return EW_ENOMEM;
    if (s->slot) ps->used -= (s->mask + 1) * sizeof(keyslot); /* freed below */
    if (!s->slot) {
        s->k0 = ew__rand64();
        s->k1 = ew__rand64();
    }
    for (size_t i = 0; s->slot && i <= s->mask; i++) {
        if (!s->slot[i].m) continue;
        size_t j = s->slot[i].h & (cap - 1);
        while (t[j].m)
            j = (j + 1) & (cap - 1);
        t[j] = s->slot[i];
    }
    free(s->slot);
    s->slot = t;
    s->mask = cap - 1;
    return 0;
}

/* 1 when m's name is new (and now in the set), 0 when it is a duplicate, or EW_ENOMEM or
 * EW_ETOOBIG. */
static int keyset_add(parser *ps, keyset *s, const ew_json *m)
{
    int rc;
    if ((!s->slot || (s->n + 1) * 2 > s->mask + 1) && (rc = keyset_grow(ps, s)) != 0) return rc;
    uint64_t h = siphash13(m->key, m->key_len, s->k0, s->k1);
    size_t i = h & s->mask;
    for (; s->slot[i].m; i = (i + 1) & s->mask) {
        const ew_json *o = s->slot[i].m;
        if (s->slot[i].h == h && o->key_len == m->key_len &&
            memcmp(o->key, m->key, m->key_len) == 0)
            return 0;
    }
    s->slot[i].m = m;
    s->slot[i].h = h;
    s->n++;
    return 1;
}

/* ---- containers ----------------------------------------------------------------------------- */

/* JSON's white space as bits of a word: a byte above ' ' (what compact JSON has between its
 * tokens) is told apart with one comparison. */
#define WS_BITS                                                                                    \
    (UINT64_C(1) << ' ' | UINT64_C(1) << '\n' | UINT64_C(1) << '\r' | UINT64_C(1) << '\t')

static inline const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (unsigned char)*p <= ' ' && (WS_BITS >> (unsigned char)*p & 1))
        p++;
    return p;
}

static inline ew_json *new_node(parser *ps)
{
    ew_json *n = palloc(ps, sizeof *n);
    if (n) { /* field by field: a memset of this size becomes a slow `rep stos` */
        n->kind = EW_JSON_NULL;
        n->key = n->str = NULL;
        n->key_len = n->len = n->count = 0;
        n->next = n->child = NULL;
        n->num = 0;
        n->i64 = 0;
        n->is_int = false;
    }
    return n;
}

__attribute__((noinline)) static const char *parse_array(parser *ps, const char *p, ew_json *v,
                                                         int depth)
{
    const char *end = ps->end;
    ew_json **tail = &v->child;
    v->kind = EW_JSON_ARRAY;
    p = skip_ws(p + 1, end);
    if (p < end && *p == ']') return p + 1;
    for (;;) {
        ew_json *n = new_node(ps);
        if (!n) return oom(ps);
        if (!(p = parse_value(ps, p, n, depth + 1))) return NULL;
        *tail = n;
        tail = &n->next;
        v->count++;
        p = skip_ws(p, end);
        if (p < end && *p == ']') return p + 1;
        if (p == end || *p != ',') return bad_separator(ps, p, "expected ',' or ']' after element");
        p = skip_ws(p + 1, end);
        if (p < end && *p == ']') return fail(ps, p, EW_EJSON, "trailing comma before ']'");
    }
}

/* `"name"` quoted for a message: escaped, at most KEY_IN_MSG bytes, never cut inside a UTF-8
 * sequence, "..." when shortened. */
static void quote_key(char *dst, const char *k, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    dst[o++] = '"';
    while (i < n) {
        unsigned char c = (unsigned char)k[i];
        char piece[8];
        size_t pl = 0, used = 1;
        if (c == '"' || c == '\\') {
            piece[pl++] = '\\', piece[pl++] = (char)c;
        } else if (c < 0x20) {
            piece[pl++] = '\\', piece[pl++] = 'u', piece[pl++] = '0', piece[pl++] = '0';
            piece[pl++] = hex[c >> 4], piece[pl++] = hex[c & 15];
        } else {
            used = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; /* the parser validated it */
            if (used > n - i) used = n - i;
            memcpy(piece, k + i, used);
            pl = used;
        }
        if (o - 1 + pl > KEY_IN_MSG) {
            memcpy(dst + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(dst + o, piece, pl);
        o += pl;
        i += used;
    }
    dst[o++] = '"';
    dst[o] = '\0';
}

static const char *duplicate(parser *ps, const char *at, const ew_json *m)
{
    char q[KEY_IN_MSG + 8]; /* quotes, "..." and the NUL */
    if (!ps->err) {
        ps->code = EW_EDUPKEY;
        return NULL;
    }
    quote_key(q, m->key, m->key_len);
    return fail(ps, at, EW_EDUPKEY, "duplicate member name %s", q);
}

/* The names seen so far in one object. */
typedef struct names {
    uint32_t sig[SMALL_OBJECT]; /* of the first members: compared before any memcmp */
    uint64_t seen;              /* bit sig % 64 of each of them: most names meet no earlier one */
    keyset set;                 /* all of them, once there are more */
} names;

/* A cheap fingerprint of a name from its length and its first and last bytes; equal names have
 * equal fingerprints, so only a match needs a real comparison. */
static inline uint32_t name_sig(const char *k, size_t n)
{
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        memcpy(&a, k, 8);
        memcpy(&b, k + n - 8, 8);
    } else if (n >= 4) {
        uint32_t x, y;
        memcpy(&x, k, 4);
        memcpy(&y, k + n - 4, 4);
        a = x, b = y;
    } else if (n > 0) {
        a = (uint64_t)(unsigned char)k[0] | (uint64_t)(unsigned char)k[n / 2] << 8 |
            (uint64_t)(unsigned char)k[n - 1] << 16;
    }
    uint64_t h = a * 0x9E3779B97F4A7C15ULL ^ b * 0xC2B2AE3D27D4EB4FULL ^ n;
    return (uint32_t)(h >> 32) ^ (uint32_t)h;
}

/* Checks the name of n (written from at to name_end), not yet linked, against the members before
 * it: by fingerprint while there are few (no pointer chasing), then through a hash set so that a
 * huge object stays linear. 0, or a code (recorded). */
static int check_name(parser *ps, const char *at, const char *name_end, ew_json *obj,
                      const ew_json *n, names *nm)
{
    size_t count = obj->count;
    int r = 1;
    if (count < SMALL_OBJECT) {
        /* From the input when the name had no escape (escapes always shrink): reading back the
         * bytes just copied would wait for the copy's stores. */
        const char *src = (size_t)(name_end - at) == n->key_len + 2 ? at + 1 : n->key;
        uint32_t sig = name_sig(src, n->key_len);
        uint64_t bit = UINT64_C(1) << (sig & 63);
        for (size_t i = 0; (nm->seen & bit) && i < count && r; i++) {
            if (nm->sig[i] != sig) continue;
            const ew_json *m = obj->child;
            for (size_t j = 0; j < i; j++)
                m = m->next;
            r = !(m->key_len == n->key_len && memcmp(m->key, n->key, n->key_len) == 0);
        }
        nm->seen |= bit;
        nm->sig[count] = sig;
    } else {
        keyset *set = &nm->set;
        for (const ew_json *m = set->slot ? NULL : obj->child; m && r > 0; m = m->next) {
            int k = keyset_add(ps, set, m);
            r = k < 0 ? k : 1;
        }
        if (r > 0) r = keyset_add(ps, set, n);
    }
    if (r == 0) {
        duplicate(ps, at, n);
        return EW_EDUPKEY;
    }
    if (r < 0) {
        oom(ps); /* a no-op when over the memory limit, which is said already */
        return r;
    }
    return 0;
}

__attribute__((noinline)) static const char *parse_object(parser *ps, const char *p, ew_json *v,
                                                          int depth)
{
    const char *end = ps->end;
    ew_json **tail = &v->child;
    names nm;
    char shown[16];
    v->kind = EW_JSON_OBJECT;
    nm.set.slot = NULL; /* the fingerprints need no initialisation; their bits do */
    nm.set.n = 0;
    nm.seen = 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return p + 1;
    for (;;) {
        if (p == end || *p != '"') {
            if (p == end) {
                p = fail(ps, p, EW_EJSON, "unexpected end of input, expected a member name");
            } else if (*p == '\'') {
                p = fail(ps, p, EW_EJSON, "single-quoted strings are not allowed");
            } else if (*p == '/') {
                p = fail(ps, p, EW_EJSON, "comments are not allowed");
            } else {
                p = fail(ps, p, EW_EJSON, "expected '\"' to start a member name, found %s",
                         show_char(shown, sizeof shown, (unsigned char)*p));
            }
            goto out;
        }
        const char *name_at = p;
        ew_json *n = new_node(ps);
        if (!n) {
            p = oom(ps);
            goto out;
        }
        if (!(p = parse_string(ps, p, &n->key, &n->key_len))) goto out;
        if (check_name(ps, name_at, p, v, n, &nm) != 0) {
            p = NULL;
            goto out;
        }
        p = skip_ws(p, end);
        if (p == end || *p != ':') {
            p = fail(ps, p, EW_EJSON, "expected ':' after member name");
            goto out;
        }
        p = skip_ws(p + 1, end);
        if (!(p = parse_value(ps, p, n, depth + 1))) goto out;
        *tail = n;
        tail = &n->next;
        v->count++;
        p = skip_ws(p, end);
        if (p < end && *p == '}') {
            p++;
            break;
        }
        if (p == end || *p != ',') {
            p = bad_separator(ps, p, "expected ',' or '}' after member value");
            goto out;
        }
        p = skip_ws(p + 1, end);
        if (p < end && *p == '}') {
            p = fail(ps, p, EW_EJSON, "trailing comma before '}'");
            goto out;
        }
    }
out: /* on success too, with p not NULL */
    if (nm.set.slot) ps->used -= (nm.set.mask + 1) * sizeof(keyslot);
    free(nm.set.slot);
    return p;
}

/* p may be at the end; white space before it is already skipped. depth is the depth an array or
 * object here would have, checked before descending so that the C stack stays bounded. The
 * containers and numbers are kept out of line so that this dispatch stays small: every element
 * of every array goes through it. */
static const char *parse_value(parser *ps, const char *p, ew_json *v, int depth)
{
    const char *end = ps->end;
    if (p == end) return fail(ps, p, EW_EJSON, "unexpected end of input, expected a value");
    switch (*p) {
    case '"':
        v->kind = EW_JSON_STRING;
        return parse_string(ps, p, &v->str, &v->len);
    case '{':
    case '[':
        if (depth > ps->max_depth)
            return fail(ps, p, EW_EDEPTH, "nesting deeper than %d levels", ps->max_depth);
        return *p == '{' ? parse_object(ps, p, v, depth) : parse_array(ps, p, v, depth);
    case 't':
        if (end - p >= 4 && memcmp(p, "true", 4) == 0) {
            v->kind = EW_JSON_TRUE;
            return p + 4;
        }
        return fail(ps, p, EW_EJSON, "invalid literal, expected 'true'");
    case 'f':
        if (end - p >= 5 && memcmp(p, "false", 5) == 0) {
            v->kind = EW_JSON_FALSE;
            return p + 5;
        }
        return fail(ps, p, EW_EJSON, "invalid literal, expected 'false'");
    case 'n':
        if (end - p >= 4 && memcmp(p, "null", 4) == 0) {
            v->kind = EW_JSON_NULL;
            return p + 4;
        }
        return fail(ps, p, EW_EJSON, "invalid literal, expected 'null'");
    case '-':
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9':
        return parse_number(ps, p, v);
    default:
        return bad_value(ps, p);
    }
}

int ew_json_parse(ew_json **out, const char *text, size_t len, const ew_json_limits *lim,
                  ew_arena *arena, ew_error *err)
{
    if (!out || !arena || (!text && len))
        return ew_error_set(err, EW_EINVAL, "ew_json_parse: out, arena and text are required");
    *out = NULL;
    if (!text) text = "";
    size_t max_bytes = lim ? lim->max_bytes : 0;
    if (max_bytes && len > max_bytes)
        return ew_error_set(err, EW_ETOOBIG,
                            "JSON text of %zu bytes is over the limit of %zu bytes", len,
                            max_bytes);
    int max_depth = lim ? lim->max_depth : 0;
    if (max_depth < 0)
        return ew_error_set(err, EW_EINVAL, "JSON max_depth %d must not be negative", max_depth);
    if (max_depth == 0) max_depth = EW_JSON_DEPTH;
    if (max_depth > EW_JSON_DEPTH_CAP) max_depth = EW_JSON_DEPTH_CAP;
    size_t mem = lim ? lim->max_mem : 0;
    if (mem == 0)
        mem = len > (SIZE_MAX - EW_JSON_MEM_BASE) / EW_JSON_MEM_FACTOR
                  ? SIZE_MAX
                  : len * EW_JSON_MEM_FACTOR + EW_JSON_MEM_BASE;

    parser ps = {.text = text,
                 .end = text + len,
                 .arena = arena,
                 .err = err,
                 .max_depth = max_depth,
                 .code = 0,
                 .used = 0,
                 .mem = mem,
                 .len = len};
    const char *p = text;
    if (len >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
        fail(&ps, p, EW_EJSON, "a byte order mark (U+FEFF) is not allowed");
        return ps.code;
    }
    p = skip_ws(p, ps.end);
    if (p == ps.end) {
        fail(&ps, text, EW_EJSON, len ? "empty input (only white space)" : "empty input");
        return ps.code;
    }
    ew_json *root = new_node(&ps);
    if (!root) {
        oom(&ps);
        return ps.code;
    }
    if (!(p = parse_value(&ps, p, root, 1))) return ps.code;
    p = skip_ws(p, ps.end);
    if (p != ps.end) {
        char shown[16];
        fail(&ps, p, EW_EJSON, "unexpected %s after the JSON value",
             show_char(shown, sizeof shown, (unsigned char)*p));
        return ps.code;
    }
    *out = root;
    return 0;
}

const ew_json *ew_json_get(const ew_json *obj, const char *key)
{
    if (!obj || !key || obj->kind != EW_JSON_OBJECT) return NULL;
    for (const ew_json *m = obj->child; m; m = m->next)
        if (m->key && strcmp(m->key, key) == 0) return m;
    return NULL;
}

/* ---- writer --------------------------------------------------------------------------------- */

/* The writer appends straight into b's memory: a call into buf.c per punctuation mark would cost
 * more than the JSON itself. room() gives where n more bytes go (the NUL fits too), or NULL. */
static inline char *room(ew_buf *b, size_t n)
{
    if ((b->oom || b->cap - b->len <= n) && ew_buf_reserve(b, n) != 0) return NULL;
    return b->data + b->len;
}

static inline void commit(ew_buf *b, char *end)
{
    *end = '\0';
    b->len = (size_t)(end - b->data);
}

static inline void put_c(ew_buf *b, char c)
{
    char *d = room(b, 1);
    if (d) {
        *d++ = c;
        commit(b, d);
    }
}

static inline void put_n(ew_buf *b, const char *s, size_t n)
{
    char *d = room(b, n);
    if (d && n) {
        copy_short(d, s, n);
        commit(b, d + n);
    }
}

/* 0x80 in each byte of x that must be escaped: '"', '\\' or a control character. */
static inline uint64_t escape_special(uint64_t x)
{
    uint64_t q = x ^ (ONES * '"'), b = x ^ (ONES * '\\');
    return ((q - ONES) | (b - ONES) | (x - ONES * 0x20)) & ~x & HIGHS;
}

#if HAVE_SSE2
/* Bit i set for each byte s[i] (of 16) that must be escaped: '"', '\\' or a control character
 * (unsigned, at most 0x1F: max(x, 0x1F) is 0x1F). */
static inline unsigned escape_special16(const char *s)
{
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)s), ctl = _mm_set1_epi8(0x1F);
    __m128i m =
        _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')), _mm_cmpeq_epi8(x, _mm_set1_epi8('\\')));
    m = _mm_or_si128(m, _mm_cmpeq_epi8(_mm_max_epu8(x, ctl), ctl));
    return (unsigned)_mm_movemask_epi8(m);
}
#endif

/* The index of the first byte of s[i..n) that must be escaped, or n. */
static inline size_t next_escape(const char *s, size_t i, size_t n)
{
#if HAVE_SSE2
    for (; n - i >= 16; i += 16) {
        unsigned m = escape_special16(s + i);
        if (m) return i + (size_t)__builtin_ctz(m);
    }
    if (i < n && n >= 16) { /* the rest, in the string's last 16 bytes: those before i dropped */
        unsigned m = escape_special16(s + n - 16) >> (16 - (n - i));
        return m ? i + (size_t)__builtin_ctz(m) : n;
    }
#endif
#if HAVE_SWAR
    for (; n - i >= 8; i += 8) {
        uint64_t x, m;
        memcpy(&x, s + i, 8);
        if ((m = escape_special(x)) != 0) return i + ((size_t)__builtin_ctzll(m) >> 3);
    }
#endif
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\') break;
    }
    return i;
}

void ew_json_write_string(ew_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = next_escape(s, 0, n), run = 0;
    if (i == n) { /* the common case: nothing to escape, one copy */
        char *d = room(b, n + 2);
        if (!d) return;
        *d++ = '"';
        copy_short(d, s, n);
        d += n;
        *d++ = '"';
        commit(b, d);
        return;
    }
    put_c(b, '"');
    for (; i < n; i = next_escape(s, i, n)) {
        unsigned char c = (unsigned char)s[i];
        char e[6] = {'\\', (char)c, '0', '0', hex[c >> 4], hex[c & 15]};
        size_t el = 2;
        switch (c) {
        case '"':
        case '\\':
            break;
        case '\b':
            e[1] = 'b';
            break;
        case '\f':
            e[1] = 'f';
            break;
        case '\n':
            e[1] = 'n';
            break;
        case '\r':
            e[1] = 'r';
            break;
        case '\t':
            e[1] = 't';
            break;
        default:
            e[1] = 'u';
            el = 6;
        }
        put_n(b, s + run, i - run);
        put_n(b, e, el);
        run = ++i;
    }
    put_n(b, s + run, n - run);
    put_c(b, '"');
}

void ew_json_write_string_lossy(ew_buf *b, const char *s, size_t n)
{
    if (ew_utf8_valid(s, n)) {
        ew_json_write_string(b, s, n);
        return;
    }
    ew_buf t;
    ew_buf_init(&t);
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        int fault;
        size_t k = *p < 0x80 ? 1 : utf8_seq(p, end, &fault);
        if (k) {
            ew_buf_append(&t, p, k);
            p += k;
        } else {
            ew_buf_append(&t, "\xEF\xBF\xBD", 3); /* U+FFFD REPLACEMENT CHARACTER */
            p++;
        }
    }
    if (t.oom)
        b->oom = 1;
    else
        ew_json_write_string(b, t.data ? t.data : "", t.len);
    ew_buf_release(&t);
}

static void write_indent(ew_buf *b, size_t n)
{
    static const char spaces[] = "                                                                ";
    while (n > 0) {
        size_t k = n < sizeof spaces - 1 ? n : sizeof spaces - 1;
        put_n(b, spaces, k);
        n -= k;
    }
}

static void write_number(ew_buf *b, const ew_json *v)
{
    if (v->str) {
        put_n(b, v->str, v->len);
    } else if (v->is_int) { /* a node built by hand, not by the parser */
        ew_buf_printf(b, "%lld", (long long)v->i64);
    } else if (isfinite(v->num)) {
        ew_buf_printf(b, "%.17g", v->num);
    } else {
        ew_buf_puts(b, "null"); /* JSON has no NaN or infinity */
    }
}

/* indent < 0: compact. level: how deep v is, for the pretty form. */
static void write_value(ew_buf *b, const ew_json *v, int indent, size_t level)
{
    switch (v->kind) {
    case EW_JSON_NULL:
        put_n(b, "null", 4);
        return;
    case EW_JSON_FALSE:
        put_n(b, "false", 5);
        return;
    case EW_JSON_TRUE:
        put_n(b, "true", 4);
        return;
    case EW_JSON_NUMBER:
        write_number(b, v);
        return;
    case EW_JSON_STRING:
        ew_json_write_string(b, v->str ? v->str : "", v->str ? v->len : 0);
        return;
    case EW_JSON_ARRAY:
    case EW_JSON_OBJECT:
        break;
    }
    bool obj = v->kind == EW_JSON_OBJECT;
    put_c(b, obj ? '{' : '[');
    for (const ew_json *c = v->child; c; c = c->next) {
        if (c != v->child) put_c(b, ',');
        if (indent >= 0) {
            put_c(b, '\n');
            write_indent(b, (size_t)indent * (level + 1));
        }
        if (obj) {
            ew_json_write_string(b, c->key ? c->key : "", c->key ? c->key_len : 0);
            if (indent >= 0)
                put_n(b, ": ", 2);
            else
                put_c(b, ':');
        }
        write_value(b, c, indent, level + 1);
    }
    if (indent >= 0 && v->child) {
        put_c(b, '\n');
        write_indent(b, (size_t)indent * level);
    }
    put_c(b, obj ? '}' : ']');
}

void ew_json_write(ew_buf *b, const ew_json *v)
{
    if (v) write_value(b, v, -1, 0);
}

void ew_json_write_pretty(ew_buf *b, const ew_json *v, int indent)
{
    if (v) write_value(b, v, indent < 0 ? 0 : indent, 0);
}
