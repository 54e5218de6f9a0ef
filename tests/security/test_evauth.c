/* Tests of authenticated events (eventwire/evauth.h) and the bus policy (eventwire/policy.h):
 * signed events verify with MACs and with Ed25519, also after the Kafka and AMQP bindings
 * carried them in binary mode; unauthenticated, tampered, re-typed, re-sourced, unknown-key and
 * out-of-policy events are refused with the reason; foreign producers are admitted per type but
 * never for a sensitive one; the key file is made 0600 and one open to others is refused; a
 * rotation is picked up by the signer and old events still verify after the grace period; the
 * default policy's rules; ewctl keys and the policy file in docs/ agree with the built-in one.
 * Signing and checking run with the key store on PostgreSQL too.
 * ew-fixture: postgres */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "support/case_db.h"
#include "support/ew_test.h"
#include "bus/binding.h"
#include "eventwire/catalog.h"
#include "eventwire/clock.h"
#include "eventwire/evauth.h"

#define UID "0192d3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d"

typedef struct fx {
    char dir[64];
    ew_config *cfg;
    ew_keys *keys;
    ew_policy *policy;
    char *pg_url; /* the key store's database, when it is on PostgreSQL */
    /* notices seen */
    int made, rotated, refused_in, refused_out;
    char last[400];
} fx;

static void on_notice(void *ud, ew_evauth_notice_kind k, const ew_event *ev, const char *detail)
{
    fx *f = ud;
    f->made += k == EW_EVAUTH_KEY_MADE;
    f->rotated += k == EW_EVAUTH_KEY_ROTATED;
    f->refused_in += k == EW_EVAUTH_RECEIVE_REFUSED;
    f->refused_out += k == EW_EVAUTH_PUBLISH_REFUSED;
    snprintf(f->last, sizeof f->last, "%s", detail);
}

static const char test_policy[] = "publish auth-service user.*\n"
                                  "publish user-service user.profile_created\n"
                                  "subscribe user-service user.registered user.deletion_requested\n"
                                  "foreign user.profile_updated\n";

