/* The CloudEvents protocol bindings (src/bus/binding.c) against the official CloudEvents SDK for
 * JavaScript (npm cloudevents 10), without a broker: the messages the SDK makes (Kafka binary and
 * structured as kafkajs sends them; AMQP binary mapped by the AMQP binding's rules, which the SDK
 * lacks) are decoded exactly as a broker would hand them over, and the messages
 * ew__binding_encode() makes are read back by the SDK (tests/interop/js/js_interop.js). */
#include <stdlib.h>
#include <string.h>
#include "interop/interop.h"
#include "bus/binding.h"
#include "core/arena.h"
#include "core/buf.h"
#include "core/json.h"
#include "eventwire/event.h"

#define UID "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"

/* One line of `js_interop.js capture` or of a reader, parsed. */
typedef struct line {
    ew_arena a;
    ew_json *root;
} line;

/* Every line of out that parses, in order; returns how many (at most cap). */
static size_t parse_lines(char *out, line *ls, size_t cap)
{
    size_t n = 0;
    for (char *p = strtok(out, "\n"); p && n < cap; p = strtok(NULL, "\n")) {
        ew_arena_init(&ls[n].a, NULL, 0);
        ew_error err = {0};
        if (ew_json_parse(&ls[n].root, p, strlen(p), NULL, &ls[n].a, &err))
            fail_msg("js_interop.js printed '%s': %s", p, err.msg);
        n++;
    }
    return n;
}

static void release_lines(line *ls, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ew_arena_release(&ls[i].a);
}

static const ew_json *find(line *ls, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        const ew_json *nm = ew_json_get(ls[i].root, "name");
        if (nm && strcmp(nm->str, name) == 0) return ls[i].root;
    }
    fail_msg("js_interop.js capture printed no %s", name);
    return NULL;
}

/* What every SDK event of the capture holds, and what eventwire makes of it. */
static void check_sdk_event(const ew_event *ev, bool plain)
{
    assert_string_equal(ew_event_id(ev), plain ? "js-plain-1" : "js-ext-1");
    assert_string_equal(ew_event_type(ev), "user.registered");
    assert_string_equal(ew_event_source(ev), "/js/service");
    assert_string_equal(ew_event_subject(ev), UID);
    /* no eventversion: version 2 by the dataschema, or by the data for the plain one */
    assert_int_equal(ew_event_version(ev), 2);
    const ew_user_registered *d = ew_user_registered_data(ev);
    assert_non_null(d);
    assert_string_equal(d->email, "js@example.com");
    assert_int_equal(d->roles.count, 2);
    assert_string_equal(d->roles.items[1], "admin");
    if (plain) {
        assert_null(ew_event_dataschema(ev));
        assert_int_equal(ew_event_extension_count(ev), 0);
    } else {
        assert_string_equal(ew_event_dataschema(ev),
                            "https://schemas.example.com/user.registered/v2.json");
        assert_int_equal(ew_event_extension_count(ev), 1);
        assert_string_equal(ew_event_extension(ev, "tenantid")->value, "acme");
    }
}

static char *capture(line *ls, size_t *n)
{
    char cmd[4096];
    interop_node_cmd(cmd, sizeof cmd, "capture");
    char *out = interop_output(cmd);
    *n = parse_lines(out, ls, 16);
    return out;
}

/* The SDK's Kafka messages, binary (content-type AND ce_datacontenttype, ce_* headers) and
 * structured, with and without extension and dataschema, decode into the event it made. */
