/* The soak's load generator: worker threads offering a bounded mix of what users do over HTTP,
 * a record of every user and of what was accepted for them, and the checks of the outcomes. */
#ifndef EW_SOAK_LOAD_H
#define EW_SOAK_LOAD_H

#include "soak.h"

typedef struct soak_load soak_load;

/* A generator for c at rate operations a second (borrowed: c and admin outlive it). */
soak_load *soak_load_new(soak_ctx *c, int rate, const char *admin);
void soak_load_start(soak_load *l);
/* One line of counts so far. */
void soak_load_progress(soak_load *l);
void soak_load_stop(soak_load *l);
/* Resolves what the load left uncertain (requests without an answer) and waits up to
 * timeout_ms for every accepted request's outcome; returns how many are still pending. */
int soak_load_settle(soak_load *l, int64_t timeout_ms);
/* Figures and checks over HTTP (the services running). */
void soak_load_report(soak_load *l);
/* Figures and checks in the databases and the mail spool (the services stopped). */
void soak_load_report_stopped(soak_load *l);
void soak_load_free(soak_load *l);

#endif
