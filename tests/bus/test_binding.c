/* Tests of the CloudEvents protocol bindings (src/bus/binding.c): messages built exactly as a
 * broker delivers them — Kafka records with their headers, AMQP messages with their content type
 * and typed application properties — decoded in every content mode, and the messages
 * ew__binding_encode() makes, read back. */
#include <stdlib.h>
#include <string.h>
#include "support/ew_test.h"
#include "bus/binding.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/event.h"

#define UID "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"
#define DATA_V2                                                                                    \
    "{\"user_id\":\"" UID "\",\"email\":\"js@example.com\",\"username\":\"js\","                   \
    "\"roles\":[\"user\",\"admin\"]}"
#define DATA_V1 "{\"user_id\":\"" UID "\",\"email\":\"js@example.com\",\"username\":\"js\"}"

/* A Kafka header (bytes) or an AMQP application property of any kind. */
#define HS(n, v)                                                                                   \
    {                                                                                              \
        .name = n, .name_len = sizeof n - 1, .kind = EW__HV_BYTES, .value = v,                     \
        .value_len = sizeof v - 1                                                                  \
    }
#define HI(n, v)                                                                                   \
    {                                                                                              \
        .name = n, .name_len = sizeof n - 1, .kind = EW__HV_INT, .num = v                          \
    }
#define HB(n, v)                                                                                   \
    {                                                                                              \
        .name = n, .name_len = sizeof n - 1, .kind = EW__HV_BOOL, .num = v                         \
    }
#define HT(n, v)                                                                                   \
    {                                                                                              \
        .name = n, .name_len = sizeof n - 1, .kind = EW__HV_TIME_S, .num = v                       \
    }
#define HO(n)                                                                                      \
    {                                                                                              \
        .name = n, .name_len = sizeof n - 1, .kind = EW__HV_OTHER                                  \
    }
#define NH(a) (sizeof a / sizeof a[0])

static ew__wire_msg kafka(const char *body, const ew__header *h, size_t n)
{
    return (ew__wire_msg){.binding = EW__BINDING_KAFKA,
                          .body = body,
                          .body_len = body ? strlen(body) : 0,
                          .headers = h,
                          .nheaders = n};
}

static ew__wire_msg amqp(const char *body, const char *ct, const ew__header *h, size_t n)
{
    return (ew__wire_msg){.binding = EW__BINDING_AMQP,
                          .body = body,
                          .body_len = body ? strlen(body) : 0,
                          .content_type = ct,
                          .content_type_len = ct ? strlen(ct) : 0,
                          .headers = h,
                          .nheaders = n};
}

static ew_event *must_decode(const ew__wire_msg *m)
{
    ew_event *ev = NULL;
    ew_error err = {0};
    if (ew__binding_decode(m, NULL, &ev, NULL, &err))
        fail_msg("%s: %s", ew_err_name(err.code), err.msg);
    return ev;
}

