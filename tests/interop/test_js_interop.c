/* eventwire's buses with the official CloudEvents SDK for JavaScript (npm cloudevents 10) on the
 * same brokers: kafkajs on Kafka (the mock cluster), amqplib on RabbitMQ, ioredis on Redis
 * (tests/interop/js/js_interop.js does the JavaScript side). Both directions, structured and
 * binary where the broker's binding has binary mode (the SDK has no AMQP binding: the script maps
 * AMQP binary by the binding's rules), with an extension attribute and a dataschema that must
 * arrive as sent, and plain SDK events without eventversion, which must be accepted.
 * ew-fixture: kafka
 * ew-fixture: rabbitmq
 * ew-fixture: redis */
#include <stdlib.h>
#include <string.h>
#include "bus/bus_test_util.h"
#include "core/arena.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/id.h"
#include "interop/interop.h"

/* The cases that need the transport adapters of issue 10 part 1 (every header and AMQP
 * application property and the content type handed to the binding; ew__binding_encode's
 * message published as it is, EVENT_CONTENT_MODE=binary honoured) skip, saying so, until these
 * land: then set this to 1. EW_INTEROP_ALL=1 runs them anyway. */
#define ADAPTERS_PASS_HEADERS 1

static void waits_for_adapters(const char *what)
{
    const char *all = getenv("EW_INTEROP_ALL");
    if (ADAPTERS_PASS_HEADERS || (all && strcmp(all, "1") == 0)) return;
    fprintf(stderr, "skipped: %s needs the transport adapters of issue 10 part 1\n", what);
    skip();
}

#define UID_LEN EW_UUID_LEN
#define SCHEMA "https://schemas.example.com/user.registered/v2.json"

typedef enum broker { B_KAFKA, B_RABBITMQ, B_REDIS } broker;

static const char *broker_url(broker b)
{
    static const char *const fx[] = {"kafka", "rabbitmq", "redis"};
    const char *url = ew_test_server_url(fx[b]);
    if (!url) skip();
#ifndef EW_HAVE_RABBITMQ
    if (b == B_RABBITMQ) skip();
#endif
    return url;
}

/* A bus on broker b under a namespace of its own (topic prefix, exchange, stream prefix). */
static ew_bus *open_bus(broker b, const char *ns, const char *mode, const char *service,
                        ew_evauth *auth)
{
    ew_config *cfg;
    ew_error err = {0};
    assert_int_equal(ew_config_new(&cfg, &err), 0);
    static const char *const type[] = {"kafka", "rabbitmq", "redis"};
    const char *url = broker_url(b);
    if (ew_config_set(cfg, "EVENT_BUS_TYPE", type[b], &err) ||
        ew_config_set(cfg, "SERVICE_NAME", service, &err) ||
        ew_config_set(cfg, "EVENT_CONTENT_MODE", mode, &err))
        fail_msg("%s", err.msg);
    int rc = 0;
    switch (b) {
    case B_KAFKA:
        rc = ew_config_set(cfg, "KAFKA_BOOTSTRAP_SERVERS", url, &err) ||
             ew_config_set(cfg, "KAFKA_TOPIC_PREFIX", ns, &err) ||
             ew_config_set(cfg, "KAFKA_CONSUMER_GROUP", ns, &err);
        break;
    case B_RABBITMQ:
        rc = ew_config_set(cfg, "RABBITMQ_URL", url, &err) ||
             ew_config_set(cfg, "RABBITMQ_EXCHANGE", ns, &err);
        break;
    case B_REDIS:
        rc = ew_config_set(cfg, "REDIS_EVENT_URL", url, &err) ||
             ew_config_set(cfg, "REDIS_CHANNEL_PREFIX", ns, &err);
        break;
    }
    /* the JavaScript SDK's side has no keys: personal fields in clear (docs/encryption.md) */
    if (!rc) rc = ew_config_set(cfg, "EVENT_ENCRYPTION", "off", &err);
    if (rc) fail_msg("%s", err.msg);
    ew_bus *bus = NULL;
    if (ew_bus_open(&bus, &(ew_bus_options){.config = cfg, .auth = auth}, &err))
        fail_msg("ew_bus_open: %s", err.msg);
    ew_config_free(cfg);
    return bus;
}

