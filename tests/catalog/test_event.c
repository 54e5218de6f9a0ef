/* Tests of the event object and its CloudEvents codec: building, round trips for every catalog
 * type, upcasting, and every class of malformed input. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "support/ew_test.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/event.h"
#include "eventwire/id.h"
#include "support/sample_data.h"

static const char *const sample_roles[] = {"user", "admin"};

/* Fills every field of a type's data struct with a valid value of its kind: strings with
 * escapes and non-ASCII, an integer past 2^53, a nested object. */
static void fill_sample(const ew_type_info *t, void *data, char uuid[EW_UUID_LEN + 1])
{
    ew_uuid7(uuid);
    ew_sample_fill(t, data,
                   &(ew_sample_values){
                       .uuid = uuid,
                       .text = "some text \"quoted\" \xc3\xa9\n",
                       .email = "ann.lee+tag@example.com",
                       .url = "http://127.0.0.1:8085/exports/1/download",
                       .object = "{ \"a\": [1, 2.5, {\"b\": null}], \"c\": \"\\u00e9\" }",
                       .integer = -9007199254740993LL,
                       .roles = sample_roles,
                       .nroles = 2,
                   });
}

static ew_event *sample_event(const ew_type_info *t)
{
    char data[1024], uuid[EW_UUID_LEN + 1];
    assert_true(t->struct_size <= sizeof data);
    fill_sample(t, data, uuid);
    ew_event *ev = NULL;
    ew_error err = {0};
    static const ew_event_ext exts[] = {{"tenantid", EW_EXT_STRING, "acme \"q\" \xc3\xa9"},
                                        {"priority", EW_EXT_NUMBER, "-5"},
                                        {"sampled", EW_EXT_BOOL, "true"}};
    ew_event_attrs a = {.source = "test-service",
                        .subject = uuid,
                        .traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        .extensions = exts,
                        .nextensions = 3};
    int rc = ew_event_new(&ev, t->id, data, &a, &err);
    if (rc) fail_msg("%s v%d: %s", t->type, t->version, err.msg);
    return ev;
}

static int decode_str(const char *json, ew_event **ev, ew_error *err)
{
    return ew_event_decode(ev, json, strlen(json), NULL, err);
}

static void test_roundtrip_every_catalog_type(void **state)
{
    for (size_t i = 0; i < ew_catalog_count(); i++) {
        const ew_type_info *t = ew_catalog_at(i);
        ew_event *ev = sample_event(t), *back = NULL;
        char *json;
        size_t len;
        ew_error err = {0};
        assert_int_equal(ew_event_encode(ev, &json, &len, &err), 0);
        assert_int_equal(strlen(json), len);
        int rc = ew_event_decode(&back, json, len, NULL, &err);
        if (rc) fail_msg("%s v%d: %s\n%s", t->type, t->version, err.msg, json);
        if (t->latest) {
            if (!ew_event_equal(ev, back))
                fail_msg("%s: decode(encode(e)) != e\n%s", t->type, json);
            /* encode is deterministic: the same event gives the same text */
            char *again;
            assert_int_equal(ew_event_encode(back, &again, NULL, &err), 0);
            assert_string_equal(json, again);
            free(again);
        } else {
            /* an old version decodes as the latest version of its type */
            assert_true(ew_event_info(back)->latest);
            assert_string_equal(ew_event_type(back), t->type);
            assert_true(ew_event_version(back) > t->version);
            assert_string_equal(ew_event_id(back), ew_event_id(ev));
            assert_int_equal(ew_event_extension_count(back), 3);
            assert_string_equal(ew_event_extension(back, "tenantid")->value, "acme \"q\" \xc3\xa9");
        }
        free(json);
        ew_event_unref(back);
        ew_event_unref(ev);
    }
}

static void test_encode_is_cloudevents_json(void **state)
{
    const char *roles[] = {"user"};
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_user_registered d = {
        .user_id = id, .email = "a@example.com", .username = "ann", .roles = {roles, 1}};
    ew_event *ev;
    assert_int_equal(ew_user_registered_new(&ev, &d,
                                            &(ew_event_attrs){.source = "auth-service",
                                                              .subject = id,
                                                              .time_us = 1795746285123456LL},
                                            NULL),
                     0);
    char *json;
    assert_int_equal(ew_event_encode(ev, &json, NULL, NULL), 0);
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *root;
    assert_int_equal(ew_json_parse(&root, json, strlen(json), NULL, &a, NULL), 0);
    assert_string_equal(ew_json_get(root, "specversion")->str, "1.0");
    assert_string_equal(ew_json_get(root, "type")->str, "user.registered");
    assert_string_equal(ew_json_get(root, "source")->str, "auth-service");
    assert_string_equal(ew_json_get(root, "subject")->str, id);
    assert_string_equal(ew_json_get(root, "id")->str, ew_event_id(ev));
    assert_string_equal(ew_json_get(root, "time")->str, "2026-11-27T02:24:45.123456Z");
    assert_string_equal(ew_json_get(root, "datacontenttype")->str, "application/json");
    assert_string_equal(ew_json_get(root, "dataschema")->str,
                        "urn:eventwire:schema:user.registered:2");
    assert_int_equal(ew_json_get(root, "eventversion")->i64, 2);
    /* a new conversation: the correlation id is the event's own id */
    assert_string_equal(ew_json_get(root, "correlationid")->str, ew_event_id(ev));
    assert_null(ew_json_get(root, "causationid"));
    const ew_json *data = ew_json_get(root, "data");
    assert_string_equal(ew_json_get(data, "email")->str, "a@example.com");
    assert_string_equal(ew_json_get(data, "roles")->child->str, "user");
    ew_arena_release(&a);
    free(json);
    ew_event_unref(ev);
}