/* Fails unless decoding m fails with code and a message holding needle. */
static void must_fail(const ew__wire_msg *m, int code, const char *needle)
{
    ew_event *ev = NULL;
    ew_error err = {0};
    int rc = ew__binding_decode(m, NULL, &ev, NULL, &err);
    if (rc != code) fail_msg("got %s (%s), want %s", ew_err_name(rc), err.msg, ew_err_name(code));
    assert_null(ev);
    if (!strstr(err.msg, needle)) fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

/* ---- Kafka ------------------------------------------------------------------------------ */

/* What the CloudEvents SDK for JavaScript (Kafka.binary) hands kafkajs: content-type AND
 * ce_datacontenttype, the time with milliseconds, an extension, a dataschema naming version 2,
 * and no eventversion. Once both headers became a duplicate member and every such event was
 * dropped. */
static void test_kafka_binary_as_the_js_sdk_sends_it(void **state)
{
    ew__header h[] = {
        HS("content-type", "application/json"),
        HS("ce_id", "b7a1c2d3-0000-4000-8000-000000000001"),
        HS("ce_time", "2026-12-06T21:30:45.123Z"),
        HS("ce_type", "user.registered"),
        HS("ce_source", "/js/service"),
        HS("ce_specversion", "1.0"),
        HS("ce_datacontenttype", "application/json"),
        HS("ce_subject", UID),
        HS("ce_dataschema", "https://schemas.example.com/user.registered/v2.json"),
        HS("ce_tenantid", "acme"),
    };
    ew__wire_msg m = kafka(DATA_V2, h, NH(h));
    assert_true(ew__binding_is_binary(&m));
    ew_event *ev = must_decode(&m);
    assert_string_equal(ew_event_id(ev), "b7a1c2d3-0000-4000-8000-000000000001");
    assert_string_equal(ew_event_source(ev), "/js/service");
    assert_string_equal(ew_event_subject(ev), UID);
    assert_int_equal(ew_event_time_us(ev), 1796592645123000LL);
    assert_int_equal(ew_event_version(ev), 2);
    assert_int_equal(ew_user_registered_data(ev)->roles.count, 2);
    assert_string_equal(ew_event_dataschema(ev),
                        "https://schemas.example.com/user.registered/v2.json");
    assert_int_equal(ew_event_extension_count(ev), 1);
    assert_string_equal(ew_event_extension(ev, "tenantid")->value, "acme");
    ew_event_unref(ev);

    /* the two disagree: the content type is the binding's datacontenttype and wins */
    h[6] = (ew__header)HS("ce_datacontenttype", "text/plain");
    ev = must_decode(&m);
    ew_event_unref(ev);
    /* only ce_datacontenttype: it is read */
    ew__header only[] = {HS("ce_specversion", "1.0"), HS("ce_id", "x"), HS("ce_source", "s"),
                         HS("ce_type", "user.registered"), HS("ce_datacontenttype", "text/plain")};
    m = kafka("hello", only, NH(only));
    must_fail(&m, EW_EDATA, "content type 'text/plain' is not JSON");
}

/* A Kafka binary record whose data is not JSON: a clear error, and the dead letter keeps the
 * whole message as one structured document with the data in base64. */
static void test_kafka_binary_data_that_is_not_json(void **state)
{
    ew__header h[] = {HS("ce_specversion", "1.0"), HS("ce_id", "bin-9"), HS("ce_source", "x"),
                      HS("ce_type", "user.verified"),
                      HS("content-type", "text/plain; charset=utf-8")};
    ew__wire_msg m = kafka("hi there", h, NH(h));
    ew_event *ev = NULL;
    ew_error err = {0};
    ew_buf json;
    ew_buf_init(&json);
    assert_int_equal(ew__binding_decode(&m, NULL, &ev, &json, &err), EW_EDATA);
    assert_non_null(strstr(err.msg, "'text/plain; charset=utf-8' is not JSON"));
    ew_buf_putc(&json, '\0');
    assert_non_null(strstr(json.data, "\"id\":\"bin-9\""));
    assert_non_null(strstr(json.data, "\"datacontenttype\":\"text/plain; charset=utf-8\""));
    assert_non_null(strstr(json.data, "\"data_base64\":\"aGkgdGhlcmU=\""));
    ew_buf_release(&json);

    /* no content type at all: JSON is assumed, and "hi there" is not */
    m = kafka("hi there", h, 4);
    must_fail(&m, EW_EJSON, "binary-mode data");
    /* a binary record with an empty value */
    m = kafka(NULL, h, 4);
    must_fail(&m, EW_EDATA, "data must be an object");
}

/* Kafka keeps every header; one attribute repeated with the same value is that value, with two
 * values it is ambiguous and refused. A ce_data header has no place in binary mode. */
static void test_kafka_repeated_headers(void **state)
{
    ew__header h[] = {HS("ce_specversion", "1.0"),
                      HS("ce_id", "r1"),
                      HS("ce_source", "x"),
                      HS("ce_type", "user.logged_out"),
                      HS("ce_id", "r1"),
                      HS("content-type", "application/json"),
                      HS("content-type", "application/json")};
    ew__wire_msg m = kafka("{\"user_id\":\"" UID "\",\"session_id\":\"s\"}", h, NH(h));
    ew_event *ev = must_decode(&m);
    assert_string_equal(ew_event_id(ev), "r1");
    ew_event_unref(ev);
    h[4] = (ew__header)HS("ce_id", "r2");
    must_fail(&m, EW_EDUPKEY, "'id' is given twice with different values");
    h[4] = (ew__header)HS("ce_data", "{}");
    must_fail(&m, EW_ETYPE, "the data is the message body");
    /* a bad attribute name, a null header value */
    h[4] = (ew__header)HS("ce_Tenant", "a");
    must_fail(&m, EW_ETYPE, "not a CloudEvents name");
    h[4] = (ew__header){.name = "ce_subject", .name_len = 10, .kind = EW__HV_BYTES};
    must_fail(&m, EW_EEMPTY, "'subject'");
}

/* Structured records: with the content type (parameters and case aside), and without any
 * header, as kcat sends them; other event formats and batches are refused by name. */
static void test_kafka_structured(void **state)
{
    const char *ev_json = "{\"specversion\":\"1.0\",\"id\":\"s1\",\"source\":\"go\",\"type\":"
                          "\"user.logged_out\",\"tenantid\":\"t1\",\"data\":{\"user_id\":\"" UID
                          "\",\"session_id\":\"s\"}}";
    ew__header ct[] = {HS("content-type", "Application/CloudEvents+JSON; charset=UTF-8"),
                       HS("ce_specversion", "1.0")}; /* the content type decides */
    ew__wire_msg m = kafka(ev_json, ct, NH(ct));
    assert_false(ew__binding_is_binary(&m));
    ew_event *ev = must_decode(&m);
    assert_string_equal(ew_event_extension(ev, "tenantid")->value, "t1");
    ew_event_unref(ev);
    m = kafka(ev_json, NULL, 0);
    ev = must_decode(&m);
    assert_string_equal(ew_event_id(ev), "s1");
    ew_event_unref(ev);

    ew__header batch[] = {HS("content-type", "application/cloudevents-batch+json")};
    m = kafka("[]", batch, 1);
    must_fail(&m, EW_ENOTSUP, "only the JSON event format");
    ew__header avro[] = {HS("content-type", "application/cloudevents+avro")};
    m = kafka("\x01\x02", avro, 1);
    must_fail(&m, EW_ENOTSUP, "application/cloudevents+avro");
    /* neither mode: readable only as structured JSON, and the error says so */
    ew__header plain[] = {HS("content-type", "application/json")};
    m = kafka("{\"user_id\":\"" UID "\"}", plain, 1);
    must_fail(&m, EW_ETYPE, "not a CloudEvent by the Kafka binding");
    m = kafka("not json", NULL, 0);
    must_fail(&m, EW_EJSON, "no ce_specversion header");
}

/* ---- AMQP -------------------------------------------------------------------------------- */

/* AMQP binary mode with both prefixes and typed properties mapped by the binding's rules:
 * timestamps, longs and booleans. */
static void test_amqp_binary_typed_properties(void **state)
{
    ew__header h[] = {
        HS("cloudEvents_specversion", "1.0"),    HS("cloudEvents_id", "a1"),
        HS("cloudEvents:source", "/dotnet/svc"), HS("cloudEvents_type", "user.registered"),
        HT("cloudEvents_time", 1796592645),      HI("cloudEvents_eventversion", 1),
        HI("cloudEvents:priority", 7),           HB("cloudEvents_sampled", 1),
        HS("cloudEvents:tenantid", "acme"),      HS("x-other-header", "ignored"),
    };
    ew__wire_msg m = amqp(DATA_V1, "application/json; charset=utf-8", h, NH(h));
    assert_true(ew__binding_is_binary(&m));
    ew_event *ev = must_decode(&m);
    assert_string_equal(ew_event_source(ev), "/dotnet/svc");
    assert_int_equal(ew_event_time_us(ev), 1796592645000000LL);
    assert_int_equal(ew_event_version(ev), 2); /* v1, upcast */
    assert_int_equal(ew_user_registered_data(ev)->roles.count, 1);
    const ew_event_ext *x = ew_event_extension(ev, "priority");
    assert_int_equal(x->kind, EW_EXT_NUMBER);
    assert_string_equal(x->value, "7");
    x = ew_event_extension(ev, "sampled");
    assert_int_equal(x->kind, EW_EXT_BOOL);
    assert_string_equal(x->value, "true");
    assert_string_equal(ew_event_extension(ev, "tenantid")->value, "acme");
    assert_int_equal(ew_event_extension_count(ev), 3);
    ew_event_unref(ev);

    /* a type the binding does not map */
    h[9] = (ew__header)HO("cloudEvents_nested");
    must_fail(&m, EW_ETYPE, "does not map");
    /* the same attribute under both prefixes: one value, or refused */
    h[9] = (ew__header)HS("cloudEvents:id", "a1");
    ev = must_decode(&m);
    ew_event_unref(ev);
    h[9] = (ew__header)HS("cloudEvents:id", "a2");
    must_fail(&m, EW_EDUPKEY, "'id'");
    /* a long where a string belongs */
    h[9] = (ew__header)HI("cloudEvents_subject", 5);
    must_fail(&m, EW_ETYPE, "'subject' must be a string");
}

/* The message the issue saw dropped: binary mode whose body is the data, once read as a
 * structured event ("attribute name 'user_id' is not a CloudEvents name"). */
static void test_amqp_binary_is_not_read_as_structured(void **state)
{
    ew__header h[] = {HS("cloudEvents_specversion", "1.0"), HS("cloudEvents_id", "a3"),
                      HS("cloudEvents_source", "node"), HS("cloudEvents_type", "user.verified")};
    ew__wire_msg m =
        amqp("{\"user_id\":\"" UID "\",\"method\":\"email\"}", "application/json", h, NH(h));
    ew_event *ev = must_decode(&m);
    assert_string_equal(ew_user_verified_data(ev)->method, "email");
    ew_event_unref(ev);
    /* no content type: JSON assumed */
    m = amqp("{\"user_id\":\"" UID "\",\"method\":\"email\"}", NULL, h, NH(h));
    ev = must_decode(&m);
    ew_event_unref(ev);
    /* structured by its content type, whatever the properties say */
    const char *s = "{\"specversion\":\"1.0\",\"id\":\"a4\",\"source\":\"py\",\"type\":"
                    "\"user.verified\",\"data\":{\"user_id\":\"" UID "\",\"method\":\"sms\"}}";
    m = amqp(s, "application/cloudevents+json", h, NH(h));
    assert_false(ew__binding_is_binary(&m));
    ev = must_decode(&m);
    assert_string_equal(ew_event_id(ev), "a4");
    ew_event_unref(ev);
    /* neither: structured JSON as pika publishers without a content type send it */
    m = amqp(s, NULL, NULL, 0);
    ev = must_decode(&m);
    ew_event_unref(ev);
    m = amqp("{\"user_id\":1}", "application/json", NULL, 0);
    must_fail(&m, EW_ETYPE, "no cloudEvents_specversion application property");
}

/* ---- encoding ---------------------------------------------------------------------------- */

static ew_event *sample(void)
{
    static const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = UID, .email = "a@example.com", .username = "ann", .roles = {roles, 1}};
    static const ew_event_ext x[] = {{"tenantid", EW_EXT_STRING, "acme"},
                                     {"region", EW_EXT_STRING, "eu \xc3\xa9"}};
    ew_event *ev;
    ew_error err = {0};
    ew_event_attrs a = {.source = "auth-service",
                        .subject = UID,
                        .causation_id = "cause-1",
                        .traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        .dataschema = "https://schemas.example.com/user.registered/v2.json",
                        .extensions = x,
                        .nextensions = 2};
    if (ew_user_registered_new(&ev, &d, &a, &err)) fail_msg("%s", err.msg);
    return ev;
}

