/* ewctl — progress of long work (store replay, store purge, dlq retry --all) on stderr.
 *
 * On a terminal, one line rewritten in place at most ten times a second: what, how many (of
 * how many, when known), the rate, and the time left. Elsewhere (a pipe, a file, a CI log), a
 * plain line at most once every few seconds. Either way a summary line at the end. stdout keeps
 * the command's JSON result alone. */
#ifndef EWCTL_PROGRESS_H
#define EWCTL_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct ewctl_progress {
    FILE *out;
    const char *verb; /* "replayed" */
    const char *noun; /* "events" */
    uint64_t total;   /* 0: not known */
    uint64_t done;
    int64_t t0_ns, last_ns;
    bool tty, drawn;
    int64_t every_ns; /* between two lines */
} ewctl_progress;

/* Starts counting; total 0 when it is not known. out is normally stderr. */
void ewctl_progress_start(ewctl_progress *p, FILE *out, const char *verb, const char *noun,
                          uint64_t total);

/* n more done; redraws when it is time. */
void ewctl_progress_add(ewctl_progress *p, uint64_t n);

/* The summary: "replayed 5000 events in 2.1 s (2381/s)", ending a terminal's line first. */
void ewctl_progress_end(ewctl_progress *p);

#endif
