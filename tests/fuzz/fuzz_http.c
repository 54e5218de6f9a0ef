/* eventwire — fuzzes the HTTP server's request handling (src/http/http.c) after libmicrohttpd
 * has parsed a request: method, path, headers, query and body go through ew__http_handle() on a
 * server holding the route table of the five services (their templates and flags), whose
 * handlers read the request as the services' do, through the services' own body readers
 * (services/common/svc_json.c: svc_json_only, svc_json_str, ...), up to where a service would
 * touch its database; there they answer with what they read. The body limit is 512 bytes, so
 * 413 is reached too, and the body arrives in pieces.
 *
 * The input is "METHOD PATH[?QUERY]\n", header lines "Name: value\n", an empty line, the body.
 * Properties: every request gets an answer with a status in 100..599; a 405 names what is
 * allowed; every answer's body is one JSON object our strict parser accepts (http.h: "every
 * answer JSON"). */
#include "core/json.h"
#include "fuzz.h"
#include "fuzz_request.h"
#include "http/http_internal.h"
#include "svc.h"

#define MAX_BODY 512

/* What a route's body holds, as the service reads it. */
typedef struct body_spec {
    const char *const *fields;  /* svc_json_only */
    const char *const *strings; /* svc_json_str, required when the name starts with '!' */
    const char *strlist, *boolean, *object;
} body_spec;

static const char *const register_f[] = {"username", "email", "password", NULL};
static const char *const register_s[] = {"!username", "!email", "!password", NULL};
static const char *const login_s[] = {"username", "email", "!password", NULL};
static const char *const roles_f[] = {"roles", NULL};
static const char *const reset_f[] = {"email", NULL};
static const char *const reset_s[] = {"!email", NULL};
static const char *const confirm_f[] = {"token", "password", NULL};
static const char *const confirm_s[] = {"!token", "!password", NULL};
static const char *const profile_f[] = {"display_name", "bio", "location", "website", NULL};
static const char *const prefs_f[] = {"preferences", NULL};
static const char *const verify_f[] = {"method", NULL};
static const char *const export_f[] = {"user_id", "requested_by", NULL};
static const char *const export_s[] = {"!user_id", "requested_by", NULL};

static const body_spec b_register = {register_f, register_s, NULL, NULL, NULL};
static const body_spec b_login = {register_f, login_s, NULL, NULL, NULL};
static const body_spec b_roles = {roles_f, NULL, "roles", NULL, NULL};
static const body_spec b_reset = {reset_f, reset_s, NULL, NULL, NULL};
static const body_spec b_confirm = {confirm_f, confirm_s, NULL, NULL, NULL};
static const body_spec b_profile = {profile_f, profile_f, NULL, NULL, NULL};
static const body_spec b_prefs = {prefs_f, NULL, NULL, NULL, "preferences"};
static const body_spec b_verify = {verify_f, verify_f, NULL, NULL, NULL};
static const body_spec b_export = {export_f, export_s, NULL, NULL, NULL};
static const body_spec b_none = {NULL, NULL, NULL, NULL, NULL};

static void handle(const ew_http_request *rq, ew_http_response *res, void *ud)
{
    const body_spec *b = ud;
    static const char *const params[] = {"id", "user_id", "export_id"};
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        const char *v = ew_http_param(rq, params[i]);
        if (v && !svc_uuid_valid(v)) {
            ew_http_reply_error(res, 400, params[i], "'%.64s' is not a valid id", v);
            return;
        }
    }
    if (b->fields && svc_json_only(rq, res, b->fields)) return;
    const char *strs[8] = {0};
    for (size_t i = 0; b->strings && b->strings[i]; i++) {
        const char *f = b->strings[i];
        int req = f[0] == '!';
        if (svc_json_str(rq, res, f + req, req ? SVC_REQUIRED : SVC_OPTIONAL, 254, &strs[i]))
            return;
        if (strs[i] && !strcmp(f + req, "email") && svc_require_email(res, "email", strs[i]))
            return;
    }
    const char *items[8];
    size_t n = 0;
    if (b->strlist && svc_json_strlist(rq, res, b->strlist, SVC_REQUIRED, 8, 64, items, &n)) return;
    bool flag = false;
    if (b->boolean && svc_json_bool(rq, res, b->boolean, SVC_OPTIONAL, &flag, NULL)) return;
    char *obj = NULL;
    if (b->object && svc_json_object(rq, res, b->object, SVC_REQUIRED, &obj)) return;
    ew_http_obj_begin(res, !strcmp(ew_http_method(rq), "POST") ? 201 : 200);
    ew_http_obj_str(res, "path", ew_http_path(rq));
    ew_http_obj_str(res, "client", ew_http_client_addr(rq));
    ew_http_obj_str(res, "format", ew_http_query(rq, "format"));
    ew_http_obj_str(res, "limit", ew_http_query(rq, "limit"));
    ew_http_obj_str(res, "bearer", ew_http_bearer(rq));
    ew_http_obj_str(res, "request_id", ew_http_header(rq, "X-Request-Id"));
    for (size_t i = 0; b->strings && b->strings[i]; i++)
        ew_http_obj_str(res, b->strings[i] + (b->strings[i][0] == '!'), strs[i]);
    ew_http_obj_strlist(res, "items", items, n);
    ew_http_obj_bool(res, "flag", flag);
    ew_http_obj_raw(res, "object", obj);
    free(obj);
}