static const ew__header *out_header(const ew__wire_out *o, const char *name)
{
    for (size_t i = 0; i < o->nheaders; i++)
        if (o->headers[i].name_len == strlen(name) &&
            memcmp(o->headers[i].name, name, o->headers[i].name_len) == 0)
            return &o->headers[i];
    return NULL;
}

static void assert_header(const ew__wire_out *o, const char *name, const char *value)
{
    const ew__header *h = out_header(o, name);
    if (!h) fail_msg("no header %s", name);
    assert_int_equal(h->kind, EW__HV_BYTES);
    if (h->value_len != strlen(value) || memcmp(h->value, value, h->value_len) != 0)
        fail_msg("%s is '%.*s', want '%s'", name, (int)h->value_len, (const char *)h->value, value);
}

/* Structured by default, on every binding; binary only where the binding has it. */
static void test_encode_structured(void **state)
{
    ew_event *ev = sample();
    ew__binding bs[] = {EW__BINDING_STRUCTURED, EW__BINDING_KAFKA, EW__BINDING_AMQP};
    for (size_t i = 0; i < 3; i++) {
        ew__wire_out o;
        ew_error err = {0};
        assert_int_equal(ew__binding_encode(ev, bs[i], EW__MODE_STRUCTURED, 0, &o, &err), 0);
        assert_string_equal(o.content_type, "application/cloudevents+json");
        assert_int_equal(o.nheaders, 0);
        char *json;
        assert_int_equal(ew_event_encode(ev, &json, NULL, &err), 0);
        assert_string_equal(o.body, json);
        free(json);
        ew__wire_out_release(&o);
    }
    /* no binary mode without a binding that has one */
    ew__wire_out o;
    assert_int_equal(ew__binding_encode(ev, EW__BINDING_STRUCTURED, EW__MODE_BINARY, 0, &o, NULL),
                     0);
    assert_string_equal(o.content_type, "application/cloudevents+json");
    assert_int_equal(o.nheaders, 0);
    ew__wire_out_release(&o);
    ew_event_unref(ev);
}

