/* eventwire — W3C trace context (eventwire/trace.h). */
#include "eventwire/trace.h"

#include <stdio.h>
#include <string.h>
#include "core/rand.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1; /* upper case is invalid in traceparent */
}

static bool hex_bytes(const char *s, uint8_t *out, size_t n)
{
    bool nonzero = false;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = (uint8_t)(hi << 4 | lo);
        nonzero |= out[i] != 0;
    }
    return nonzero;
}

bool ew_trace_parse(const char *tp, ew_trace_ctx *out)
{
    if (!tp) return false;
    size_t len = strlen(tp);
    if (len < EW_TRACEPARENT_LEN) return false;
    int v0 = hexval(tp[0]), v1 = hexval(tp[1]);
    if (v0 < 0 || v1 < 0) return false;
    int version = v0 << 4 | v1;
    if (version == 0xff) return false;
    if (tp[2] != '-' || tp[35] != '-' || tp[52] != '-') return false;
    /* version 00 is exactly 55 characters; a later one may add fields after a dash */
    if (version == 0 ? len != EW_TRACEPARENT_LEN : (len > EW_TRACEPARENT_LEN && tp[55] != '-'))
        return false;
    ew_trace_ctx c;
    if (!hex_bytes(tp + 3, c.trace_id, 16) || !hex_bytes(tp + 36, c.span_id, 8)) return false;
    if (hexval(tp[53]) < 0 || hexval(tp[54]) < 0) return false;
    c.flags = (uint8_t)(hexval(tp[53]) << 4 | hexval(tp[54]));
    *out = c;
    return true;
}

static char *hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
    return out;
}

char *ew_trace_id_hex(const ew_trace_ctx *ctx, char *out)
{
    return hex(ctx->trace_id, 16, out);
}

char *ew_trace_span_hex(const ew_trace_ctx *ctx, char *out)
{
    return hex(ctx->span_id, 8, out);
}

/* 00-TRACEID-SPANID-FLAGS, without printf: every handler call with spans on makes one. */
char *ew_trace_format(const ew_trace_ctx *ctx, char *out)
{
    memcpy(out, "00-", 3);
    hex(ctx->trace_id, 16, out + 3);
    out[35] = '-';
    hex(ctx->span_id, 8, out + 36);
    out[52] = '-';
    hex(&ctx->flags, 1, out + 53);
    return out;
}

/* Random, never all zero (which means "none"). */
static void random_id(uint8_t *p, size_t n)
{
    for (;;) {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = ew__rand64();
            memcpy(p + i, &r, n - i < 8 ? n - i : 8);
        }
        for (size_t i = 0; i < n; i++)
            if (p[i]) return;
    }
}

void ew_trace_new(ew_trace_ctx *out)
{
    random_id(out->trace_id, 16);
    random_id(out->span_id, 8);
    out->flags = 1;
}

void ew_trace_child(const ew_trace_ctx *parent, ew_trace_ctx *out)
{
    if (!parent) {
        ew_trace_new(out);
        return;
    }
    memcpy(out->trace_id, parent->trace_id, 16);
    out->flags = parent->flags;
    random_id(out->span_id, 8);
}