static const struct {
    const char *route;
    unsigned flags;
    const body_spec *body;
} routes[] = {
    {"POST /auth/register", EW_HTTP_JSON, &b_register},
    {"POST /auth/login", EW_HTTP_JSON, &b_login},
    {"POST /auth/logout", 0, &b_none},
    {"GET /auth/users/{id}", 0, &b_none},
    {"DELETE /auth/users/{id}", 0, &b_none},
    {"PUT /auth/users/{id}/roles", EW_HTTP_JSON, &b_roles},
    {"POST /auth/password-reset", EW_HTTP_JSON, &b_reset},
    {"POST /auth/password-reset/confirm", EW_HTTP_JSON, &b_confirm},
    {"GET /users/{id}/profile", 0, &b_none},
    {"PUT /users/{id}/profile", EW_HTTP_JSON, &b_profile},
    {"GET /users/{id}/preferences", 0, &b_none},
    {"PUT /users/{id}/preferences", EW_HTTP_JSON, &b_prefs},
    {"POST /users/{id}/verify", EW_HTTP_JSON_OPT, &b_verify},
    {"GET /notifications/{user_id}", 0, &b_none},
    {"GET /stats", 0, &b_none},
    {"GET /stats/users/{user_id}", 0, &b_none},
    {"GET /exports", 0, &b_none},
    {"POST /exports", EW_HTTP_JSON, &b_export},
    {"GET /exports/{export_id}", 0, &b_none},
    {"GET /exports/{export_id}/download", 0, &b_none},
};

static int unhealthy(void *ud, char *why, size_t n)
{
    snprintf(why, n, "the database is not reachable");
    return *(const int *)ud;
}

static ew_http_server *server;
static int sick;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    ew_http_options o = {.max_body_bytes = MAX_BODY, .health = unhealthy, .health_ud = &sick};
    if (ew_http_new(&server, &o, NULL)) abort();
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (ew_http_route(server, routes[i].route, routes[i].flags, handle, (void *)routes[i].body,
                          NULL))
            abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* One byte more than the input for the NULs the lines get. */
    char *buf = malloc(size + 1);
    if (!buf) abort();
    memcpy(buf, data, size);
    buf[size] = '\0';
    fuzz_request r;
    fuzz_request_parse(&r, buf, size);
    sick = fuzz_request_header(&r, "X-Fuzz-Unhealthy") != NULL;
    ew__http_output out;
    int rc = ew__http_handle(server, &r.in, &out);
    sick = 0;
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(out.status >= 100 && out.status <= 599);
    if (out.status == 405) FUZZ_CHECK(out.allow[0] != '\0');
    if (out.body.len) {
        ew_arena a;
        ew_json *v = NULL;
        ew_error err = {0};
        ew_arena_init(&a, NULL, 0);
        int prc = ew_json_parse(&v, out.body.data, out.body.len, NULL, &a, &err);
        if (prc)
            fprintf(stderr, "answer %d is not JSON (%s): %.*s\n", out.status, err.msg,
                    (int)(out.body.len > 300 ? 300 : out.body.len), out.body.data);
        FUZZ_CHECK(prc == 0 && v->kind == EW_JSON_OBJECT);
        ew_arena_release(&a);
    }
    ew_buf_release(&out.body);
    free(buf);
    return 0;
}