static int setup_store(void **state, const char *mode, bool pg)
{
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/ew-evauth-XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    ew_error err = {0};
    char url[128], tmp[64];
    snprintf(url, sizeof url, "sqlite:%s/events.db", f->dir);
    if (pg && ew_test_db_create(1, "evauth", "", tmp, &f->pg_url)) return -1;
    if (ew_config_new(&f->cfg, &err) || ew_config_set(f->cfg, "EVENT_STORE_URL", url, &err) ||
        (pg && (ew_config_set(f->cfg, "KEY_STORE_URL", f->pg_url, &err) ||
                ew_config_set(f->cfg, "EVENT_KEY_DIR", f->dir, &err))) ||
        ew_config_set(f->cfg, "EVENT_AUTH", mode, &err) ||
        ew_keys_open(&f->keys, &(ew_keys_options){.config = f->cfg}, &err) ||
        ew_policy_parse(&f->policy, test_policy, strlen(test_policy), "test", &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    *state = f;
    return 0;
}

static int setup_mac(void **state)
{
    return setup_store(state, "mac", false);
}

static int setup_ed(void **state)
{
    return setup_store(state, "ed25519", false);
}

static int setup_mac_pg(void **state)
{
    return setup_store(state, "mac", true);
}

static int setup_ed_pg(void **state)
{
    return setup_store(state, "ed25519", true);
}

static int teardown(void **state)
{
    fx *f = *state;
    ew_keys_close(f->keys);
    ew_policy_free(f->policy);
    ew_config_free(f->cfg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    int rc = system(cmd);
    if (f->pg_url) ew_test_db_drop(1, "", f->pg_url);
    free(f);
    return rc == 0 ? 0 : -1;
}

static ew_evauth *open_as(fx *f, const char *service)
{
    ew_evauth *a;
    ew_error err = {0};
    ew_evauth_options o = {.config = f->cfg,
                           .service = service,
                           .keys = f->keys,
                           .policy = f->policy,
                           .notice = on_notice,
                           .notice_ud = f};
    if (ew_evauth_open(&a, &o, &err)) fail_msg("ew_evauth_open(%s): %s", service, err.msg);
    return a;
}

static ew_event *registered(const char *source, const char *email)
{
    static const char *const roles[] = {"user"};
    ew_user_registered d = {.user_id = UID, .email = email, .username = "ada", .roles = {roles, 1}};
    ew_event *ev;
    ew_error err = {0};
    ew_event_ext x = {"tenant", EW_EXT_STRING, "t1"};
    ew_event_ext n = {"priority", EW_EXT_NUMBER, "7"};
    ew_event_ext exts[] = {x, n};
    if (ew_user_registered_new(
            &ev, &d,
            &(ew_event_attrs){
                .source = source, .subject = UID, .extensions = exts, .nextensions = 2},
            &err))
        fail_msg("%s", err.msg);
    return ev;
}

static ew_event *signed_copy(ew_evauth *a, const ew_event *ev)
{
    ew_event *out;
    ew_error err = {0};
    if (ew_evauth_sign(a, ev, &out, &err)) fail_msg("sign: %s", err.msg);
    return out;
}

/* ev as JSON, edited by replacing `from` with `to`, decoded again (what an attacker on the wire
 * can do). */
static ew_event *edited(const ew_event *ev, const char *from, const char *to)
{
    char *json;
    size_t n;
    ew_error err = {0};
    assert_int_equal(ew_event_encode(ev, &json, &n, &err), 0);
    char *at = strstr(json, from);
    assert_non_null(at);
    size_t fl = strlen(from), tl = strlen(to);
    char *out = malloc(n + tl + 1);
    memcpy(out, json, (size_t)(at - json));
    memcpy(out + (at - json), to, tl);
    strcpy(out + (at - json) + tl, at + fl);
    ew_event *back;
    if (ew_event_decode(&back, out, strlen(out), NULL, &err)) fail_msg("decode: %s", err.msg);
    free(json);
    free(out);
    return back;
}

static void expect_refused(ew_evauth *a, const ew_event *ev, int code, const char *words)
{
    ew_error err = {0};
    assert_int_equal(ew_evauth_verify(a, ev, &err), code);
    if (!strstr(err.msg, words)) fail_msg("'%s' does not say '%s'", err.msg, words);
}

static void roundtrip(void **state)
{
    fx *f = *state;
    ew_evauth *auth = open_as(f, "auth-service"), *user = open_as(f, "user-service");
    assert_int_equal(f->made, 2);
    ew_error err = {0};
    ew_event *ev = registered("auth-service", "ada@example.com");
    assert_int_equal(ew_evauth_check_publish(auth, ev, &err), 0);
    ew_event *s = signed_copy(auth, ev);
    const ew_event_ext *tag = ew_event_extension(s, "ewauth");
    assert_non_null(tag);
    assert_string_equal(ew_event_extension(s, "ewkid")->value, ew_evauth_kid(auth));
    assert_int_equal(strncmp(tag->value, ew_evauth_alg(auth) == EW_KEY_MAC ? "mac1:" : "ed1:",
                             ew_evauth_alg(auth) == EW_KEY_MAC ? 5 : 4),
                     0);
    /* the other service verifies it, as sent and after a JSON round trip */
    assert_int_equal(ew_evauth_verify(user, s, &err), 0);
    char *json;
    assert_int_equal(ew_event_encode(s, &json, NULL, &err), 0);
    ew_event *back;
    assert_int_equal(ew_event_decode(&back, json, strlen(json), NULL, &err), 0);
    assert_int_equal(ew_evauth_verify(user, back, &err), 0);
    free(json);
    ew_event_unref(back);
    /* and after the bindings carried it in binary mode: attributes and extensions in headers */
    ew__binding bs[] = {EW__BINDING_KAFKA, EW__BINDING_AMQP};
    for (int i = 0; i < 2; i++) {
        ew__wire_out o;
        assert_int_equal(ew__binding_encode(s, bs[i], EW__MODE_BINARY, 0, &o, &err), 0);
        assert_true(o.nheaders > 0);
        ew__wire_msg m = {.binding = bs[i],
                          .body = o.body,
                          .body_len = o.body_len,
                          .content_type = bs[i] == EW__BINDING_AMQP ? o.content_type : NULL,
                          .content_type_len =
                              bs[i] == EW__BINDING_AMQP ? strlen(o.content_type) : 0,
                          .headers = o.headers,
                          .nheaders = o.nheaders};
        assert_true(ew__binding_is_binary(&m));
        if (ew__binding_decode(&m, NULL, &back, NULL, &err)) fail_msg("%s", err.msg);
        if (ew_evauth_verify(user, back, &err)) fail_msg("binding %d: %s", i, err.msg);
        ew_event_unref(back);
        ew__wire_out_release(&o);
    }
    /* the canonical form leaves the tag out: the signed and the unsigned event have one form */
    unsigned char *c1, *c2;
    size_t l1, l2;
    assert_int_equal(ew_evauth_canonical(ev, &c1, &l1, &err), 0);
    assert_int_equal(ew_evauth_canonical(s, &c2, &l2, &err), 0);
    assert_int_equal(l1, l2);
    assert_memory_equal(c1, c2, l1);
    free(c1);
    free(c2);
    ew_event_unref(ev);
    ew_event_unref(s);
    ew_evauth_close(auth);
    ew_evauth_close(user);
}

static void forgeries_are_refused(void **state)
{
    fx *f = *state;
    ew_evauth *auth = open_as(f, "auth-service"), *user = open_as(f, "user-service");
    ew_event *ev = registered("auth-service", "ada@example.com");
    ew_event *s = signed_copy(auth, ev);

    /* unauthenticated */
    expect_refused(user, ev, EW_EAUTH, "unauthenticated");
    /* tampered data: another address for the same user */
    ew_event *t = edited(s, "ada@example.com", "eve@example.com");
    expect_refused(user, t, EW_EAUTH, "does not verify");
    ew_event_unref(t);
    /* a tampered extension */
    t = edited(s, "\"tenant\":\"t1\"", "\"tenant\":\"t2\"");
    expect_refused(user, t, EW_EAUTH, "does not verify");
    ew_event_unref(t);
    /* replayed under another type (same data, same tag) */
    ew_user_logged_out lo = {.user_id = UID, .session_id = "s1"};
    ew_event *out_ev, *out_s;
    ew_error e0 = {0};
    assert_int_equal(
        ew_user_logged_out_new(&out_ev, &lo, &(ew_event_attrs){.source = "auth-service"}, &e0), 0);
    out_s = signed_copy(auth, out_ev);
    ew_event *t1 = edited(out_s, "\"type\":\"user.logged_out\"", "\"type\":\"user.logged_in\"");
    t = edited(t1, "schema:user.logged_out:", "schema:user.logged_in:");
    assert_string_equal(ew_event_type(t), "user.logged_in");
    assert_non_null(ew_event_extension(t, "ewauth"));
    expect_refused(user, t, EW_EAUTH, "does not verify");
    ew_event_unref(t);
    ew_event_unref(t1);
    ew_event_unref(out_s);
    ew_event_unref(out_ev);
    /* re-sourced: user-service's key on an event that says auth-service */
    ew_event *mine = registered("user-service", "ada@example.com");
    ew_event *ms = signed_copy(user, mine); /* signing does not check the policy */
    t = edited(ms, "\"source\":\"user-service\"", "\"source\":\"auth-service\"");
    expect_refused(user, t, EW_EAUTH, "belongs to service:user-service");
    ew_event_unref(t);
    /* well signed, but outside the policy: user-service may not publish user.registered */
    expect_refused(auth, ms, EW_EPERM, "does not let user-service publish user.registered");
    ew_error err = {0};
    assert_int_equal(ew_evauth_check_publish(user, mine, &err), EW_EPERM);
    assert_int_equal(f->refused_out, 1);
    /* publishing under another source is refused before anything is signed */
    assert_int_equal(ew_evauth_check_publish(user, ev, &err), EW_EPERM);
    assert_non_null(strstr(err.msg, "publishes as itself"));
    /* an unknown key, and a tag that is not one */
    char kid[64];
    snprintf(kid, sizeof kid, "\"ewkid\":\"%s\"", ew_evauth_kid(auth));
    t = edited(s, kid, "\"ewkid\":\"00000000deadbeef\"");
    expect_refused(user, t, EW_EAUTH, "unknown key");
    ew_event_unref(t);
    t = edited(s, "\"ewauth\":\"", "\"ewauth\":\"x");
    expect_refused(user, t, EW_EAUTH, "is not a");
    ew_event_unref(t);
    assert_true(f->refused_in >= 7);
    ew_event_unref(ms);
    ew_event_unref(mine);
    ew_event_unref(s);
    ew_event_unref(ev);
    ew_evauth_close(auth);
    ew_evauth_close(user);
}

/* An event published at an older version of its type (user.registered v1, without roles) by a
 * keyed service verifies at a consumer whose catalog upcasts it to the latest: the tag covers it
 * as published, and the check runs on that form; what the handlers get is the upcast event. A
 * v1 event tampered with is still refused, and so is one that claims to be the latest version
 * with the v1 tag. */
static void upcast_events_verify(void **state)
{
    fx *f = *state;
    ew_evauth *auth = open_as(f, "auth-service"), *user = open_as(f, "user-service");
    ew_user_registered_v1 d1 = {.user_id = UID, .email = "ada@example.com", .username = "ada"};
    ew_event *v1, *s;
    ew_error err = {0};
    assert_int_equal(ew_event_new(&v1, EW_T_USER_REGISTERED_V1, &d1,
                                  &(ew_event_attrs){.source = "auth-service", .subject = UID},
                                  &err),
                     0);
    s = signed_copy(auth, v1);
    assert_int_equal(ew_event_version(s), 1);
    char *json;
    assert_int_equal(ew_event_encode(s, &json, NULL, &err), 0);
    assert_non_null(strstr(json, "\"eventversion\":1"));
    ew_event *back;
    assert_int_equal(ew_event_decode(&back, json, strlen(json), NULL, &err), 0);
    /* the consumer reads the latest version */
    assert_int_equal(ew_event_version(back), 2);
    const ew_user_registered *d2 = ew_user_registered_data(back);
    assert_non_null(d2);
    assert_int_equal(d2->roles.count, 1);
    assert_string_equal(d2->roles.items[0], "user");
    if (ew_evauth_verify(user, back, &err)) fail_msg("an upcast v1 event: %s", err.msg);
    ew_event_unref(back);
    /* and after a binding carried it in binary mode */
    ew__wire_out o;
    assert_int_equal(ew__binding_encode(s, EW__BINDING_KAFKA, EW__MODE_BINARY, 0, &o, &err), 0);
    ew__wire_msg m = {.binding = EW__BINDING_KAFKA,
                      .body = o.body,
                      .body_len = o.body_len,
                      .headers = o.headers,
                      .nheaders = o.nheaders};
    if (ew__binding_decode(&m, NULL, &back, NULL, &err)) fail_msg("%s", err.msg);
    assert_int_equal(ew_event_version(back), 2);
    if (ew_evauth_verify(user, back, &err)) fail_msg("kafka binary mode: %s", err.msg);
    ew_event_unref(back);
    ew__wire_out_release(&o);
    /* tampered v1 data: refused */
    ew_event *t = edited(s, "ada@example.com", "eve@example.com");
    assert_int_equal(ew_event_version(t), 2);
    expect_refused(user, t, EW_EAUTH, "does not verify");
    ew_event_unref(t);
    /* the v1 tag on the event claimed as version 2 (roles added by the forger): refused */
    char *t0 = strstr(json, "\"eventversion\":1");
    assert_non_null(t0);
    t0[sizeof "\"eventversion\":" - 1] = '2';
    char *forged = malloc(strlen(json) + 40);
    char *dat = strstr(json, "\"data\":{");
    assert_non_null(dat);
    size_t head = (size_t)(dat - json) + strlen("\"data\":{");
    memcpy(forged, json, head);
    strcpy(forged + head, "\"roles\":[\"user\"],");
    strcat(forged, json + head);
    assert_int_equal(ew_event_decode(&t, forged, strlen(forged), NULL, &err), 0);
    expect_refused(user, t, EW_EAUTH, "does not verify");
    ew_event_unref(t);
    free(forged);
    free(json);
    ew_event_unref(s);
    ew_event_unref(v1);
    ew_evauth_close(auth);
    ew_evauth_close(user);
}

static void test_upcast_events_verify_mac(void **state)
{
    upcast_events_verify(state);
}

static void test_upcast_events_verify_ed25519(void **state)
{
    upcast_events_verify(state);
}

static void test_foreign_producers(void **state)
{
    fx *f = *state;
    ew_evauth *user = open_as(f, "user-service");
    ew_error err = {0};
    const char *data = "{\"user_id\":\"" UID "\",\"changes\":{\"bio\":\"hi\"}}";
    ew_event *ev;
    assert_int_equal(ew_event_from_json(&ev, "user.profile_updated", data, strlen(data),
                                        &(ew_event_attrs){.source = "js-producer"}, &err),
                     0);
    assert_int_equal(ew_evauth_verify(user, ev, &err), 0); /* admitted by `foreign` */
    ew_event_unref(ev);
    ew_event *reg = registered("js-producer", "x@example.com");
    expect_refused(user, reg, EW_EAUTH, "unauthenticated");
    ew_event_unref(reg);
    /* the sensitive types are never foreign, whatever the file says */
    ew_policy *p = NULL;
    const char bad[] = "foreign user.deletion_requested\n";
    assert_int_equal(ew_policy_parse(&p, bad, strlen(bad), "bad.conf", &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "bad.conf:1"));
    assert_non_null(strstr(err.msg, "sensitive"));
    const char wide[] = "foreign user.*\n";
    assert_int_equal(ew_policy_parse(&p, wide, strlen(wide), "wide", &err), 0);
    assert_true(ew_policy_admits_foreign(p, "user.profile_updated"));
    assert_false(ew_policy_admits_foreign(p, "user.deletion_requested"));
    assert_false(ew_policy_admits_foreign(p, "user.role_changed"));
    assert_false(ew_policy_admits_foreign(p, "user.data_collected"));
    assert_false(ew_policy_admits_foreign(p, "user.data_export_completed"));
    ew_policy_free(p);
    ew_evauth_close(user);
}

static void test_key_file_is_private(void **state)
{
    fx *f = *state;
    ew_evauth *a = open_as(f, "auth-service");
    char path[256];
    assert_non_null(ew_evauth_key_file(f->cfg, "auth-service", path, sizeof path));
    char want[256];
    snprintf(want, sizeof want, "%s/keys/auth-service.bus.key", f->dir);
    assert_string_equal(path, want);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char kid[EW_KEY_ID_LEN + 1];
    snprintf(kid, sizeof kid, "%s", ew_evauth_kid(a));
    ew_evauth_close(a);
    /* opened again: the same key, no new one */
    a = open_as(f, "auth-service");
    assert_string_equal(ew_evauth_kid(a), kid);
    assert_int_equal(f->made, 1);
    ew_evauth_close(a);
    /* open to others: refused */
    assert_int_equal(chmod(path, 0640), 0);
    ew_evauth *b = NULL;
    ew_error err = {0};
    ew_evauth_options o = {
        .config = f->cfg, .service = "auth-service", .keys = f->keys, .policy = f->policy};
    assert_int_equal(ew_evauth_open(&b, &o, &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "0600"));
    /* a service without a key file, where only an existing one will do (ewctl --as) */
    o.service = "export-service";
    o.existing_key_only = true;
    assert_int_equal(ew_evauth_open(&b, &o, &err), EW_ENOTFOUND);
    assert_non_null(strstr(err.msg, "export-service"));
    assert_null(b);
}

static void test_rotation(void **state)
{
    fx *f = *state;
    ew_evauth *auth = open_as(f, "auth-service"), *user = open_as(f, "user-service");
    char old_kid[EW_KEY_ID_LEN + 1], new_kid[EW_KEY_ID_LEN + 1];
    snprintf(old_kid, sizeof old_kid, "%s", ew_evauth_kid(auth));
    ew_event *ev = registered("auth-service", "ada@example.com");
    ew_event *before = signed_copy(auth, ev);
    ew_error err = {0};
    /* rotated with an hour of grace: both keys are current */
    assert_int_equal(
        ew_evauth_rotate(f->cfg, f->keys, "auth-service", ew_evauth_alg(auth), 3600, new_kid, &err),
        0);
    assert_string_not_equal(new_kid, old_kid);
    ew_event *during = signed_copy(auth, ev); /* read within the second: still the old key */
    assert_int_equal(ew_evauth_verify(user, during, &err), 0);
    usleep(1100 * 1000); /* the signer looks at its key file once a second */
    ew_event *after = signed_copy(auth, ev);
    assert_string_equal(ew_event_extension(after, "ewkid")->value, new_kid);
    assert_int_equal(f->rotated, 1);
    assert_int_equal(ew_evauth_verify(user, after, &err), 0);
    assert_int_equal(ew_evauth_verify(user, before, &err), 0);

    /* the new key's file, kept: after the next rotation it is a retired key */
    char key_path[256], kept[300], cmd[700];
    assert_non_null(ew_evauth_key_file(f->cfg, "auth-service", key_path, sizeof key_path));
    snprintf(kept, sizeof kept, "%s/kept.key", f->dir);
    snprintf(cmd, sizeof cmd, "cp -p %s %s", key_path, kept);
    assert_int_equal(system(cmd), 0);

    /* rotated again without grace: the earlier keys are retired now; an event made after that
     * with one is refused, events made before still verify (replays, dead letter retries) */
    assert_int_equal(
        ew_evauth_rotate(f->cfg, f->keys, "auth-service", ew_evauth_alg(auth), 0, NULL, &err), 0);
    usleep(5200 * 1000); /* the verifier reads retirements again every 5 s */
    assert_int_equal(ew_evauth_verify(user, before, &err), 0);
    assert_int_equal(ew_evauth_verify(user, after, &err), 0);
    ew_evauth_options o = {.config = f->cfg,
                           .service = "auth-service",
                           .keys = f->keys,
                           .policy = f->policy,
                           .key_file = kept};
    ew_evauth *stale;
    assert_int_equal(ew_evauth_open(&stale, &o, &err), 0);
    assert_string_equal(ew_evauth_kid(stale), new_kid);
    ew_event *late = registered("auth-service", "ada@example.com");
    ew_event *late_s = signed_copy(stale, late);
    expect_refused(user, late_s, EW_EAUTH, "retired");
    ew_event_unref(late_s);
    ew_event_unref(late);
    ew_evauth_close(stale);
    ew_event_unref(before);
    ew_event_unref(during);
    ew_event_unref(after);
    ew_event_unref(ev);
    ew_evauth_close(auth);
    ew_evauth_close(user);
}

/* The policy's answers are remembered by source and type (a policy never changes): each
 * source keeps its own answer, asked again and again, also past the sources remembered (16),
 * and a tag of the wrong length or alphabet is refused before any comparison. */
static void test_policy_answers_by_source(void **state)
{
    fx *f = *state;
    enum { N = 20 };
    ew_evauth *verifier = open_as(f, "user-service"), *signers[N];
    ew_event *evs[N];
    char name[32];
    ew_error err = {0};
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, i == 7 ? "auth-service" : "svc-%d", i);
        signers[i] = open_as(f, name);
        ew_event *ev = registered(name, "ada@example.com");
        evs[i] = signed_copy(signers[i], ev);
        /* publishing: only auth-service may publish user.registered, asked twice each */
        for (int k = 0; k < 2; k++)
            assert_int_equal(ew_evauth_check_publish(signers[i], ev, &err), i == 7 ? 0 : EW_EPERM);
        ew_event_unref(ev);
    }
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < N; i++) {
            if (i == 7)
                assert_int_equal(ew_evauth_verify(verifier, evs[i], &err), 0);
            else
                expect_refused(verifier, evs[i], EW_EPERM, "the policy does not let svc-");
        }
    /* user-service may publish user.profile_created and not user.registered */
    ew_user_profile_created pd = {.user_id = UID, .display_name = "Ada"};
    ew_event *pc;
    if (ew_user_profile_created_new(&pc, &pd, &(ew_event_attrs){.source = "user-service"}, &err))
        fail_msg("%s", err.msg);
    ew_event *mine = registered("user-service", "ada@example.com");
    for (int k = 0; k < 2; k++) {
        assert_int_equal(ew_evauth_check_publish(verifier, pc, &err), 0);
        assert_int_equal(ew_evauth_check_publish(verifier, mine, &err), EW_EPERM);
    }
    ew_event_unref(pc);
    ew_event_unref(mine);
    /* a tag one character short or long, or with a character outside base64url */
    const char *tag = ew_event_extension(evs[7], "ewauth")->value;
    char bad[3][128];
    snprintf(bad[0], sizeof bad[0], "%.*s", (int)strlen(tag) - 1, tag);
    snprintf(bad[1], sizeof bad[1], "%sA", tag);
    snprintf(bad[2], sizeof bad[2], "%.*s=", (int)strlen(tag) - 1, tag);
    for (int i = 0; i < 3; i++) {
        ew_event *t = edited(evs[7], tag, bad[i]);
        expect_refused(verifier, t, EW_EAUTH, "ewauth is not a");
        ew_event_unref(t);
    }
    for (int i = 0; i < N; i++) {
        ew_event_unref(evs[i]);
        ew_evauth_close(signers[i]);
    }
    ew_evauth_close(verifier);
}