/* Binary mode on Kafka and AMQP: the attributes as headers with the binding's prefix, the data
 * as the body; read back (the content type travelling as the adapter sends it) it is the same
 * event. */
static void test_encode_binary_round_trip(void **state)
{
    ew_event *ev = sample();
    for (int b = 0; b < 2; b++) {
        ew__binding bind = b ? EW__BINDING_AMQP : EW__BINDING_KAFKA;
        const char *p = b ? "cloudEvents_" : "ce_";
        char name[64];
        ew__wire_out o;
        ew_error err = {0};
        assert_int_equal(ew__binding_encode(ev, bind, EW__MODE_BINARY, 0, &o, &err), 0);
        assert_string_equal(o.content_type, "application/json");
        struct {
            const char *n, *v;
        } want[] = {{"specversion", "1.0"},
                    {"id", ew_event_id(ev)},
                    {"source", "auth-service"},
                    {"type", "user.registered"},
                    {"subject", UID},
                    {"dataschema", "https://schemas.example.com/user.registered/v2.json"},
                    {"eventversion", "2"},
                    {"correlationid", ew_event_id(ev)},
                    {"causationid", "cause-1"},
                    {"tenantid", "acme"},
                    {"region", "eu \xc3\xa9"}};
        for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
            snprintf(name, sizeof name, "%s%s", p, want[i].n);
            assert_header(&o, name, want[i].v);
        }
        snprintf(name, sizeof name, "%sdatacontenttype", p);
        assert_null(out_header(&o, name)); /* it is the content type */
        snprintf(name, sizeof name, "%stime", p);
        assert_non_null(out_header(&o, name));
        assert_int_equal(o.body[0], '{');
        assert_non_null(strstr(o.body, "\"roles\":[\"user\"]"));
        assert_null(strstr(o.body, "specversion"));

        /* as the broker delivers it */
        ew__header hs[32];
        size_t n = o.nheaders;
        memcpy(hs, o.headers, n * sizeof *hs);
        ew__wire_msg m;
        if (bind == EW__BINDING_KAFKA) {
            hs[n++] = (ew__header){.name = "content-type",
                                   .name_len = 12,
                                   .value = o.content_type,
                                   .value_len = strlen(o.content_type)};
            m = kafka(o.body, hs, n);
        } else {
            m = amqp(o.body, o.content_type, hs, n);
        }
        ew_event *back = must_decode(&m);
        assert_true(ew_event_equal(ev, back));
        ew_event_unref(back);
        ew__wire_out_release(&o);
    }
    ew_event_unref(ev);
}

