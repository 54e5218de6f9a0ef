/* The chaos soak and the fault tests (docs/reliability.md): what their parts share — the run's
 * context, the services as processes, the broker, HTTP calls, the mail spool, the databases and
 * the figures, printed as bench lines (bench: soak.NAME VALUE UNIT). */
#ifndef EW_SOAK_H
#define EW_SOAK_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "eventwire/store.h"

#define SOAK_NSERVICES 5
extern const char *const soak_service_names[SOAK_NSERVICES];

typedef struct soak_service {
    const char *name;
    int port;
    pid_t pid;            /* 0 while down */
    int out_fd;           /* the read end of its stdout */
    int64_t started_ms;   /* when the running one started */
    int starts, kills;    /* incarnations; SIGKILLs by the chaos loop */
    int unexpected_exits; /* exits nobody asked for */
    long rss_first_kb;    /* the first sample after warm-up */
    long rss_last_kb;     /* the last sample */
    long rss_peak_kb;
    long rss_samples;
    /* the incarnation that lived longest (a trend needs one process): its memory 5 s after it
     * started and at its end, and how long it lived */
    long inc_first_kb, inc_last_kb;
    long life_first_kb, life_last_kb;
    int64_t life_ms;
} soak_service;

typedef struct soak_ctx {
    const char *backend;  /* sqlite, redis, rabbitmq, kafka */
    char build[512];      /* the build folder: the services, ew-kafka-mock */
    char source[512];     /* the source tree: scripts/test-servers */
    char servers[600];    /* scripts/test-servers's state folder, under build */
    char work[256];       /* the run's folder: var/ of the services */
    char broker_url[256]; /* empty on sqlite */
    char ns[32];          /* the run's namespace on the broker */
    const char *prefix;   /* of the figures: soak.BACKEND or soak.fault.NAME.BACKEND */
    soak_service svc[SOAK_NSERVICES];
    pthread_mutex_t lock; /* svc[].pid and the figures of the chaos loop */
    int failures;         /* checks that did not hold */
} soak_ctx;

/* ---- the run ----------------------------------------------------------------------------- */

/* Sets up ctx for backend: folders, the broker (started by scripts/test-servers in its own
 * state folder), the services' environment. 0, or -1 with the reason on stderr. */
int soak_open(soak_ctx *c, const char *backend, const char *prefix);
/* Stops the services (SIGTERM; a service that exits non-zero fails the run) and the broker;
 * removes the run's folder unless keep. */
void soak_close(soak_ctx *c, bool keep);

/* The figure NAME (under the ctx's prefix) in the bench line format. */
void soak_figure(soak_ctx *c, const char *name, double value, const char *unit);
/* A check: prints "check: WHAT ok|FAILED (detail)" and counts a failure. */
void soak_check(soak_ctx *c, bool ok, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void soak_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Whether resident memory means anything in this build: not under AddressSanitizer, whose
 * quarantine keeps freed memory and whose shadow grows with it (LeakSanitizer, at each service's
 * exit, is the check there). The soak, its services and their build are one build folder. */
#if defined(__SANITIZE_ADDRESS__)
#define SOAK_RSS_MEANINGFUL false
#else
#define SOAK_RSS_MEANINGFUL true
#endif
/* A memory check: judged where SOAK_RSS_MEANINGFUL, else printed as skipped. */
void soak_check_rss(soak_ctx *c, bool ok, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int64_t soak_ms(void);

/* ---- processes --------------------------------------------------------------------------- */

/* Starts service i on its port and waits for its "listening" line (up to 30 s). 0 or -1. */
int soak_service_start(soak_ctx *c, int i);
/* Starts it, again and again, until it listens or give_up_ms passed. 0 or -1. */
int soak_service_start_retry(soak_ctx *c, int i, int64_t give_up_ms);
/* SIGKILL and reap. */
void soak_service_kill(soak_ctx *c, int i);
/* SIGTERM; the exit status (128 + signal when killed), -1 when it did not exit in 20 s. */
int soak_service_stop(soak_ctx *c, int i);
/* Reaps services that exited by themselves (counted as unexpected exits); returns how many. */
int soak_reap(soak_ctx *c);
/* Samples the resident memory of every running service into its figures. warm: count it as
 * the first sample when there is none yet. */
void soak_sample_rss(soak_ctx *c, bool warm);
long soak_rss_kb(pid_t pid);
/* Counts the running incarnations in the longest-life figures (at the end of a run). */
void soak_rss_finish(soak_ctx *c);
/* Restarts the broker (scripts/test-servers restart); 0 or -1. Stops it when down is true
 * and starts it again when it is false (for an outage of a chosen length). */
int soak_broker(soak_ctx *c, const char *action);
/* The sanitizer reports in the services' logs (var/log/NAME.log). */
int soak_sanitizer_reports(soak_ctx *c);

/* ---- HTTP -------------------------------------------------------------------------------- */

typedef struct soak_http {
    long status;      /* 0: no answer (refused, reset, timed out) */
    char *body;       /* malloc'ed, NUL-terminated */
    bool retry_after; /* the answer had a Retry-After header */
    double ms;
} soak_http;

/* One request to service i (path from /), with a bearer token when not NULL. */
soak_http soak_call(soak_ctx *c, int i, const char *method, const char *path, const char *body,
                    const char *bearer, long timeout_ms);
void soak_http_free(soak_http *r);
/* The string member key of r's JSON body into out (n bytes); false when there is none. */
bool soak_member(const soak_http *r, const char *key, char *out, size_t n);
/* An admin's token, signed with the deployment's key (var/keys) as an operator could. */
int soak_admin_token(soak_ctx *c, char *out, size_t n);

/* ---- the databases ----------------------------------------------------------------------- */

/* Runs sql (with params) on the SQLite database var/FILE, handing each row to fn. 0 or -1. */
int soak_query(const char *file, const char *sql, const char *const *params, size_t n, ew_row_fn fn,
               void *ud);
/* The first column of the first row as a number (-1 when there is none or it failed). */
long soak_count(const char *file, const char *sql, const char *param);

#endif