static void test_default_policy(void **state)
{
    (void)state;
    ew_policy *p;
    ew_error err = {0};
    assert_int_equal(ew_policy_load(&p, NULL, &err), 0);
    assert_true(ew_policy_may_publish(p, "auth-service", "user.deletion_requested"));
    assert_true(ew_policy_may_publish(p, "auth-service", "saga.completed"));
    assert_true(ew_policy_may_publish(p, "user-service", "user.data_collected"));
    assert_false(ew_policy_may_publish(p, "user-service", "user.deletion_requested"));
    assert_false(ew_policy_may_publish(p, "export-service", "user.role_changed"));
    assert_true(ew_policy_may_publish(p, "export-service", "user.data_export_completed"));
    assert_false(ew_policy_may_publish(p, "notification-service", "user.data_export_completed"));
    /* ewctl as itself: redeliveries and what is not sensitive */
    assert_true(ew_policy_may_publish(p, "ewctl", "eventwire.redelivery"));
    assert_true(ew_policy_may_publish(p, "ewctl", "user.profile_updated"));
    assert_false(ew_policy_may_publish(p, "ewctl", "user.deletion_requested"));
    assert_false(ew_policy_may_publish(p, "ewctl", "user.role_changed"));
    assert_false(ew_policy_may_publish(p, "ewctl", "user.data_collected"));
    assert_false(ew_policy_may_publish(p, "ewctl", "user.tokens_revoked"));
    assert_false(ew_policy_may_publish(p, "ewctl", "user.data_export_completed"));
    assert_false(ew_policy_may_publish(p, "nobody", "user.profile_updated"));
    /* subscriptions: patterns are judged by every catalog type they cover */
    assert_true(ew_policy_may_subscribe(p, "analytics-service", "#"));
    assert_true(ew_policy_may_subscribe(p, "export-service", "user.data_collected"));
    assert_false(ew_policy_may_subscribe(p, "export-service", "user.*"));
    assert_true(ew_policy_may_subscribe(p, "user-service", "user.deletion_requested"));
    assert_false(ew_policy_may_subscribe(p, "user-service", "password.reset_token_issued"));
    assert_true(ew_policy_may_subscribe(p, "auth-service", "password.*"));
    assert_false(ew_policy_admits_foreign(p, "user.profile_updated"));
    ew_policy_free(p);

    /* bad files say where and what */
    const char *bads[] = {"allow x y\n", "publish\n", "publish Auth user.x\n",
                          "publish a user..x\n", "subscribe a\n"};
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        p = NULL;
        assert_int_equal(ew_policy_parse(&p, bads[i], strlen(bads[i]), "f", &err), EW_ECONFIG);
        assert_non_null(strstr(err.msg, "f:1"));
        assert_null(p);
    }
    assert_int_equal(ew_policy_load(&p, "/nonexistent/policy", &err), EW_ECONFIG);
    assert_non_null(strstr(err.msg, "/nonexistent/policy"));
}