/* Kafka headers are strings: a number or boolean extension arrives as its canonical string. */
static void test_encode_binary_types_become_strings(void **state)
{
    ew_user_logged_out d = {.user_id = UID, .session_id = "s"};
    ew_event_ext x[] = {{"priority", EW_EXT_NUMBER, "5"}, {"sampled", EW_EXT_BOOL, "false"}};
    ew_event *ev;
    assert_int_equal(
        ew_user_logged_out_new(
            &ev, &d, &(ew_event_attrs){.source = "s", .extensions = x, .nextensions = 2}, NULL),
        0);
    ew__wire_out o;
    assert_int_equal(ew__binding_encode(ev, EW__BINDING_KAFKA, EW__MODE_BINARY, 0, &o, NULL), 0);
    assert_header(&o, "ce_priority", "5");
    assert_header(&o, "ce_sampled", "false");
    ew__wire_msg m = kafka(o.body, o.headers, o.nheaders);
    ew_event *back = must_decode(&m);
    const ew_event_ext *p = ew_event_extension(back, "priority");
    assert_int_equal(p->kind, EW_EXT_STRING);
    assert_string_equal(p->value, "5");
    ew_event_unref(back);
    ew__wire_out_release(&o);
    ew_event_unref(ev);
}

/* AMQP carries an integer or boolean extension as its own type (long, boolean), so that it reads
 * back as the same event; a fraction stays a string, as on Kafka. Found by fuzz_binding. */