static void sdk_kafka_messages_decode(void **state)
{
    line ls[16];
    size_t n;
    char *out = capture(ls, &n);
    const char *names[] = {"kafka-binary", "kafka-structured", "kafka-binary-plain",
                           "kafka-structured-plain"};
    for (size_t k = 0; k < 4; k++) {
        const ew_json *m = find(ls, n, names[k]);
        const ew_json *hs = ew_json_get(m, "headers"), *value = ew_json_get(m, "value");
        ew__header h[32];
        size_t nh = 0;
        for (const ew_json *e = hs->child; e && nh < 32; e = e->next, nh++)
            h[nh] = (ew__header){.name = e->child->str,
                                 .name_len = e->child->len,
                                 .kind = EW__HV_BYTES,
                                 .value = e->child->next->str,
                                 .value_len = e->child->next->len};
        ew__wire_msg wm = {.binding = EW__BINDING_KAFKA,
                           .body = value->str,
                           .body_len = value->len,
                           .headers = h,
                           .nheaders = nh};
        assert_int_equal(ew__binding_is_binary(&wm), strstr(names[k], "binary") != NULL);
        ew_event *ev = NULL;
        ew_error err = {0};
        if (ew__binding_decode(&wm, NULL, &ev, NULL, &err))
            fail_msg("%s: %s: %s", names[k], ew_err_name(err.code), err.msg);
        check_sdk_event(ev, strstr(names[k], "plain") != NULL);
        ew_event_unref(ev);
    }
    release_lines(ls, n);
    free(out);
}

/* AMQP binary mode as a JavaScript producer maps the SDK's event by the binding's rules. */
static void sdk_amqp_binary_messages_decode(void **state)
{
    line ls[16];
    size_t n;
    char *out = capture(ls, &n);
    const char *names[] = {"amqp-binary", "amqp-binary-plain"};
    for (size_t k = 0; k < 2; k++) {
        const ew_json *m = find(ls, n, names[k]);
        const ew_json *ps = ew_json_get(m, "props"), *value = ew_json_get(m, "value"),
                      *ct = ew_json_get(m, "content_type");
        ew__header h[32];
        size_t nh = 0;
        for (const ew_json *e = ps->child; e && nh < 32; e = e->next, nh++) {
            const ew_json *name = e->child, *kind = name->next, *v = kind->next;
            h[nh] = (ew__header){.name = name->str, .name_len = name->len};
            if (strcmp(kind->str, "int") == 0) {
                h[nh].kind = EW__HV_INT;
                h[nh].num = strtoll(v->str, NULL, 10);
            } else if (strcmp(kind->str, "bool") == 0) {
                h[nh].kind = EW__HV_BOOL;
                h[nh].num = strcmp(v->str, "true") == 0;
            } else {
                h[nh].kind = EW__HV_BYTES;
                h[nh].value = v->str;
                h[nh].value_len = v->len;
            }
        }
        ew__wire_msg wm = {.binding = EW__BINDING_AMQP,
                           .body = value->str,
                           .body_len = value->len,
                           .content_type = ct->str,
                           .content_type_len = ct->len,
                           .headers = h,
                           .nheaders = nh};
        assert_true(ew__binding_is_binary(&wm));
        ew_event *ev = NULL;
        ew_error err = {0};
        if (ew__binding_decode(&wm, NULL, &ev, NULL, &err))
            fail_msg("%s: %s: %s", names[k], ew_err_name(err.code), err.msg);
        check_sdk_event(ev, k == 1);
        ew_event_unref(ev);
    }
    release_lines(ls, n);
    free(out);
}

static ew_event *our_event(void)
{
    static const char *roles[] = {"user", "admin"};
    static const ew_event_ext x[] = {{"tenantid", EW_EXT_STRING, "acme"}};
    ew_user_registered d = {
        .user_id = UID, .email = "c@example.com", .username = "c", .roles = {roles, 2}};
    ew_event *ev;
    ew_error err = {0};
    ew_event_attrs a = {.source = "auth-service",
                        .subject = UID,
                        .traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        .dataschema = "https://schemas.example.com/user.registered/v2.json",
                        .extensions = x,
                        .nextensions = 1};
    if (ew_user_registered_new(&ev, &d, &a, &err)) fail_msg("%s", err.msg);
    return ev;
}

