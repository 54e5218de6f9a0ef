/* Tests of the catalog: lookups, the JSON Schemas made from the declarations, and patterns. */
#include <stdlib.h>
#include "support/ew_test.h"
#include "core/json.h"
#include "eventwire/catalog.h"
#include "eventwire/event.h"

static void test_catalog_has_every_event_of_the_flows(void **state)
{
    static const char *const required[] = {"user.registered",
                                           "user.logged_in",
                                           "user.logged_out",
                                           "user.role_changed",
                                           "password.reset_requested",
                                           "password.reset_completed",
                                           "user.profile_created",
                                           "user.profile_updated",
                                           "user.preferences_updated",
                                           "user.verified",
                                           "notification.welcome_email_sent",
                                           "notification.email_sent",
                                           "user.data_export_requested",
                                           "user.data_collected",
                                           "user.data_export_completed",
                                           "user.deletion_requested",
                                           "user.data_deleted",
                                           "user.deletion_completed"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        const ew_type_info *t = ew_catalog_find(required[i], 0);
        if (!t) fail_msg("%s is missing from the catalog", required[i]);
        assert_true(t->latest);
        assert_ptr_equal(ew_catalog_get(t->id), t);
    }
    assert_null(ew_catalog_find("user.exploded", 0));
    assert_null(ew_catalog_find("user.registered", 3));
    assert_int_equal(ew_catalog_find("user.registered", 0)->version, 2);
    assert_int_equal(ew_catalog_find("user.registered", 1)->id, EW_T_USER_REGISTERED_V1);
    assert_int_equal(ew_catalog_count(), EW_T__COUNT - 1);
    assert_null(ew_catalog_get(EW_T_NONE));
    assert_null(ew_catalog_get(EW_T__COUNT));
}

static void test_every_type_is_well_declared(void **state)
{
    for (size_t i = 0; i < ew_catalog_count(); i++) {
        const ew_type_info *t = ew_catalog_at(i);
        assert_true(ew_pattern_valid(t->type)); /* dotted, lower-case */
        assert_non_null(strchr(t->type, '.'));
        assert_true(t->nfields > 0);
        assert_true(strlen(t->doc) > 0);
        /* exactly one latest version per type, and versions 1..latest all declared */
        const ew_type_info *latest = ew_catalog_find(t->type, 0);
        assert_non_null(latest);
        for (int v = 1; v <= latest->version; v++)
            assert_non_null(ew_catalog_find(t->type, v));
        for (size_t j = 0; j < t->nfields; j++) {
            assert_ptr_equal(ew_type_field(t, t->fields[j].name), &t->fields[j]);
            assert_true(t->fields[j].offset < t->struct_size);
        }
    }
}

static void test_personal_data_is_marked(void **state)
{
    const ew_type_info *t = ew_catalog_find("user.registered", 0);
    assert_true(ew_type_field(t, "email")->flags & EW_FIELD_PII);
    assert_true(ew_type_field(t, "username")->flags & EW_FIELD_PII);
    assert_false(ew_type_field(t, "user_id")->flags & EW_FIELD_PII);
    assert_true(ew_type_field(ew_catalog_find("user.data_collected", 0), "data")->flags &
                EW_FIELD_PII);
}

static void test_schemas_are_json_schema_2020_12(void **state)
{
    for (size_t i = 0; i < ew_catalog_count(); i++) {
        const ew_type_info *t = ew_catalog_at(i);
        for (int env = 0; env < 2; env++) {
            char *s = NULL;
            ew_error err = {0};
            int rc = env ? ew_type_envelope_schema(t, &s, &err) : ew_type_schema(t, &s, &err);
            assert_int_equal(rc, 0);
            ew_arena a;
            ew_arena_init(&a, NULL, 0);
            ew_json *root;
            if (ew_json_parse(&root, s, strlen(s), NULL, &a, &err))
                fail_msg("%s schema is not JSON: %s\n%s", t->type, err.msg, s);
            assert_string_equal(ew_json_get(root, "$schema")->str,
                                "https://json-schema.org/draft/2020-12/schema");
            const ew_json *data = env ? ew_json_get(ew_json_get(root, "$defs"), "data") : root;
            assert_non_null(data);
            const ew_json *props = ew_json_get(data, "properties");
            assert_int_equal(props->count, t->nfields);
            assert_int_equal(ew_json_get(data, "additionalProperties")->kind, EW_JSON_FALSE);
            size_t nreq = 0;
            for (size_t j = 0; j < t->nfields; j++) {
                const ew_json *p = ew_json_get(props, t->fields[j].name);
                assert_non_null(p);
                assert_non_null(ew_json_get(p, "description"));
                bool pii = ew_json_get(p, "x-personal-data") != NULL;
                assert_int_equal(pii, !!(t->fields[j].flags & EW_FIELD_PII));
                nreq += !!(t->fields[j].flags & EW_FIELD_REQ);
            }
            assert_int_equal(ew_json_get(data, "required")->count, nreq);
            ew_arena_release(&a);
            free(s);
        }
    }
}