static void test_amqp_binary_keeps_integer_and_boolean_extensions(void **state)
{
    ew_user_logged_out d = {.user_id = UID, .session_id = "s"};
    ew_event_ext x[] = {{"priority", EW_EXT_NUMBER, "5"},
                        {"sampled", EW_EXT_BOOL, "true"},
                        {"ratio", EW_EXT_NUMBER, "0.5"}};
    ew_event *ev;
    assert_int_equal(
        ew_user_logged_out_new(
            &ev, &d, &(ew_event_attrs){.source = "s", .extensions = x, .nextensions = 3}, NULL),
        0);
    ew__wire_out o;
    assert_int_equal(ew__binding_encode(ev, EW__BINDING_AMQP, EW__MODE_BINARY, 0, &o, NULL), 0);
    int typed = 0;
    for (size_t i = 0; i < o.nheaders; i++) {
        const ew__header *h = &o.headers[i];
        if (h->name_len == 20 && !memcmp(h->name, "cloudEvents_priority", 20)) {
            assert_int_equal(h->kind, EW__HV_INT);
            assert_int_equal(h->num, 5);
            typed++;
        } else if (h->name_len == 19 && !memcmp(h->name, "cloudEvents_sampled", 19)) {
            assert_int_equal(h->kind, EW__HV_BOOL);
            assert_int_equal(h->num, 1);
            typed++;
        } else {
            assert_int_equal(h->kind, EW__HV_BYTES);
        }
    }
    assert_int_equal(typed, 2);
    ew__wire_msg m = amqp(o.body, o.content_type, o.headers, o.nheaders);
    ew_event *back = must_decode(&m);
    assert_int_equal(ew_event_extension(back, "priority")->kind, EW_EXT_NUMBER);
    assert_int_equal(ew_event_extension(back, "sampled")->kind, EW_EXT_BOOL);
    assert_int_equal(ew_event_extension(back, "ratio")->kind, EW_EXT_STRING);
    assert_string_equal(ew_event_extension(back, "ratio")->value, "0.5");
    ew_event_unref(back);
    ew__wire_out_release(&o);
    ew_event_unref(ev);
}

/* A binary message refused for one of its attributes is still rebuilt as one whole JSON document
 * for its dead letter (it was cut off at the refused attribute). Found by fuzz_binding. */
static void test_a_refused_binary_message_is_still_one_document(void **state)
{
    const ew__header dup[] = {HS("cloudEvents_specversion", "1.0"), HS("cloudEvents_id", "a"),
                              HS("cloudEvents:id", "b"), HS("cloudEvents_type", "user.registered"),
                              HS("cloudEvents_source", "s")};
    const ew__header untyped[] = {HS("cloudEvents_specversion", "1.0"), HS("cloudEvents_id", "a"),
                                  HO("cloudEvents_map"), HS("cloudEvents_type", "user.registered"),
                                  HS("cloudEvents_source", "s")};
    struct {
        const ew__header *h;
        size_t n;
        int code;
    } cases[] = {{dup, NH(dup), EW_EDUPKEY}, {untyped, NH(untyped), EW_ETYPE}};
    for (size_t i = 0; i < 2; i++) {
        ew__wire_msg m = amqp(DATA_V2, "application/json", cases[i].h, cases[i].n);
        ew_event *ev = NULL;
        ew_error err = {0};
        ew_buf json;
        ew_buf_init(&json);
        assert_int_equal(ew__binding_decode(&m, NULL, &ev, &json, &err), cases[i].code);
        assert_null(ev);
        assert_non_null(json.data);
        assert_int_equal(json.data[0], '{');
        assert_int_equal(json.data[json.len - 1], '}');
        assert_non_null(strstr(json.data, "\"data_base64\":\""));
        assert_non_null(strstr(json.data, "\"type\":\"user.registered\""));
        ew_buf_release(&json);
    }
    /* a header or content type that is not UTF-8 is refused, and left out of the document */
    const ew__header latin1[] = {HS("ce_specversion", "1.0"),
                                 HS("ce_id", "a"),
                                 HS("ce_type", "user.registered"),
                                 HS("ce_source", "s"),
                                 HS("content-type", "text/pl\xbe\xbein"),
                                 HS("ce_x", "caf\xe9")};
    ew__wire_msg m = kafka("hello", latin1, NH(latin1));
    ew_event *ev = NULL;
    ew_error err = {0};
    ew_buf json;
    ew_buf_init(&json);
    assert_int_equal(ew__binding_decode(&m, NULL, &ev, &json, &err), EW_EUTF8);
    assert_true(ew_utf8_valid(json.data, json.len));
    assert_int_equal(json.data[json.len - 1], '}');
    assert_null(strstr(json.data, "\"x\""));
    ew_buf_release(&json);
}

