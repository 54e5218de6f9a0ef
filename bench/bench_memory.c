/* Benchmark of the memory bus: events built with ew_event_new() and published in a loop, until
 * every handler has handled them, with 1 handler and with 4 (four groups, each event handled
 * by all four). The baseline, in the same run: pre-built pointers handed through a plain
 * mutex + condvar queue to one thread, the least a cross-thread hand-off costs.
 *
 * publish_to_handled.metrics_on / .metrics_off: the 1-handler figure with metrics and tracing
 * on (ENABLE_METRICS=true, the default, and a span callback, so that every handler call is
 * timed, counted by type and reported as a span) and off (ENABLE_METRICS=false, no span
 * callback), taking turns, best of five each. The pair runs with EVENT_ENCRYPTION=off: with it on
 * every event of a new subject makes a data key, committed to the key store on disk, and the
 * pair would compare two figures of the key store's commits (docs/encryption.md) instead of what
 * metrics cost the dispatcher. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include "eventwire/bus.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"

static double rate(long n, int64_t ns)
{
    return (double)n / ((double)ns / 1e9);
}

/* ---- the baseline: a textbook queue ---------------------------------------------------- */

typedef struct raw_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void **items;
    long head, tail, n;
    long sum; /* what the consumer saw, so that the work is not optimised away */
} raw_queue;

static void *raw_consumer(void *arg)
{
    raw_queue *q = arg;
    for (long got = 0; got < q->n; got++) {
        pthread_mutex_lock(&q->mu);
        while (q->head == q->tail)
            pthread_cond_wait(&q->cv, &q->mu);
        void *p = q->items[q->head++];
        pthread_mutex_unlock(&q->mu);
        q->sum += *(const char *)p;
    }
    return NULL;
}

static double bench_raw(long n)
{
    static const char payload[] = "x";
    raw_queue q = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .n = n};
    void **prebuilt = malloc((size_t)n * sizeof *prebuilt);
    q.items = malloc((size_t)n * sizeof *q.items);
    if (!prebuilt || !q.items) abort();
    for (long i = 0; i < n; i++)
        prebuilt[i] = (void *)payload;
    pthread_t th;
    int64_t t0 = ew_mono_ns();
    if (pthread_create(&th, NULL, raw_consumer, &q)) abort();
    for (long i = 0; i < n; i++) {
        pthread_mutex_lock(&q.mu);
        q.items[q.tail++] = prebuilt[i];
        pthread_cond_signal(&q.cv);
        pthread_mutex_unlock(&q.mu);
    }
    pthread_join(th, NULL);
    double r = rate(n, ew_mono_ns() - t0);
    if (q.sum != n * 'x') abort();
    free(q.items);
    free(prebuilt);
    return r;
}

/* ---- the bus ------------------------------------------------------------------------------ */

static ew_handler_result count(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    ++*(long *)ud; /* one worker per subscription: no other thread writes it */
    return EW_HANDLER_OK;
}

static void die(const char *what, const ew_error *err)
{
    fprintf(stderr, "bench_memory: %s: %s\n", what, err->msg);
    exit(1);
}

enum { OBS_DEFAULT, OBS_ON, OBS_OFF }; /* metrics and tracing: as configured, on, off */

static atomic_long spans;

/* What an exporter is handed: here only counted. */
static void span_fn(void *ud, const ew_span *sp)
{
    atomic_fetch_add_explicit(&spans, 1, memory_order_relaxed);
}

/* Publishes n new user.registered events to a memory bus with `handlers` subscriptions in as
 * many groups; returns handled events per second, from the first publish to the last handled. */
/* CPU time of the process (every thread, user and system), in ns. */
static int64_t cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

/* CPU time of the calling thread, in ns. */
static int64_t thread_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
           ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

static double last_cpu_rate;     /* handled events per second of CPU time of the last run */
static double last_publisher_ns; /* CPU ns per event of the publishing thread, last run */

/* The events are about USERS users, as a deployment's mostly are about users it knows: with
 * encryption on (the default), a new user's data key is a commit of the key store on disk
 * (docs/encryption.md), which a new user per event would measure instead of the bus. The first
 * run makes their keys. */
#define USERS 1000
static char users[USERS][EW_UUID_LEN + 1];

