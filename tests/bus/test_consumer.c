/* Tests of the consumer core (src/bus/consumer.c) on its own, through a scripted transport that
 * holds its messages in memory and records every call the core makes: settlement in delivery
 * order (never past a delivery still being handled, a finished run in one call), the in-flight
 * window (a slow handler stops fetching), reconnection with a growing back-off, and what arrives
 * while stopping released. The conformance suite holds the backends on the core to the same
 * through the brokers. */
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>
#include "bus/consumer.h"
#include "bus_test_util.h"
#include "eventwire/clock.h"

#define N_MSGS 12

typedef struct settle_call {
    uint64_t tok;
    size_t count;
    bool upto;
} settle_call;

/* The scripted transport: N_MSGS encoded events, tokens 1..N_MSGS in that order. */
typedef struct script {
    ew__consumer *core;
    char *json[N_MSGS];
    size_t len[N_MSGS];
    char ids[N_MSGS][64];

    pthread_mutex_t mu;
    size_t next;               /* the next message fetch hands over */
    size_t received;           /* messages whose ew__consumer_receive returned */
    bool finished[N_MSGS + 1]; /* by token: its handler returned */
    settle_call settles[4 * N_MSGS];
    size_t nsettles, settled;
    bool order_broken;      /* a run covered a token whose handler had not returned */
    size_t max_outstanding; /* fetched and not settled, at most */
    size_t released;        /* tokens the core gave back */
    int connect_fails;      /* connect fails this many more times */
    int64_t connect_at[8];  /* when connect was called (mono ns) */
    int nconnects;
    int fetches;
    int fail_fetch;                /* fetch fails this many more times (the connection is lost) */
    size_t each_count[N_MSGS + 1]; /* settle_each: how often each token was settled */
    int slow_token;                /* its handler waits at gate */
    tb_gate gate;
    bool gate_all; /* every handler waits at gate */
} script;

static int s_connect(void *t, ew_error *err)
{
    script *s = t;
    pthread_mutex_lock(&s->mu);
    if (s->nconnects < 8) s->connect_at[s->nconnects] = ew_mono_ns();
    s->nconnects++;
    bool fail = s->connect_fails > 0 && s->connect_fails--;
    pthread_mutex_unlock(&s->mu);
    return fail ? ew_error_set(err, EW_ECONNECT, "the scripted broker is away") : 0;
}

static int s_fetch(void *t, size_t max, int wait_ms, ew_error *err)
{
    script *s = t;
    size_t took = 0;
    pthread_mutex_lock(&s->mu);
    bool fail = s->fail_fetch > 0 && s->fail_fetch--;
    pthread_mutex_unlock(&s->mu);
    if (fail) return ew_error_set(err, EW_EIO, "the scripted connection broke");
    for (;;) {
        pthread_mutex_lock(&s->mu);
        s->fetches++;
        size_t i = s->next;
        bool have = i < N_MSGS && took < max;
        if (have) s->next++;
        size_t out = s->next - s->settled - s->released;
        if (out > s->max_outstanding) s->max_outstanding = out;
        pthread_mutex_unlock(&s->mu);
        if (!have) break;
        ew__recv_msg m = {
            .wire = {.binding = EW__BINDING_STRUCTURED, .body = s->json[i], .body_len = s->len[i]},
            .type_hint = "user.registered",
            .transport = "script",
        };
        ew__consumer_receive(s->core, &m, (ew__ack_token){.a = i + 1});
        pthread_mutex_lock(&s->mu);
        s->received++;
        pthread_mutex_unlock(&s->mu);
        took++;
    }
    if (!took) {
        struct pollfd p = {.fd = ew__consumer_wake_fd(s->core), .events = POLLIN};
        poll(&p, 1, wait_ms);
    }
    return 0;
}