/* EVENT_MAX_BYTES bounds the event in both modes, extensions and headers included. */
static void test_max_bytes_counts_extensions_and_headers(void **state)
{
    char big[900];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ew_event_ext x[] = {{"blob", EW_EXT_STRING, big}};
    ew_user_logged_out d = {.user_id = UID, .session_id = "s"};
    ew_event *ev;
    assert_int_equal(
        ew_user_logged_out_new(
            &ev, &d, &(ew_event_attrs){.source = "s", .extensions = x, .nextensions = 1}, NULL),
        0);
    for (int mode = 0; mode < 2; mode++) {
        ew__wire_out o;
        ew_error err = {0};
        assert_int_equal(
            ew__binding_encode(ev, EW__BINDING_KAFKA, (ew__content_mode)mode, 1024, &o, &err),
            EW_ETOOBIG);
        assert_non_null(strstr(err.msg, "EVENT_MAX_BYTES=1024"));
        assert_null(o.body);
        assert_null(o.headers);
        assert_int_equal(
            ew__binding_encode(ev, EW__BINDING_KAFKA, (ew__content_mode)mode, 4096, &o, &err), 0);
        ew__wire_out_release(&o);
    }
    /* received: the attribute headers count in binary mode */
    ew__header h[] = {
        HS("ce_specversion", "1.0"),
        HS("ce_id", "m1"),
        HS("ce_source", "s"),
        HS("ce_type", "user.logged_out"),
        {.name = "ce_blob", .name_len = 7, .value = big, .value_len = sizeof big - 1}};
    ew__wire_msg m = kafka("{\"user_id\":\"" UID "\",\"session_id\":\"s\"}", h, NH(h));
    ew_event *got = NULL;
    ew_error err = {0};
    assert_int_equal(ew__binding_decode(&m, &(ew_decode_opts){.max_bytes = 1024}, &got, NULL, &err),
                     EW_ETOOBIG);
    assert_int_equal(ew__binding_decode(&m, &(ew_decode_opts){.max_bytes = 4096}, &got, NULL, &err),
                     0);
    assert_string_equal(ew_event_extension(got, "blob")->value, big);
    ew_event_unref(got);
    ew_event_unref(ev);
}

static void test_content_mode_setting(void **state)
{
    ew__content_mode m;
    assert_int_equal(ew__content_mode_parse("binary", &m), 0);
    assert_int_equal(m, EW__MODE_BINARY);
    assert_int_equal(ew__content_mode_parse("structured", &m), 0);
    assert_int_equal(m, EW__MODE_STRUCTURED);
    assert_int_equal(ew__content_mode_parse(NULL, &m), 0);
    assert_int_equal(m, EW__MODE_STRUCTURED);
    assert_int_equal(ew__content_mode_parse("both", &m), EW_ECONFIG);
    assert_int_equal(m, EW__MODE_STRUCTURED);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_kafka_binary_as_the_js_sdk_sends_it),
    cmocka_unit_test(test_kafka_binary_data_that_is_not_json),
    cmocka_unit_test(test_kafka_repeated_headers),
    cmocka_unit_test(test_kafka_structured),
    cmocka_unit_test(test_amqp_binary_typed_properties),
    cmocka_unit_test(test_amqp_binary_is_not_read_as_structured),
    cmocka_unit_test(test_encode_structured),
    cmocka_unit_test(test_encode_binary_round_trip),
    cmocka_unit_test(test_encode_binary_types_become_strings),
    cmocka_unit_test(test_amqp_binary_keeps_integer_and_boolean_extensions),
    cmocka_unit_test(test_a_refused_binary_message_is_still_one_document),
    cmocka_unit_test(test_max_bytes_counts_extensions_and_headers),
    cmocka_unit_test(test_content_mode_setting),
};

EW_TEST_MAIN(tests)
