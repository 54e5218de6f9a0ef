/* eventwire — the five services of the reference system, run in the fuzz harness's process
 * (fuzz_service, fuzz_socket): each opened by the runtime (svc_open, services/common/svc.h) from
 * its own definition (services/NAME/service.c) with its real routes and handlers, on a memory
 * bus, with its database, the event store, its keys, mails and exports in a temporary folder
 * (under /dev/shm when there is one) that is removed at exit.
 *
 * Two users exist in every service: a user and an admin, registered through auth-service's
 * POST /auth/register and announced to the other services by user.registered (so that their
 * profiles, preferences and counts exist), with access tokens signed by auth-service's key
 * (AUTH_KEY_DIR). An input names them with placeholders, replaced before it is read:
 *   $U  the user's id       $T  the user's access token
 *   $A  the admin's id      $S  the admin's access token
 *
 * One service per input, chosen by the first byte: 'a' auth, 'u' user, 'n' notification,
 * 's' analytics (stats), 'x' export, in either case; any other byte picks byte % 5. */
#ifndef EW_TESTS_FUZZ_SERVICES_H
#define EW_TESTS_FUZZ_SERVICES_H

#include <ctype.h>
#include <curl/curl.h>
#include <ftw.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "analytics.h"
#include "auth.h"
#include "bus/backend.h"
#include "bus/receive.h"
#include "core/json.h"
#include "eventwire/clock.h"
#include "eventwire/evauth.h"
#include "eventwire/id.h"
#include "export.h"
#include "fuzz.h"
#include "http/http_internal.h"
#include "notification.h"
#include "svc_settings.h"
#include "user.h"

enum { FZ_AUTH, FZ_USER, FZ_NOTIF, FZ_ANALYTICS, FZ_EXPORT, FZ_NSERVICES };

typedef struct fuzz_services {
    char dir[256]; /* the temporary folder */
    svc *svc[FZ_NSERVICES];
    svc_def def[FZ_NSERVICES];
    auth auth;
    usvc user;
    notif notif;
    analytics analytics;
    exporter exporter;
    char user_id[EW_UUID_LEN + 1], admin_id[EW_UUID_LEN + 1];
    char user_token[SVC_TOKEN_MAX], admin_token[SVC_TOKEN_MAX];
    /* each service's bus key and the policy, as a peer holds them (EVENT_AUTH=mac): to sign what
     * a service publishes and to verify what it receives; NULL with EVENT_AUTH=off */
    ew_evauth *peer[FZ_NSERVICES];
} fuzz_services;

/* The service an input's first byte picks. */
static inline int fuzz_service_of(uint8_t b)
{
    const char *names = "aunsx", *p = b ? strchr(names, tolower(b)) : NULL;
    return p ? (int)(p - names) : b % FZ_NSERVICES;
}

/* data[0..size) with the placeholders replaced, NUL-terminated (one byte past *len). Caller
 * frees. */
static inline char *fuzz_services_expand(const fuzz_services *f, const uint8_t *data, size_t size,
                                         size_t *len)
{
    size_t cap = size + 1;
    for (size_t i = 0; i + 1 < size; i++)
        if (data[i] == '$') cap += SVC_TOKEN_MAX;
    char *out = malloc(cap);
    if (!out) abort();
    size_t o = 0;
    for (size_t i = 0; i < size; i++) {
        const char *rep = NULL;
        if (data[i] == '$' && i + 1 < size) {
            switch (data[i + 1]) {
            case 'U':
                rep = f->user_id;
                break;
            case 'A':
                rep = f->admin_id;
                break;
            case 'T':
                rep = f->user_token;
                break;
            case 'S':
                rep = f->admin_token;
                break;
            }
        }
        if (rep) {
            size_t n = strlen(rep);
            memcpy(out + o, rep, n);
            o += n;
            i++;
        } else {
            out[o++] = (char)data[i];
        }
    }
    out[o] = '\0';
    *len = o;
    return out;
}

