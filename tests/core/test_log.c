/* Tests of logging: the records modules make, the JSON and text lines of the ready-made sink,
 * levels, LOG_FORMAT and LOG_LEVEL, and lines that are too long. */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "core/arena.h"
#include "core/json.h"
#include "core/log.h"
#include "eventwire/clock.h"
#include "eventwire/config.h"
#include "eventwire/event.h"
#include "eventwire/id.h"

#define TRACEPARENT "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

/* A callback that keeps a copy of the last record. */
typedef struct last {
    int calls;
    ew_log_record r;
    char msg[EW__LOG_MSG_MAX], event_id[64], trace_id[40], span_id[24];
} last;

static void keep_last(void *ud, const ew_log_record *rec)
{
    last *l = ud;
    l->calls++;
    l->r = *rec;
    snprintf(l->msg, sizeof l->msg, "%s", rec->msg);
    snprintf(l->event_id, sizeof l->event_id, "%s", rec->event_id ? rec->event_id : "");
    snprintf(l->trace_id, sizeof l->trace_id, "%s", rec->trace_id ? rec->trace_id : "");
    snprintf(l->span_id, sizeof l->span_id, "%s", rec->span_id ? rec->span_id : "");
}

static ew_event *an_event(void)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = id, .email = "ada@example.com", .username = "ada", .roles = {roles, 1}};
    ew_event *ev = NULL;
    ew_event_attrs a = {.source = "auth-service", .subject = id, .traceparent = TRACEPARENT};
    assert_int_equal(ew_user_registered_new(&ev, &d, &a, NULL), 0);
    return ev;
}