static void test_ids_are_uuid7_and_ordered(void **state)
{
    char prev[EW_UUID_LEN + 1] = "", id[EW_UUID_LEN + 1];
    for (int i = 0; i < 10000; i++) {
        ew_uuid7(id);
        assert_true(ew_uuid_valid(id));
        assert_int_equal(id[14], '7');               /* version */
        assert_true(strchr("89ab", id[19]) != NULL); /* variant */
        assert_true(strcmp(prev, id) < 0);           /* time-ordered, unique */
        memcpy(prev, id, sizeof id);
    }
    assert_false(ew_uuid_valid("not-a-uuid"));
    assert_false(ew_uuid_valid("0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6"));
    assert_true(ew_uuid_valid("0192D3C4-5E6F-7A8B-9C0D-1E2F3A4B5C6D"));
}

/* A forked child must not repeat its parent's ids (their random state is copied by fork). */
static void test_forked_processes_make_different_ids(void **state)
{
    char parent_id[EW_UUID_LEN + 1];
    ew_uuid7(parent_id); /* the parent's random state exists before the fork */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char id[EW_UUID_LEN + 1];
        ew_uuid7(id);
        ssize_t w = write(fds[1], id, EW_UUID_LEN);
        _exit(w == EW_UUID_LEN ? 0 : 1);
    }
    char mine[EW_UUID_LEN + 1], theirs[EW_UUID_LEN + 1] = {0};
    ew_uuid7(mine);
    assert_int_equal(read(fds[0], theirs, EW_UUID_LEN), EW_UUID_LEN);
    int status;
    waitpid(pid, &status, 0);
    close(fds[0]);
    close(fds[1]);
    /* the random tails differ (the times may be the same millisecond) */
    assert_string_not_equal(mine + 19, theirs + 19);
}

static void test_time_format_and_parse(void **state)
{
    char buf[EW_TIME_LEN + 1];
    int64_t t;
    assert_int_equal(ew_time_format(0, buf), 0);
    assert_string_equal(buf, "1970-01-01T00:00:00.000000Z");
    assert_int_equal(ew_time_format(951782400000001LL, buf), 0); /* a leap day */
    assert_string_equal(buf, "2000-02-29T00:00:00.000001Z");
    assert_int_equal(ew_time_format(-1, buf), 0);
    assert_string_equal(buf, "1969-12-31T23:59:59.999999Z");
    assert_int_equal(ew_time_parse("2000-02-29T00:00:00.000001Z", &t), 0);
    assert_int_equal(t, 951782400000001LL);
    assert_int_equal(ew_time_parse("2000-02-29T01:30:00+01:30", &t), 0);
    assert_int_equal(t, 951782400000000LL);
    assert_int_equal(ew_time_parse("2000-02-28t19:00:00.5-05:00", &t), 0);
    assert_int_equal(t, 951782400500000LL);
    const char *bad[] = {"",
                         "2026-11-27",
                         "2026-11-27T10:00:00",
                         "2026-13-01T00:00:00Z",
                         "2026-02-29T00:00:00Z",
                         "2026-11-27T24:00:00Z",
                         "2026-11-27T10:00:00.Z",
                         "2026-11-27T10:00:00Zjunk",
                         "2026-11-27 10:00:00Z",
                         "2026-11-27T10:00:00+0100"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ew_time_parse(bad[i], &t), EW_ETIME);
    for (int64_t x = -86400000000LL; x < 4102444800000000LL; x += 123456789012345LL) {
        assert_int_equal(ew_time_format(x, buf), 0);
        assert_int_equal(ew_time_parse(buf, &t), 0);
        assert_int_equal(t, x);
    }
}

static const char *V1_REGISTERED =
    "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"legacy-auth\",\"type\":\"user."
    "registered\","
    "\"time\":\"2025-01-02T03:04:05Z\",\"eventversion\":1,\"data\":{\"user_id\":"
    "\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"email\":\"old@example.com\",\"username\":\"old\"}}";