/* Runs one request through service i's HTTP handling (ew__http_handle); out as there. */
static inline int fuzz_services_request(fuzz_services *f, int i, const ew__http_input *in,
                                        ew__http_output *out)
{
    return ew__http_handle(svc_http(f->svc[i]), in, out);
}

/* Builds an event from text: CloudEvents structured JSON when it starts with '{' (as a broker
 * delivers it), else "TYPE\nDATA" (ew_event_from_json, source `source`, subject the data's
 * user_id). 0 and *ev, or the decoder's error. */
static inline int fuzz_event_from_text(ew_event **ev, const char *text, size_t len,
                                       const char *source, ew_error *err)
{
    if (len && text[0] == '{') return ew_event_decode(ev, text, len, NULL, err);
    const char *nl = memchr(text, '\n', len);
    if (!nl) return ew_error_set(err, EW_EINVAL, "no type line");
    char type[128];
    size_t tl = (size_t)(nl - text);
    if (tl >= sizeof type) return ew_error_set(err, EW_EINVAL, "type too long");
    memcpy(type, text, tl);
    type[tl] = '\0';
    ew_event_attrs a = {.source = source};
    return ew_event_from_json(ev, type, nl + 1, len - tl - 1, &a, err);
}

/* The service whose name is ev's source; -1 for none. */
static inline int fuzz_services_index(const fuzz_services *f, const char *source)
{
    for (int i = 0; i < FZ_NSERVICES; i++)
        if (!strcmp(f->def[i].name, source)) return i;
    return -1;
}

/* The event of text as a peer would send it: "TYPE\nDATA" comes from the first service the
 * policy lets publish TYPE ("fuzz" when none may, or with EVENT_AUTH=off); structured JSON
 * names its source itself. */
static inline int fuzz_services_event(fuzz_services *f, ew_event **ev, const char *text, size_t len,
                                      ew_error *err)
{
    int rc = fuzz_event_from_text(ev, text, len, "fuzz", err);
    if (rc || !f->peer[0] || (len && text[0] == '{')) return rc;
    for (int j = 0; j < FZ_NSERVICES; j++) {
        ew_event *as = NULL;
        if (fuzz_event_from_text(&as, text, len, f->def[j].name, NULL)) break;
        if (ew_evauth_check_publish(f->peer[j], as, NULL) == 0) {
            ew_event_unref(*ev);
            *ev = as;
            return 0;
        }
        ew_event_unref(as);
    }
    return 0;
}

/* Delivers ev to service i and waits until the service is quiet (svc_settle).
 * With EVENT_AUTH=off, ev is published on the service's memory bus. With it on (the memory bus
 * neither signs nor verifies), ev goes the way a peer's event comes over a broker: signed with
 * its source's key when its source is one of the five and the policy lets it publish ev's type
 * (unless it carries ewauth or ewkid of its own, then it goes as it is),
 * then checked by the service's receive path (ew_evauth_verify: the tag, the key's owner, the
 * policy; then ew__recv_decrypt), and either handed to its dispatcher or dead-lettered with the
 * reason (ew__recv_refused) and never handled. An event its source signed within the policy is
 * never refused. */
