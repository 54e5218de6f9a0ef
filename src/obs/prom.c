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

static void label_value(ew_buf *b, const char *v)
{
    for (const char *p = v ? v : ""; *p; p++) {
        if (*p == '\\')
            ew_buf_puts(b, "\\\\");
        else if (*p == '"')
            ew_buf_puts(b, "\\\"");
        else if (*p == '\n')
            ew_buf_puts(b, "\\n");
        else
            ew_buf_putc(b, *p);
    }
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
        ew_buf_printf(b, "%s%s=\"", sep, l->name);
        label_value(b, l->value);
        ew_buf_putc(b, '"');
        sep = ",";
    }
    if (extra_name) {
        ew_buf_printf(b, "%s%s=\"", sep, extra_name);
        label_value(b, extra_value);
        ew_buf_putc(b, '"');
    }
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

void ew__prom_sample(ew_buf *b, const char *name, const ew__label *labels, double v)
{
    series(b, name, NULL, labels, NULL, NULL);
    value(b, v);
}

void ew__prom_sample_u64(ew_buf *b, const char *name, const ew__label *labels, uint64_t v)
{
    series(b, name, NULL, labels, NULL, NULL);
    ew_buf_printf(b, " %llu\n", (unsigned long long)v);
}

void ew__prom_histogram(ew_buf *b, const char *name, const ew__label *labels, const double *bounds,
                        const uint64_t *counts, size_t nb, double sum)
{
    uint64_t cum = 0;
    char le[32];
    for (size_t i = 0; i <= nb; i++) {
        cum += counts[i];
        if (i < nb)
            snprintf(le, sizeof le, "%.15g", bounds[i]);
        else
            snprintf(le, sizeof le, "+Inf");
        series(b, name, "_bucket", labels, "le", le);
        ew_buf_printf(b, " %llu\n", (unsigned long long)cum);
    }
    series(b, name, "_sum", labels, NULL, NULL);
    value(b, sum);
    series(b, name, "_count", labels, NULL, NULL);
    ew_buf_printf(b, " %llu\n", (unsigned long long)cum);
}
