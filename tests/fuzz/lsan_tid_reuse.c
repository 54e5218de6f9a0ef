/* eventwire — LeakSanitizer and a thread id used again: a tool for docs/fuzzing.md's report of
 * SQLite memory in the service harness, built in the sanitizer builds as fuzz-lsan-tid-reuse (not
 * a CTest entry; nothing of eventwire's in it).
 *
 * A thread allocates a block, keeps the only pointer to it on its stack and waits while the main
 * thread asks LeakSanitizer for a leak check (__lsan_do_recoverable_leak_check): first a thread
 * whose kernel thread id is new, then, after threads are started and joined until the next id is
 * one that a joined thread had, a thread with that id. Nothing leaks: a report is LeakSanitizer
 * scanning another stack than the thread's own. Prints both outcomes; exits 1 when the second
 * check reported the block (the runtime keeps joined threads under their ids), 0 when neither
 * did, 2 when no id came round again within 2,000,000 threads. The ids wrap at
 * /proc/sys/kernel/pid_max (32,768 by default), so a run takes some 30,000 threads. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <sanitizer/lsan_interface.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NJOINED 200

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int phase; /* 1: the block is held; 2: the check is done */

static void *tid_of(void *out)
{
    *(pid_t *)out = (pid_t)syscall(SYS_gettid);
    return NULL;
}

static void *holder(void *arg)
{
    (void)arg;
    char *volatile block = malloc(4321); /* the only reference: this thread's stack */
    if (!block) abort();
    memset(block, 1, 4321);
    pthread_mutex_lock(&mu);
    phase = 1;
    pthread_cond_broadcast(&cv);
    while (phase != 2)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    free(block);
    return NULL;
}

/* Starts a holder, asks for a leak check while it holds its block; 1 when one was reported. */
static int check_while_held(void)
{
    pthread_t t;
    phase = 0;
    if (pthread_create(&t, NULL, holder, NULL)) abort();
    pthread_mutex_lock(&mu);
    while (phase != 1)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    int reported = __lsan_do_recoverable_leak_check() != 0;
    pthread_mutex_lock(&mu);
    phase = 2;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    pthread_join(t, NULL);
    return reported;
}

static pid_t next_tid(void)
{
    pid_t tid = 0;
    pthread_t t;
    if (pthread_create(&t, NULL, tid_of, &tid)) abort();
    pthread_join(t, NULL);
    return tid;
}

int main(void)
{
    pid_t joined[NJOINED];
    for (int i = 0; i < NJOINED; i++)
        joined[i] = next_tid();
    int fresh = check_while_held();
    printf("a thread with a new id: %s\n", fresh ? "reported" : "not reported");
    fflush(stdout);
    for (long n = 1;; n++) {
        pid_t t = next_tid();
        int comes = 0;
        for (int i = 0; i < NJOINED; i++)
            comes |= joined[i] == t + 1;
        if (comes) {
            printf("after %ld threads, the next id is one a joined thread had\n", n);
            break;
        }
        if (n == 2000000) {
            printf("no id came round again\n");
            return 2;
        }
    }
    fflush(stdout);
    int reused = check_while_held();
    printf("a thread with a joined thread's id: %s\n", reused ? "reported" : "not reported");
    return reused;
}