static inline int fuzz_services_deliver(fuzz_services *f, int i, const ew_event *ev, ew_error *err)
{
    ew_bus *bus = svc_bus(f->svc[i]);
    if (!f->peer[i]) {
        int rc = ew_bus_publish(bus, ev, err);
        if (!rc) rc = svc_settle(f->svc[i], 20000, err);
        return rc;
    }
    ew_event *signed_ev = NULL;
    int src = fuzz_services_index(f, ew_event_source(ev));
    /* an event that carries a tag of its own is delivered with it, as a forger would send it */
    if (src >= 0 && !ew_event_extension(ev, "ewauth") && !ew_event_extension(ev, "ewkid") &&
        ew_evauth_check_publish(f->peer[src], ev, NULL) == 0) {
        int rc = ew_evauth_sign(f->peer[src], ev, &signed_ev, err);
        if (rc) return rc;
        ev = signed_ev;
    }
    ew_error ve = {0};
    int rc = ew_evauth_verify(f->peer[i], ev, &ve);
    if (signed_ev && rc) fprintf(stderr, "fuzz_services: signed and refused: %s\n", ve.msg);
    FUZZ_CHECK(!(signed_ev && rc));
    ew_event *plain = NULL;
    if (!rc) rc = ew__recv_decrypt(bus, ev, &plain, &ve);
    if (getenv("FUZZ_SERVICE_VERBOSE"))
        fprintf(stderr, "%s %s from %s: %s\n", f->def[i].name, ew_event_type(ev),
                ew_event_source(ev),
                rc          ? ve.msg
                : signed_ev ? "signed, delivered"
                            : "delivered");
    if (rc) {
        FUZZ_CHECK(rc == EW_EAUTH || rc == EW_EPERM || rc == EW_ECRYPTO || rc == EW_EDATA);
        FUZZ_CHECK(ew__recv_refused(bus, ev, NULL, "fuzz", rc, ve.msg, NULL, NULL));
        rc = 0; /* refused and dead-lettered: what the receive path does */
    } else {
        ew_delivery dl = {.event = plain ? plain : ev};
        rc = ew__dispatch_deliver(ew__bus_dispatcher(bus), &dl, err);
    }
    ew_event_unref(plain);
    ew_event_unref(signed_ev);
    if (!rc) rc = svc_settle(f->svc[i], 20000, err);
    return rc;
}

static inline void fuzz_services_fail(const char *what, const ew_error *e)
{
    fprintf(stderr, "fuzz_services: %s: %s\n", what, e->msg[0] ? e->msg : ew_strerror(e->code));
    abort();
}

/* POST /auth/register a user; *id gets the id auth-service gave it. */
static inline void fuzz_services_register(fuzz_services *f, const char *name, char *id)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"username\":\"%s\",\"email\":\"%s@example.com\",\"password\":\"correct horse "
             "battery staple\"}",
             name, name);
    static const char *const headers[] = {"Content-Type", "application/json"};
    ew__http_input in = {.method = "POST",
                         .path = "/auth/register",
                         .headers = headers,
                         .nheaders = 1,
                         .body = body,
                         .body_len = strlen(body)};
    ew__http_output out;
    if (fuzz_services_request(f, FZ_AUTH, &in, &out) || out.status != 201) {
        fprintf(stderr, "fuzz_services: registering %s: %d %.*s\n", name, out.status,
                (int)out.body.len, out.body.data ? out.body.data : "");
        abort();
    }
    ew_arena a;
    ew_arena_init(&a, NULL, 0);
    ew_json *v = NULL;
    ew_error e = {0};
    if (ew_json_parse(&v, out.body.data, out.body.len, NULL, &a, &e))
        fuzz_services_fail("the registration's answer", &e);
    const ew_json *uid = ew_json_get(v, "user_id");
    if (!uid || uid->kind != EW_JSON_STRING || uid->len != EW_UUID_LEN) abort();
    memcpy(id, uid->str, EW_UUID_LEN + 1);
    ew_arena_release(&a);
    ew_buf_release(&out.body);
}

/* A token of auth-service's key for id, as its login issues them (with roles). */
static inline void fuzz_services_token(fuzz_services *f, const char *id, bool admin, char *out)
{
    char sid[37];
    svc_random_uuid(sid);
    const char *roles[] = {"user", "admin"};
    int64_t now = ew_now_us() / 1000000;
    if (svc_token_sign(&f->auth.keys, id, sid, roles, admin ? 2 : 1, now, now + 365 * 86400, out,
                       SVC_TOKEN_MAX))
        abort();
}