static void new_ns(char *out, size_t n, const char *tag)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    snprintf(out, n, "js%s%.8s", tag, id + 24);
}

/* ---- SDK -> eventwire --------------------------------------------------------------------- */

typedef struct got {
    pthread_mutex_t mu;
    char id[UID_LEN + 1];
    ew_event *ev;
} got;

static ew_handler_result keep(const ew_event *ev, ew_handler_ctx *ctx, void *ud)
{
    got *g = ud;
    pthread_mutex_lock(&g->mu);
    if (!g->ev && strcmp(ew_event_id(ev), g->id) == 0) g->ev = ew_event_ref(ev);
    pthread_mutex_unlock(&g->mu);
    return EW_HANDLER_OK;
}

/* Waits for the event; a dead letter on the way fails at once with its reason. */
static ew_event *wait_for(ew_bus *bus, got *g)
{
    int64_t end = ew_mono_ns() + (int64_t)TB_WAIT_MS * 1000000;
    for (;;) {
        pthread_mutex_lock(&g->mu);
        ew_event *ev = g->ev;
        pthread_mutex_unlock(&g->mu);
        if (ev) return ev;
        ew_memdlq *q = ew_bus_dead_letters(bus);
        if (q && ew_memdlq_count(q) > 0) {
            ew_memdlq_entry e;
            assert_int_equal(ew_memdlq_get(q, 0, &e), 0);
            char why[512];
            snprintf(why, sizeof why, "%s", e.error);
            ew_memdlq_entry_release(&e);
            fail_msg("the SDK's event was dead-lettered: %s", why);
        }
        if (ew_mono_ns() > end) fail_msg("the SDK's event %s was not handled", g->id);
        usleep(5000);
    }
}

/* The SDK publishes one user.registered event (no eventversion; with tenantid and a dataschema
 * naming version 2, or plain) in mode; an eventwire subscriber handles it with everything kept. */
static void sdk_to_eventwire(broker b, const char *mode, bool plain)
{
    char ns[48], subject[UID_LEN + 1], args[1024], cmd[4096];
    new_ns(ns, sizeof ns, plain ? "p" : "s");
    interop_auth ia;
    ew_bus *bus =
        open_bus(b, ns, "structured", "user-service", interop_auth_open(&ia, "user-service"));
    got g = {.mu = PTHREAD_MUTEX_INITIALIZER};
    ew_uuid7(g.id);
    ew_uuid7(subject);
    tb_subscribe(bus, "user.registered", keep, &g, &(ew_subscribe_opts){.group = "user-service"});
    tb_start(bus);
    const char *url = broker_url(b), *p = plain ? "plain" : "";
    switch (b) {
    case B_KAFKA:
        snprintf(args, sizeof args, "kafka-produce '%s' '%s.user.registered' %s %s %s %s", url, ns,
                 mode, g.id, subject, p);
        break;
    case B_RABBITMQ:
        snprintf(args, sizeof args, "amqp-publish '%s' '%s' %s %s %s %s", url, ns, mode, g.id,
                 subject, p);
        break;
    case B_REDIS:
        snprintf(args, sizeof args, "redis-publish '%s' '%s:user.registered' %s %s %s", url, ns,
                 g.id, subject, p);
        break;
    }
    interop_node_cmd(cmd, sizeof cmd, args);
    free(interop_output(cmd));
    ew_event *ev = wait_for(bus, &g);
    tb_close(bus);
    interop_auth_close(&ia);
    assert_string_equal(ew_event_type(ev), "user.registered");
    assert_string_equal(ew_event_source(ev), "/js/service");
    assert_string_equal(ew_event_subject(ev), subject);
    assert_int_equal(ew_event_version(ev), 2);
    const ew_user_registered *d = ew_user_registered_data(ev);
    assert_non_null(d);
    assert_string_equal(d->user_id, subject);
    assert_string_equal(d->email, "js@example.com");
    assert_int_equal(d->roles.count, 2);
    assert_string_equal(d->roles.items[1], "admin");
    if (plain) {
        assert_null(ew_event_dataschema(ev));
    } else {
        assert_string_equal(ew_event_dataschema(ev), SCHEMA);
        const ew_event_ext *x = ew_event_extension(ev, "tenantid");
        assert_non_null(x);
        assert_string_equal(x->value, "acme");
    }
    ew_event_unref(ev);
}