static void test_schema_of_user_registered(void **state)
{
    char *s;
    assert_int_equal(ew_type_schema(ew_catalog_find("user.registered", 0), &s, NULL), 0);
    assert_non_null(strstr(s, "\"$id\": \"urn:eventwire:schema:user.registered:2\""));
    assert_non_null(strstr(s, "\"format\": \"email\""));
    assert_non_null(strstr(s, "\"format\": \"uuid\""));
    assert_non_null(strstr(s, "\"required\": [\"user_id\", \"email\", \"username\", \"roles\"]"));
    free(s);
    char uri[80];
    assert_int_equal(ew_type_schema_uri(ew_catalog_find("user.registered", 1), uri, sizeof uri),
                     (int)strlen("urn:eventwire:schema:user.registered:1"));
    assert_string_equal(uri, "urn:eventwire:schema:user.registered:1");
}

static void test_patterns_match_like_amqp_topics(void **state)
{
    struct {
        const char *p, *t;
        bool m;
    } cases[] = {
        {"user.registered", "user.registered", true},
        {"user.registered", "user.registered2", false},
        {"user.*", "user.registered", true},
        {"user.*", "user", false},
        {"user.*", "user.a.b", false},
        {"user.*", "users.registered", false},
        {"*", "anything.at.all", true},
        {"user.#", "user", true},
        {"user.#", "user.a.b", true},
        {"#", "user.registered", true},
        {"#.registered", "user.registered", true},
        {"#.registered", "registered", true},
        {"#.registered", "user.logged_in", false},
        {"*.registered", "user.registered", true},
        {"*.registered", "a.user.registered", false},
        {"notification.*", "notification.welcome_email_sent", true},
        {"user.*.x", "user.a.x", true},
        {"user.*.x", "user.a.y", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (ew_pattern_match(cases[i].p, cases[i].t) != cases[i].m)
            fail_msg("'%s' vs '%s': want %d", cases[i].p, cases[i].t, cases[i].m);
    const char *valid[] = {"user.registered", "user.*", "#", "*", "a.#", "a_b.c1"};
    const char *invalid[] = {"",         "user.",           ".user",  "user..x", "User.Registered",
                             "user.re*", "user registered", "user.#x"};
    for (size_t i = 0; i < sizeof valid / sizeof valid[0]; i++)
        assert_true(ew_pattern_valid(valid[i]));
    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
        if (ew_pattern_valid(invalid[i])) fail_msg("'%s' should be invalid", invalid[i]);
    assert_false(ew_pattern_valid(NULL));
}

/* ew_field_valid is the check events make: an address it takes builds a user.registered, one it
 * refuses does not, whatever the address. */
static void test_field_values_are_checked_as_events_check_them(void **state)
{
    (void)state;
    static const struct {
        const char *email;
        bool ok;
    } cases[] = {
        {"ada@example.com", true},   {"a.b+tag@mail.example.org", true},
        {"ünï@example.com", true},   {"a..b@b.io", true},
        {"not-an-email", false},     {"a@b", false},
        {"Ada <a@b.io>", false},     {"a b@b.io", false},
        {"@example.com", false},     {"a@b@example.com", false},
        {"a@example.", false},       {"a,b@example.com", false},
        {"\xff@example.com", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool valid = ew_field_valid(EW_FIELD_EMAIL, cases[i].email);
        ew_user_registered d = {.user_id = "01a24ea1-3ad6-7181-91c1-021e551b1aba",
                                .email = cases[i].email,
                                .username = "ada",
                                .roles = {(const char *const[]){"user"}, 1}};
        ew_event_attrs a = {.source = "test"};
        ew_event *ev = NULL;
        int rc = ew_event_new(&ev, EW_T_USER_REGISTERED, &d, &a, NULL);
        ew_event_unref(ev);
        if (valid != cases[i].ok || (rc == 0) != valid)
            fail_msg("'%s': ew_field_valid %d, ew_event_new %d, want %d", cases[i].email, valid, rc,
                     cases[i].ok);
    }
    assert_true(ew_field_valid(EW_FIELD_UUID, "01a24ea1-3ad6-7181-91c1-021e551b1aba"));
    assert_false(ew_field_valid(EW_FIELD_UUID, "01a24ea1"));
    assert_true(ew_field_valid(EW_FIELD_TIME, "2026-12-07T03:41:47.163295Z"));
    assert_false(ew_field_valid(EW_FIELD_TIME, "yesterday"));
    assert_true(ew_field_valid(EW_FIELD_URL, "https://example.com/x"));
    assert_false(ew_field_valid(EW_FIELD_URL, "ftp://example.com/x"));
    assert_true(ew_field_valid(EW_FIELD_STRING, "anything"));
    assert_false(ew_field_valid(EW_FIELD_STRING, "\xc3"));
    assert_false(ew_field_valid(EW_FIELD_INT, "1"));
    assert_false(ew_field_valid(EW_FIELD_EMAIL, NULL));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_catalog_has_every_event_of_the_flows),
    cmocka_unit_test(test_every_type_is_well_declared),
    cmocka_unit_test(test_personal_data_is_marked),
    cmocka_unit_test(test_schemas_are_json_schema_2020_12),
    cmocka_unit_test(test_schema_of_user_registered),
    cmocka_unit_test(test_patterns_match_like_amqp_topics),
    cmocka_unit_test(test_field_values_are_checked_as_events_check_them),
};

EW_TEST_MAIN(tests)