/* One message of ours as the JSON line the reader takes. */
static void message_line(ew_buf *b, const ew__wire_out *o, ew__binding bind)
{
    ew_buf_puts(b, "{\"headers\":{");
    for (size_t i = 0; i < o->nheaders; i++) {
        ew_json_write_string(b, o->headers[i].name, o->headers[i].name_len);
        ew_buf_putc(b, ':');
        ew_json_write_string(b, o->headers[i].value, o->headers[i].value_len);
        ew_buf_putc(b, ',');
    }
    /* the content type as the adapter sends it: Kafka's header, AMQP's property */
    if (bind == EW__BINDING_KAFKA) {
        ew_buf_puts(b, "\"content-type\":");
        ew_json_write_string(b, o->content_type, strlen(o->content_type));
        ew_buf_puts(b, "},");
    } else {
        if (o->nheaders) b->len--; /* the last comma */
        ew_buf_puts(b, "},\"content_type\":");
        ew_json_write_string(b, o->content_type, strlen(o->content_type));
        ew_buf_putc(b, ',');
    }
    ew_buf_puts(b, "\"value\":");
    ew_json_write_string(b, o->body, o->body_len);
    ew_buf_puts(b, "}\n");
}

/* The SDK reads what ew__binding_encode() makes, in both modes, on Kafka and AMQP: the same
 * attributes, extension and dataschema included, and the same data. */
static void sdk_reads_our_messages(void **state)
{
    ew_event *ev = our_event();
    for (int b = 0; b < 2; b++) {
        ew__binding bind = b ? EW__BINDING_AMQP : EW__BINDING_KAFKA;
        char path[] = "/tmp/ew-js-binding-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        ew_buf lines;
        ew_buf_init(&lines);
        for (int mode = 0; mode < 2; mode++) {
            ew__wire_out o;
            ew_error err = {0};
            assert_int_equal(ew__binding_encode(ev, bind, (ew__content_mode)mode, 0, &o, &err), 0);
            message_line(&lines, &o, bind);
            ew__wire_out_release(&o);
        }
        assert_true(write(fd, lines.data, lines.len) == (ssize_t)lines.len);
        close(fd);
        ew_buf_release(&lines);
        char args[256], cmd[4096];
        snprintf(args, sizeof args, "%s < '%s'", b ? "amqp-read" : "kafka-read", path);
        interop_node_cmd(cmd, sizeof cmd, args);
        char *out = interop_output(cmd);
        unlink(path);
        line ls[4];
        size_t n = parse_lines(out, ls, 4);
        assert_int_equal(n, 2);
        for (size_t i = 0; i < n; i++) {
            const ew_json *mode = ew_json_get(ls[i].root, "mode");
            assert_string_equal(mode->str, i ? "binary" : "structured");
            const ew_json *e = ew_json_get(ls[i].root, "event");
            assert_string_equal(ew_json_get(e, "id")->str, ew_event_id(ev));
            assert_string_equal(ew_json_get(e, "type")->str, "user.registered");
            assert_string_equal(ew_json_get(e, "source")->str, "auth-service");
            assert_string_equal(ew_json_get(e, "subject")->str, UID);
            assert_string_equal(ew_json_get(e, "dataschema")->str,
                                "https://schemas.example.com/user.registered/v2.json");
            assert_string_equal(ew_json_get(e, "tenantid")->str, "acme");
            assert_string_equal(ew_json_get(e, "traceparent")->str, ew_event_traceparent(ev));
            assert_string_equal(ew_json_get(e, "correlationid")->str, ew_event_id(ev));
            const ew_json *ver = ew_json_get(e, "eventversion");
            assert_non_null(ver); /* a number in structured mode, its string in binary */
            assert_true(ver->kind == EW_JSON_NUMBER ? ver->i64 == 2 : strcmp(ver->str, "2") == 0);
            const ew_json *d = ew_json_get(e, "data");
            assert_string_equal(ew_json_get(d, "email")->str, "c@example.com");
            assert_string_equal(ew_json_get(d, "roles")->child->next->str, "admin");
        }
        release_lines(ls, n);
        free(out);
    }
    ew_event_unref(ev);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(sdk_kafka_messages_decode),
    cmocka_unit_test(sdk_amqp_binary_messages_decode),
    cmocka_unit_test(sdk_reads_our_messages),
};

EW_TEST_MAIN(tests)