static void test_v2_consumer_reads_v1_event(void **state)
{
    ew_event *ev;
    ew_error err = {0};
    if (decode_str(V1_REGISTERED, &ev, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ew_event_version(ev), 2);
    const ew_user_registered *d = ew_user_registered_data(ev);
    assert_non_null(d);
    assert_string_equal(d->email, "old@example.com");
    assert_int_equal(d->roles.count, 1);
    assert_string_equal(d->roles.items[0], "user");
    assert_null(ew_user_registered_v1_data(ev));
    ew_event_unref(ev);
    /* a v1 event that is not valid v1 is refused as such, not silently upcast */
    const char *bad_v1 =
        "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"s\",\"type\":\"user.registered\","
        "\"eventversion\":\"1\",\"data\":{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
        "\"email\":\"a@example.com\",\"username\":\"x\",\"roles\":[\"user\"]}}";
    assert_int_equal(decode_str(bad_v1, &ev, &err), EW_EDATA);
    assert_non_null(strstr(err.msg, "roles"));
}

/* The other upcasts: user.role_changed v1 reads as v2 without a roles_version (0: applied as the
 * newest when it arrives); user.tokens_revoked v1's not_before (seconds) reads as v2's
 * not_before_ms, the same instant. */
static void test_v1_role_change_and_revocation_read_as_v2(void **state)
{
    const char *role =
        "{\"specversion\":\"1.0\",\"id\":\"r1\",\"source\":\"s\",\"type\":\"user.role_changed\","
        "\"eventversion\":1,\"data\":{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
        "\"roles\":[\"user\",\"admin\"]}}";
    const char *revoked =
        "{\"specversion\":\"1.0\",\"id\":\"t1\",\"source\":\"s\",\"type\":\"user.tokens_revoked\","
        "\"eventversion\":1,\"data\":{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
        "\"not_before\":1765000000,\"reason\":\"logout\"}}";
    ew_event *ev;
    ew_error err = {0};
    if (decode_str(role, &ev, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ew_event_version(ev), 2);
    assert_int_equal(ew_user_role_changed_data(ev)->roles.count, 2);
    assert_int_equal(ew_user_role_changed_data(ev)->roles_version, 0);
    ew_event_unref(ev);
    if (decode_str(revoked, &ev, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ew_event_version(ev), 2);
    assert_int_equal(ew_user_tokens_revoked_data(ev)->not_before_ms, 1765000000000LL);
    assert_string_equal(ew_user_tokens_revoked_data(ev)->reason, "logout");
    ew_event_unref(ev);
    /* v2 has no not_before: a v2 event with it is refused, not read as seconds */
    const char *mixed =
        "{\"specversion\":\"1.0\",\"id\":\"t2\",\"source\":\"s\",\"type\":\"user.tokens_revoked\","
        "\"eventversion\":2,\"data\":{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
        "\"not_before\":1765000000,\"reason\":\"logout\"}}";
    assert_int_equal(decode_str(mixed, &ev, &err), EW_EDATA);
}

static void test_foreign_event_without_optional_attributes(void **state)
{
    /* what another CloudEvents producer might send: no time, no version, string version,
     * extension attributes we do not know (kept), optional fields null */
    const char *json =
        "{\"specversion\":\"1.0\",\"id\":\"abc\",\"source\":\"/python/svc\",\"type\":"
        "\"user.logged_in\",\"partitionkey\":\"k1\",\"datacontenttype\":\"application/json; "
        "charset=utf-8\",\"data\":{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\","
        "\"session_id\":\"s1\",\"ip_address\":null}}";
    ew_event *ev;
    ew_error err = {0};
    int64_t before = ew_now_us();
    if (decode_str(json, &ev, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_time_us(ev) >= before);
    assert_string_equal(ew_event_correlation_id(ev), "abc");
    assert_null(ew_user_logged_in_data(ev)->ip_address);
    assert_string_equal(ew_event_extension(ev, "partitionkey")->value, "k1");
    ew_event_unref(ev);
}

struct bad_case {
    int code;
    const char *needle; /* a piece of the message */
    const char *json;
};

#define UID "\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\""
#define HEAD "{\"specversion\":\"1.0\",\"id\":\"x1\",\"source\":\"s\","
#define DATA_OK "\"data\":{\"user_id\":" UID ",\"session_id\":\"s1\"}"
#define LOGIN(attrs) HEAD "\"type\":\"user.logged_in\"," attrs DATA_OK "}"

static const struct bad_case bad_cases[] = {
    {EW_EJSON, "empty", ""},
    {EW_EJSON, "column", "{\"specversion\":"},
    {EW_EJSON, "", "not json at all"},
    {EW_EJSON, "", "{\"a\":1} trailing"},
    {EW_ENOTOBJ, "not an array", "[1,2,3]"},
    {EW_ENOTOBJ, "not a string", "\"event\""},
    {EW_EMISSING, "'id'",
     "{\"specversion\":\"1.0\",\"source\":\"s\",\"type\":\"user.logged_in\"," DATA_OK "}"},
    {EW_EMISSING, "'source'",
     "{\"specversion\":\"1.0\",\"id\":\"x\",\"type\":\"user.logged_in\"," DATA_OK "}"},
    {EW_EMISSING, "'type'", HEAD DATA_OK "}"},
    {EW_EMISSING, "'specversion'",
     "{\"id\":\"x\",\"source\":\"s\",\"type\":\"user.logged_in\"," DATA_OK "}"},
    {EW_EMISSING, "'data'", HEAD "\"type\":\"user.logged_in\"}"},
    {EW_ETYPE, "'id' must be a string",
     "{\"specversion\":\"1.0\",\"id\":7,\"source\":\"s\","
     "\"type\":\"user.logged_in\"," DATA_OK "}"},
    {EW_ETYPE, "'subject'", LOGIN("\"subject\":true,")},
    {EW_ETYPE, "eventversion", LOGIN("\"eventversion\":1.5,")},
    {EW_ETYPE, "eventversion", LOGIN("\"eventversion\":\"one\",")},
    {EW_ETYPE, "traceparent", LOGIN("\"traceparent\":\"00-xyz\",")},
    {EW_ETYPE, "extension", LOGIN("\"myext\":{\"a\":1},")},
    {EW_ETYPE, "CloudEvents name", LOGIN("\"Bad-Name\":\"x\",")},
    {EW_ETYPE, "CloudEvents name", LOGIN("\"tenant_id\":\"x\",")},
    {EW_ETYPE, "extension", LOGIN("\"tenantid\":null,")},
    {EW_ETYPE, "extension", LOGIN("\"tenantid\":[\"a\"],")},
    {EW_ESPECVERSION, "0.3",
     "{\"specversion\":\"0.3\",\"id\":\"x\",\"source\":\"s\","
     "\"type\":\"user.logged_in\"," DATA_OK "}"},
    {EW_EUNKNOWNTYPE, "user.exploded", HEAD "\"type\":\"user.exploded\"," DATA_OK "}"},
    {EW_EVERSION, "version 9", LOGIN("\"eventversion\":9,")},
    {EW_EVERSION, "version 2", LOGIN("\"eventversion\":\"2\",")},
    {EW_EDATA, "data must be an object", HEAD "\"type\":\"user.logged_in\",\"data\":[1]}"},
    {EW_EDATA, "data.session_id is required",
     HEAD "\"type\":\"user.logged_in\",\"data\":{\"user_id\":" UID "}}"},
    {EW_EDATA, "no field 'password'",
     HEAD "\"type\":\"user.logged_in\",\"data\":{\"user_id\":" UID
          ",\"session_id\":\"s\",\"password\":\"x\"}}"},
    {EW_EDATA, "data.user_id must be a string",
     HEAD "\"type\":\"user.logged_in\",\"data\":{\"user_id\":5,\"session_id\":\"s\"}}"},
    {EW_EDATA, "is not a UUID",
     HEAD "\"type\":\"user.logged_in\",\"data\":{\"user_id\":\"u-1\",\"session_id\":\"s\"}}"},
    {EW_EDATA, "not an email",
     HEAD "\"type\":\"notification.email_sent\",\"data\":{\"email\":"
          "\"nobody\",\"template_name\":\"t\",\"message_id\":\"m\"}}"},
    {EW_EDATA, "must be an integer",
     HEAD "\"type\":\"user.data_deleted\",\"data\":{\"request_id\":" UID ",\"user_id\":" UID
          ",\"service\":\"x\",\"records\":1.5}}"},
    {EW_EDATA, "data.roles[1] must be a string",
     HEAD "\"type\":\"user.registered\",\"eventversion\":2,\"data\":{\"user_id\":" UID
          ",\"email\":\"a@b.co\",\"username\":\"u\",\"roles\":[\"a\",3]}}"},
    {EW_EDATA, "at least one",
     HEAD "\"type\":\"user.registered\",\"eventversion\":2,\"data\":{"
          "\"user_id\":" UID ",\"email\":\"a@b.co\",\"username\":\"u\","
          "\"roles\":[]}}"},
    {EW_EDATA, "data_base64", LOGIN("\"data_base64\":\"AAAA\",")},
    {EW_EDATA, "datacontenttype", LOGIN("\"datacontenttype\":\"text/xml\",")},
    {EW_EUTF8, "UTF-8", HEAD "\"type\":\"user.logged_in\",\"subject\":\"\xc3\x28\"," DATA_OK "}"},
    {EW_EUTF8, "UTF-8",
     HEAD "\"type\":\"user.logged_in\",\"subject\":\"\xed\xa0\x80\"," DATA_OK "}"},
    {EW_EDUPKEY, "id",
     "{\"specversion\":\"1.0\",\"id\":\"a\",\"id\":\"b\",\"source\":\"s\","
     "\"type\":\"user.logged_in\"," DATA_OK "}"},
    {EW_EDUPKEY, "user_id",
     HEAD "\"type\":\"user.logged_in\",\"data\":{\"user_id\":" UID ",\"user_id\":" UID
          ",\"session_id\":\"s\"}}"},
    {EW_ETIME, "'time'", LOGIN("\"time\":\"yesterday\",")},
    {EW_ETIME, "'time'", LOGIN("\"time\":\"2026-02-30T00:00:00Z\",")},
    {EW_EEMPTY, "'id'",
     "{\"specversion\":\"1.0\",\"id\":\"\",\"source\":\"s\","
     "\"type\":\"user.logged_in\"," DATA_OK "}"},
    {EW_EEMPTY, "'source'",
     "{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"\","
     "\"type\":\"user.logged_in\"," DATA_OK "}"},
};

static void test_malformed_inputs_each_get_their_error(void **state)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const struct bad_case *c = &bad_cases[i];
        ew_event *ev = NULL;
        ew_error err = {0};
        int rc = decode_str(c->json, &ev, &err);
        if (rc != c->code)
            fail_msg("case %zu: got %s (%s), want %s\n%s", i, ew_err_name(rc), err.msg,
                     ew_err_name(c->code), c->json);
        assert_null(ev);
        assert_int_equal(err.code, c->code);
        if (!strstr(err.msg, c->needle))
            fail_msg("case %zu: message '%s' lacks '%s'", i, err.msg, c->needle);
    }
}

static void test_oversized_event_refused_before_parsing(void **state)
{
    size_t n = 2u << 20;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, ' ', n);
    big[n] = '\0';
    ew_event *ev = NULL;
    ew_error err = {0};
    assert_int_equal(ew_event_decode(&ev, big, n, NULL, &err), EW_ETOOBIG);
    assert_non_null(strstr(err.msg, "1048576"));
    /* a configurable limit */
    const char *small = LOGIN("");
    ew_decode_opts opts = {.max_bytes = 64};
    assert_int_equal(ew_event_decode(&ev, small, strlen(small), &opts, &err), EW_ETOOBIG);
    free(big);
}

static void test_deep_nesting_refused(void **state)
{
    /* nesting inside an object field, far past the limit, and far past any stack */
    size_t depth = 100000;
    const char *pre =
        HEAD "\"type\":\"user.profile_updated\",\"data\":{\"user_id\":" UID ",\"changes\":{\"x\":";
    size_t plen = strlen(pre);
    char *s = malloc(plen + 2 * depth + 8);
    assert_non_null(s);
    memcpy(s, pre, plen);
    for (size_t i = 0; i < depth; i++) {
        s[plen + i] = '[';
        s[plen + depth + i] = ']';
    }
    memcpy(s + plen + 2 * depth, "}}}", 4);
    ew_event *ev = NULL;
    ew_error err = {0};
    assert_int_equal(ew_event_decode(&ev, s, strlen(s), NULL, &err), EW_EDEPTH);
    free(s);
    /* and within the limit it is accepted */
    const char *ok = HEAD "\"type\":\"user.profile_updated\",\"data\":{\"user_id\":" UID
                          ",\"changes\":{\"x\":[[[[1]]]]}}}";
    assert_int_equal(decode_str(ok, &ev, &err), 0);
    assert_string_equal(ew_user_profile_updated_data(ev)->changes, "{\"x\":[[[[1]]]]}");
    ew_event_unref(ev);
}

static void test_new_validates_data(void **state)
{
    ew_event *ev = NULL;
    ew_error err = {0};
    ew_event_attrs a = {.source = "auth-service"};
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = id, .email = "a@example.com", .username = "ann", .roles = {roles, 1}};

    ew_user_registered bad = d;
    bad.email = "not-an-email";
    assert_int_equal(ew_user_registered_new(&ev, &bad, &a, &err), EW_EDATA);
    assert_non_null(strstr(err.msg, "data.email"));
    bad = d;
    bad.user_id = NULL;
    assert_int_equal(ew_user_registered_new(&ev, &bad, &a, &err), EW_EDATA);
    assert_non_null(strstr(err.msg, "data.user_id is required"));
    bad = d;
    bad.username = "";
    assert_int_equal(ew_user_registered_new(&ev, &bad, &a, &err), EW_EDATA);
    bad = d;
    bad.roles.count = 0;
    assert_int_equal(ew_user_registered_new(&ev, &bad, &a, &err), EW_EDATA);
    bad = d;
    bad.username = "\xff\xfe";
    assert_int_equal(ew_user_registered_new(&ev, &bad, &a, &err), EW_EUTF8);
    assert_int_equal(ew_user_registered_new(&ev, &d, &(ew_event_attrs){0}, &err), EW_EEMPTY);
    assert_int_equal(ew_user_registered_new(&ev, &d, NULL, &err), EW_EEMPTY);
    assert_int_equal(
        ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "s", .traceparent = "x"}, &err),
        EW_EINVAL);
    ew_user_preferences_updated p = {.user_id = id, .preferences = "{\"theme\": "};
    assert_int_equal(ew_user_preferences_updated_new(&ev, &p, &a, &err), EW_EDATA);
    assert_non_null(strstr(err.msg, "not a JSON object"));
    p.preferences = "[1]";
    assert_int_equal(ew_user_preferences_updated_new(&ev, &p, &a, &err), EW_EDATA);
    assert_null(ev);
    assert_int_equal(ew_event_new(&ev, (ew_type_id)9999, &d, &a, &err), EW_EUNKNOWNTYPE);

    /* objects are kept as compact JSON */
    p.preferences = "{ \"theme\" : \"dark\",\n \"emails\": [ true ] }";
    assert_int_equal(ew_user_preferences_updated_new(&ev, &p, &a, &err), 0);
    assert_string_equal(ew_user_preferences_updated_data(ev)->preferences,
                        "{\"theme\":\"dark\",\"emails\":[true]}");
    ew_event_unref(ev);
}

