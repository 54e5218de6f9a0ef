/* Tests of trace context and spans: W3C traceparent parsing; a handler runs as a child span of
 * the event it handles and its follow-ups carry that span; an HTTP request's traceparent is the
 * parent of the server span, which the response names; the OTLP exporter delivers spans to a
 * collector as OTLP/HTTP JSON, and drops (counting) what a collector that is down cannot take. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "bus/bus_test_util.h"
#include "core/arena.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/http.h"
#include "eventwire/otlp.h"
#include "eventwire/trace.h"
#include "http/http_client.h"

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static void test_traceparent_parsing(void **state)
{
    ew_trace_ctx c;
    assert_true(ew_trace_parse(TP, &c));
    assert_int_equal(c.trace_id[0], 0x4b);
    assert_int_equal(c.span_id[7], 0xb7);
    assert_int_equal(c.flags, 1);
    char out[EW_TRACEPARENT_LEN + 1];
    assert_string_equal(ew_trace_format(&c, out), TP);
    /* a later version may add fields after a dash; version 00 may not */
    assert_true(ew_trace_parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz", &c));
    const char *bad[] = {
        NULL,
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", /* upper case */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01", /* zero trace */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", /* zero span */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* version ff */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(ew_trace_parse(bad[i], &c));
    ew_trace_ctx a, b;
    ew_trace_new(&a);
    ew_trace_child(&a, &b);
    assert_memory_equal(a.trace_id, b.trace_id, 16);
    assert_memory_not_equal(a.span_id, b.span_id, 8);
    assert_true(ew_trace_parse(ew_trace_format(&b, out), &c));
}

/* Spans kept by a test's sink. */
typedef struct spans {
    pthread_mutex_t mu;
    ew_span v[16];
    char names[16][128];
    int n;
} spans;

static void keep_span(void *ud, const ew_span *sp)
{
    spans *s = ud;
    pthread_mutex_lock(&s->mu);
    if (s->n < 16) {
        s->v[s->n] = *sp;
        snprintf(s->names[s->n], sizeof s->names[0], "%s", sp->name);
        s->v[s->n].name = s->names[s->n];
        s->v[s->n].event_id = s->v[s->n].event_type = s->v[s->n].group = s->v[s->n].handler = NULL;
        s->v[s->n].http_method = s->v[s->n].http_route = NULL;
        s->n++;
    }
    pthread_mutex_unlock(&s->mu);
}

typedef struct seen {
    pthread_mutex_t mu;
    char follow_up_tp[EW_TRACEPARENT_LEN + 1];
    char handler_tp[EW_TRACEPARENT_LEN + 1];
} seen;

static ew_handler_result make_profile(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    seen *s = ud;
    pthread_mutex_lock(&s->mu);
    snprintf(s->handler_tp, sizeof s->handler_tp, "%s", ew_ctx_traceparent(ctx));
    pthread_mutex_unlock(&s->mu);
    const ew_user_registered *u = ew_user_registered_data(ev);
    ew_user_profile_created p = {.user_id = u->user_id, .display_name = u->username};
    return ew_ctx_publish(ctx, EW_T_USER_PROFILE_CREATED, &p, u->user_id, NULL) ? EW_HANDLER_RETRY
                                                                                : EW_HANDLER_OK;
}

static ew_handler_result note_profile(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    seen *s = ud;
    pthread_mutex_lock(&s->mu);
    snprintf(s->follow_up_tp, sizeof s->follow_up_tp, "%s", ew_event_traceparent(ev));
    pthread_mutex_unlock(&s->mu);
    return EW_HANDLER_OK;
}

static const ew_span *span_named(spans *s, const char *prefix)
{
    for (int i = 0; i < s->n; i++)
        if (strncmp(s->names[i], prefix, strlen(prefix)) == 0) return &s->v[i];
    fail_msg("no span named %s...", prefix);
    return NULL;
}

static void test_a_handler_is_a_child_span_of_its_event(void **state)
{
    spans sp = {.mu = PTHREAD_MUTEX_INITIALIZER};
    seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_bus *bus = tb_open(&(ew_bus_options){.span = keep_span, .span_ud = &sp});
    tb_subscribe(bus, "user.registered", make_profile, &s,
                 &(ew_subscribe_opts){.group = "user-service", .name = "create_profile"});
    tb_subscribe(bus, "user.profile_created", note_profile, &s,
                 &(ew_subscribe_opts){.group = "auth-service", .name = "mark"});
    tb_start(bus);
    tb_publish_owned(
        bus, tb_event_full(EW_T_USER_REGISTERED, NULL, 0, &(ew_event_attrs){.traceparent = TP}));
    tb_wait(bus);
    tb_close(bus);

    ew_trace_ctx root, handler, follow_up;
    assert_true(ew_trace_parse(TP, &root));
    assert_true(ew_trace_parse(s.handler_tp, &handler));
    assert_true(ew_trace_parse(s.follow_up_tp, &follow_up));
    /* the follow-up carries the handler's span, in the event's trace */
    assert_string_equal(s.follow_up_tp, s.handler_tp);
    assert_memory_equal(handler.trace_id, root.trace_id, 16);
    assert_memory_not_equal(handler.span_id, root.span_id, 8);

    assert_int_equal(sp.n, 2);
    const ew_span *first = span_named(&sp, "user.registered user-service/create_profile");
    assert_int_equal(first->kind, EW_SPAN_CONSUMER);
    assert_memory_equal(first->ctx.trace_id, root.trace_id, 16);
    assert_memory_equal(first->ctx.span_id, handler.span_id, 8);
    assert_memory_equal(first->parent_span_id, root.span_id, 8);
    assert_false(first->error);
    assert_true(first->end_us >= first->start_us && first->start_us > 0);
    const ew_span *second = span_named(&sp, "user.profile_created auth-service/mark");
    assert_memory_equal(second->ctx.trace_id, root.trace_id, 16);
    assert_memory_equal(second->parent_span_id, handler.span_id, 8);
}

static ew_handler_result sleep_ms(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    usleep((useconds_t)(*(int *)ud * 1000));
    return EW_HANDLER_OK;
}

/* Events that carry no traceparent: each handler call is the root of a trace of its own, with
 * ids that are never zero and differ from call to call (the worker's own generator makes them),
 * and its span lasts as long as the handler ran, as the duration histogram says too. */
static void test_spans_without_a_parent_are_roots_of_their_own(void **state)
{
    spans sp = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_bus *bus = tb_open(&(ew_bus_options){.span = keep_span, .span_ud = &sp});
    int ms = 3;
    tb_subscribe(bus, "user.registered", sleep_ms, &ms,
                 &(ew_subscribe_opts){.group = "g", .name = "sleepy"});
    tb_start(bus);
    enum { N = 12 };
    int64_t t0 = ew_now_us();
    for (int i = 0; i < N; i++)
        tb_publish_owned(bus, tb_user_registered());
    tb_wait(bus);
    int64_t t1 = ew_now_us();
    ew_handler_stats st = tb_stats(bus, 0);
    tb_close(bus);

    assert_int_equal(sp.n, N);
    static const uint8_t zero[16] = {0};
    for (int i = 0; i < N; i++) {
        const ew_span *a = &sp.v[i];
        assert_string_equal(sp.names[i], "user.registered g/sleepy");
        assert_memory_equal(a->parent_span_id, zero, 8);
        assert_memory_not_equal(a->ctx.trace_id, zero, 16);
        assert_memory_not_equal(a->ctx.span_id, zero, 8);
        assert_int_equal(a->ctx.flags, 1);
        for (int k = 0; k < i; k++) {
            assert_memory_not_equal(a->ctx.trace_id, sp.v[k].ctx.trace_id, 16);
            assert_memory_not_equal(a->ctx.span_id, sp.v[k].ctx.span_id, 8);
        }
        /* within the test's own clock readings, at least the sleep long */
        assert_true(a->start_us >= t0 && a->end_us <= t1);
        assert_true(a->end_us - a->start_us >= ms * 1000);
    }
    assert_int_equal(st.handled, N);
    assert_true(st.time_total_ns >= (uint64_t)N * ms * 1000000);
    assert_true(st.time_total_ns <= (uint64_t)(t1 - t0) * 1000);
    assert_true(st.time_max_ns >= (uint64_t)ms * 1000000);
    uint64_t calls = 0;
    for (int b = 0; b < EW_HANDLER_HIST_BUCKETS; b++) {
        calls += st.time_hist[b];
        /* bucket b holds the times of bit length b in ns: 3 ms is 22 bits */
        if (b < 22) assert_int_equal(st.time_hist[b], 0);
    }
    assert_int_equal(calls, N);
}

/* Each span's name and event type, as its callback saw them. */
typedef struct span_types {
    pthread_mutex_t mu;
    char names[16][128], types[16][64], ids[16][EW_UUID_LEN + 1];
    int n;
} span_types;

static void keep_span_type(void *ud, const ew_span *sp)
{
    span_types *s = ud;
    pthread_mutex_lock(&s->mu);
    if (s->n < 16) {
        snprintf(s->names[s->n], sizeof s->names[0], "%s", sp->name);
        snprintf(s->types[s->n], sizeof s->types[0], "%s", sp->event_type);
        snprintf(s->ids[s->n], sizeof s->ids[0], "%s", sp->event_id);
        s->n++;
    }
    pthread_mutex_unlock(&s->mu);
}

static ew_handler_result ok(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    return EW_HANDLER_OK;
}

/* A worker keeps the span's name and type from one call to the next while the type stays the
 * same: events of two types in turns, in runs of one and of two, each name their own. */
static void test_a_span_names_the_type_of_its_own_event(void **state)
{
    span_types st = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_bus *bus = tb_open(&(ew_bus_options){.span = keep_span_type, .span_ud = &st});
    tb_subscribe(bus, "user.*", ok, NULL, &(ew_subscribe_opts){.group = "g", .name = "h"});
    static const ew_type_id order[] = {
        EW_T_USER_REGISTERED, EW_T_USER_LOGGED_IN, EW_T_USER_LOGGED_IN, EW_T_USER_REGISTERED,
        EW_T_USER_REGISTERED, EW_T_USER_LOGGED_IN, EW_T_USER_REGISTERED};
    enum { N = sizeof order / sizeof order[0] };
    char ids[N][EW_UUID_LEN + 1];
    for (int i = 0; i < N; i++) {
        ew_event *ev = tb_event_full(order[i], "one-subject", i, NULL);
        snprintf(ids[i], sizeof ids[i], "%s", ew_event_id(ev));
        tb_publish_owned(bus, ev);
    }
    tb_start(bus); /* the events queued first: the worker runs them as one batch */
    tb_wait(bus);
    tb_close(bus);

    assert_int_equal(st.n, N);
    for (int i = 0; i < N; i++) {
        const char *type = ew_catalog_get(order[i])->type;
        char name[128];
        snprintf(name, sizeof name, "%s g/h", type);
        assert_string_equal(st.ids[i], ids[i]);
        assert_string_equal(st.types[i], type);
        assert_string_equal(st.names[i], name);
    }
}

static void h_ok(const ew_http_request *req, ew_http_response *res, void *ud)
{
    char *tp = ud;
    snprintf(tp, EW_TRACEPARENT_LEN + 1, "%s", ew_http_traceparent(req));
    ew_http_obj_begin(res, 200);
    ew_http_obj_end(res);
}

static void test_a_request_is_a_server_span(void **state)
{
    spans sp = {.mu = PTHREAD_MUTEX_INITIALIZER};
    char seen_tp[EW_TRACEPARENT_LEN + 1] = "";
    ew_http_server *http;
    ew_error err = {0};
    assert_int_equal(
        ew_http_new(&http, &(ew_http_options){.span = keep_span, .span_ud = &sp}, &err), 0);
    assert_int_equal(ew_http_route(http, "GET /items/{id}", 0, h_ok, seen_tp, &err), 0);
    assert_int_equal(ew_http_start(http, &err), 0);
    char url[128], got[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/items/7", ew_http_port(http));

    /* with a traceparent: the server span is its child, and the response names it */
    http_result r =
        http_do(url, &(http_req){.headers = (const char *[]){"traceparent: " TP, NULL}});
    assert_int_equal(r.status, 200);
    assert_non_null(http_header_value(&r, "traceparent", got, sizeof got));
    http_result_free(&r);
    assert_string_equal(got, seen_tp);
    ew_trace_ctx root, server;
    assert_true(ew_trace_parse(TP, &root));
    assert_true(ew_trace_parse(got, &server));
    assert_memory_equal(server.trace_id, root.trace_id, 16);
    assert_memory_not_equal(server.span_id, root.span_id, 8);
    assert_int_equal(sp.n, 1);
    assert_string_equal(sp.names[0], "GET /items/{id}");
    assert_int_equal(sp.v[0].kind, EW_SPAN_SERVER);
    assert_int_equal(sp.v[0].http_status, 200);
    assert_memory_equal(sp.v[0].parent_span_id, root.span_id, 8);
    assert_memory_equal(sp.v[0].ctx.span_id, server.span_id, 8);

    /* without one, or with a malformed one: a new trace, a root span */
    const char *headers[] = {"traceparent: 00-garbage", NULL};
    for (int i = 0; i < 2; i++) {
        r = http_do(url, &(http_req){.headers = i ? headers : NULL});
        assert_non_null(http_header_value(&r, "traceparent", got, sizeof got));
        http_result_free(&r);
        assert_true(ew_trace_parse(got, &server));
        assert_memory_not_equal(server.trace_id, root.trace_id, 16);
    }
    assert_int_equal(sp.n, 3);
    uint8_t zero[8] = {0};
    assert_memory_equal(sp.v[2].parent_span_id, zero, 8);
    ew_http_free(http);
}

/* ---- the OTLP exporter -------------------------------------------------------------------- */

typedef struct collector {
    pthread_mutex_t mu;
    char *bodies[8];
    int n;
} collector;

static void h_traces(const ew_http_request *req, ew_http_response *res, void *ud)
{
    collector *c = ud;
    size_t len;
    const char *body = ew_http_body(req, &len);
    pthread_mutex_lock(&c->mu);
    if (c->n < 8) c->bodies[c->n++] = strndup(body, len);
    pthread_mutex_unlock(&c->mu);
    ew_http_obj_begin(res, 200);
    ew_http_obj_end(res);
}

static int received(collector *c)
{
    pthread_mutex_lock(&c->mu);
    int n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static void test_spans_reach_an_otlp_collector(void **state)
{
    collector c = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_http_server *col;
    ew_error err = {0};
    assert_int_equal(ew_http_new(&col, NULL, &err), 0);
    assert_int_equal(ew_http_route(col, "POST /v1/traces", 0, h_traces, &c, &err), 0);
    assert_int_equal(ew_http_start(col, &err), 0);
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d/", ew_http_port(col));
    ew_otlp *x;
    assert_int_equal(ew_otlp_new(&x,
                                 &(ew_otlp_options){.endpoint = endpoint,
                                                    .service_name = "user-service",
                                                    .interval_ms = 50},
                                 &err),
                     0);
    seen s = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_bus *bus = tb_open(&(ew_bus_options){.span = ew_otlp_span, .span_ud = x});
    tb_subscribe(bus, "user.registered", make_profile, &s,
                 &(ew_subscribe_opts){.group = "user-service", .name = "create_profile"});
    tb_start(bus);
    tb_publish_owned(
        bus, tb_event_full(EW_T_USER_REGISTERED, NULL, 0, &(ew_event_attrs){.traceparent = TP}));
    tb_wait(bus);
    for (int i = 0; i < 200 && received(&c) == 0; i++)
        usleep(20000);
    tb_close(bus);
    ew_otlp_stats st;
    ew_otlp_stats_get(x, &st);
    ew_otlp_free(x);
    ew_http_free(col);
    assert_int_equal(st.exported, 1);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(c.n, 1);

    /* OTLP/HTTP JSON: resourceSpans[0] names the service; its span is the handler's */
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *root;
    if (ew_json_parse(&root, c.bodies[0], strlen(c.bodies[0]), NULL, &a, &err))
        fail_msg("not JSON: %s", err.msg);
    const ew_json *rs = ew_json_get(root, "resourceSpans");
    assert_true(rs && rs->kind == EW_JSON_ARRAY && rs->count == 1);
    assert_non_null(strstr(c.bodies[0], "{\"key\":\"service.name\",\"value\":{\"stringValue\":"
                                        "\"user-service\"}}"));
    assert_non_null(strstr(c.bodies[0], "\"traceId\":\"4bf92f3577b34da6a3ce929d0e0e4736\""));
    assert_non_null(strstr(c.bodies[0], "\"parentSpanId\":\"00f067aa0ba902b7\""));
    ew_trace_ctx h;
    assert_true(ew_trace_parse(s.handler_tp, &h));
    char span_hex[17], needle[64];
    snprintf(needle, sizeof needle, "\"spanId\":\"%s\"", ew_trace_span_hex(&h, span_hex));
    assert_non_null(strstr(c.bodies[0], needle));
    assert_non_null(strstr(c.bodies[0], "\"kind\":5"));
    assert_non_null(
        strstr(c.bodies[0], "\"name\":\"user.registered user-service/create_profile\""));
    ew_arena_release(&a);
    free(c.bodies[0]);
}

static void test_a_collector_that_is_down_costs_nothing_but_the_spans(void **state)
{
    /* a port nobody listens on: a server started and freed */
    ew_http_server *gone;
    ew_error err = {0};
    assert_int_equal(ew_http_new(&gone, NULL, &err), 0);
    assert_int_equal(ew_http_start(gone, &err), 0);
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", ew_http_port(gone));
    ew_http_free(gone);
    ew_otlp *x;
    assert_int_equal(ew_otlp_new(&x,
                                 &(ew_otlp_options){.endpoint = endpoint,
                                                    .max_queue = 8,
                                                    .batch_max = 4,
                                                    .interval_ms = 20,
                                                    .timeout_ms = 500},
                                 &err),
                     0);
    ew_span sp = {.name = "x", .kind = EW_SPAN_INTERNAL};
    ew_trace_new(&sp.ctx);
    /* more than the queue holds, faster than it drains: the rest is dropped at once */
    for (int i = 0; i < 100; i++)
        ew_otlp_span(x, &sp);
    ew_otlp_stats st;
    for (int i = 0; i < 200; i++) {
        ew_otlp_stats_get(x, &st);
        if (st.dropped == 100) break;
        usleep(20000);
    }
    assert_int_equal(st.exported, 0);
    assert_int_equal(st.dropped, 100);
    assert_true(st.requests_failed >= 1);
    ew_otlp_free(x);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_traceparent_parsing),
    cmocka_unit_test(test_a_handler_is_a_child_span_of_its_event),
    cmocka_unit_test(test_spans_without_a_parent_are_roots_of_their_own),
    cmocka_unit_test(test_a_span_names_the_type_of_its_own_event),
    cmocka_unit_test(test_a_request_is_a_server_span),
    cmocka_unit_test(test_spans_reach_an_otlp_collector),
    cmocka_unit_test(test_a_collector_that_is_down_costs_nothing_but_the_spans),
};

EW_TEST_MAIN(tests)