/* ---- eventwire -> SDK --------------------------------------------------------------------- */

static ew_event *our_event(void)
{
    static const ew_event_ext x[] = {{"tenantid", EW_EXT_STRING, "acme"}};
    char subject[UID_LEN + 1];
    ew_uuid7(subject);
    const char *roles[] = {"user", "admin"};
    ew_user_registered d = {
        .user_id = subject, .email = "c@example.com", .username = "c", .roles = {roles, 2}};
    ew_event *ev;
    ew_error err = {0};
    ew_event_attrs a = {.source = "auth-service",
                        .subject = subject,
                        .dataschema = SCHEMA,
                        .extensions = x,
                        .nextensions = 1};
    if (ew_user_registered_new(&ev, &d, &a, &err)) fail_msg("%s", err.msg);
    return ev;
}

/* The SDK's reading of what was published: one JSON line {"mode":..., "event":{...}}. */
static void check_sdk_read(char *out, const ew_event *ev, const char *want_mode)
{
    char *nl = strchr(out, '\n');
    if (nl) *nl = '\0';
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *root;
    ew_error err = {0};
    if (ew_json_parse(&root, out, strlen(out), NULL, &a, &err))
        fail_msg("js_interop.js printed '%s': %s", out, err.msg);
    assert_string_equal(ew_json_get(root, "mode")->str, want_mode);
    const ew_json *e = ew_json_get(root, "event");
    assert_string_equal(ew_json_get(e, "id")->str, ew_event_id(ev));
    assert_string_equal(ew_json_get(e, "specversion")->str, "1.0");
    assert_string_equal(ew_json_get(e, "type")->str, "user.registered");
    assert_string_equal(ew_json_get(e, "source")->str, "auth-service");
    assert_string_equal(ew_json_get(e, "subject")->str, ew_event_subject(ev));
    assert_string_equal(ew_json_get(e, "dataschema")->str, SCHEMA);
    assert_string_equal(ew_json_get(e, "tenantid")->str, "acme");
    assert_string_equal(ew_json_get(e, "correlationid")->str, ew_event_id(ev));
    const ew_json *d = ew_json_get(e, "data");
    assert_non_null(d);
    assert_string_equal(ew_json_get(d, "user_id")->str, ew_event_subject(ev));
    assert_string_equal(ew_json_get(d, "email")->str, "c@example.com");
    assert_string_equal(ew_json_get(d, "roles")->child->next->str, "admin");
    ew_arena_release(&a);
}

/* eventwire publishes in mode; the SDK reads the event, extension and dataschema as published. */
static void eventwire_to_sdk(broker b, const char *mode)
{
    char ns[48], args[1024], cmd[4096];
    new_ns(ns, sizeof ns, "e");
    ew_bus *bus = open_bus(b, ns, mode, "auth-service", NULL);
    ew_event *ev = our_event();
    ew_error err = {0};
    const char *url = broker_url(b);
    char *out;
    if (b == B_RABBITMQ) {
        /* RabbitMQ keeps nothing for queues bound later: the SDK's queue first */
        snprintf(args, sizeof args, "amqp-consume '%s' '%s' 1", url, ns);
        interop_node_cmd(cmd, sizeof cmd, args);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        char line[8192];
        if (!fgets(line, sizeof line, p)) /* exit status 77: the npm packages are missing */
            fail_msg("the SDK's consumer ended before it was ready: exit status %d",
                     interop_status(pclose(p)));
        assert_string_equal(line, "ready\n");
        assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
        if (!fgets(line, sizeof line, p)) line[0] = '\0';
        assert_int_equal(interop_status(pclose(p)), 0);
        out = strdup(line);
    } else {
        assert_int_equal(ew_bus_publish(bus, ev, &err), 0);
        if (b == B_KAFKA)
            snprintf(args, sizeof args, "kafka-consume '%s' '%s.user.registered' 1", url, ns);
        else
            snprintf(args, sizeof args, "redis-consume '%s' '%s:user.registered' 1", url, ns);
        interop_node_cmd(cmd, sizeof cmd, args);
        out = interop_output(cmd);
    }
    tb_close(bus);
    /* Redis has no binding of its own: structured whatever the setting */
    check_sdk_read(out, ev, b == B_REDIS ? "structured" : mode);
    free(out);
    ew_event_unref(ev);
}