static void test_event_copies_and_refcounts(void **state)
{
    char id[EW_UUID_LEN + 1], name[16] = "ann";
    ew_uuid7(id);
    const char *roles[] = {"user"};
    ew_user_registered d = {
        .user_id = id, .email = "a@example.com", .username = name, .roles = {roles, 1}};
    ew_event *ev;
    assert_int_equal(ew_user_registered_new(&ev, &d, &(ew_event_attrs){.source = "s"}, NULL), 0);
    strcpy(name, "bob"); /* the event kept its own copy */
    assert_string_equal(ew_user_registered_data(ev)->username, "ann");
    assert_ptr_equal(ew_event_ref(ev), ev);
    ew_event_unref(ev);
    assert_string_equal(ew_event_source(ev), "s");
    assert_int_equal(ew_event_type_id(ev), EW_T_USER_REGISTERED);
    assert_null(ew_event_data_as(ev, EW_T_USER_LOGGED_IN));
    ew_event_unref(ev);
    ew_event_unref(NULL);
}

static void test_follow_up_attributes_round_trip(void **state)
{
    ew_event *ev, *back;
    ew_user_logged_out d = {.user_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d", .session_id = "s"};
    ew_event_attrs a = {.source = "auth",
                        .subject = "u",
                        .id = "fixed-id",
                        .correlation_id = "corr-1",
                        .causation_id = "cause-1",
                        .time_us = 1700000000000001LL};
    assert_int_equal(ew_user_logged_out_new(&ev, &d, &a, NULL), 0);
    char *json;
    assert_int_equal(ew_event_encode(ev, &json, NULL, NULL), 0);
    assert_int_equal(decode_str(json, &back, NULL), 0);
    assert_string_equal(ew_event_id(back), "fixed-id");
    assert_string_equal(ew_event_correlation_id(back), "corr-1");
    assert_string_equal(ew_event_causation_id(back), "cause-1");
    assert_int_equal(ew_event_time_us(back), 1700000000000001LL);
    assert_true(ew_event_equal(ev, back));
    free(json);
    ew_event_unref(back);
    ew_event_unref(ev);
}

static void test_event_from_json_data(void **state)
{
    ew_event *ev = NULL;
    ew_error err = {0};
    ew_event_attrs a = {.source = "ewctl", .subject = "s1"};
    const char *data =
        "{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"session_id\":\"x\"}";
    assert_int_equal(ew_event_from_json(&ev, "user.logged_out", data, strlen(data), &a, &err), 0);
    assert_string_equal(ew_user_logged_out_data(ev)->session_id, "x");
    assert_string_equal(ew_event_subject(ev), "s1");
    assert_int_equal(ew_event_version(ev), 1);
    ew_event_unref(ev);
    assert_int_equal(ew_event_from_json(&ev, "user.nope", "{}", 2, &a, &err), EW_EUNKNOWNTYPE);
    assert_int_equal(ew_event_from_json(&ev, "user.logged_out", "{", 1, &a, &err), EW_EJSON);
    assert_int_equal(ew_event_from_json(&ev, "user.logged_out", "[]", 2, &a, &err), EW_EDATA);
    assert_int_equal(ew_event_from_json(&ev, "user.logged_out", "{}", 2, &a, &err), EW_EDATA);
    assert_non_null(strstr(err.msg, "is required"));
    /* object fields become compact JSON, as when built from C */
    const char *p =
        "{\"user_id\":\"0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d\",\"preferences\": { \"a\" : 1 }}";
    assert_int_equal(ew_event_from_json(&ev, "user.preferences_updated", p, strlen(p), &a, &err),
                     0);
    assert_string_equal(ew_user_preferences_updated_data(ev)->preferences, "{\"a\":1}");
    ew_event_unref(ev);
}

/* ---- extension attributes, dataschema, version resolution ------------------------------ */

#define REG_DATA_V2                                                                                \
    "\"data\":{\"user_id\":" UID ",\"email\":\"a@example.com\",\"username\":\"ann\","              \
    "\"roles\":[\"user\",\"admin\"]}"
#define REG_DATA_V1                                                                                \
    "\"data\":{\"user_id\":" UID ",\"email\":\"a@example.com\",\"username\":\"ann\"}"
#define REG(attrs, data) HEAD "\"type\":\"user.registered\"," attrs data "}"

/* Extension attributes we do not know travel through decode and encode unchanged, with their
 * JSON types, and are readable one by one and in order. */
static void test_extensions_carried_through(void **state)
{
    const char *json = REG("\"tenantid\":\"acme\",\"priority\":5,\"rate\":0.25,\"sampled\":false,"
                           "\"averyveryverylongextensionname\":\"x\",\"eventversion\":2,",
                           REG_DATA_V2);
    ew_event *ev, *back;
    ew_error err = {0};
    if (decode_str(json, &ev, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ew_event_extension_count(ev), 5);
    const ew_event_ext *x = ew_event_extension(ev, "tenantid");
    assert_non_null(x);
    assert_int_equal(x->kind, EW_EXT_STRING);
    assert_string_equal(x->value, "acme");
    x = ew_event_extension(ev, "priority");
    assert_int_equal(x->kind, EW_EXT_NUMBER);
    assert_string_equal(x->value, "5");
    assert_string_equal(ew_event_extension(ev, "rate")->value, "0.25");
    x = ew_event_extension(ev, "sampled");
    assert_int_equal(x->kind, EW_EXT_BOOL);
    assert_string_equal(x->value, "false");
    /* the spec recommends 20 characters at most; longer names are valid */
    assert_non_null(ew_event_extension(ev, "averyveryverylongextensionname"));
    assert_null(ew_event_extension(ev, "nope"));
    assert_null(ew_event_extension(ev, "eventversion")); /* our own: not a further extension */
    const char *order[] = {"averyveryverylongextensionname", "priority", "rate", "sampled",
                           "tenantid"};
    for (size_t i = 0; i < 5; i++)
        assert_string_equal(ew_event_extension_at(ev, i)->name, order[i]);
    assert_null(ew_event_extension_at(ev, 5));

    char *out;
    assert_int_equal(ew_event_encode(ev, &out, NULL, &err), 0);
    assert_non_null(strstr(out, "\"tenantid\":\"acme\""));
    assert_non_null(strstr(out, "\"priority\":5"));
    assert_non_null(strstr(out, "\"rate\":0.25"));
    assert_non_null(strstr(out, "\"sampled\":false"));
    if (decode_str(out, &back, &err)) fail_msg("%s", err.msg);
    assert_true(ew_event_equal(ev, back));
    free(out);
    ew_event_unref(back);

    /* an extension that differs makes events differ */
    const char *other = REG("\"tenantid\":\"acme\",\"priority\":\"5\",\"rate\":0.25,"
                            "\"sampled\":false,\"averyveryverylongextensionname\":\"x\","
                            "\"eventversion\":2,",
                            REG_DATA_V2);
    if (decode_str(other, &back, &err)) fail_msg("%s", err.msg);
    assert_false(ew_event_equal(ev, back)); /* "5" is a string, 5 a number */
    ew_event_unref(back);
    ew_event_unref(ev);
}

/* Publishers set extensions through ew_event_attrs; bad ones are refused. */
static void test_extensions_set_when_building(void **state)
{
    char id[EW_UUID_LEN + 1];
    ew_uuid7(id);
    ew_user_logged_out d = {.user_id = id, .session_id = "s"};
    ew_event_ext x[] = {{"tenantid", EW_EXT_STRING, "acme"}, {"attempt", EW_EXT_NUMBER, "2"}};
    ew_event *ev = NULL, *back;
    ew_error err = {0};
    ew_event_attrs a = {.source = "s", .extensions = x, .nextensions = 2};
    assert_int_equal(ew_user_logged_out_new(&ev, &d, &a, &err), 0);
    x[0].value = "changed"; /* copied */
    assert_string_equal(ew_event_extension(ev, "tenantid")->value, "acme");
    assert_string_equal(ew_event_extension_at(ev, 0)->name, "attempt");
    char *json;
    assert_int_equal(ew_event_encode(ev, &json, NULL, &err), 0);
    assert_int_equal(decode_str(json, &back, &err), 0);
    assert_true(ew_event_equal(ev, back));
    free(json);
    ew_event_unref(back);
    ew_event_unref(ev);

    struct {
        ew_event_ext x;
        const char *needle;
    } bad[] = {
        {{"TenantId", EW_EXT_STRING, "a"}, "CloudEvents name"},
        {{"tenant-id", EW_EXT_STRING, "a"}, "CloudEvents name"},
        {{"", EW_EXT_STRING, "a"}, "CloudEvents name"},
        {{NULL, EW_EXT_STRING, "a"}, "CloudEvents name"},
        {{"id", EW_EXT_STRING, "a"}, "attribute of its own"},
        {{"traceparent", EW_EXT_STRING, "a"}, "attribute of its own"},
        {{"dataschema", EW_EXT_STRING, "a"}, "attribute of its own"},
        {{"n", EW_EXT_NUMBER, "1.5.2"}, "JSON number"},
        {{"n", EW_EXT_NUMBER, "012"}, "JSON number"},
        {{"n", EW_EXT_NUMBER, ""}, "JSON number"},
        {{"b", EW_EXT_BOOL, "yes"}, "boolean"},
        {{"s", EW_EXT_STRING, "\xff"}, "UTF-8"},
        {{"s", EW_EXT_STRING, NULL}, "no value"},
        {{"s", (ew_ext_kind)7, "x"}, "valid"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        a.extensions = &bad[i].x;
        a.nextensions = 1;
        ev = NULL;
        int rc = ew_user_logged_out_new(&ev, &d, &a, &err);
        if (rc != EW_EINVAL || !strstr(err.msg, bad[i].needle))
            fail_msg("case %zu: %s: %s", i, ew_err_name(rc), err.msg);
        assert_null(ev);
    }
    ew_event_ext twice[] = {
        {"a", EW_EXT_STRING, "1"}, {"b", EW_EXT_STRING, "2"}, {"a", EW_EXT_STRING, "3"}};
    a.extensions = twice;
    a.nextensions = 3;
    assert_int_equal(ew_user_logged_out_new(&ev, &d, &a, &err), EW_EINVAL);
    assert_non_null(strstr(err.msg, "twice"));

    /* many extensions (more than fit on the stack while sorting) */
    enum { MANY = 40 };
    ew_event_ext many[MANY];
    char names[MANY][8];
    for (int i = 0; i < MANY; i++) {
        snprintf(names[i], sizeof names[i], "x%02d", MANY - 1 - i);
        many[i] = (ew_event_ext){names[i], EW_EXT_NUMBER, "1"};
    }
    a.extensions = many;
    a.nextensions = MANY;
    assert_int_equal(ew_user_logged_out_new(&ev, &d, &a, &err), 0);
    assert_int_equal(ew_event_extension_count(ev), MANY);
    assert_string_equal(ew_event_extension_at(ev, 0)->name, "x00");
    assert_non_null(ew_event_extension(ev, "x39"));
    ew_event_unref(ev);
}

/* A producer's dataschema is kept as sent while the event keeps its version; an upcast event
 * carries its new version's schema; the catalog's own reads as NULL. */
static void test_dataschema_kept_or_replaced(void **state)
{
    ew_event *ev, *back;
    ew_error err = {0};
    const char *mine = "https://schemas.example.com/user.registered/v2.json";
    char json[2048];
    snprintf(json, sizeof json, REG("\"dataschema\":\"%s\",\"eventversion\":2,", REG_DATA_V2),
             mine);
    if (decode_str(json, &ev, &err)) fail_msg("%s", err.msg);
    assert_string_equal(ew_event_dataschema(ev), mine);
    char *out;
    assert_int_equal(ew_event_encode(ev, &out, NULL, &err), 0);
    assert_non_null(strstr(out, "\"dataschema\":\"https://schemas.example.com/user.registered/"
                                "v2.json\""));
    assert_null(strstr(out, "urn:eventwire"));
    assert_int_equal(decode_str(out, &back, &err), 0);
    assert_true(ew_event_equal(ev, back));
    free(out);
    ew_event_unref(back);
    ew_event_unref(ev);

    /* upcast: v1's schema no longer describes the data */
    snprintf(json, sizeof json,
             REG("\"dataschema\":\"https://schemas.example.com/user.registered/v1.json\","
                 "\"eventversion\":1,",
                 REG_DATA_V1));
    if (decode_str(json, &ev, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ew_event_version(ev), 2);
    assert_null(ew_event_dataschema(ev));
    assert_int_equal(ew_event_encode(ev, &out, NULL, &err), 0);
    assert_non_null(strstr(out, "\"dataschema\":\"urn:eventwire:schema:user.registered:2\""));
    free(out);
    ew_event_unref(ev);

    /* the catalog's own URN is the default: NULL, and equal to an event built without one */
    snprintf(json, sizeof json,
             REG("\"dataschema\":\"urn:eventwire:schema:user.registered:2\",", REG_DATA_V2));
    if (decode_str(json, &ev, &err)) fail_msg("%s", err.msg);
    assert_null(ew_event_dataschema(ev));
    ew_event_unref(ev);

    /* set when building */
    ew_user_logged_out d = {.user_id = "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d", .session_id = "s"};
    ew_event_attrs a = {.source = "s", .dataschema = "https://example.com/logged_out.json"};
    assert_int_equal(ew_user_logged_out_new(&ev, &d, &a, &err), 0);
    assert_string_equal(ew_event_dataschema(ev), "https://example.com/logged_out.json");
    ew_event_unref(ev);
    a.dataschema = "";
    assert_int_equal(ew_user_logged_out_new(&ev, &d, &a, &err), EW_EEMPTY);
}

struct version_case {
    const char *json;
    int code;  /* 0: decodes */
    int roles; /* roles of the decoded v2 event: 2 as sent, 1 upcast from v1 */
    const char *needle;
};

/* Without eventversion: a dataschema that names a version decides, else the newest version the
 * data fits; none fits: each version's first error. */
static void test_version_resolution(void **state)
{
    const struct version_case cases[] = {
        /* the data decides */
        {REG("", REG_DATA_V2), 0, 2, NULL},
        {REG("", REG_DATA_V1), 0, 1, NULL},
        {REG("\"dataschema\":\"https://example.com/schemas/user.json\",", REG_DATA_V2), 0, 2, NULL},
        {REG("\"dataschema\":\"https://example.com/schemas/user.json\",", REG_DATA_V1), 0, 1, NULL},
        /* the dataschema decides */
        {REG("\"dataschema\":\"urn:eventwire:schema:user.registered:2\",", REG_DATA_V2), 0, 2,
         NULL},
        {REG("\"dataschema\":\"urn:eventwire:schema:user.registered:1\",", REG_DATA_V1), 0, 1,
         NULL},
        {REG("\"dataschema\":\"https://example.com/user.registered/v1\",", REG_DATA_V1), 0, 1,
         NULL},
        {REG("\"dataschema\":\"https://example.com/user.registered-v1.json\",", REG_DATA_V1), 0, 1,
         NULL},
        {REG("\"dataschema\":\"https://example.com/user.registered/2\",", REG_DATA_V2), 0, 2, NULL},
        {REG("\"dataschema\":\"https://example.com/user.registered_V2\",", REG_DATA_V2), 0, 2,
         NULL},
        /* ... and is not second-guessed by the data */
        {REG("\"dataschema\":\"urn:eventwire:schema:user.registered:2\",", REG_DATA_V1), EW_EDATA,
         0, "data.roles is required"},
        {REG("\"dataschema\":\"https://example.com/user.registered/v1\",", REG_DATA_V2), EW_EDATA,
         0, "no field 'roles'"},
        {REG("\"dataschema\":\"https://example.com/user.registered/v3\",", REG_DATA_V2),
         EW_EVERSION, 0, "version 3"},
        {REG("\"dataschema\":\"urn:eventwire:schema:user.verified:2\",", REG_DATA_V2), EW_ETYPE, 0,
         "not urn:eventwire:schema:user.registered:VERSION"},
        {REG("\"dataschema\":\"urn:eventwire:schema:user.registered:x\",", REG_DATA_V2), EW_ETYPE,
         0, "no version"},
        /* eventversion wins over the dataschema */
        {REG("\"eventversion\":2,\"dataschema\":\"https://example.com/x/v1\",", REG_DATA_V2), 0, 2,
         NULL},
        /* no version fits: each one's first error */
        {REG("", "\"data\":{\"user_id\":" UID ",\"email\":\"nope\",\"username\":\"ann\"}"),
         EW_EDATA, 0, "fits no version: v2: user.registered: data.roles is required; v1: "},
        {REG("", "\"data\":{\"user_id\":" UID ",\"email\":\"nope\",\"username\":\"ann\"}"),
         EW_EDATA, 0, "is not an email address"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct version_case *c = &cases[i];
        ew_event *ev = NULL;
        ew_error err = {0};
        int rc = decode_str(c->json, &ev, &err);
        if (rc != c->code)
            fail_msg("case %zu: got %s (%s), want %s\n%s", i, ew_err_name(rc), err.msg,
                     ew_err_name(c->code), c->json);
        if (rc) {
            assert_null(ev);
            if (!strstr(err.msg, c->needle))
                fail_msg("case %zu: message '%s' lacks '%s'", i, err.msg, c->needle);
            continue;
        }
        assert_int_equal(ew_event_version(ev), 2);
        const ew_user_registered *d = ew_user_registered_data(ev);
        if ((int)d->roles.count != c->roles)
            fail_msg("case %zu: %zu roles, want %d", i, d->roles.count, c->roles);
        ew_event_unref(ev);
    }
}

/* datacontenttype: JSON media types by the JSON format's rule; anything else is refused. */
static void test_data_content_types(void **state)
{
    const char *ok[] = {"application/json", "application/json; charset=utf-8", "Application/JSON",
                        "application/vnd.eventwire+json", "text/json"};
    const char *bad[] = {"text/plain", "application/xml", "application/jsonx", "+json",
                         "application/octet-stream"};
    char json[1024];
    ew_error err = {0};
    ew_event *ev = NULL;
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        snprintf(json, sizeof json, LOGIN("\"datacontenttype\":\"%s\","), ok[i]);
        if (decode_str(json, &ev, &err)) fail_msg("%s: %s", ok[i], err.msg);
        ew_event_unref(ev);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(json, sizeof json, LOGIN("\"datacontenttype\":\"%s\","), bad[i]);
        assert_int_equal(decode_str(json, &ev, &err), EW_EDATA);
        assert_non_null(strstr(err.msg, "not JSON"));
    }
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_extensions_carried_through),
    cmocka_unit_test(test_extensions_set_when_building),
    cmocka_unit_test(test_dataschema_kept_or_replaced),
    cmocka_unit_test(test_version_resolution),
    cmocka_unit_test(test_data_content_types),
    cmocka_unit_test(test_event_from_json_data),
    cmocka_unit_test(test_roundtrip_every_catalog_type),
    cmocka_unit_test(test_encode_is_cloudevents_json),
    cmocka_unit_test(test_ids_are_uuid7_and_ordered),
    cmocka_unit_test(test_forked_processes_make_different_ids),
    cmocka_unit_test(test_time_format_and_parse),
    cmocka_unit_test(test_v2_consumer_reads_v1_event),
    cmocka_unit_test(test_v1_role_change_and_revocation_read_as_v2),
    cmocka_unit_test(test_foreign_event_without_optional_attributes),
    cmocka_unit_test(test_malformed_inputs_each_get_their_error),
    cmocka_unit_test(test_oversized_event_refused_before_parsing),
    cmocka_unit_test(test_deep_nesting_refused),
    cmocka_unit_test(test_new_validates_data),
    cmocka_unit_test(test_event_copies_and_refcounts),
    cmocka_unit_test(test_follow_up_attributes_round_trip),
};

EW_TEST_MAIN(tests)