static double bench_bus_obs(long n, int handlers, ew_handler_stats *st0, int obs)
{
    if (!users[0][0])
        for (int i = 0; i < USERS; i++)
            ew_uuid7(users[i]);
    ew_config *cfg;
    ew_error err = {0};
    if (ew_config_new(&cfg, &err) || ew_config_set(cfg, "EVENT_BUS_TYPE", "memory", &err) ||
        ew_config_set(cfg, "SERVICE_NAME", "bench", &err) ||
        (obs == OBS_OFF && ew_config_set(cfg, "ENABLE_METRICS", "false", &err)) ||
        (obs != OBS_DEFAULT && ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err)))
        die("config", &err);
    ew_bus *bus;
    ew_bus_options bo = {.config = cfg, .span = obs == OBS_ON ? span_fn : NULL};
    if (ew_bus_open(&bus, &bo, &err)) die("open", &err);
    ew_config_free(cfg);
    long counts[4] = {0};
    static const char *const groups[] = {"g0", "g1", "g2", "g3"};
    for (int i = 0; i < handlers; i++) {
        ew_subscribe_opts o = {.group = groups[i]};
        if (ew_bus_subscribe(bus, "user.registered", count, &counts[i], &o, &err))
            die("subscribe", &err);
    }
    if (ew_bus_start(bus, &err)) die("start", &err);

    const char *roles[] = {"user"};
    int64_t t0 = ew_mono_ns(), c0 = cpu_ns(), p0 = thread_cpu_ns();
    for (long i = 0; i < n; i++) {
        const char *id = users[i % USERS];
        ew_user_registered d = {.user_id = id,
                                .email = "ada.lovelace@example.com",
                                .username = "ada",
                                .roles = {roles, 1}};
        ew_event *ev;
        if (ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "bench", .subject = id},
                                   &err))
            die("event", &err);
        if (ew_bus_publish(bus, ev, &err)) die("publish", &err);
        ew_event_unref(ev);
    }
    if (ew_bus_wait_for_events(bus, -1, &err)) die("wait", &err);
    int64_t ns = ew_mono_ns() - t0, cpu = cpu_ns() - c0, pub = thread_cpu_ns() - p0;
    long handled = 0;
    for (int i = 0; i < handlers; i++)
        handled += counts[i];
    if (handled != n * handlers) {
        fprintf(stderr, "bench_memory: %ld handled of %ld\n", handled, n * handlers);
        exit(1);
    }
    if (st0 && ew_bus_handler_stats(bus, 0, st0)) abort();
    ew_bus_close(bus);
    last_cpu_rate = rate(handled, cpu > 0 ? cpu : 1);
    last_publisher_ns = (double)pub / (double)n;
    return rate(handled, ns);
}

static double bench_bus(long n, int handlers, ew_handler_stats *st0)
{
    return bench_bus_obs(n, handlers, st0, OBS_DEFAULT);
}

/* What building (and freeing) the events alone costs, for reading the figures. */
static double bench_build(long n)
{
    const char *roles[] = {"user"};
    int64_t t0 = ew_mono_ns();
    for (long i = 0; i < n; i++) {
        char id[EW_UUID_LEN + 1];
        ew_uuid7(id);
        ew_user_registered d = {.user_id = id,
                                .email = "ada.lovelace@example.com",
                                .username = "ada",
                                .roles = {roles, 1}};
        ew_event *ev;
        if (ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "bench", .subject = id},
                                   NULL))
            abort();
        ew_event_unref(ev);
    }
    return rate(n, ew_mono_ns() - t0);
}

/* The metrics pair: on and off taking turns, rounds of each, n events a run; best of each. */
static double cpu_on, cpu_off; /* the best of each in events per CPU second */

static void bench_metrics_pair(long n, int rounds, double *on, double *off)
{
    double v;
    *on = *off = cpu_on = cpu_off = 0;
    for (int round = 0; round < rounds; round++) {
        for (int k = 0; k < 2; k++) {
            if ((k + round) % 2 == 0) {
                if ((v = bench_bus_obs(n, 1, NULL, OBS_ON)) > *on) *on = v;
                if (last_cpu_rate > cpu_on) cpu_on = last_cpu_rate;
            } else {
                if ((v = bench_bus_obs(n, 1, NULL, OBS_OFF)) > *off) *off = v;
                if (last_cpu_rate > cpu_off) cpu_off = last_cpu_rate;
            }
        }
    }
}