/* ---- the cases ---------------------------------------------------------------------------- */

static void kafka_sdk_binary_to_eventwire(void **state)
{
    sdk_to_eventwire(B_KAFKA, "binary", false);
}
static void kafka_sdk_structured_to_eventwire(void **state)
{
    sdk_to_eventwire(B_KAFKA, "structured", false);
}
static void kafka_sdk_plain_binary_to_eventwire(void **state)
{
    sdk_to_eventwire(B_KAFKA, "binary", true);
}
static void kafka_sdk_plain_structured_to_eventwire(void **state)
{
    sdk_to_eventwire(B_KAFKA, "structured", true);
}
static void kafka_eventwire_structured_to_sdk(void **state)
{
    eventwire_to_sdk(B_KAFKA, "structured");
}
static void kafka_eventwire_binary_to_sdk(void **state)
{
    waits_for_adapters("publishing Kafka binary mode (EVENT_CONTENT_MODE=binary)");
    eventwire_to_sdk(B_KAFKA, "binary");
}
static void rabbitmq_sdk_structured_to_eventwire(void **state)
{
    sdk_to_eventwire(B_RABBITMQ, "structured", false);
}
static void rabbitmq_sdk_plain_structured_to_eventwire(void **state)
{
    sdk_to_eventwire(B_RABBITMQ, "structured", true);
}
static void rabbitmq_sdk_binary_to_eventwire(void **state)
{
    waits_for_adapters("reading AMQP binary mode (application properties to the binding)");
    sdk_to_eventwire(B_RABBITMQ, "binary", false);
}
static void rabbitmq_sdk_plain_binary_to_eventwire(void **state)
{
    waits_for_adapters("reading AMQP binary mode (application properties to the binding)");
    sdk_to_eventwire(B_RABBITMQ, "binary", true);
}
static void rabbitmq_eventwire_structured_to_sdk(void **state)
{
    eventwire_to_sdk(B_RABBITMQ, "structured");
}
static void rabbitmq_eventwire_binary_to_sdk(void **state)
{
    waits_for_adapters("publishing AMQP binary mode (EVENT_CONTENT_MODE=binary)");
    eventwire_to_sdk(B_RABBITMQ, "binary");
}
static void redis_sdk_to_eventwire(void **state)
{
    sdk_to_eventwire(B_REDIS, "structured", false);
}
static void redis_sdk_plain_to_eventwire(void **state)
{
    sdk_to_eventwire(B_REDIS, "structured", true);
}
static void redis_eventwire_to_sdk(void **state)
{
    eventwire_to_sdk(B_REDIS, "structured");
}
static void redis_eventwire_binary_setting_stays_structured(void **state)
{
    eventwire_to_sdk(B_REDIS, "binary");
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(kafka_sdk_binary_to_eventwire),
    cmocka_unit_test(kafka_sdk_structured_to_eventwire),
    cmocka_unit_test(kafka_sdk_plain_binary_to_eventwire),
    cmocka_unit_test(kafka_sdk_plain_structured_to_eventwire),
    cmocka_unit_test(kafka_eventwire_structured_to_sdk),
    cmocka_unit_test(kafka_eventwire_binary_to_sdk),
    cmocka_unit_test(rabbitmq_sdk_structured_to_eventwire),
    cmocka_unit_test(rabbitmq_sdk_plain_structured_to_eventwire),
    cmocka_unit_test(rabbitmq_sdk_binary_to_eventwire),
    cmocka_unit_test(rabbitmq_sdk_plain_binary_to_eventwire),
    cmocka_unit_test(rabbitmq_eventwire_structured_to_sdk),
    cmocka_unit_test(rabbitmq_eventwire_binary_to_sdk),
    cmocka_unit_test(redis_sdk_to_eventwire),
    cmocka_unit_test(redis_sdk_plain_to_eventwire),
    cmocka_unit_test(redis_eventwire_to_sdk),
    cmocka_unit_test(redis_eventwire_binary_setting_stays_structured),
};

EW_TEST_MAIN(tests)
