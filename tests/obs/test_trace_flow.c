/* One registration traced end to end across the five services (processes, on the SQLite bus):
 * the HTTP request's traceparent is on every event of the flow in the event store, the spans
 * the services export reach a small OTLP collector in the test, the request's server span is a
 * child of the caller's span, and each handler's span is a child of the span of the event it
 * handled. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "core/arena.h"
#include "core/json.h"
#include "eventwire/http.h"
#include "eventwire/store.h"
#include "eventwire/trace.h"
#include "http/http_client.h"
#include "services/svc_proc.h"

#define TP "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
#define TRACE_ID "0af7651916cd43dd8448eb211c80319c"

static const char *const services[] = {"auth-service", "user-service", "notification-service",
                                       "analytics-service", "export-service"};
#define NSERVICES 5

/* ---- the collector ------------------------------------------------------------------------- */

typedef struct collector {
    pthread_mutex_t mu;
    ew_buf all; /* every body received, one per line */
} collector;

static void h_traces(const ew_http_request *req, ew_http_response *res, void *ud)
{
    collector *c = ud;
    size_t len;
    const char *body = ew_http_body(req, &len);
    pthread_mutex_lock(&c->mu);
    ew_buf_append(&c->all, body, len);
    ew_buf_putc(&c->all, '\n');
    pthread_mutex_unlock(&c->mu);
    ew_http_obj_begin(res, 200);
    ew_http_obj_end(res);
}

/* Is there a span with these members (JSON text fragments) in what was received? */
static bool has_span(collector *c, const char *parent_span_hex, const char *name_prefix)
{
    bool found = false;
    pthread_mutex_lock(&c->mu);
    char *copy = c->all.data ? strdup(c->all.data) : NULL;
    pthread_mutex_unlock(&c->mu);
    for (char *line = copy, *next; line && *line && !found; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        ew_arena a;
        ew_arena_init(&a, NULL, 0);
        ew_json *root;
        if (ew_json_parse(&root, line, strlen(line), NULL, &a, NULL) == 0) {
            const ew_json *rs = ew_json_get(root, "resourceSpans");
            for (const ew_json *r = rs ? rs->child : NULL; r && !found; r = r->next) {
                const ew_json *ss = ew_json_get(r, "scopeSpans");
                for (const ew_json *s = ss ? ss->child : NULL; s && !found; s = s->next) {
                    const ew_json *spans = ew_json_get(s, "spans");
                    for (const ew_json *sp = spans ? spans->child : NULL; sp && !found;
                         sp = sp->next) {
                        const ew_json *t = ew_json_get(sp, "traceId");
                        const ew_json *p = ew_json_get(sp, "parentSpanId");
                        const ew_json *n = ew_json_get(sp, "name");
                        found = t && !strcmp(t->str, TRACE_ID) && p &&
                                !strcmp(p->str, parent_span_hex) && n &&
                                !strncmp(n->str, name_prefix, strlen(name_prefix));
                    }
                }
            }
        }
        ew_arena_release(&a);
    }
    free(copy);
    return found;
}

/* ---- the flow's events ------------------------------------------------------------------- */

typedef struct flow {
    char correlation[64];
    int events, traced, welcome;
    char registered_span[17]; /* the span user.registered carries */
    char bad[512];
} flow;

static int on_event(void *ud, const ew_stored_event *se)
{
    flow *f = ud;
    if (strcmp(ew_event_correlation_id(se->event), f->correlation) != 0) return 0;
    f->events++;
    ew_trace_ctx c;
    const char *tp = ew_event_traceparent(se->event);
    if (tp && ew_trace_parse(tp, &c) && !strncmp(tp + 3, TRACE_ID, 32))
        f->traced++;
    else
        snprintf(f->bad, sizeof f->bad, "%s from %s carries %s", ew_event_type(se->event),
                 ew_event_source(se->event), tp ? tp : "no traceparent");
    if (!strcmp(ew_event_type(se->event), "notification.welcome_email_sent")) f->welcome++;
    if (!strcmp(ew_event_type(se->event), "user.registered") && tp)
        snprintf(f->registered_span, sizeof f->registered_span, "%.16s", tp + 36);
    return 0;
}

static void read_flow(ew_store *st, flow *f)
{
    f->events = f->traced = f->welcome = 0;
    ew_error err = {0};
    if (ew_store_read_all(st, 0, NULL, 0, on_event, f, &err)) fail_msg("%s", err.msg);
}