/* The pair by the clock on the wall, and by the CPU time the process spent: on a loaded
 * machine the first follows the share of the cores the run got, the second what it cost. */
static void print_metrics_pair(double on, double off)
{
    printf("bench: memory.publish_to_handled.metrics_off %.0f events/s\n", off);
    printf("bench: memory.publish_to_handled.metrics_on %.0f events/s ratio=%.2f "
           "baseline=memory.publish_to_handled.metrics_off\n",
           on, on / off);
    printf("bench: memory.publish_to_handled.metrics_off.cpu %.0f events/cpu-s\n", cpu_off);
    printf("bench: memory.publish_to_handled.metrics_on.cpu %.0f events/cpu-s ratio=%.2f "
           "baseline=memory.publish_to_handled.metrics_off.cpu\n",
           cpu_on, cpu_on / cpu_off);
}

/* `bench_memory metrics [N [ROUNDS [on|off]]]` runs the metrics pair alone (N events a run,
 * 1,000,000 by default; ROUNDS rounds, 5 by default): quicker to repeat while profiling; with
 * `on` or `off`, only that side, for a profiler to count one side's instructions. */
int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "metrics") == 0) {
        long n = argc > 2 ? atol(argv[2]) : 1000000;
        int rounds = argc > 3 ? atoi(argv[3]) : 5;
        if (n < 1 || rounds < 1) {
            fprintf(stderr, "usage: bench_memory [metrics [N [ROUNDS [on|off]]]]\n");
            return 2;
        }
        double on, off;
        if (argc > 4) { /* one side alone, for a profiler: `metrics N 1 on` or `... off` */
            bool is_on = strcmp(argv[4], "on") == 0;
            if (!is_on && strcmp(argv[4], "off") != 0) {
                fprintf(stderr, "usage: bench_memory metrics N ROUNDS [on|off]\n");
                return 2;
            }
            for (int r = 0; r < rounds; r++) {
                bench_bus_obs(n, 1, NULL, is_on ? OBS_ON : OBS_OFF);
                double all_ns = 1e9 / last_cpu_rate;
                printf("# metrics %s: %.0f events/cpu-s; CPU per event: publishing thread %.0f ns, "
                       "the rest (the worker) %.0f ns\n",
                       argv[4], last_cpu_rate, last_publisher_ns, all_ns - last_publisher_ns);
            }
            return 0;
        }
        bench_bus_obs(n / 10 + 1, 1, NULL, OBS_OFF); /* warm up */
        bench_metrics_pair(n, rounds, &on, &off);
        if (atomic_load(&spans) != (long)rounds * n) {
            fprintf(stderr, "bench_memory: not one span per handler call with tracing on\n");
            return 1;
        }
        print_metrics_pair(on, off);
        return 0;
    }
    const long n_raw = 2000000, n1 = 2000000, n4 = 1000000;
    bench_bus(100000, 1, NULL); /* warm up: allocator, page faults, thread start */
    double raw = bench_raw(n_raw);
    ew_handler_stats st;
    double one = bench_bus(n1, 1, &st);
    double four = bench_bus(n4, 4, NULL);
    double build = bench_build(n1);
    double on, off;
    bench_metrics_pair(n1 / 2, 5, &on, &off);
    if (atomic_load(&spans) != 5 * (n1 / 2)) {
        fprintf(stderr, "bench_memory: not one span per handler call with tracing on\n");
        return 1;
    }

    printf("bench: memory.raw_queue %.0f events/s\n", raw);
    printf("bench: memory.publish_to_handled.1_handler %.0f events/s ratio=%.2f "
           "baseline=memory.raw_queue\n",
           one, one / raw);
    printf("bench: memory.publish_to_handled.4_handlers %.0f events/s ratio=%.2f "
           "baseline=memory.raw_queue\n",
           four, four / raw);
    print_metrics_pair(on, off);
    printf("# memory: building an event alone (ew_event_new + unref, one thread): %.0f events/s; "
           "1 handler: p50 %.6f ms, p99 %.6f ms in the handler\n",
           build, st.time_p50_ms, st.time_p99_ms);
    return 0;
}