static int s_settle(void *t, const ew__ack_token *tok, size_t count, bool upto, ew_error *err)
{
    (void)err;
    script *s = t;
    pthread_mutex_lock(&s->mu);
    if (s->nsettles < sizeof s->settles / sizeof *s->settles)
        s->settles[s->nsettles++] = (settle_call){tok->a, count, upto};
    for (uint64_t k = upto ? 1 : tok->a; k <= tok->a; k++)
        if (!s->finished[k]) s->order_broken = true;
    s->settled += count;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* settle_each: every token on its own, whatever the order. */
static int s_settle_each(void *t, const ew__ack_token *toks, size_t n, ew_error *err)
{
    (void)err;
    script *s = t;
    pthread_mutex_lock(&s->mu);
    if (s->nsettles < sizeof s->settles / sizeof *s->settles)
        s->settles[s->nsettles++] = (settle_call){toks[n - 1].a, n, false};
    for (size_t i = 0; i < n; i++) {
        if (!s->finished[toks[i].a]) s->order_broken = true;
        s->each_count[toks[i].a]++;
    }
    s->settled += n;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static int s_release(void *t, const ew__ack_token *tok, ew_error *err)
{
    (void)tok, (void)err;
    script *s = t;
    pthread_mutex_lock(&s->mu);
    s->released++;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void s_disconnect(void *t, bool closing)
{
    (void)t, (void)closing;
}

static const ew__consumer_ops script_ops = {
    .connect = s_connect,
    .fetch = s_fetch,
    .settle = s_settle,
    .disconnect = s_disconnect,
    .release = s_release,
    .settle_one = false,
    .backoff_min_ms = 40,
    .backoff_max_ms = 160,
    .idle_ms = 50,
};

static int tb_gate_arrived(tb_gate *g)
{
    pthread_mutex_lock(&g->mu);
    int n = g->arrived;
    pthread_mutex_unlock(&g->mu);
    return n;
}

static ew_handler_result handler(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    (void)ctx;
    script *s = ud;
    int tok = 0;
    for (int i = 0; i < N_MSGS; i++)
        if (strcmp(s->ids[i], ew_event_id(ev)) == 0) tok = i + 1;
    if (s->gate_all || tok == s->slow_token) tb_gate_pass(&s->gate);
    pthread_mutex_lock(&s->mu);
    s->finished[tok] = true;
    pthread_mutex_unlock(&s->mu);
    return EW_HANDLER_OK;
}

static ew_bus *script_open_ops(script *s, size_t max_inflight, const ew__consumer_ops *ops)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    s->gate = (tb_gate)TB_GATE_INIT;
    for (int i = 0; i < N_MSGS; i++) {
        ew_event *ev = tb_user_registered();
        snprintf(s->ids[i], sizeof s->ids[i], "%s", ew_event_id(ev));
        assert_int_equal(ew_event_encode(ev, &s->json[i], &s->len[i], NULL), 0);
        ew_event_unref(ev);
    }
    ew_bus *bus = tb_open(NULL);
    tb_subscribe(bus, "user.registered", handler, s, &(ew_subscribe_opts){.concurrency = 4});
    tb_start(bus);
    ew__consumer_conf conf = {
        .bus = bus,
        .group = TB_SERVICE,
        .what = "test consumer",
        .max_inflight = max_inflight,
        .max_bytes = 1 << 20,
        .ops = ops,
        .t = s,
    };
    assert_int_equal(ew__consumer_new(&s->core, &conf, NULL), 0);
    return bus;
}

static ew_bus *script_open(script *s, size_t max_inflight)
{
    return script_open_ops(s, max_inflight, &script_ops);
}

/* Waits until every message is settled (or released). */
static void script_wait_settled(script *s)
{
    int64_t end = ew_mono_ns() + (int64_t)TB_WAIT_MS * 1000000;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        size_t done = s->settled + s->released;
        pthread_mutex_unlock(&s->mu);
        if (done >= N_MSGS) return;
        if (ew_mono_ns() > end) fail_msg("only %zu of %d messages settled", done, N_MSGS);
        usleep(2000);
    }
}

static void script_close(script *s, ew_bus *bus)
{
    ew__consumer_stop(s->core);
    tb_close(bus); /* drains the dispatcher: every done() is called */
    ew__consumer_close(s->core);
    ew__consumer_free(s->core);
    for (int i = 0; i < N_MSGS; i++)
        free(s->json[i]);
}

/* While token 1 is held by its slow handler: waits up to 2 s for half of the others to finish
 * behind it, and returns how many did. */
static size_t wait_finished_behind(script *s)
{
    int64_t end = ew_mono_ns() + 2000000000LL;
    size_t behind = 0;
    while (ew_mono_ns() < end) {
        pthread_mutex_lock(&s->mu);
        behind = 0;
        for (int k = 2; k <= N_MSGS; k++)
            behind += s->finished[k];
        pthread_mutex_unlock(&s->mu);
        if (behind >= N_MSGS / 2) break;
        usleep(2000);
    }
    return behind;
}

/* One slow handler (token 1) while the others finish: nothing is settled past it until it
 * returns, then the whole finished run goes in one call. */
static void test_settles_in_order_never_past_the_oldest(void **state)
{
    (void)state;
    script s;
    ew_bus *bus = script_open(&s, 64);
    s.slow_token = 1;
    assert_int_equal(ew__consumer_start(s.core, NULL), 0);
    tb_gate_wait_arrivals(&s.gate, 1);
    /* the others finish behind it (workers are chosen by subject: most run beside it) */
    size_t behind = wait_finished_behind(&s);
    usleep(100000); /* time for a settlement that must not come */
    pthread_mutex_lock(&s.mu);
    size_t settled_while_slow = s.settled;
    pthread_mutex_unlock(&s.mu);
    assert_true(behind >= 1); /* the situation: finished deliveries behind an unfinished one */
    assert_int_equal(settled_while_slow, 0);
    tb_gate_open(&s.gate);
    script_wait_settled(&s);
    pthread_mutex_lock(&s.mu);
    assert_false(s.order_broken);
    assert_int_equal(s.settled, N_MSGS);
    assert_true(s.nsettles >= 1);
    bool run = false; /* finished deliveries settled together, in one call */
    for (size_t i = 0; i < s.nsettles; i++) {
        assert_true(s.settles[i].upto);
        run = run || s.settles[i].count >= 2;
    }
    assert_true(run);
    pthread_mutex_unlock(&s.mu);
    script_close(&s, bus);
}

/* A window of 4 with every handler held: the core fetches 4 and no more until they finish. */
static void test_the_window_bounds_fetching(void **state)
{
    (void)state;
    script s;
    ew_bus *bus = script_open(&s, 4);
    s.gate_all = true;
    assert_int_equal(ew__consumer_start(s.core, NULL), 0);
    usleep(300000);
    pthread_mutex_lock(&s.mu);
    size_t fetched = s.next;
    int fetches = s.fetches;
    pthread_mutex_unlock(&s.mu);
    assert_int_equal(fetched, 4); /* full: the situation was reached, and held */
    usleep(200000);
    pthread_mutex_lock(&s.mu);
    assert_int_equal(s.next, 4);
    assert_true(s.fetches == fetches); /* a full window makes no fetch calls at all */
    pthread_mutex_unlock(&s.mu);
    tb_gate_open(&s.gate);
    script_wait_settled(&s);
    pthread_mutex_lock(&s.mu);
    assert_int_equal(s.settled, N_MSGS);
    assert_true(s.max_outstanding <= 4);
    assert_false(s.order_broken);
    pthread_mutex_unlock(&s.mu);
    script_close(&s, bus);
}

/* The broker is away for three attempts: the core waits longer each time (40, 80, 160 ms, each
 * +-25 %), then connects and consumes. */
static void test_reconnects_with_growing_back_off(void **state)
{
    (void)state;
    script s;
    ew_bus *bus = script_open(&s, 64);
    s.connect_fails = 3;
    assert_int_equal(ew__consumer_start(s.core, NULL), 0);
    script_wait_settled(&s);
    pthread_mutex_lock(&s.mu);
    assert_int_equal(s.nconnects, 4);
    int64_t w1 = s.connect_at[1] - s.connect_at[0], w2 = s.connect_at[2] - s.connect_at[1],
            w3 = s.connect_at[3] - s.connect_at[2];
    pthread_mutex_unlock(&s.mu);
    assert_true(w1 >= 30 * 1000000LL);  /* 40 ms - 25 % */
    assert_true(w2 >= 60 * 1000000LL);  /* 80 ms - 25 % */
    assert_true(w3 >= 120 * 1000000LL); /* 160 ms - 25 %: the cap */
    assert_true(w3 > w1);
    script_close(&s, bus);
}

/* Stopped with every handler held: what the transport still hands over is released, nothing is
 * delivered after stop, and what was held is settled once it finishes. */
static void test_stop_releases_what_still_arrives(void **state)
{
    (void)state;
    script s;
    ew_bus *bus = script_open(&s, 4);
    s.gate_all = true;
    assert_int_equal(ew__consumer_start(s.core, NULL), 0);
    int64_t end = ew_mono_ns() + 5000000000LL;
    for (;;) {
        pthread_mutex_lock(&s.mu);
        size_t n = s.received; /* handed to the dispatcher, not only taken from the script */
        pthread_mutex_unlock(&s.mu);
        if (n == 4) break;
        if (ew_mono_ns() > end) fail_msg("the window never filled");
        usleep(2000);
    }
    ew__consumer_stop(s.core);
    tb_gate_open(&s.gate);
    script_wait_settled(&s);
    pthread_mutex_lock(&s.mu);
    assert_int_equal(s.settled, 4);
    assert_int_equal(s.released, N_MSGS - 4);
    assert_false(s.order_broken);
    pthread_mutex_unlock(&s.mu);
    script_close(&s, bus);
}

/* A transport that cannot give a message back (Kafka: nothing to send) leaves what arrives after
 * stop unsettled in its place: the deliveries before it are still settled, nothing after it. */
static void test_without_release_a_hole_stops_only_what_follows(void **state)
{
    (void)state;
    static ew__consumer_ops ops;
    ops = script_ops;
    ops.release = NULL;
    script s;
    ew_bus *bus = script_open_ops(&s, 4, &ops);
    s.gate_all = true;
    assert_int_equal(ew__consumer_start(s.core, NULL), 0);
    /* the window's four handed to the dispatcher before the stop (on a slow machine the
     * fetch of the later ones could come after it: each would be a hole of its own) */
    int64_t end = ew_mono_ns() + 5000000000LL;
    for (;;) {
        pthread_mutex_lock(&s.mu);
        size_t n = s.received;
        pthread_mutex_unlock(&s.mu);
        if (n >= 4 && tb_gate_arrived(&s.gate) >= 1) break;
        if (ew_mono_ns() > end) fail_msg("the window's deliveries did not arrive");
        usleep(2000);
    }
    ew__consumer_stop(s.core);
    /* what the transport hands over while stopping is not delivered */
    end = ew_mono_ns() + 5000000000LL;
    for (;;) {
        pthread_mutex_lock(&s.mu);
        size_t n = s.next;
        pthread_mutex_unlock(&s.mu);
        if (n > 4) break;
        if (ew_mono_ns() > end) fail_msg("nothing fetched after stop");
        usleep(2000);
    }
    tb_gate_open(&s.gate);
    end = ew_mono_ns() + 5000000000LL;
    for (;;) {
        pthread_mutex_lock(&s.mu);
        size_t n = s.settled;
        pthread_mutex_unlock(&s.mu);
        if (n >= 4) break;
        if (ew_mono_ns() > end) fail_msg("the deliveries before the hole were not settled");
        usleep(2000);
    }
    usleep(100000); /* time for a settlement past the hole, which must not come */
    pthread_mutex_lock(&s.mu);
    assert_int_equal(s.settled, 4);
    for (size_t i = 0; i < s.nsettles; i++)
        assert_true(s.settles[i].tok <= 4);
    assert_false(s.order_broken);
    pthread_mutex_unlock(&s.mu);
    script_close(&s, bus);
}

/* settle_each (Redis's XACK, which has no "up to"): the deliveries that finished behind a slow
 * one are settled at once, each exactly once, all of a settlement in one call. */
static void test_settle_each_does_not_wait_for_the_oldest(void **state)
{
    (void)state;
    static ew__consumer_ops ops;
    ops = script_ops;
    ops.settle_each = s_settle_each;
    script s;
    ew_bus *bus = script_open_ops(&s, 64, &ops);
    s.slow_token = 1;
    assert_int_equal(ew__consumer_start(s.core, NULL), 0);
    tb_gate_wait_arrivals(&s.gate, 1);
    int64_t end = ew_mono_ns() + (int64_t)TB_WAIT_MS * 1000000;
    for (;;) { /* the situation: finished deliveries behind the unfinished first one, settled
                  (those of its worker wait behind it, unfinished) */
        pthread_mutex_lock(&s.mu);
        size_t settled = s.settled, behind = 0;
        for (int k = 2; k <= N_MSGS; k++)
            behind += s.finished[k];
        pthread_mutex_unlock(&s.mu);
        if (behind >= 1 && settled == behind) break;
        if (ew_mono_ns() > end)
            fail_msg("%zu settled of %zu finished behind the slow one", settled, behind);
        usleep(2000);
    }
    pthread_mutex_lock(&s.mu);
    assert_int_equal(s.each_count[1], 0);
    pthread_mutex_unlock(&s.mu);
    ew__ack_token held[4];
    size_t nheld = ew__consumer_held(s.core, INT64_MAX, held, 4);
    assert_true(nheld >= 1);
    assert_int_equal(held[0].a, 1);                             /* the oldest first */
    assert_int_equal(ew__consumer_held(s.core, 0, held, 4), 0); /* none taken before time 0 */
    tb_gate_open(&s.gate);
    script_wait_settled(&s);
    pthread_mutex_lock(&s.mu);
    assert_false(s.order_broken);
    for (int k = 1; k <= N_MSGS; k++)
        assert_int_equal(s.each_count[k], 1);
    bool together = false;
    for (size_t i = 0; i < s.nsettles; i++)
        together = together || s.settles[i].count >= 2;
    assert_true(together);
    pthread_mutex_unlock(&s.mu);
    script_close(&s, bus);
}

/* keep_on_reconnect (a stream entry id outlives its connection): what the core held when the
 * connection broke is settled on the next one, not forgotten. */
static void test_kept_tokens_are_settled_after_a_reconnection(void **state)
{
    (void)state;
    static ew__consumer_ops ops;
    ops = script_ops;
    ops.settle_each = s_settle_each;
    ops.keep_on_reconnect = true;
    script s;
    ew_bus *bus = script_open_ops(&s, 4, &ops);
    s.gate_all = true;
    assert_int_equal(ew__consumer_start(s.core, NULL), 0);
    int64_t end = ew_mono_ns() + (int64_t)TB_WAIT_MS * 1000000;
    for (;;) {
        pthread_mutex_lock(&s.mu);
        size_t n = s.received;
        pthread_mutex_unlock(&s.mu);
        if (n == 4) break;
        if (ew_mono_ns() > end) fail_msg("the window never filled");
        usleep(2000);
    }
    pthread_mutex_lock(&s.mu);
    s.fail_fetch = 1;
    pthread_mutex_unlock(&s.mu);
    tb_gate_open(&s.gate); /* done() wakes the core, whose next fetch breaks the connection */
    script_wait_settled(&s);
    pthread_mutex_lock(&s.mu);
    assert_int_equal(s.fail_fetch, 0); /* the connection did break */
    assert_true(s.nconnects >= 2);
    for (int k = 1; k <= N_MSGS; k++)
        assert_int_equal(s.each_count[k], 1);
    pthread_mutex_unlock(&s.mu);
    script_close(&s, bus);
}

/* settle_delay_ms (Kafka: commits go out at most that often): done() calls do not wake the
 * thread after every few deliveries, yet nothing waits for the thread's long idle wait (5 s
 * here): while it holds deliveries it comes back within the delay by itself. Settlement still
 * never passes the oldest delivery being handled. */
static void test_settle_delay_settles_without_wake_ups(void **state)
{
    (void)state;
    static ew__consumer_ops ops;
    ops = script_ops;
    ops.idle_ms = 5000;
    ops.settle_delay_ms = 20;
    script s;
    ew_bus *bus = script_open_ops(&s, 64, &ops);
    s.slow_token = 1;
    assert_int_equal(ew__consumer_start(s.core, NULL), 0);
    tb_gate_wait_arrivals(&s.gate, 1);
    size_t behind = wait_finished_behind(&s);
    usleep(100000); /* the thread comes back several times meanwhile: nothing to settle */
    pthread_mutex_lock(&s.mu);
    size_t settled_while_slow = s.settled;
    pthread_mutex_unlock(&s.mu);
    assert_true(behind >= 1);
    assert_int_equal(settled_while_slow, 0);
    int64_t t0 = ew_mono_ns();
    tb_gate_open(&s.gate); /* one done(): below wake_every, it wakes nothing */
    script_wait_settled(&s);
    /* settled when the thread came back by itself, not at the end of a 5 s wait */
    assert_true(ew_mono_ns() - t0 < 2500000000LL);
    pthread_mutex_lock(&s.mu);
    assert_false(s.order_broken);
    assert_int_equal(s.settled, N_MSGS);
    pthread_mutex_unlock(&s.mu);
    script_close(&s, bus);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_settles_in_order_never_past_the_oldest),
    cmocka_unit_test(test_the_window_bounds_fetching),
    cmocka_unit_test(test_reconnects_with_growing_back_off),
    cmocka_unit_test(test_stop_releases_what_still_arrives),
    cmocka_unit_test(test_without_release_a_hole_stops_only_what_follows),
    cmocka_unit_test(test_settle_each_does_not_wait_for_the_oldest),
    cmocka_unit_test(test_kept_tokens_are_settled_after_a_reconnection),
    cmocka_unit_test(test_settle_delay_settles_without_wake_ups),
};

EW_TEST_MAIN(tests)