static void test_docs_policy_is_the_default(void **state)
{
    (void)state;
    const char *src = getenv("EW_SOURCE_DIR");
    if (!src) skip();
    char path[4096];
    snprintf(path, sizeof path, "%s/docs/bus-policy.conf", src);
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    if (strcmp(buf, ew_policy_default_text()) != 0)
        fail_msg("docs/bus-policy.conf is not the built-in default: regenerate it with "
                 "`ewctl keys policy --default > docs/bus-policy.conf`");
}

static void test_roundtrip_mac(void **state)
{
    roundtrip(state);
}

static void test_roundtrip_ed25519(void **state)
{
    roundtrip(state);
}

/* The key store on PostgreSQL: the verifier finds the publisher's key there. */
static void test_roundtrip_postgres_mac(void **state)
{
    fx *f = *state;
    assert_int_equal(strncmp(ew_keys_path(f->keys), "postgres", 8), 0);
    roundtrip(state);
    upcast_events_verify(state);
}

static void test_roundtrip_postgres_ed25519(void **state)
{
    roundtrip(state);
    forgeries_are_refused(state);
}

static void test_forgeries_refused_mac(void **state)
{
    forgeries_are_refused(state);
}

static void test_forgeries_refused_ed25519(void **state)
{
    forgeries_are_refused(state);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test_setup_teardown(test_roundtrip_mac, setup_mac, teardown),
    cmocka_unit_test_setup_teardown(test_roundtrip_ed25519, setup_ed, teardown),
    cmocka_unit_test_setup_teardown(test_roundtrip_postgres_mac, setup_mac_pg, teardown),
    cmocka_unit_test_setup_teardown(test_roundtrip_postgres_ed25519, setup_ed_pg, teardown),
    cmocka_unit_test_setup_teardown(test_forgeries_refused_mac, setup_mac, teardown),
    cmocka_unit_test_setup_teardown(test_forgeries_refused_ed25519, setup_ed, teardown),
    cmocka_unit_test_setup_teardown(test_upcast_events_verify_mac, setup_mac, teardown),
    cmocka_unit_test_setup_teardown(test_upcast_events_verify_ed25519, setup_ed, teardown),
    cmocka_unit_test_setup_teardown(test_foreign_producers, setup_mac, teardown),
    cmocka_unit_test_setup_teardown(test_key_file_is_private, setup_mac, teardown),
    cmocka_unit_test_setup_teardown(test_rotation, setup_mac, teardown),
    cmocka_unit_test_setup_teardown(test_policy_answers_by_source, setup_mac, teardown),
    cmocka_unit_test(test_default_policy),
    cmocka_unit_test(test_docs_policy_is_the_default),
};

EW_TEST_MAIN(tests)