typedef struct finder {
    const char *user_id;
    char id[64];
} finder;

static int find_registered(void *ud, const ew_stored_event *se)
{
    finder *fd = ud;
    const char *subject = ew_event_subject(se->event);
    if (subject && !strcmp(subject, fd->user_id))
        snprintf(fd->id, sizeof fd->id, "%s", ew_event_id(se->event));
    return 0;
}

static void test_one_registration_is_one_trace(void **state)
{
    collector c = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_buf_init(&c.all);
    ew_http_server *col;
    ew_error err = {0};
    assert_int_equal(ew_http_new(&col, NULL, &err), 0);
    assert_int_equal(ew_http_route(col, "POST /v1/traces", 0, h_traces, &c, &err), 0);
    assert_int_equal(ew_http_start(col, &err), 0);
    char endpoint[96];
    snprintf(endpoint, sizeof endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:%d",
             ew_http_port(col));
    const char *extra[] = {endpoint, "OUTBOX_POLL_MS=50", NULL};
    char dir[256];
    svc_tmpdir(dir);
    svc_proc p[NSERVICES];
    for (int i = 0; i < NSERVICES; i++)
        if (svc_proc_start(&p[i], services[i], dir, extra))
            fail_msg("%s did not start", services[i]);

    /* a registration whose caller is in trace TRACE_ID */
    char url[200];
    snprintf(url, sizeof url, "%s/auth/register", p[0].base);
    const char *headers[] = {"traceparent: " TP, "Content-Type: application/json", NULL};
    http_result r = http_do(url, &(http_req){.body = "{\"username\":\"tracy\",\"email\":"
                                                     "\"tracy@example.com\",\"password\":"
                                                     "\"trace every step\"}",
                                             .headers = headers});
    assert_int_equal(r.status, 201);
    char answer_tp[64], user_id[64];
    assert_non_null(http_header_value(&r, "traceparent", answer_tp, sizeof answer_tp));
    snprintf(user_id, sizeof user_id, "%.36s", http_member(&r, "user_id"));
    http_result_free(&r);
    assert_int_equal(strncmp(answer_tp + 3, TRACE_ID, 32), 0);
    char server_span[17];
    snprintf(server_span, sizeof server_span, "%.16s", answer_tp + 36);

    /* the flow as the event store has it: its correlation id is the registration's id */
    char store_url[300];
    snprintf(store_url, sizeof store_url, "sqlite:%s/events.db", dir);
    ew_store *st;
    if (ew_store_open(&st, &(ew_store_options){.url = store_url}, &err)) fail_msg("%s", err.msg);
    finder fd = {.user_id = user_id};
    flow f = {0};
    bool spans = false;
    for (int i = 0; i < 300; i++) {
        if (!fd.id[0] && ew_store_read_all(st, 0, "user.registered", 0, find_registered, &fd, &err))
            fail_msg("%s", err.msg);
        if (fd.id[0]) {
            snprintf(f.correlation, sizeof f.correlation, "%s", fd.id);
            read_flow(st, &f);
            /* the request's span is the caller's child; the profile handler's is the child of
             * the span user.registered carries (the request's) */
            spans = f.registered_span[0] &&
                    has_span(&c, "b7ad6b7169203331", "POST /auth/register") &&
                    has_span(&c, f.registered_span, "user.registered user-service/");
        }
        if (f.welcome && spans) break;
        usleep(50000);
    }
    ew_store_close(st);
    for (int i = 0; i < NSERVICES; i++)
        svc_proc_stop(&p[i]);
    ew_http_free(col);
    if (!f.welcome) fail_msg("the flow did not reach the welcome email (%d events)", f.events);
    if (f.traced != f.events)
        fail_msg("%d of %d events of the flow carry the trace: %s", f.traced, f.events, f.bad);
    assert_true(f.events >= 5); /* registered, profile, preferences, welcome, tracked, ... */
    assert_string_equal(f.registered_span, server_span);
    if (!spans) fail_msg("the spans did not reach the collector:\n%.2000s", c.all.data);
    ew_buf_release(&c.all);
    char rm[300];
    snprintf(rm, sizeof rm, "rm -rf '%s'", dir);
    if (system(rm)) fprintf(stderr, "could not remove %s\n", dir);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_one_registration_is_one_trace),
};

EW_TEST_MAIN(tests)