/* The event "TYPE\nDATA" (placeholders replaced) delivered to service i at start. */
static inline void fuzz_services_announce(fuzz_services *f, int i, const char *text)
{
    size_t len;
    char *t = fuzz_services_expand(f, (const uint8_t *)text, strlen(text), &len);
    ew_event *ev = NULL;
    ew_error e = {0};
    if (fuzz_services_event(f, &ev, t, len, &e) || fuzz_services_deliver(f, i, ev, &e))
        fuzz_services_fail(t, &e);
    ew_event_unref(ev);
    free(t);
}

static inline int fuzz_services_rm(const char *path, const struct stat *st, int flag,
                                   struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Closes the services and removes their folder. */
static inline void fuzz_services_close(fuzz_services *f)
{
    for (int i = FZ_NSERVICES - 1; i >= 0; i--) {
        svc_close(f->svc[i]);
        f->svc[i] = NULL;
        if (f->peer[i]) ew_evauth_close(f->peer[i]);
        f->peer[i] = NULL;
    }
    if (f->dir[0]) nftw(f->dir, fuzz_services_rm, 16, FTW_DEPTH | FTW_PHYS);
    f->dir[0] = '\0';
    curl_global_cleanup();
}

/* The bus authentication the services run: FUZZ_EVENT_AUTH (mac, ed25519, off), mac by
 * default as deployed. */
static inline const char *fuzz_services_auth_mode(void)
{
    const char *m = getenv("FUZZ_EVENT_AUTH");
    return m && *m ? m : "mac";
}

/* Aborts unless each "NAME=value" of settings names a setting the library or some service reads:
 * svc_open() ignores the names a service does not read, so a misspelt one would go unnoticed. */
static inline void fuzz_services_check_names(const char *const *settings)
{
    ew_config *all;
    ew_error e = {0};
    if (ew_config_new(&all, &e) || svc_settings_define(all, NULL, &e))
        fuzz_services_fail("settings", &e);
    for (int i = 0; svc_settings_at(i); i++)
        if (ew_config_define(all, svc_settings_at(i)->own, svc_settings_at(i)->nown, &e))
            fuzz_services_fail("settings", &e);
    for (size_t i = 0; settings[i]; i++) {
        char name[128];
        size_t n = strcspn(settings[i], "=");
        if (n >= sizeof name) abort();
        memcpy(name, settings[i], n);
        name[n] = '\0';
        if (!ew_config_get(all, name)) {
            fprintf(stderr, "fuzz_services: no program reads %s\n", name);
            abort();
        }
    }
    ew_config_free(all);
}

/* Opens the five services, with the settings below and `extra` ("NAME=value" strings, NULL-
 * terminated, may be NULL) over them, and makes the two users. */
static inline void fuzz_services_open(fuzz_services *f, const char *const *extra)
{
    memset(f, 0, sizeof *f);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) abort();
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(f->dir, sizeof f->dir, "%s/ew-fuzz-XXXXXX", base);
    if (!mkdtemp(f->dir)) abort();
    char db[300], store[300], keys[300], mail[300], exports[300];
    snprintf(db, sizeof db, "SERVICE_DB_URL=sqlite:%s/{SERVICE_NAME}.db", f->dir);
    snprintf(store, sizeof store, "EVENT_STORE_URL=sqlite:%s/events.db", f->dir);
    snprintf(keys, sizeof keys, "AUTH_KEY_DIR=%s/keys", f->dir);
    snprintf(mail, sizeof mail, "MAIL_DIR=%s/mail", f->dir);
    snprintf(exports, sizeof exports, "EXPORT_DIR=%s/exports", f->dir);
    /* EVENT_AUTH as deployed (mac), or the mode FUZZ_EVENT_AUTH names (ed25519, off): each
     * service makes its bus key at its first start; the events an input brings are signed and
     * checked as peers' (fuzz_services_deliver) */
    const char *settings[64] = {"EVENT_BUS_TYPE=memory",
                                db,
                                store,
                                keys,
                                mail,
                                exports,
                                "HTTP_PORT=0",
                                "HTTP_MAX_BODY_BYTES=4096",
                                "AUTH_PASSWORD_HASH=min",
                                "AUTH_LIMIT_WINDOW_SECONDS=1",
                                "ENABLE_SAGAS=false",
                                "EVENT_HANDLER_MAX_ATTEMPTS=2",
                                "EVENT_HANDLER_BACKOFF_MS=1",
                                "EVENT_HANDLER_BACKOFF_MAX_MS=1",
                                "LOG_LEVEL=error",
                                "EXPORT_TIMEOUT_SECONDS=60"};
    size_t n = 0;
    while (settings[n])
        n++;
    char mode[64];
    const char *want = fuzz_services_auth_mode();
    snprintf(mode, sizeof mode, "EVENT_AUTH=%s", want);
    settings[n++] = mode;
    for (size_t i = 0; extra && extra[i] && n + 1 < sizeof settings / sizeof settings[0]; i++)
        settings[n++] = extra[i];
    ew_error e = {0};
    fuzz_services_check_names(settings);
    f->def[FZ_AUTH] = auth_service(&f->auth);
    f->def[FZ_USER] = user_service(&f->user);
    f->def[FZ_NOTIF] = notif_service(&f->notif);
    f->def[FZ_ANALYTICS] = analytics_service(&f->analytics);
    f->def[FZ_EXPORT] = export_service(&f->exporter);
    /* auth-service first: it makes the token keys the others read */
    for (int i = 0; i < FZ_NSERVICES; i++)
        if (svc_open(&f->svc[i], &f->def[i], settings, &e)) fuzz_services_fail(f->def[i].name, &e);
    for (int i = 0; i < FZ_NSERVICES; i++) {
        /* the mode asked for is the one the services run (a misspelt mode fails svc_open) */
        if (strcmp(ew_config_get(svc_config(f->svc[i]), "EVENT_AUTH"), want)) abort();
        if (!strcmp(want, "off")) break;
        ew_evauth_options ao = {
            .config = svc_config(f->svc[i]), .service = f->def[i].name, .existing_key_only = true};
        if (ew_evauth_open(&f->peer[i], &ao, &e)) fuzz_services_fail("a peer's key", &e);
        /* and the key each service signs with is of that mode's algorithm */
        ew_key_alg alg = !strcmp(want, "ed25519") ? EW_KEY_ED25519 : EW_KEY_MAC;
        if (ew_evauth_alg(f->peer[i]) != alg) {
            fprintf(stderr, "fuzz_services: %s signs with the wrong algorithm for EVENT_AUTH=%s\n",
                    f->def[i].name, want);
            abort();
        }
    }

    fuzz_services_register(f, "fuzzuser", f->user_id);
    fuzz_services_register(f, "fuzzadmin", f->admin_id);
    fuzz_services_token(f, f->user_id, false, f->user_token);
    fuzz_services_token(f, f->admin_id, true, f->admin_token);
    static const char *const users[][2] = {{"$U", "fuzzuser"}, {"$A", "fuzzadmin"}};
    for (size_t u = 0; u < 2; u++) {
        char ev[512];
        for (int i = FZ_USER; i < FZ_NSERVICES; i++) {
            snprintf(ev, sizeof ev,
                     "user.registered\n{\"user_id\":\"%s\",\"username\":\"%s\",\"email\":\"%s@"
                     "example.com\",\"roles\":[\"user\"]}",
                     users[u][0], users[u][1], users[u][1]);
            fuzz_services_announce(f, i, ev);
        }
        snprintf(ev, sizeof ev,
                 "user.profile_created\n{\"user_id\":\"%s\",\"display_name\":\"%s\"}", users[u][0],
                 users[u][1]);
        fuzz_services_announce(f, FZ_AUTH, ev);
        fuzz_services_announce(f, FZ_NOTIF, ev);
        fuzz_services_announce(f, FZ_ANALYTICS, ev);
    }
    if (svc_settle(f->svc[FZ_AUTH], 20000, &e)) fuzz_services_fail("settling", &e);
}

#endif
