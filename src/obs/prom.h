/* eventwire — writing the Prometheus text exposition format, version 0.0.4.
 *
 * A family is announced once (# HELP, # TYPE) and its samples follow it, all together. Label
 * values are escaped as the format asks (backslash, double quote, line feed); names are the
 * caller's, already valid ([a-zA-Z_:][a-zA-Z0-9_:]*). */
#ifndef EW_OBS_PROM_H
#define EW_OBS_PROM_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"

/* Labels: name/value pairs in an array ended by a NULL name; NULL for none. */
typedef struct ew__label {
    const char *name, *value;
} ew__label;

/* "# HELP name help" and "# TYPE name type" (counter, gauge, histogram). */
void ew__prom_family(ew_buf *b, const char *name, const char *type, const char *help);

/* One sample: name{labels} value. */
void ew__prom_sample(ew_buf *b, const char *name, const ew__label *labels, double value);
void ew__prom_sample_u64(ew_buf *b, const char *name, const ew__label *labels, uint64_t value);

#define EW__PROM_MAX_BUCKETS 32

/* A histogram's bucket bounds, formatted once for all the histograms of a family. */
typedef struct ew__prom_buckets {
    size_t n; /* bounds, at most EW__PROM_MAX_BUCKETS (more are left out) */
    char le[EW__PROM_MAX_BUCKETS][32];
} ew__prom_buckets;

void ew__prom_buckets_init(ew__prom_buckets *bk, const double *bounds, size_t n);

/* A histogram's samples: name_bucket{labels,le=...} cumulative over counts[0..bk->n] (counts[n]
 * is past the last bound, le="+Inf"), name_sum and name_count. */
void ew__prom_histogram(ew_buf *b, const char *name, const ew__label *labels,
                        const ew__prom_buckets *bk, const uint64_t *counts, double sum);

#endif
