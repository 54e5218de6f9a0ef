/* eventwire — the Prometheus text exposition format (prom.h). */
#include "obs/prom.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

void ew__prom_family(ew_buf *b, const char *name, const char *type, const char *help)
{
    ew_buf_printf(b, "# HELP %s ", name);
    for (const char *p = help; *p; p++) { /* HELP escapes backslash and line feed */
        if (*p == '\\')
            ew_buf_puts(b, "\\\\");
        else if (*p == '\n')
            ew_buf_puts(b, "\\n");
        else
            ew_buf_putc(b, *p);
    }
    ew_buf_printf(b, "\n# TYPE %s %s\n", name, type);
}

/* Appends s[0..n) escaped as a label value: runs without a character to escape go in whole. */
static void label_value(ew_buf *b, const char *v)
{
    const char *p = v ? v : "", *run = p;
    for (; *p; p++) {
        const char *esc = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        if (!esc) continue;
        ew_buf_append(b, run, (size_t)(p - run));
        ew_buf_append(b, esc, 2);
        run = p + 1;
    }
    ew_buf_append(b, run, (size_t)(p - run));
}

static void label(ew_buf *b, const char *sep, const char *name, const char *value)
{
    ew_buf_puts(b, sep);
    ew_buf_puts(b, name);
    ew_buf_append(b, "=\"", 2);
    label_value(b, value);
    ew_buf_putc(b, '"');
}

/* name{a="x",b="y"[,extra="v"]} */
static void series(ew_buf *b, const char *name, const char *suffix, const ew__label *labels,
                   const char *extra_name, const char *extra_value)
{
    ew_buf_puts(b, name);
    if (suffix) ew_buf_puts(b, suffix);
    bool any = (labels && labels->name) || extra_name;
    if (!any) return;
    ew_buf_putc(b, '{');
    const char *sep = "";
    for (const ew__label *l = labels; l && l->name; l++) {
        label(b, sep, l->name, l->value);
        sep = ",";
    }
    if (extra_name) label(b, sep, extra_name, extra_value);
    ew_buf_putc(b, '}');
}

static void value(ew_buf *b, double v)
{
    if (isnan(v))
        ew_buf_puts(b, " NaN\n");
    else if (isinf(v))
        ew_buf_puts(b, v > 0 ? " +Inf\n" : " -Inf\n");
    else
        ew_buf_printf(b, " %.15g\n", v);
}

/* " v\n" without printf: most samples are counts. */
static void value_u64(ew_buf *b, uint64_t v)
{
    char s[24];
    char *p = s + sizeof s;
    *--p = '\n';
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    *--p = ' ';
    ew_buf_append(b, p, (size_t)(s + sizeof s - p));
}

void ew__prom_sample(ew_buf *b, const char *name, const ew__label *labels, double v)
{
    series(b, name, NULL, labels, NULL, NULL);
    value(b, v);
}

void ew__prom_sample_u64(ew_buf *b, const char *name, const ew__label *labels, uint64_t v)
{
    series(b, name, NULL, labels, NULL, NULL);
    value_u64(b, v);
}

void ew__prom_buckets_init(ew__prom_buckets *bk, const double *bounds, size_t n)
{
    bk->n = n < EW__PROM_MAX_BUCKETS ? n : EW__PROM_MAX_BUCKETS;
    for (size_t i = 0; i < bk->n; i++)
        snprintf(bk->le[i], sizeof bk->le[i], "%.15g", bounds[i]);
}

void ew__prom_histogram(ew_buf *b, const char *name, const ew__label *labels,
                        const ew__prom_buckets *bk, const uint64_t *counts, double sum)
{
    uint64_t cum = 0;
    for (size_t i = 0; i <= bk->n; i++) {
        cum += counts[i];
        series(b, name, "_bucket", labels, "le", i < bk->n ? bk->le[i] : "+Inf");
        value_u64(b, cum);
    }
    series(b, name, "_sum", labels, NULL, NULL);
    value(b, sum);
    series(b, name, "_count", labels, NULL, NULL);
    value_u64(b, cum);
}