static void test_a_record_carries_the_event_and_its_trace(void **state)
{
    last l = {0};
    ew__log_sink sink = {keep_last, &l};
    ew_event *ev = an_event();
    ew__log(&sink, EW_LOG_WARN, "dispatch", ev, "handler %s failed", "welcome");
    assert_int_equal(l.calls, 1);
    assert_int_equal(l.r.level, EW_LOG_WARN);
    assert_string_equal(l.r.module, "dispatch");
    assert_string_equal(l.msg, "handler welcome failed");
    assert_string_equal(l.event_id, ew_event_id(ev));
    assert_string_equal(l.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(l.span_id, "00f067aa0ba902b7");
    assert_true(l.r.time_us > 0);
    /* without an event, no ids; a silent sink is silent */
    ew__log(&sink, EW_LOG_INFO, "bus", NULL, "opened");
    assert_string_equal(l.event_id, "");
    assert_string_equal(l.trace_id, "");
    ew__log(&(ew__log_sink){0}, EW_LOG_ERROR, "bus", NULL, "nobody hears this");
    ew__log(NULL, EW_LOG_ERROR, "bus", NULL, "nor this");
    assert_int_equal(l.calls, 2);
    /* a sentence longer than the limit is cut, and says so */
    char big[EW__LOG_MSG_MAX * 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ew__log(&sink, EW_LOG_INFO, "bus", NULL, "%s", big);
    assert_int_equal(strlen(l.msg), EW__LOG_MSG_MAX - 1);
    assert_string_equal(l.msg + EW__LOG_MSG_MAX - 4, "...");
    ew_event_unref(ev);
}

/* Parses a JSON line and returns the string member key ("" when absent). */
static const char *member(const char *line, const char *key, char *out, size_t n)
{
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *root = NULL;
    ew_error err = {0};
    if (ew_json_parse(&root, line, strlen(line), NULL, &a, &err))
        fail_msg("not JSON (%s): %s", err.msg, line);
    const ew_json *v = ew_json_get(root, key);
    snprintf(out, n, "%s", v && v->kind == EW_JSON_STRING ? v->str : "");
    ew_arena_release(&a);
    return out;
}

static void test_json_lines_have_the_documented_members(void **state)
{
    ew_event *ev = an_event();
    last l = {0};
    ew__log(&(ew__log_sink){keep_last, &l}, EW_LOG_ERROR, "store", ev, "a \"quoted\"\nline");
    l.r.msg = l.msg;
    l.r.event_id = l.event_id;
    l.r.trace_id = l.trace_id;
    l.r.span_id = l.span_id;
    char line[2048], v[128];
    ew_log_format_line(&l.r, EW_LOG_FORMAT_JSON, "auth-service", line, sizeof line);
    assert_string_equal(member(line, "level", v, sizeof v), "error");
    assert_string_equal(member(line, "service", v, sizeof v), "auth-service");
    assert_string_equal(member(line, "module", v, sizeof v), "store");
    assert_string_equal(member(line, "msg", v, sizeof v), "a \"quoted\"\nline");
    assert_string_equal(member(line, "event_id", v, sizeof v), ew_event_id(ev));
    assert_string_equal(member(line, "event_type", v, sizeof v), "user.registered");
    assert_string_equal(member(line, "correlation_id", v, sizeof v), ew_event_id(ev));
    assert_string_equal(member(line, "trace_id", v, sizeof v), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(member(line, "span_id", v, sizeof v), "00f067aa0ba902b7");
    int64_t t;
    assert_int_equal(ew_time_parse(member(line, "ts", v, sizeof v), &t), 0);
    assert_null(strchr(line, '\n'));
    /* text: one line, the context at the end */
    ew_log_format_line(&l.r, EW_LOG_FORMAT_TEXT, "auth-service", line, sizeof line);
    assert_null(strchr(line, '\n'));
    assert_non_null(strstr(line, " error auth-service store: a \"quoted\" line (event_id="));
    assert_non_null(strstr(line, "trace_id=4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_int_equal(line[strlen(line) - 1], ')');
    /* too long for the buffer: the message gives way, the JSON stays whole */
    char small[200];
    char big[1000];
    memset(big, 'y', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    l.r.msg = big;
    size_t n = ew_log_format_line(&l.r, EW_LOG_FORMAT_JSON, "auth-service", small, sizeof small);
    assert_int_equal(n, strlen(small));
    assert_true(n < sizeof small);
    char m[1000];
    member(small, "msg", m, sizeof m);
    assert_true(strlen(m) > 3 && strlen(m) < 200);
    assert_string_equal(m + strlen(m) - 3, "...");
    /* escapes make the written message longer than the bytes kept: still one whole object */
    memset(big, '"', sizeof big - 1);
    n = ew_log_format_line(&l.r, EW_LOG_FORMAT_JSON, "auth-service", small, sizeof small);
    assert_true(n > 0 && n < sizeof small);
    member(small, "msg", m, sizeof m);
    assert_string_equal(m + strlen(m) - 3, "...");
    assert_int_equal(m[0], '"');
    ew_event_unref(ev);
}

/* What a logger wrote to its descriptor. */
static char *drain(int fd)
{
    static char buf[8192];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static void test_the_line_sink_filters_and_follows_the_settings(void **state)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    ew_logger *lg;
    assert_int_equal(
        ew_logger_new(&lg, "user-service", EW_LOG_FORMAT_JSON, EW_LOG_INFO, p[1], NULL), 0);
    ew_logger_printf(lg, EW_LOG_DEBUG, NULL, "not shown");
    assert_string_equal(drain(p[0]), "");
    ew_logger_printf(lg, EW_LOG_INFO, "relay", "shown %d", 1);
    char *out = drain(p[0]);
    assert_int_equal(out[strlen(out) - 1], '\n');
    out[strlen(out) - 1] = '\0';
    char v[64];
    assert_string_equal(member(out, "msg", v, sizeof v), "shown 1");
    assert_string_equal(member(out, "module", v, sizeof v), "relay");
    assert_string_equal(member(out, "event_id", v, sizeof v), ""); /* left out, not null */
    assert_null(strstr(out, "event_id"));

    /* LOG_FORMAT=text, LOG_LEVEL=error */
    ew_config *cfg;
    assert_int_equal(ew_config_new(&cfg, NULL), 0);
    assert_int_equal(ew_config_set(cfg, "LOG_FORMAT", "text", NULL), 0);
    assert_int_equal(ew_config_set(cfg, "LOG_LEVEL", "error", NULL), 0);
    assert_int_equal(ew_config_set(cfg, "LOG_LEVEL", "loud", NULL), EW_ECONFIG);
    ew_logger_configure(lg, cfg);
    ew_logger_printf(lg, EW_LOG_WARN, NULL, "a warning");
    assert_string_equal(drain(p[0]), "");
    ew_logger_printf(lg, EW_LOG_ERROR, NULL, "an error");
    out = drain(p[0]);
    assert_non_null(strstr(out, " error user-service: an error\n"));
    /* auto keeps the logger's own format */
    assert_int_equal(ew_config_set(cfg, "LOG_FORMAT", "auto", NULL), 0);
    ew_logger_configure(lg, cfg);
    ew_logger_printf(lg, EW_LOG_ERROR, NULL, "still text");
    assert_non_null(strstr(drain(p[0]), " error user-service: still text\n"));
    ew_config_free(cfg);

    assert_int_equal(ew_log_level_parse("WARNING"), EW_LOG_WARN);
    assert_int_equal(ew_log_level_parse("debug"), EW_LOG_DEBUG);
    assert_int_equal(ew_log_level_parse("verbose"), -1);
    assert_int_equal(
        ew_logger_new(&(ew_logger *){NULL}, "x", EW_LOG_FORMAT_JSON, EW_LOG_INFO, -1, NULL),
        EW_EINVAL);
    ew_logger_free(lg);
    ew_logger_free(NULL);
    close(p[0]);
    close(p[1]);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_a_record_carries_the_event_and_its_trace),
    cmocka_unit_test(test_json_lines_have_the_documented_members),
    cmocka_unit_test(test_the_line_sink_filters_and_follows_the_settings),
};

EW_TEST_MAIN(tests)
